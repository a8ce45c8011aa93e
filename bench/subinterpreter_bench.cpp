// bench/subinterpreter_bench.cpp — sub-interpreters (pyattach/subinterpreter.hpp), CPython 3.12+:
//   --scaling REPS    CPU-bound pure Python on 2 native threads: both on the main interpreter
//                     (one GIL) against one own-GIL interpreter each; wall time per repetition
//                     and the ratio. Lines "scaling rep=N main_ms=.. subs_ms=.. ratio=..".
//   --callgrind N     under valgrind --tool=callgrind --instr-atstart=no: a native thread that
//                     alternates between two interpreters, N rounds (2N switches) per row, one
//                     dump per row (CALLGRIND_DUMP_STATS_AT "switch/<row>"), for
//                       pyattach    attach_scope(a) then attach_scope(b), persistent states
//                       floor       the same persistent states by hand: PyThreadState_Swap
//                       per_entry   a state made and destroyed per entry (PyThreadState_New,
//                                   Swap, Clear, DeleteCurrent): what pybind11 3.1's
//                                   subinterpreter_scoped_activate(subinterpreter) does
//                     and prints "switch <row> rounds=N states=S" (S: states made in b by the
//                     row, from pyattach's counter or the row's own count).
// Both interpreters have their own GIL. The thread starts and warms up outside the counts.
#include <Python.h>
#include <valgrind/callgrind.h>

#include <pyattach/pyattach.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#if PY_VERSION_HEX >= 0x030C0000
namespace {

using clock_type = std::chrono::steady_clock;

// The CPU-bound work: pure Python, no I/O, no allocation-heavy builtins.
constexpr const char* k_work =
    "def work(n):\n"
    "    total = 0\n"
    "    for i in range(n):\n"
    "        total += i * i % 7\n"
    "    return total\n";

bool run_code(const char* code) {
  PyObject* main = PyImport_AddModule("__main__");
  PyObject* r = main ? PyRun_String(code, Py_file_input, PyModule_GetDict(main),
                                    PyModule_GetDict(main))
                     : nullptr;
  if (r == nullptr) {
    PyErr_Print();
    return false;
  }
  Py_DECREF(r);
  return true;
}

// Two threads each run work(n) `calls` times, each attached with `scope_on(thread index)`.
template <class Attach>
double two_threads_ms(long n, int calls, Attach attach) {
  const std::string call = "work(" + std::to_string(n) + ")\n";
  const auto start = clock_type::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < calls; ++c) {
        auto scope = attach(t);
        run_code(call.c_str());
      }
    });
  }
  for (auto& th : threads) th.join();
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

int scaling(int reps) {
  pyattach::interpreter py;
  std::vector<pyattach::subinterpreter> subs = {pyattach::subinterpreter::create(),
                                                pyattach::subinterpreter::create()};
  {
    pyattach::attach_scope m;
    run_code(k_work);
  }
  for (auto& s : subs) {
    pyattach::attach_scope in(s);
    run_code(k_work);
  }
  const long n = 300000;
  const int calls = 5;
  // Warm-up: each thread's states exist before the first measured repetition.
  two_threads_ms(1000, 1, [](int) { return pyattach::attach_scope(); });
  two_threads_ms(1000, 1, [&](int t) { return pyattach::attach_scope(subs[t]); });
  std::vector<double> ratios;
  for (int r = 0; r < reps; ++r) {
    const double main_ms = two_threads_ms(n, calls, [](int) { return pyattach::attach_scope(); });
    const double subs_ms =
        two_threads_ms(n, calls, [&](int t) { return pyattach::attach_scope(subs[t]); });
    ratios.push_back(main_ms / subs_ms);
    std::printf("scaling rep=%d main_ms=%.1f subs_ms=%.1f ratio=%.3f\n", r, main_ms, subs_ms,
                main_ms / subs_ms);
  }
  std::sort(ratios.begin(), ratios.end());
  std::printf("scaling median_ratio=%.3f min=%.3f max=%.3f reps=%d work=%ldx%d per thread\n",
              ratios[ratios.size() / 2], ratios.front(), ratios.back(), reps, n, calls);
  for (auto& s : subs) s.end();
  return 0;
}

// ---- switches --------------------------------------------------------------------------------

template <class Body>
void count(const char* label, long rounds, Body body) {
  CALLGRIND_START_INSTRUMENTATION;
  CALLGRIND_ZERO_STATS;
  for (long i = 0; i < rounds; ++i) body();
  CALLGRIND_STOP_INSTRUMENTATION;
  CALLGRIND_DUMP_STATS_AT(label);
}

int switches(long rounds) {
  pyattach::interpreter py;
  pyattach::subinterpreter a = pyattach::subinterpreter::create();
  pyattach::subinterpreter b = pyattach::subinterpreter::create();
  std::thread([&] {
    // pyattach: one persistent state per interpreter, found by the scope.
    auto pyattach_round = [&] {
      { pyattach::attach_scope in(a); }
      { pyattach::attach_scope in(b); }
    };
    for (int i = 0; i < 200; ++i) pyattach_round();
    const auto made = b.stats().states_made;
    count("switch/pyattach", rounds, pyattach_round);
    std::printf("switch pyattach rounds=%ld states=%llu\n", rounds,
                static_cast<unsigned long long>(b.stats().states_made - made));

    // The floor: persistent states kept by hand, swapped in and out (no bookkeeping at all).
    PyThreadState* const ta = PyThreadState_New(a.state());
    PyThreadState* const tb = PyThreadState_New(b.state());
    auto floor_round = [&] {
      PyThreadState_Swap(ta);
      PyThreadState_Swap(nullptr);
      PyThreadState_Swap(tb);
      PyThreadState_Swap(nullptr);
    };
    for (int i = 0; i < 200; ++i) floor_round();
    count("switch/floor", rounds, floor_round);
    std::printf("switch floor rounds=%ld states=0\n", rounds);
    for (PyThreadState* ts : {ta, tb}) {
      PyThreadState_Swap(ts);
      PyThreadState_Clear(ts);
      PyThreadState_DeleteCurrent();
    }

    // A state per entry, as pybind11 3.1's subinterpreter_scoped_activate(subinterpreter).
    long made_per_entry = 0;
    auto per_entry_round = [&] {
      for (PyInterpreterState* interp : {a.state(), b.state()}) {
        PyThreadState* ts = PyThreadState_New(interp);
        PyThreadState* old = PyThreadState_Swap(ts);
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();
        PyThreadState_Swap(old);
        ++made_per_entry;
      }
    };
    for (int i = 0; i < 200; ++i) per_entry_round();
    made_per_entry = 0;
    count("switch/per_entry", rounds, per_entry_round);
    std::printf("switch per_entry rounds=%ld states=%ld\n", rounds, made_per_entry / 2);
  }).join();
  a.end();
  b.end();
  return 0;
}

}  // namespace
#endif

int main(int argc, char** argv) {
#if PY_VERSION_HEX < 0x030C0000
  (void)argc;
  (void)argv;
  std::printf("sub-interpreters with their own GIL need CPython 3.12+\n");
  return 0;
#else
  const std::string mode = argc > 1 ? argv[1] : "--smoke";
  if (mode == "--scaling") return scaling(argc > 2 ? std::atoi(argv[2]) : 5);
  if (mode == "--callgrind") return switches(argc > 2 ? std::atol(argv[2]) : 10000);
  if (mode == "--smoke") {
    switches(10);
    return scaling(1);
  }
  std::fprintf(stderr, "usage: pyattach_subinterpreter_bench [--smoke | --scaling REPS | "
                       "--callgrind N]\n");
  return 2;
#endif
}

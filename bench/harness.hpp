// bench/harness.hpp — what both benchmark binaries (pyattach_bench, attach_alternatives.cpp, and
// pyattach_pool_bench, pool_alternatives.cpp) share around their measurements, none of it inside a
// timed or counted region: the build's context defaults, failing a run, the thread-state probe,
// a one-shot latch between threads, the min/max aggregates, and main()'s frame (flags, the
// embedded interpreter, the Python objects, Google Benchmark's run, the exit status).
#pragma once

#include <Python.h>

#include <benchmark/benchmark.h>
#include <pyattach/pyattach.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#ifndef PYATTACH_BENCH_BUILD_TYPE
#define PYATTACH_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef PYATTACH_BENCH_PYTHON
#define PYATTACH_BENCH_PYTHON "unknown"
#endif

namespace bench {

inline const char* g_program = "pyattach_bench";  // the binary's name, set by run_main
inline std::atomic<bool> g_failed{false};          // some run reported an error: exit status 1

inline void fail(const std::string& what) {
  g_failed.store(true);
  std::fprintf(stderr, "%s: %s\n", g_program, what.c_str());
}

// The id CPython gives the next thread state, read by making one. PyThreadState_GetID (3.9+)
// returns the interpreter's creation counter, so the difference of two probes counts every state
// created in between, even when malloc hands a new state the address of a deleted one.
// Runs on the main thread, whose own state (made by Py_Initialize) PyGILState knows: Ensure only
// re-attaches it, and the probe state is not registered as the thread's (it already has one).
inline std::uint64_t probe_state_id() {
  const PyGILState_STATE g = PyGILState_Ensure();
  PyThreadState* probe = PyThreadState_New(PyInterpreterState_Main());
  const std::uint64_t id = PyThreadState_GetID(probe);
  PyThreadState_Clear(probe);   // never attached, nothing to free but itself; GIL held
  PyThreadState_Delete(probe);  // not current: Delete, not DeleteCurrent
  PyGILState_Release(g);
  return id;
}

// A one-shot count between threads (C++17 has no std::latch): wait() blocks until count_down()
// has been called `count` times in all; arrive_and_wait() is both. Counting past zero does
// nothing (a thread that fails may signal what it already signalled).
class latch {
 public:
  explicit latch(std::size_t count = 1) : left_(count) {}
  void count_down() {
    std::lock_guard<std::mutex> lock(m_);
    arrive();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait(lock, [&] { return left_ == 0; });
  }
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    arrive();
    cv_.wait(lock, [&] { return left_ == 0; });
  }

 private:
  void arrive() {  // PRECONDITION: m_ held
    if (left_ > 0 && --left_ == 0) cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::size_t left_;
};

// The min and max over a benchmark's repetitions, reported next to Google Benchmark's own
// mean/median/stddev aggregates.
inline double min_of(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}
inline double max_of(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}
inline benchmark::internal::Benchmark* with_min_max(benchmark::internal::Benchmark* b) {
  return b->ComputeStatistics("min", min_of)->ComputeStatistics("max", max_of);
}

// A fresh namespace (with __builtins__) that `code` has run in: a new reference, or nullptr (the
// Python error printed). PRECONDITION: attached.
inline PyObject* run_in_namespace(const char* code) {
  PyObject* globals = PyDict_New();
  if (globals == nullptr ||
      PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) != 0) {
    Py_XDECREF(globals);
    return nullptr;
  }
  PyObject* r = PyRun_String(code, Py_file_input, globals, globals);
  if (r == nullptr) {
    PyErr_Print();
    Py_DECREF(globals);
    return nullptr;
  }
  Py_DECREF(r);
  return globals;
}

// Google Benchmark's run: its flags, the context both binaries report (python_version,
// python_executable, compiler, build_type), then `setup` (the binary's own context and its
// benchmarks), the run. Returns false if Google Benchmark rejected a flag.
template <class Setup>
bool run_benchmarks(int argc, char** argv, Setup&& setup) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return false;
  benchmark::AddCustomContext("python_version", Py_GetVersion());
  benchmark::AddCustomContext("python_executable", PYATTACH_BENCH_PYTHON);
  benchmark::AddCustomContext("compiler", __VERSION__);
  benchmark::AddCustomContext("build_type", PYATTACH_BENCH_BUILD_TYPE);
  setup();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return true;
}

// What a binary's main() hands run_main.
struct program {
  const char* name;                          // prefixes its error lines
  const char* usage;                         // its flags, for the usage line
  bool (*parse_options)(int& argc, char** argv);  // false: bad flags (exit 2)
  bool (*make_python_objects)();             // PRECONDITION: attached; false: exit 1
  bool (*run)(int argc, char** argv);        // the measurements; false: a flag rejected (exit 2)
  void (*clear_python_objects)();            // PRECONDITION: attached
};

// main(): the binary's flags, then CPython embedded (pyattach::interpreter: Py_Initialize, the
// main thread detached from then on), the Python objects made on the main thread's own state
// (PyGILState: no new one), the run, the objects released. Exits 2 on bad flags, 1 if the objects
// could not be made or a run failed, else 0.
inline int run_main(const program& p, int argc, char** argv) {
  g_program = p.name;
  if (!p.parse_options(argc, argv)) {
    std::fprintf(stderr, "usage: %s %s\n", p.name, p.usage);
    return 2;
  }
  pyattach::interpreter python;
  {
    const PyGILState_STATE g = PyGILState_Ensure();
    const bool ok = p.make_python_objects();
    PyGILState_Release(g);
    if (!ok) {
      std::fprintf(stderr, "%s: could not set up the Python objects\n", p.name);
      return 1;
    }
  }
  const bool flags_ok = p.run(argc, argv);
  {
    const PyGILState_STATE g = PyGILState_Ensure();
    p.clear_python_objects();
    PyGILState_Release(g);
  }
  if (!flags_ok) return 2;
  return g_failed.load() ? 1 : 0;
}

}  // namespace bench

// tests/cpp/test_subinterpreters.cpp — sub-interpreters (pyattach/subinterpreter.hpp): one
// persistent state per native thread and interpreter, scopes that swap between interpreters, a
// gate per interpreter, and ending an interpreter from any thread while others keep running.
// CPython 3.12+ (per-interpreter GIL); on older versions create() must throw and the rest skips.
// Each case runs in a child process with its own CPython lifetime (child_process.hpp).
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "subinterpreter_helpers.hpp"

using namespace testutil;

#if PY_VERSION_HEX >= 0x030C0000
namespace {

// Resident set size in KiB (/proc/self/status VmRSS).
long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace
#endif

#if PY_VERSION_HEX >= 0x030C0000
// Create, run Python on a native thread, end from the creating thread; attaches after the end
// are refused with `finalized`, and the main interpreter keeps working.
CHILD_CASE(sub_create_run_end) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  CHILD_CHECK(!sub.is_main() && sub.own_gil() && sub.id() > 0);
  CHILD_CHECK(pyattach::subinterpreter::find(sub.id()) == sub);
  std::thread([&] {
    pyattach::attach_scope in(sub);
    CHILD_CHECK(current_interp() == sub.state());
    CHILD_CHECK(current_interp() != PyInterpreterState_Main());
    CHILD_CHECK(run("import sys\nx = 6 * 7\n"));
    CHILD_CHECK(eval_long("x") == 42);
  }).join();
  CHILD_CHECK(sub.end());
  CHILD_CHECK(sub.ended());
  CHILD_CHECK(sub.end());  // again: already ended
  std::thread([&] {
    auto after = pyattach::try_attach(sub);
    CHILD_CHECK(!after && after.status() == pyattach::attach_status::finalized);
    pyattach::attach_scope main_scope;
    CHILD_CHECK(run("y = 1\n"));
  }).join();
  return child_done();
}
SUB_TEST(CreateRunOnANativeThreadAndEnd, sub_create_run_end)

// A thread that alternates between the main interpreter and a sub-interpreter 100,000 times makes
// exactly one state in each: the same state, threading.local values and ident every time.
CHILD_CASE(sub_alternating_makes_two_states) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  const auto made_before = sub.stats().states_made;
  const long rounds = env_long("PYATTACH_SUB_ROUNDS", 100000);
  std::thread([&] {
    PyThreadState* main_state = nullptr;
    PyThreadState* sub_state = nullptr;
    {
      pyattach::attach_scope m;
      main_state = PyThreadState_Get();
      CHILD_CHECK(run("import threading\ntl = threading.local()\ntl.v = 'main'\n"));
    }
    {
      pyattach::attach_scope s(sub);
      sub_state = PyThreadState_Get();
      CHILD_CHECK(run("import threading\ntl = threading.local()\ntl.v = 'sub'\n"));
    }
    long wrong = 0;
    for (long i = 0; i < rounds; ++i) {
      {
        pyattach::attach_scope m(pyattach::subinterpreter::main());
        if (PyThreadState_Get() != main_state) ++wrong;
      }
      {
        pyattach::attach_scope s(sub);
        if (PyThreadState_Get() != sub_state) ++wrong;
      }
    }
    CHILD_CHECK(wrong == 0);
    {
      pyattach::attach_scope m;
      CHILD_CHECK(eval_long("1 if tl.v == 'main' else 0") == 1);
    }
    {
      pyattach::attach_scope s(sub);
      CHILD_CHECK(eval_long("1 if tl.v == 'sub' else 0") == 1);
    }
    CHILD_CHECK(pyattach::cached_subinterpreter_states() == 1);
  }).join();
  const auto st = sub.stats();
  std::printf("states made in the sub-interpreter by the thread: %llu, attaches: %llu\n",
              static_cast<unsigned long long>(st.states_made - made_before),
              static_cast<unsigned long long>(st.attaches));
  CHILD_CHECK(st.states_made - made_before == 1);
  CHILD_CHECK(st.states_destroyed == 1);  // the thread's, at its exit
  CHILD_CHECK(sub.end());
  return child_done();
}
SUB_TEST(ThreadAlternatingBetweenTwoInterpretersMakesExactlyTwoStates,
         sub_alternating_makes_two_states)

// main scope -> sub scope -> main (by handle) scope: each inner scope swaps, each end restores.
CHILD_CASE(sub_nested_scopes_swap_and_restore) {
  pyattach::interpreter py;
  std::uint64_t misuse_before = 0;
  pyattach::subinterpreter a = pyattach::subinterpreter::create();
  pyattach::subinterpreter b = pyattach::subinterpreter::create();
  std::thread([&] {
    pyattach::attach_scope outer;
    PyThreadState* const main_state = PyThreadState_Get();
    CHILD_CHECK(current_interp() == PyInterpreterState_Main());
    {
      pyattach::attach_scope in_a(a);
      CHILD_CHECK(in_a.made_current() && current_interp() == a.state());
      {
        pyattach::attach_scope in_b(b);
        CHILD_CHECK(current_interp() == b.state());
        {
          pyattach::attach_scope again_a(a);
          CHILD_CHECK(current_interp() == a.state());
          pyattach::attach_scope nested_a(a);  // same interpreter: counts only
          CHILD_CHECK(!nested_a.made_current() && current_interp() == a.state());
        }
        CHILD_CHECK(current_interp() == b.state());
        {
          pyattach::attach_scope back_to_main(pyattach::subinterpreter::main());
          CHILD_CHECK(PyThreadState_Get() == main_state);
        }
        CHILD_CHECK(current_interp() == b.state());
        // A plain attach_scope names no interpreter: refused while a sub-interpreter's is current.
        auto plain = pyattach::try_attach();
        CHILD_CHECK(plain.status() == pyattach::attach_status::other_interpreter);
      }
      CHILD_CHECK(current_interp() == a.state());
      misuse_before = pyattach::misuse_count();
      {
        pyattach::detach_scope out;  // inside a sub-interpreter scope: releases its GIL
        CHILD_CHECK(pyattach::detail::compat::current_state_unchecked() == nullptr);
        pyattach::attach_scope in_b(b);  // nothing current to swap out: b's state only
        CHILD_CHECK(current_interp() == b.state());
      }
      CHILD_CHECK(current_interp() == a.state());
    }
    CHILD_CHECK(PyThreadState_Get() == main_state);
  }).join();
  // a's scope ended in order after the detach_scope with b's inside it: nothing reported.
  CHILD_CHECK(pyattach::misuse_count() == misuse_before);
  CHILD_CHECK(a.end() && b.end());
  return child_done();
}
SUB_TEST(NestedScopesOnDifferentInterpretersSwapAndRestore, sub_nested_scopes_swap_and_restore)

// Ended from a worker thread that never attached to it, while another worker holds a cached
// (idle) state of it; the main interpreter then finalizes cleanly.
CHILD_CASE(sub_end_from_a_worker) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  std::thread([&] {
    pyattach::attach_scope in(sub);
    CHILD_CHECK(run("import json\nv = json.dumps([1, 2])\n"));
  }).join();
  std::atomic<bool> idle_has_state{false}, release_idle{false};
  std::thread idle([&] {
    {
      pyattach::attach_scope in(sub);
      CHILD_CHECK(run("z = 3\n"));
    }
    idle_has_state = true;
    while (!release_idle) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // Its state was destroyed by the end: the next attach is refused, nothing is touched.
    auto after = pyattach::try_attach(sub);
    CHILD_CHECK(after.status() == pyattach::attach_status::finalized);
    CHILD_CHECK(pyattach::cached_subinterpreter_states() == 0);
  });
  while (!idle_has_state) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  bool ended = false;
  std::thread([&] { ended = sub.end(); }).join();
  CHILD_CHECK(ended);
  release_idle = true;
  idle.join();
  const auto st = sub.stats();
  CHILD_CHECK(st.states_made == st.states_destroyed);
  return child_done();
}
SUB_TEST(EndedFromAWorkerThreadWhileAnotherThreadCachesAState, sub_end_from_a_worker)

// Ending while native threads attach in a loop, `runs` times: every end succeeds, every thread
// finishes (each attach ran its Python or was refused), nothing crashes or hangs.
CHILD_CASE(sub_end_while_threads_attach) {
  pyattach::interpreter py;
  const long runs = env_long("PYATTACH_SUB_END_RUNS", size_default(100, 10));
  long refused_total = 0, ran_total = 0;
  for (long run_no = 0; run_no < runs; ++run_no) {
    pyattach::subinterpreter sub = pyattach::subinterpreter::create();
    std::atomic<long> ran{0}, refused{0}, bad{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&] {
        for (;;) {
          auto in = pyattach::try_attach(sub);
          if (!in) {
            if (in.status() == pyattach::attach_status::finalizing ||
                in.status() == pyattach::attach_status::finalized) {
              ++refused;
            } else {
              ++bad;
            }
            return;
          }
          if (!run("n = sum(range(50))\n")) ++bad;
          ++ran;
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + run_no % 5));
    CHILD_CHECK(sub.end(std::chrono::seconds(10)));
    for (auto& t : threads) t.join();
    CHILD_CHECK(bad == 0);
    CHILD_CHECK(refused == 3);
    refused_total += refused;
    ran_total += ran;
    const auto st = sub.stats();
    CHILD_CHECK(st.states_made == st.states_destroyed);
  }
  std::printf("ends while attaching: %ld runs, %ld scopes ran, %ld threads refused\n", runs,
              ran_total, refused_total);
  return child_done();
}
SUB_TEST(EndedWhileNativeThreadsAttachInALoop, sub_end_while_threads_attach,
         [] {
           child_options o;
           o.timeout = std::chrono::seconds(120);
           return o;
         }())

// create/use/end cycles from 4 threads at once (1,000 by default), each importing stdlib C
// modules in its interpreter: no crash, every state pyattach made destroyed, the main
// interpreter's thread states back to their count, and RSS within a bound. CPython itself keeps
// memory per interpreter it ends (measured here with the raw C API: about 1.7 MiB per own-GIL
// interpreter, 170 KiB per shared-GIL one, on 3.12 and 3.13), so the bound is relative to the raw
// C API's growth, measured first in the same process with the same mix: one thread in four
// makes own-GIL interpreters, the others shared-GIL ones (which keeps the process under 1 GiB).
constexpr const char* k_cycle_code = "import _json, math, _struct\nv = math.sqrt(_struct.calcsize('q'))\n";

pyattach::interpreter_options cycle_options(bool own_gil) {
  return own_gil ? pyattach::interpreter_options{} : pyattach::interpreter_options::legacy();
}

// The raw C API's cycle, for the control. PRECONDITION: attached to the main interpreter.
bool raw_cycle(bool own_gil) {
  const PyInterpreterConfig cfg = cycle_options(own_gil).config();
  PyThreadState* const main_state = PyThreadState_Get();
  PyThreadState* ts = nullptr;
  if (PyStatus_Exception(Py_NewInterpreterFromConfig(&ts, &cfg))) return false;
  const bool ok = run(k_cycle_code);
  Py_EndInterpreter(ts);
  PyThreadState_Swap(main_state);
  return ok;
}

long main_thread_states() {
  pyattach::attach_scope m;
  long n = 0;
  for (PyThreadState* t = PyInterpreterState_ThreadHead(PyInterpreterState_Main()); t != nullptr;
       t = PyThreadState_Next(t)) {
    ++n;
  }
  return n;
}

CHILD_CASE(sub_cycles_from_four_threads) {
  pyattach::interpreter py;
  const long cycles = env_long("PYATTACH_SUB_CYCLES", size_default(250, 15));  // per thread
  const long control = size_default(20, 4);  // raw cycles per kind
  std::atomic<long> done{0}, failed{0};
  auto cycle = [&](bool own_gil) {
    try {
      pyattach::subinterpreter sub = pyattach::subinterpreter::create(cycle_options(own_gil));
      {
        pyattach::attach_scope in(sub);
        if (!run(k_cycle_code)) ++failed;
      }
      if (!sub.end()) ++failed;
      const auto st = sub.stats();
      if (st.states_made != st.states_destroyed || st.threads != 0) ++failed;
      ++done;
    } catch (const std::exception& e) {
      std::printf("cycle failed: %s\n", e.what());
      ++failed;
    }
  };
  // Warm-up: allocator pools, imports' caches, each kind once on this thread.
  for (int i = 0; i < 4; ++i) cycle(i % 2 == 0);
  {
    pyattach::attach_scope m;
    for (int i = 0; i < 4; ++i) CHILD_CHECK(raw_cycle(i % 2 == 0));
  }
  // The control: the raw C API's growth per cycle, one own-GIL cycle for three shared-GIL ones.
  const long rss_before_raw = rss_kib();
  {
    pyattach::attach_scope m;
    for (long i = 0; i < 4 * control; ++i) CHILD_CHECK(raw_cycle(i % 4 == 0));
  }
  const double raw_per_cycle = double(rss_kib() - rss_before_raw) / double(4 * control);
  const long states_before = main_thread_states();
  const long rss_before = rss_kib();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (long i = 0; i < cycles; ++i) cycle(t == 0);
    });
  }
  for (auto& t : threads) t.join();
  const double per_cycle = double(rss_kib() - rss_before) / double(4 * cycles);
  const long states_after = main_thread_states();
  std::printf("cycles: %ld done, %ld failed; RSS per cycle: %.1f KiB (raw C API: %.1f KiB); main "
              "interpreter thread states %ld before, %ld after\n",
              done.load(), failed.load(), per_cycle, raw_per_cycle, states_before, states_after);
  CHILD_CHECK(failed == 0);
  CHILD_CHECK(done == 4 + 4 * cycles);
  CHILD_CHECK(states_after == states_before);
  // The bound: what CPython keeps, plus at most 64 KiB per cycle (a leaked state or interpreter
  // of pyattach's would be far more). Not under a sanitizer, whose allocator keeps freed memory.
  if (!k_sanitized) CHILD_CHECK(per_cycle <= 1.5 * raw_per_cycle + 64);
  return child_done();
}
SUB_TEST(CreateUseEndCyclesFromFourThreads, sub_cycles_from_four_threads,
         [] {
           child_options o;
           o.timeout = std::chrono::seconds(240);
           return o;
         }())

// Two interpreters with their own GIL run Python at the same moment: a thread inside one waits,
// running bytecode, for a flag that a thread inside the other sets from Python. With one GIL the
// second could only run when the first gives the GIL away; with two it never needs to.
std::atomic<bool> g_flag{false};
CHILD_CASE(sub_own_gils_run_at_once) {
  pyattach::interpreter py;
  pyattach::subinterpreter a = pyattach::subinterpreter::create();
  pyattach::subinterpreter b = pyattach::subinterpreter::create();
  std::atomic<bool> a_inside{false};
  std::atomic<int> both{0};
  std::thread ta([&] {
    pyattach::attach_scope in(a);
    a_inside = true;
    // Holds a's GIL the whole time it waits (switching interpreters' GILs never helps b).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!g_flag && std::chrono::steady_clock::now() < until) {
      run("x = sum(range(100))\n");
    }
    if (g_flag) ++both;
  });
  std::thread tb([&] {
    while (!a_inside) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    pyattach::attach_scope in(b);
    CHILD_CHECK(run("y = sum(range(100))\n"));
    g_flag = true;
  });
  ta.join();
  tb.join();
  CHILD_CHECK(both == 1);
  CHILD_CHECK(a.end() && b.end());
  return child_done();
}
SUB_TEST(TwoInterpretersWithTheirOwnGilRunPythonAtOnce, sub_own_gils_run_at_once)

// A single-phase-init extension module (not multi-interpreter safe) imported in an isolated
// interpreter: a clear ImportError, not a crash; the same module imports in the main one.
PyModuleDef g_single_phase_def = {PyModuleDef_HEAD_INIT, "pyattach_single_phase", nullptr, -1,
                                  nullptr, nullptr, nullptr, nullptr, nullptr};
PyObject* init_single_phase() { return PyModule_Create(&g_single_phase_def); }
CHILD_CASE(sub_single_phase_module_refused) {
  PyImport_AppendInittab("pyattach_single_phase", &init_single_phase);
  pyattach::interpreter py;
  {
    pyattach::attach_scope m;
    CHILD_CHECK(run("import pyattach_single_phase\n"));
  }
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  std::thread([&] {
    pyattach::attach_scope in(sub);
    CHILD_CHECK(run("try:\n"
                    "    import pyattach_single_phase\n"
                    "    outcome = 'imported'\n"
                    "except ImportError as e:\n"
                    "    outcome = 'ImportError: ' + str(e)\n"));
    PyObject* main = PyImport_AddModule("__main__");
    const std::string outcome = py_eval_str("outcome", PyModule_GetDict(main));
    std::printf("single-phase module in an isolated interpreter: %s\n", outcome.c_str());
    CHILD_CHECK(outcome.rfind("ImportError", 0) == 0);
  }).join();
  CHILD_CHECK(sub.end());
  return child_done();
}
SUB_TEST(ModuleThatIsNotMultiInterpreterSafeRaisesImportError, sub_single_phase_module_refused)

// Finalizing the main interpreter with sub-interpreters alive (threads hold cached states of
// them) ends them first; the process exits 0.
CHILD_CASE(sub_alive_at_main_finalize) {
  std::vector<pyattach::subinterpreter> subs;
  {
    pyattach::interpreter py;
    subs.push_back(pyattach::subinterpreter::create());
    subs.push_back(pyattach::subinterpreter::create(pyattach::interpreter_options::legacy()));
    std::thread([&] {
      for (auto& s : subs) {
        pyattach::attach_scope in(s);
        CHILD_CHECK(run("import math\nq = math.pi\n"));
      }
    }).join();
  }
  for (auto& s : subs) CHILD_CHECK(s.ended());
  return child_done();
}
SUB_TEST(MainFinalizeEndsLiveSubinterpretersFirst, sub_alive_at_main_finalize)

// Misuse: end() inside a scope of that interpreter is refused and reported; a second release of
// a sub-interpreter scope is reported and ignored.
CHILD_CASE(sub_misuse) {
  pyattach::set_misuse_action(pyattach::misuse_action::report);
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  std::thread([&] {
    pyattach::attach_scope in(sub);
    const auto before = pyattach::misuse_count();
    CHILD_CHECK(!sub.end());
    CHILD_CHECK(pyattach::misuse_count() == before + 1);
    CHILD_CHECK(current_interp() == sub.state());
    in.release();
    in.release();
    CHILD_CHECK(pyattach::misuse_count() == before + 2);
    CHILD_CHECK(pyattach::detail::compat::current_state_unchecked() == nullptr);
  }).join();
  CHILD_CHECK(sub.end());
  return child_done();
}
SUB_TEST(MisuseIsReportedAndSkipped, sub_misuse)

// ---- adopted interpreters that other code ends, after a native thread imported `threading` ----
// CPython 3.12's Py_EndInterpreter calls threading._shutdown() before the interpreter's atexit
// callbacks, and 3.12's _shutdown() joins the interpreter's threading._MainThread: the thread
// that imported `threading` there first, until its state is deleted, unless the ending thread is
// that thread. A native thread that keeps a cached pyattach state (a pool worker) must not be
// it, or have its state deleted before that join: pyattach's atexit callback comes after it.
// The interpreter is made by `args[0]`: "python" (_xxsubinterpreters on 3.12, _interpreters on
// 3.13+: create() and destroy(id)) or "capi" (Py_NewInterpreterFromConfig and Py_EndInterpreter
// with the state it was made with); the main thread adopts it by its id; a worker thread attaches
// and imports `threading` there, keeping its state; then the end runs on `args[1]`: "adopter"
// (the main thread), "importer" (the worker) or "other" (a new thread). The end returns; every
// state pyattach made in it is destroyed; later attaches are refused with `finalized`.
CHILD_CASE(sub_adopted_ended_after_threading_import) {
  const std::string maker = args.at(0), ender = args.at(1);
  pyattach::interpreter py;
  const std::string module = PY_VERSION_HEX >= 0x030D0000 ? "_interpreters" : "_xxsubinterpreters";
  PyThreadState* c_state = nullptr;  // capi: the C code's own state of it
  std::int64_t id = -1;
  {
    pyattach::attach_scope m;
    if (maker == "python") {
      // On 3.12 the id object ends the interpreter when its last reference goes: `sid` keeps one.
      CHILD_CHECK(run("import " + module + " as lowlevel\nsid = lowlevel.create()\n"));
      id = eval_long("int(sid)");
    } else {
      PyThreadState* const main_state = PyThreadState_Get();
      const PyInterpreterConfig cfg = pyattach::interpreter_options{}.config();  // own GIL
      const PyStatus status = Py_NewInterpreterFromConfig(&c_state, &cfg);
      CHILD_CHECK(!PyStatus_Exception(status) && c_state != nullptr);
      if (PyStatus_Exception(status)) return child_done();
      id = PyInterpreterState_GetID(PyThreadState_GetInterpreter(c_state));
      PyEval_SaveThread();               // its GIL; c_state stays the C code's
      PyEval_RestoreThread(main_state);  // as the scope made it: its end detaches
    }
  }
  pyattach::subinterpreter h = pyattach::subinterpreter::adopt_id(id);
  worker importer("importer");
  importer.run([&] {
    pyattach::attach_scope in(h);
    CHILD_CHECK(run("import threading\nname = threading.current_thread().name\n"));
    std::printf("the worker is %s in the adopted interpreter\n",
                eval_long("1 if name == 'MainThread' else 0") == 1 ? "threading's main thread"
                                                                   : "a dummy thread");
  });
  const auto end_it = [&] {
    if (maker == "python") {
      pyattach::attach_scope m;
      CHILD_CHECK(run("lowlevel.destroy(sid)\n"));
    } else {
      PyEval_RestoreThread(c_state);
      Py_EndInterpreter(c_state);  // leaves no state current
    }
    CHILD_CHECK(pyattach::detail::compat::current_state_unchecked() == nullptr);
  };
  std::printf("ending it from the %s\n", ender.c_str());
  std::fflush(stdout);
  if (ender == "adopter") {
    end_it();
  } else if (ender == "importer") {
    importer.run(end_it);
  } else {
    std::thread(end_it).join();
  }
  std::printf("ended\n");
  CHILD_CHECK(h.ended());
  const auto st = h.stats();
  CHILD_CHECK(st.states_made == 2);  // the adopting thread's (adopt() attaches) and the worker's
  CHILD_CHECK(st.states_destroyed == st.states_made && st.threads == 0);
  importer.run([&] {
    CHILD_CHECK(pyattach::cached_subinterpreter_states() == 0);
    auto again = pyattach::try_attach(h);
    CHILD_CHECK(!again && again.status() == pyattach::attach_status::finalized);
  });
  auto here = pyattach::try_attach(h);
  CHILD_CHECK(!here && here.status() == pyattach::attach_status::finalized);
  pyattach::attach_scope main_scope;
  CHILD_CHECK(run("after_the_end = 1\n"));
  return child_done();
}
USES_CHILD_CASE(sub_adopted_ended_after_threading_import);

// After threading's main thread in an interpreter lost its state, the end must still find what
// 3.12's threading._shutdown() asserts when the ending thread has that thread's ident: its lock
// held. `args[0]`: "create" — a thread that creates it, imports `threading` there in a scope and
// exits, then end() from the main thread (end()'s new thread gets the ident of the exited one:
// glibc reuses them); "let-go" — an interpreter that Python made, adopted by the main thread,
// which imports `threading` there in a scope, then end() (which only lets go of it) and Python
// destroys it from the main thread. Checked by the test: no "Exception ignored".
CHILD_CASE(sub_end_after_threadings_main_state_went) {
  const std::string how = args.at(0);
  pyattach::interpreter py;
  if (how == "create") {
    std::optional<pyattach::subinterpreter> sub;
    std::thread([&] {
      sub = pyattach::subinterpreter::create();
      pyattach::attach_scope in(*sub);
      CHILD_CHECK(run("import threading\nname = threading.current_thread().name\n"));
    }).join();
    CHILD_CHECK(sub->end());
    CHILD_CHECK(sub->stats().states_made == sub->stats().states_destroyed);
    return child_done();
  }
  const std::string module = PY_VERSION_HEX >= 0x030D0000 ? "_interpreters" : "_xxsubinterpreters";
  std::int64_t id = -1;
  {
    pyattach::attach_scope m;
    CHILD_CHECK(run("import " + module + " as lowlevel\nsid = lowlevel.create()\n"));
    id = eval_long("int(sid)");
  }
  pyattach::subinterpreter h = pyattach::subinterpreter::adopt_id(id);
  {
    pyattach::attach_scope in(h);
    CHILD_CHECK(run("import threading\nname = threading.current_thread().name\n"));
  }
  CHILD_CHECK(h.end());  // adopted: lets go of it
  {
    pyattach::attach_scope m;
    CHILD_CHECK(run("lowlevel.destroy(sid)\n"));
  }
  CHILD_CHECK(h.ended() && h.stats().states_made == h.stats().states_destroyed);
  return child_done();
}
USES_CHILD_CASE(sub_end_after_threadings_main_state_went);

// A clean child whose stderr has no "Exception ignored" (3.12's threading._shutdown() failing
// its assertion that the main thread's lock is held, which skips its join).
#define THREADING_SHUTDOWN_TEST(test_name, case_name, ...)                                     \
  TEST(Subinterpreter, test_name) {                                                           \
    if (!k_has_subinterpreters) GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+"; \
    child_options o = child_args({__VA_ARGS__});                                              \
    o.timeout = std::chrono::seconds(20);                                                     \
    const child_result r = run_child(uses_##case_name, o);                                    \
    EXPECT_CHILD_CLEAN(r);                                                                    \
    EXPECT_EQ(r.err.find("Exception ignored"), std::string::npos) << r.describe();            \
  }
THREADING_SHUTDOWN_TEST(PythonDestroysAnAdoptedInterpreterFromTheAdoptingThread,
                        sub_adopted_ended_after_threading_import, "python", "adopter")
THREADING_SHUTDOWN_TEST(PythonDestroysAnAdoptedInterpreterFromTheImportingThread,
                        sub_adopted_ended_after_threading_import, "python", "importer")
THREADING_SHUTDOWN_TEST(PythonDestroysAnAdoptedInterpreterFromAnotherThread,
                        sub_adopted_ended_after_threading_import, "python", "other")
THREADING_SHUTDOWN_TEST(CCodeEndsAnAdoptedInterpreterOnTheAdoptingThread,
                        sub_adopted_ended_after_threading_import, "capi", "adopter")
THREADING_SHUTDOWN_TEST(CCodeEndsAnAdoptedInterpreterOnAnotherThread,
                        sub_adopted_ended_after_threading_import, "capi", "other")
THREADING_SHUTDOWN_TEST(EndAfterTheCreatingAndImportingThreadsExited,
                        sub_end_after_threadings_main_state_went, "create")
THREADING_SHUTDOWN_TEST(PythonDestroysAnAdoptedInterpreterAfterEndLetGoOfIt,
                        sub_end_after_threadings_main_state_went, "let-go")

#else  // before 3.12: only the refusal

CHILD_CASE(sub_create_refused_before_312) {
  pyattach::interpreter py;
  bool threw = false;
  try {
    pyattach::subinterpreter::create();
  } catch (const pyattach::interpreter_error&) {
    threw = true;
  }
  CHILD_CHECK(threw);
  CHILD_CHECK(pyattach::subinterpreter::main().is_main());
  return child_done();
}
USES_CHILD_CASE(sub_create_refused_before_312);
CHILD_TEST(Subinterpreter, CreateThrowsBefore312, sub_create_refused_before_312)

#endif

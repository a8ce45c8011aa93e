// tests/cpp/test_lifecycle.cpp — every refusal status, the gate around finalization, and the
// embedding helper across init/finalize cycles. Each case runs in its own child process
// (child_process.hpp): it needs its own CPython lifetime, and a regression could hang or crash.
// Each test follows the case it runs.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;
using pyattach::attach_status;

namespace {

// The status a fresh attach gets on this thread, with the nothrow form.
attach_status try_status() { return pyattach::try_attach().status(); }

// The status a fresh attach gets on a brand-new native thread.
attach_status status_on_new_thread() {
  attach_status st = attach_status::attached;
  std::thread([&] { st = try_status(); }).join();
  return st;
}

// The throwing constructor throws attach_error carrying `expected`.
bool throws_with(attach_status expected) {
  try {
    pyattach::attach_scope py;
    std::printf("throwing constructor did not throw (status %s)\n", pyattach::to_string(py.status()));
    return false;
  } catch (const pyattach::attach_error& e) {
    const bool named = std::strstr(e.what(), pyattach::to_string(expected)) != nullptr;
    if (e.status() != expected || !named) {
      std::printf("attach_error status %s, what(): %s\n", pyattach::to_string(e.status()), e.what());
    }
    return e.status() == expected && named;
  }
}

void print_status(const char* where, attach_status st) {
  std::printf("STATUS %s=%s\n", where, pyattach::to_string(st));
}

// Registers `def` as an atexit callback. PRECONDITION: attached.
void register_atexit(PyMethodDef* def) {
  PyObject* fn = PyCFunction_New(def, nullptr);
  PyObject* atexit = PyImport_ImportModule("atexit");
  PyObject* r = PyObject_CallMethod(atexit, "register", "O", fn);
  CHILD_CHECK(r != nullptr);
  Py_XDECREF(r);
  Py_XDECREF(atexit);
  Py_XDECREF(fn);
}

// A brand-new native thread attaches with the nothrow form and, if admitted, runs `code`; returns
// the status it got. PRECONDITION: the calling thread does not hold the GIL.
attach_status run_python_on_new_thread(const char* code) {
  attach_status st = attach_status::finalized;
  std::thread([&] {
    pyattach::attach_scope s(pyattach::nothrow);
    st = s.status();
    if (s) CHILD_CHECK(PyRun_SimpleString(code) == 0);
  }).join();
  return st;
}

}  // namespace

// ---- not_initialized ------------------------------------------------------------------------

CHILD_CASE(status_not_initialized) {
  CHILD_CHECK(Py_IsInitialized() == 0);
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::unbound);
  CHILD_CHECK(pyattach::current_generation() == 0);
  CHILD_CHECK(try_status() == attach_status::not_initialized);
  CHILD_CHECK(status_on_new_thread() == attach_status::not_initialized);
  CHILD_CHECK(throws_with(attach_status::not_initialized));
  CHILD_CHECK(!pyattach::is_attached());
  CHILD_CHECK(!pyattach::release_thread_state());
  CHILD_CHECK(!pyattach::count_thread_states().has_value());
  const auto report = pyattach::make_thread_report();
  CHILD_CHECK(!report.interpreter_available);
  CHILD_CHECK(Py_IsInitialized() == 0);  // nothing above initialized CPython behind our back
  return child_done();
}

USES_CHILD_CASE(status_not_initialized);
CHILD_TEST(Lifecycle, NotInitialized, status_not_initialized);

// ---- finalizing: after close_gate -----------------------------------------------------------

CHILD_CASE(status_finalizing_after_close_gate) {
  const bool free_function = !args.empty() && args[0] == "free";
  auto py = std::make_unique<pyattach::interpreter>();
  worker w("had-a-state");
  w.run([] {
    pyattach::attach_scope s;
    PyRun_SimpleString("import threading\nthreading.current_thread().name = 'had-a-state'\n");
  });
  const std::size_t before = thread_states();
  CHILD_CHECK(before != static_cast<std::size_t>(-1));
  const pyattach::close_result res =
      free_function ? pyattach::close_gate(std::chrono::milliseconds(2000)) : py->close_gate();
  CHILD_CHECK(res.drained);
  CHILD_CHECK(res.still_inside.empty());
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::closed);
  CHILD_CHECK(try_status() == attach_status::finalizing);
  CHILD_CHECK(throws_with(attach_status::finalizing));
  CHILD_CHECK(status_on_new_thread() == attach_status::finalizing);
  attach_status worker_status = attach_status::attached;
  bool worker_threw = false;
  w.run([&] {
    worker_status = try_status();
    worker_threw = throws_with(attach_status::finalizing);
    // detach_scope with nothing attached is misuse even now, and never touches CPython.
  });
  CHILD_CHECK(worker_status == attach_status::finalizing);
  CHILD_CHECK(worker_threw);
  CHILD_CHECK(!pyattach::count_thread_states().has_value());
  CHILD_CHECK(!pyattach::make_thread_report().interpreter_available);
  // Idempotent: a second close returns the first one's result.
  const pyattach::close_result again = py->close_gate();
  CHILD_CHECK(again.drained);
  // The worker exits while the gate is closed: its state is only forgotten (no crash).
  w.join();
  py.reset();  // finalizes
  CHILD_CHECK(try_status() == attach_status::finalized);
  return child_done();
}

USES_CHILD_CASE(status_finalizing_after_close_gate);
CHILD_TEST(Lifecycle, FinalizingAfterInterpreterCloseGate, status_finalizing_after_close_gate);
CHILD_TEST(Lifecycle, FinalizingAfterFreeCloseGate, status_finalizing_after_close_gate,
           child_args({"free"}));

// ---- the gate waits for a thread inside a scope ---------------------------------------------

CHILD_CASE(close_gate_waits_for_threads_inside) {
  auto py = std::make_unique<pyattach::interpreter>();
  latch inside, closing_started, leave;
  std::atomic<int> reattached_python{-1};
  attach_status after = attach_status::attached;
  std::thread t([&] {
    {
      pyattach::attach_scope s;
      {
        pyattach::detach_scope nogil;  // holds the pass without the GIL
        inside.set();
        closing_started.wait();
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      // Re-attached while the closer waits for this thread: Python still works here.
      reattached_python = PyRun_SimpleString("_inside = 1\n") == 0 ? 1 : 0;
    }
    after = try_status();  // the gate is closed (or closing) now
    leave.set();
  });
  CHILD_CHECK(inside.wait());
  std::thread signal([&] {
    // Tell the worker once the main thread is (about to be) waiting in close_gate.
    while (pyattach::current_gate_phase() != pyattach::gate_phase::closing) std::this_thread::yield();
    closing_started.set();
  });
  const pyattach::close_result res = py->close_gate();
  signal.join();
  CHILD_CHECK(leave.wait());
  t.join();
  CHILD_CHECK(res.drained);
  CHILD_CHECK(res.waited >= std::chrono::milliseconds(50));
  CHILD_CHECK(reattached_python.load() == 1);
  CHILD_CHECK(after == attach_status::finalizing);
  py.reset();
  return child_done();
}

USES_CHILD_CASE(close_gate_waits_for_threads_inside);
CHILD_TEST(Lifecycle, CloseGateWaitsForThreadsInside, close_gate_waits_for_threads_inside);

// ---- finalizing: inside an atexit callback --------------------------------------------------
// Raw embedding: the test's atexit callback is registered BEFORE pyattach binds, so pyattach's
// own atexit hook (registered at bind time) runs first (atexit is LIFO) and closes the gate.

namespace {
std::unique_ptr<worker> g_atexit_worker;
PyObject* atexit_callback(PyObject*, PyObject*) {
  std::printf("in atexit callback\n");
  // This thread (the finalizing main thread) holds the GIL. Native threads must be refused at
  // once, not block on the GIL (that would deadlock here) nor be ended by pthread_exit.
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::closed);
  const attach_status fresh = status_on_new_thread();
  print_status("atexit_new_thread", fresh);
  CHILD_CHECK(fresh == attach_status::finalizing);
  attach_status old = attach_status::attached;
  bool threw = false;
  g_atexit_worker->run([&] {
    old = try_status();
    threw = throws_with(attach_status::finalizing);
  });
  print_status("atexit_worker", old);
  CHILD_CHECK(old == attach_status::finalizing);
  CHILD_CHECK(threw);
  Py_RETURN_NONE;
}
PyMethodDef g_atexit_def = {"test_atexit_callback", atexit_callback, METH_NOARGS, nullptr};
}  // namespace

CHILD_CASE(status_finalizing_in_atexit_callback) {
  Py_InitializeEx(0);
  {
    register_atexit(&g_atexit_def);
    PyObject* threading = PyImport_ImportModule("threading");
    Py_XDECREF(threading);
  }
  {
    // The main thread holds the GIL (Py_InitializeEx): this scope binds pyattach's gate and
    // registers its hooks without detaching anything.
    pyattach::attach_scope s;
    CHILD_CHECK(!s.made_current());
  }
  PyThreadState* main_state = PyEval_SaveThread();
  g_atexit_worker = std::make_unique<worker>("atexit-worker");
  g_atexit_worker->run([] {
    pyattach::attach_scope s;
    CHILD_CHECK(s.made_current());
  });
  CHILD_CHECK(restore_and_finalize(main_state));
  // After finalization: finalized everywhere; the worker then exits without touching its state.
  CHILD_CHECK(try_status() == attach_status::finalized);
  CHILD_CHECK(status_on_new_thread() == attach_status::finalized);
  attach_status old = attach_status::attached;
  g_atexit_worker->run([&] { old = try_status(); });
  CHILD_CHECK(old == attach_status::finalized);
  g_atexit_worker.reset();
  return child_done();
}

USES_CHILD_CASE(status_finalizing_in_atexit_callback);
TEST(Lifecycle, FinalizingInsideAnAtexitCallback) {
  expect_child_prints(uses_status_finalizing_in_atexit_callback, "in atexit callback");
}

// With the embedding helper, pyattach binds in the constructor; a callback registered later runs
// before pyattach's hook (LIFO), while native threads may still be needed: they can attach.
namespace {
PyObject* late_atexit_callback(PyObject*, PyObject*) {
  std::printf("in late atexit callback\n");
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::open);
  // Release the GIL while the native thread runs Python (it needs it).
  attach_status st = attach_status::finalized;
  Py_BEGIN_ALLOW_THREADS
  st = run_python_on_new_thread("_late = 1\n");
  Py_END_ALLOW_THREADS
  print_status("late_atexit_new_thread", st);
  CHILD_CHECK(st == attach_status::attached);
  Py_RETURN_NONE;
}
PyMethodDef g_late_atexit_def = {"test_late_atexit_callback", late_atexit_callback, METH_NOARGS,
                                 nullptr};
}  // namespace

CHILD_CASE(atexit_callback_registered_after_bind_may_attach) {
  {
    pyattach::interpreter py;
    pyattach::attach_scope s;
    register_atexit(&g_late_atexit_def);
  }
  CHILD_CHECK(try_status() == attach_status::finalized);
  return child_done();
}

USES_CHILD_CASE(atexit_callback_registered_after_bind_may_attach);
TEST(Lifecycle, AtexitCallbackRegisteredAfterBindMayStillAttach) {
  expect_child_prints(uses_atexit_callback_registered_after_bind_may_attach, "in late atexit callback");
}

// ---- finalizing / finalized: native threads racing Py_FinalizeEx ----------------------------

CHILD_CASE(status_racing_finalize) {
  constexpr int k_threads = 6;
  const int cycles = args.empty() ? 3 : std::atoi(args[0].c_str());
  for (int cycle = 0; cycle < cycles; ++cycle) {
    auto py = std::make_unique<pyattach::interpreter>();
    std::atomic<int> running{0};
    std::atomic<int> finished{0};
    std::atomic<int> bad_status{0};
    std::atomic<int> attached_after_refusal{0};
    std::atomic<long> scopes{0};
    std::mutex m;
    std::set<std::string> seen;
    std::vector<std::thread> threads;
    for (int i = 0; i < k_threads; ++i) {
      threads.emplace_back([&] {
        running.fetch_add(1);
        attach_status st;
        for (;;) {
          pyattach::attach_scope s(pyattach::nothrow);
          st = s.status();
          if (!s) break;
          PyRun_SimpleString("_x = sum(range(50))\n");
          scopes.fetch_add(1);
        }
        if (st != attach_status::finalizing && st != attach_status::finalized) bad_status.fetch_add(1);
        {
          std::lock_guard<std::mutex> lock(m);
          seen.insert(pyattach::to_string(st));
        }
        // Once refused, always refused (until a new interpreter).
        for (int k = 0; k < 100; ++k) {
          if (try_status() == attach_status::attached) attached_after_refusal.fetch_add(1);
        }
        finished.fetch_add(1);  // a thread ended by pthread_exit never gets here
      });
    }
    while (running.load() < k_threads || scopes.load() < 50) std::this_thread::yield();
    py.reset();  // Py_FinalizeEx while the threads keep attaching
    for (auto& t : threads) t.join();
    CHILD_CHECK(finished.load() == k_threads);
    CHILD_CHECK(bad_status.load() == 0);
    CHILD_CHECK(attached_after_refusal.load() == 0);
    std::printf("cycle %d: %ld scopes, statuses:", cycle, scopes.load());
    for (const auto& s : seen) std::printf(" %s", s.c_str());
    std::printf("\n");
  }
  CHILD_CHECK(try_status() == attach_status::finalized);
  return child_done();
}

USES_CHILD_CASE(status_racing_finalize);
CHILD_TEST(Lifecycle, NativeThreadsRacingFinalizeAreRefusedNotKilled, status_racing_finalize);

// ---- finalized, and a thread that outlives the interpreter ----------------------------------

CHILD_CASE(status_finalized_and_thread_outlives_interpreter) {
  auto survivor = std::make_unique<worker>("survivor");
  {
    pyattach::interpreter py;
    survivor->run([] {
      pyattach::attach_scope s;
      CHILD_CHECK(s.made_current());
      PyRun_SimpleString("import threading\nthreading.current_thread().name = 'survivor'\n");
    });
  }
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::unbound);
  CHILD_CHECK(pyattach::current_generation() == 1);
  CHILD_CHECK(try_status() == attach_status::finalized);
  CHILD_CHECK(throws_with(attach_status::finalized));
  CHILD_CHECK(status_on_new_thread() == attach_status::finalized);
  CHILD_CHECK(!pyattach::count_thread_states().has_value());
  const auto report = pyattach::make_thread_report();
  CHILD_CHECK(!report.interpreter_available);
  bool survivor_ok = false;
  survivor->run([&] {
    const attach_status st = try_status();
    print_status("survivor", st);
    survivor_ok = st == attach_status::finalized && throws_with(attach_status::finalized);
    CHILD_CHECK(!pyattach::release_thread_state());  // the old state is only forgotten
  });
  CHILD_CHECK(survivor_ok);
  survivor.reset();  // exits: must not touch the finalized interpreter's state
  return child_done();
}

USES_CHILD_CASE(status_finalized_and_thread_outlives_interpreter);
CHILD_TEST(Lifecycle, FinalizedAndAThreadThatOutlivesTheInterpreter,
           status_finalized_and_thread_outlives_interpreter);

// ---- the embedding helper across two init/finalize cycles -----------------------------------

CHILD_CASE(interpreter_two_cycles) {
  worker exits_in_cycle2("t1");
  auto outlives = std::make_unique<worker>("t2");
  std::uint64_t gen1 = 0;
  {
    pyattach::interpreter py;
    gen1 = pyattach::current_generation();
    CHILD_CHECK(gen1 >= 1);
    for (worker* w : {&exits_in_cycle2, outlives.get()}) {
      w->run([] {
        pyattach::attach_scope s;
        CHILD_CHECK(s.made_current());
        CHILD_CHECK(PyRun_SimpleString(
                        "import threading\n"
                        "threading.current_thread().name = 'cycle1-thread'\n"
                        "if 'tl' not in globals(): tl = threading.local()\n"
                        "tl.data = 'cycle 1'\n") == 0);
      });
    }
    // Sanity: the data persists within cycle 1.
    exits_in_cycle2.run([] {
      pyattach::attach_scope s;
      CHILD_CHECK(PyRun_SimpleString("assert tl.data == 'cycle 1'\n") == 0);
    });
  }
  CHILD_CHECK(try_status() == attach_status::finalized);
  exits_in_cycle2.run([] { CHILD_CHECK(try_status() == attach_status::finalized); });

  {
    pyattach::interpreter py;
    CHILD_CHECK(pyattach::current_generation() > gen1);
    const std::size_t base = thread_states();
    for (worker* w : {&exits_in_cycle2, outlives.get()}) {
      w->run([] {
        pyattach::attach_scope s;
        CHILD_CHECK(s.is_valid());
        CHILD_CHECK(s.made_current());
        PyThreadState* ts = PyThreadState_Get();
        CHILD_CHECK(ts->interp == PyInterpreterState_Main());
        CHILD_CHECK(PyGILState_GetThisThreadState() == ts);
        PyObject* g = new_globals();
        CHILD_CHECK(py_exec("import threading, __main__\n", g));
        // A fresh state and a fresh threading: nothing of cycle 1 is visible.
        CHILD_CHECK(py_eval_str("threading.current_thread().name", g) != "cycle1-thread");
        CHILD_CHECK(!py_eval_bool("hasattr(__main__, 'tl')", g));
        CHILD_CHECK(py_exec("if not hasattr(__main__, 'tl2'): __main__.tl2 = threading.local()\n", g));
        CHILD_CHECK(py_exec("__main__.tl2.data = 'cycle 2'\n", g));
        Py_DECREF(g);
      });
    }
    CHILD_CHECK(thread_states() == base + 2);
    exits_in_cycle2.run([] {
      pyattach::attach_scope s;
      CHILD_CHECK(PyRun_SimpleString("assert tl2.data == 'cycle 2'\n") == 0);
    });
    const auto report = pyattach::make_thread_report();
    int made = 0;
    for (const auto& t : report.threads) {
      if ((t.os_tid == exits_in_cycle2.tid() || t.os_tid == outlives->tid()) && t.made_by_pyattach &&
          t.has_thread_state) {
        ++made;
      }
    }
    CHILD_CHECK(made == 2);
    exits_in_cycle2.join();  // exits while cycle 2 is alive: its cycle-2 state is destroyed
    CHILD_CHECK(thread_states() == base + 1);
  }
  outlives->run([] { CHILD_CHECK(try_status() == attach_status::finalized); });
  outlives.reset();  // exits after cycle 2 ended: its state is only forgotten
  return child_done();
}

USES_CHILD_CASE(interpreter_two_cycles);
CHILD_TEST(Lifecycle, TwoInterpreterCyclesGiveThreadsFreshStates, interpreter_two_cycles);

// ---- raw PyGILState across two init/finalize cycles: the control for the test above -----------
// A thread keeps a PyGILState state across Py_FinalizeEx + Py_Initialize (as a pool thread that
// used PyGILState_Ensure without Release would), then calls PyGILState_Ensure in the new runtime.
// 3.9–3.14: PyGILState forgets the old state at finalization and makes a new one. 3.15: it still
// returns the old, cleared state and attaching it hangs the thread (docs/versions.md, "3.15").
// Prints "ensure returned" when the second Ensure returns; the worker posts it without waiting,
// so that a hang is seen by the bounded wait below, not by the harness's deadline.
CHILD_CASE(raw_gilstate_two_cycles) {
  worker t("raw");
  Py_InitializeEx(0);
  PyThreadState* main_state = PyEval_SaveThread();
  t.run([] {
    PyGILState_Ensure();  // never released: the thread keeps the state, as in scenario 2
    PyEval_SaveThread();
  });
  CHILD_CHECK(restore_and_finalize(main_state));
  Py_InitializeEx(0);
  main_state = PyEval_SaveThread();
  latch returned;
  t.post([&] {
    const PyGILState_STATE st = PyGILState_Ensure();
    returned.set();
    PyGILState_Release(st);  // a new state (3.9–3.14): deleted again, the GIL released
  });
  const bool ok = returned.wait(3s);
  std::printf("%s\n", ok ? "ensure returned" : "ensure hung");
  std::fflush(stdout);
  if (!ok) std::_Exit(0);  // the worker cannot be joined: it is hung inside CPython
  t.wait_idle();
  CHILD_CHECK(restore_and_finalize(main_state));
  return child_done();
}

USES_CHILD_CASE(raw_gilstate_two_cycles);
// The control: the raw API on the same thread hangs on 3.15 (a CPython regression), and only there.
TEST(Lifecycle, RawGilStateAcrossTwoCyclesHangsOnlyOn315) {
  const auto r = run_child(uses_raw_gilstate_two_cycles);
  EXPECT_TRUE(r.exited_cleanly()) << r.describe();
  if (PY_VERSION_HEX >= 0x030F0000) {
    EXPECT_NE(r.out.find("ensure hung"), std::string::npos) << r.describe();
  } else {
    EXPECT_NE(r.out.find("ensure returned"), std::string::npos) << r.describe();
    EXPECT_NE(r.out.find("done\n"), std::string::npos) << r.describe();
  }
}

CHILD_CASE(interpreter_refused_when_python_initialized_elsewhere) {
  Py_InitializeEx(0);
  bool threw = false;
  try {
    pyattach::interpreter py;
  } catch (const pyattach::interpreter_error& e) {
    threw = true;
    std::printf("interpreter_error: %s\n", e.what());
  }
  CHILD_CHECK(threw);
  // Attaching without an interpreter object works on such a process.
  {
    pyattach::attach_scope s;
    CHILD_CHECK(s.is_valid());
  }
  PyThreadState* main_state = PyEval_SaveThread();
  CHILD_CHECK(run_python_on_new_thread("_ok = 1\n") == attach_status::attached);
  CHILD_CHECK(restore_and_finalize(main_state));
  CHILD_CHECK(try_status() == attach_status::finalized);
  return child_done();
}

USES_CHILD_CASE(interpreter_refused_when_python_initialized_elsewhere);
TEST(Lifecycle, InterpreterRefusedWhenPythonInitializedElsewhere) {
  expect_child_prints(uses_interpreter_refused_when_python_initialized_elsewhere,
                      "interpreter_error");
}

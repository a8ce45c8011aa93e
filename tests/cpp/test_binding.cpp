// tests/cpp/test_binding.cpp — which calls bind pyattach's gate, and what a native thread gets
// before anything did (interpreter.hpp, "Binding"). Every case is an embedder that calls
// Py_InitializeEx/Py_FinalizeEx itself, in a child process: the shared test interpreter is bound.
// Binding at module load: a shared object with its own copy of pyattach (load_probe.cpp) is
// dlopen'ed by a thread holding the GIL, as `import` loads an extension module; the real modules
// are tested from Python (tests/python/). Each test follows the case it runs.
#include <gtest/gtest.h>

#include <dlfcn.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;
using pyattach::attach_status;
using pyattach::gate_phase;

namespace {

bool threading_imported() {  // PRECONDITION: attached
  PyObject* modules = PyImport_GetModuleDict();
  return PyDict_GetItemString(modules, "threading") != nullptr;
}

// threading.main_thread().ident, or 0. PRECONDITION: attached.
long threading_main_ident() {
  PyObject* g = new_globals();
  const long id = py_eval_long("__import__('threading').main_thread().ident", g, 0);
  Py_XDECREF(g);
  return id;
}

// A native thread that keeps its thread state after it leaves Python and stays alive until told
// to go: the shape of a pool worker. Its body runs `attach`, which returns with the thread
// detached (or never attached).
class parked_thread {
 public:
  template <class F>
  explicit parked_thread(F attach) {
    t_ = std::thread([this, attach] {
      attach();
      ready_.set();
      std::unique_lock<std::mutex> g(m_);
      cv_.wait(g, [&] { return go_; });
    });
    ready_.wait();
  }
  ~parked_thread() {
    {
      std::lock_guard<std::mutex> g(m_);
      go_ = true;
    }
    cv_.notify_all();
    t_.join();
  }

 private:
  latch ready_;
  std::mutex m_;
  std::condition_variable cv_;
  bool go_ = false;
  std::thread t_;
};

}  // namespace

// ---- nothing bound: a native thread is refused and touches nothing ---------------------------

CHILD_CASE(binding_unbound_native_thread_is_refused) {
  Py_InitializeEx(0);
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  PyThreadState* main_state = PyEval_SaveThread();
  attach_status st = attach_status::attached;
  std::string what;
  gate_phase bound_from_native = gate_phase::open;
  bool made_state = true;
  std::thread([&] {
    st = pyattach::try_attach().status();
    try {
      pyattach::attach_scope s;
    } catch (const pyattach::attach_error& e) {
      what = e.what();
    }
    // bind() without the GIL does nothing: it cannot make the close hook safe.
    bound_from_native = pyattach::bind();
    // Never reached CPython: no thread state was made for this thread.
    made_state = PyGILState_GetThisThreadState() != nullptr;
  }).join();
  std::printf("status=%s what=%s\n", pyattach::to_string(st), what.c_str());
  CHILD_CHECK(st == attach_status::not_bound);
  CHILD_CHECK(what.find("not_bound") != std::string::npos);
  CHILD_CHECK(what.find("pyattach::bind()") != std::string::npos);
  CHILD_CHECK(bound_from_native == gate_phase::unbound);
  CHILD_CHECK(!made_state);
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  CHILD_CHECK(restore_and_finalize(main_state));
  return child_done();
}

USES_CHILD_CASE(binding_unbound_native_thread_is_refused);
CHILD_TEST(Binding, UnboundNativeThreadIsRefusedWithNotBound,
           binding_unbound_native_thread_is_refused);

// ---- pyattach::bind(): arms the gate, imports threading on the main thread, idempotent ------

CHILD_CASE(binding_explicit_bind) {
  Py_InitializeEx(0);
  const bool had_threading = threading_imported();
  CHILD_CHECK(pyattach::bind() == gate_phase::open);
  const std::uint64_t gen = pyattach::current_generation();
  CHILD_CHECK(gen != 0);
  CHILD_CHECK(threading_imported());
  CHILD_CHECK(threading_main_ident() == static_cast<long>(PyThread_get_thread_ident()));
  CHILD_CHECK(pyattach::bind() == gate_phase::open);  // idempotent: same generation
  CHILD_CHECK(pyattach::current_generation() == gen);
  std::printf("threading imported before bind: %d\n", had_threading ? 1 : 0);
  PyThreadState* main_state = PyEval_SaveThread();
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(restore_and_finalize(main_state));
  // The hook registered by bind() closed the gate, and Py_AtExit unbound it.
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  CHILD_CHECK(pyattach::try_attach().status() == attach_status::finalized);
  return child_done();
}

USES_CHILD_CASE(binding_explicit_bind);
CHILD_TEST(Binding, ExplicitBindArmsTheGateAndImportsThreadingOnMain, binding_explicit_bind);

// ---- the inline attach is on exactly when the kernel gives the closer its barrier ---------------
// args[0]: "on" (default environment) or "off" (PYATTACH_MEMBARRIER=off). detail/slot.hpp,
// "Ordering": without the expedited membarrier, no slot may be eligible for the inline path.

CHILD_CASE(binding_inline_attach_mode) {
  const bool want_on = args.at(0) == "on";
  const long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  const bool kernel_has_it = cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0;
  Py_InitializeEx(0);
  CHILD_CHECK(pyattach::bind() == gate_phase::open);
  PyThreadState* main_state = PyEval_SaveThread();
  bool eligible = false;
  std::thread([&] {
    { pyattach::attach_scope py; }  // first use: makes the state (slow path)
    eligible = pyattach::detail::tls_slot->fast_word != pyattach::detail::no_fast_word;
    { pyattach::attach_scope py; }  // the inline path, when eligible
  }).join();
  const bool fast_ok = pyattach::detail::g_gate.fast_ok.load();
  std::printf("membarrier in kernel: %d, inline attach on: %d, slot eligible: %d\n",
              kernel_has_it ? 1 : 0, fast_ok ? 1 : 0, eligible ? 1 : 0);
  CHILD_CHECK(fast_ok == (want_on && kernel_has_it));
  CHILD_CHECK(eligible == fast_ok);
  CHILD_CHECK(restore_and_finalize(main_state));
  return child_done();
}

USES_CHILD_CASE(binding_inline_attach_mode);
TEST(Binding, InlineAttachOnlyWithTheClosersBarrier) {
  EXPECT_CHILD_CLEAN(run_child(uses_binding_inline_attach_mode, child_args({"on"})));
  child_options off = child_args({"off"});
  off.env = {{"PYATTACH_MEMBARRIER", "off"}};
  EXPECT_CHILD_CLEAN(run_child(uses_binding_inline_attach_mode, off));
}

// ---- any scope opened by a thread that holds the GIL binds ------------------------------------
// args[0]: "attach" (an attach_scope on the attached main thread) or "detach" (a detach_scope).

CHILD_CASE(binding_scope_with_the_gil) {
  const bool detach = !args.empty() && args[0] == "detach";
  Py_InitializeEx(0);
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  if (detach) {
    pyattach::detach_scope nogil;  // binds first, then releases the GIL for the scope
    CHILD_CHECK(nogil.is_valid());
  } else {
    pyattach::attach_scope s;  // already attached: only counts, and binds
    CHILD_CHECK(!s.made_current());
  }
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::open);
  CHILD_CHECK(threading_imported());
  CHILD_CHECK(threading_main_ident() == static_cast<long>(PyThread_get_thread_ident()));
  PyThreadState* main_state = PyEval_SaveThread();
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(restore_and_finalize(main_state));
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);  // the hooks ran
  return child_done();
}

USES_CHILD_CASE(binding_scope_with_the_gil);
CHILD_TEST(Binding, AttachScopeWithTheGilBinds, binding_scope_with_the_gil, child_args({"attach"}));
CHILD_TEST(Binding, DetachScopeWithTheGilBinds, binding_scope_with_the_gil, child_args({"detach"}));

// ---- a thread_pool made by a thread that holds the GIL binds -------------------------------

CHILD_CASE(binding_pool_made_with_the_gil) {
  Py_InitializeEx(0);
  const long main_ident = static_cast<long>(PyThread_get_thread_ident());
  auto pool = std::make_unique<pyattach::thread_pool>("bindpool", 1);  // GIL held: binds
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::open);
  PyThreadState* main_state = PyEval_SaveThread();
  long seen_main = -1;
  auto f = pool->submit_python([&] {
    PyObject* g = new_globals();
    seen_main = py_eval_long("__import__('threading').main_thread().ident", g, 0);
    Py_XDECREF(g);
  });
  f.get();
  CHILD_CHECK(seen_main == main_ident);  // threading was imported on main, not on the worker
  // The pool is still alive: the gate's atexit hook stops it before closing.
  CHILD_CHECK(restore_and_finalize(main_state));
  pool.reset();
  return child_done();
}

USES_CHILD_CASE(binding_pool_made_with_the_gil);
CHILD_TEST(Binding, PoolMadeWithTheGilBinds, binding_pool_made_with_the_gil);

// ---- a pool made before anything bound: Python tasks fail with not_bound until bind() --------

CHILD_CASE(binding_pool_before_bind) {
  Py_InitializeEx(0);
  PyThreadState* main_state = PyEval_SaveThread();
  auto pool = std::make_unique<pyattach::thread_pool>("early", 1);  // no GIL: does not bind
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  bool ran = false;
  pyattach::pool_errc code = pyattach::pool_errc::shut_down;
  try {
    pool->submit_python([&] { ran = true; }).get();
  } catch (const pyattach::pool_error& e) {
    code = e.code();
    std::printf("refused: %s\n", e.what());
  }
  CHILD_CHECK(!ran);
  CHILD_CHECK(code == pyattach::pool_errc::not_bound);
  PyEval_RestoreThread(main_state);
  CHILD_CHECK(pyattach::bind() == gate_phase::open);
  main_state = PyEval_SaveThread();
  pool->submit_python([&] { ran = PyRun_SimpleString("_late = 1\n") == 0; }).get();
  CHILD_CHECK(ran);  // the same worker attaches now
  CHILD_CHECK(restore_and_finalize(main_state));
  pool.reset();
  return child_done();
}

USES_CHILD_CASE(binding_pool_before_bind);
TEST(Binding, PoolMadeBeforeBindRefusesPythonTasksUntilBound) {
  expect_child_prints(uses_binding_pool_before_bind, "(not_bound)");
}

// ---- 3.9–3.12: the first importer of threading is its main thread ----------------------------
// A native thread that keeps a persistent state and is the first to import threading makes
// Py_FinalizeEx wait forever for that state's end (threading._shutdown joins "its main thread").
// args[0]: "raw" (PyGILState_Ensure and no Release: the positive control, hangs on ≤3.12) or
// "pyattach" (pyattach::bind() on main first, then an attach_scope on the worker: never hangs).

CHILD_CASE(binding_worker_imports_threading) {
  const bool raw = !args.empty() && args[0] == "raw";
  Py_InitializeEx(0);
  const bool had_threading = threading_imported();
  std::printf("threading imported at start: %d\n", had_threading ? 1 : 0);
  if (!raw) CHILD_CHECK(pyattach::bind() == gate_phase::open);
  PyThreadState* main_state = PyEval_SaveThread();
  {
    parked_thread worker([&] {
      if (raw) {
        PyGILState_Ensure();  // never released: the state persists, as a pool worker's would
        CHILD_CHECK(PyRun_SimpleString("import threading\n_tl = threading.local()\n") == 0);
        PyEval_SaveThread();
      } else {
        pyattach::attach_scope s;
        CHILD_CHECK(PyRun_SimpleString("import threading\n_tl = threading.local()\n") == 0);
      }
    });
    PyEval_RestoreThread(main_state);
    std::printf("finalizing\n");
    std::fflush(stdout);
    CHILD_CHECK(Py_FinalizeEx() == 0);
  }
  return child_done();
}

USES_CHILD_CASE(binding_worker_imports_threading);
namespace {
child_options worker_imports_threading(const char* mode, std::chrono::seconds deadline) {
  child_options o = child_args({mode});
  o.timeout = deadline;
  return o;
}
}  // namespace

CHILD_TEST(Binding, WorkerImportingThreadingFirstDoesNotHangFinalize,
           binding_worker_imports_threading,
           worker_imports_threading("pyattach", std::chrono::seconds(20)));

// The positive control: the same shape through the raw API hangs Py_FinalizeEx on 3.9–3.12
// (3.13+ asks _thread which thread is the main one), unless something imported threading
// on the main thread at start-up (then the case proves nothing here and says so).
TEST(Binding, RawWorkerImportingThreadingFirstHangsFinalizeBefore313) {
  const child_result r = run_child(uses_binding_worker_imports_threading,
                                   worker_imports_threading("raw", std::chrono::seconds(5)));
  if (r.out.find("threading imported at start: 1") != std::string::npos) {
    GTEST_SKIP() << "this interpreter imports threading at start-up (a .pth file?): no hazard";
  }
  if (PY_VERSION_HEX < 0x030D0000) {
    EXPECT_TRUE(r.timed_out) << r.describe();
    EXPECT_NE(r.out.find("finalizing\n"), std::string::npos) << r.describe();
  } else {
    EXPECT_CHILD_CLEAN(r);
  }
}

// ---- binding at load: a shared object containing pyattach, loaded with the GIL held ---------
// args[0]: "bytecode" (the main thread runs Python after the load, so the queued pending call
// runs then) or "no_bytecode" (it never does: Py_FinalizeEx's pending-call flush, which comes
// before the atexit callbacks, must register the hook in time). args[1]: the delay seed.
// The probe's threads do not import threading: with no bytecode on the main thread, the pending
// call that imports it there has not run when they start, and on 3.9–3.12 a native thread that
// imports threading first becomes its main thread and hangs Py_FinalizeEx (interpreter.hpp,
// "Binding", item 2; measured here before this case was narrowed).

CHILD_CASE(binding_at_load) {
  const bool bytecode = !args.empty() && args[0] == "bytecode";
  const unsigned delay_us = args.size() > 1 ? static_cast<unsigned>(std::stoul(args[1])) % 20000 : 0;
  Py_InitializeEx(0);
  void* h = dlopen(PYATTACH_LOAD_PROBE_PATH, RTLD_NOW | RTLD_LOCAL);  // with the GIL, as import
  CHILD_CHECK(h != nullptr);
  if (h == nullptr) {
    std::printf("dlopen: %s\n", dlerror());
    return child_exit_code();
  }
  auto phase = reinterpret_cast<int (*)()>(dlsym(h, "probe_gate_phase"));
  auto start = reinterpret_cast<void (*)(int)>(dlsym(h, "probe_start_threads"));
  auto counts =
      reinterpret_cast<void (*)(long*, long*, long*, long*, long*, long*)>(dlsym(h, "probe_counts"));
  CHILD_CHECK(phase && start && counts);
  // The probe's copy bound at load; this binary's own copy did not (nothing here called it).
  CHILD_CHECK(phase() == static_cast<int>(gate_phase::open));
  CHILD_CHECK(pyattach::current_gate_phase() == gate_phase::unbound);
  if (bytecode) {
    CHILD_CHECK(PyRun_SimpleString("_x = [i for i in range(1000)]\n") == 0);
    CHILD_CHECK(threading_imported());  // imported by the pending call, on this (main) thread
    CHILD_CHECK(threading_main_ident() == static_cast<long>(PyThread_get_thread_ident()));
  }
  PyThreadState* main_state = PyEval_SaveThread();
  constexpr int k_threads = 8;
  start(k_threads);
  std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  CHILD_CHECK(restore_and_finalize(main_state));
  // Each detached thread returns after one refusal; give them a moment to record it.
  long started = 0, attached = 0, ok = 0, other = 0, unwound = 0, errors = 0;
  for (int i = 0; i < 500; ++i) {
    counts(&started, &attached, &ok, &other, &unwound, &errors);
    if (ok + other + unwound >= k_threads) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::printf("RESULT started=%ld attached=%ld refused_ok=%ld refused_other=%ld pthread_exit=%ld "
              "python_errors=%ld\n",
              started, attached, ok, other, unwound, errors);
  CHILD_CHECK(started == k_threads);
  CHILD_CHECK(ok == k_threads);  // every thread refused with finalizing/finalized, none lost
  CHILD_CHECK(other == 0 && unwound == 0 && errors == 0);
  CHILD_CHECK(phase() == static_cast<int>(gate_phase::unbound));  // its hooks ran
  return child_done();
}

USES_CHILD_CASE(binding_at_load);
// Loading a shared object that contains pyattach binds its gate; the hook is in place before the
// atexit callbacks whether or not the main thread runs Python after the load. 10 runs each, with
// 0-20 ms between starting the threads and finalizing.
TEST(Binding, SharedObjectLoadedWithTheGilBindsAndClosesInTime) {
  for (const char* mode : {"bytecode", "no_bytecode"}) {
    for (int run = 0; run < 10; ++run) {
      child_options o = child_args({mode, std::to_string(run * 2654435761u)});
      o.timeout = std::chrono::seconds(20);
      const child_result r = run_child(uses_binding_at_load, o);
      EXPECT_CHILD_CLEAN(r);
      if (!r.exited_cleanly()) return;  // one failure says it; the rest would repeat it
    }
  }
}

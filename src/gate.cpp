// src/gate.cpp — binding to the interpreter's life, and closing before it tears threads down.
//
// Why a gate: a native thread that takes the GIL while CPython finalizes is ended with
// pthread_exit (3.9–3.13.0; C++ frames are force-unwound, and a catch(...) or noexcept frame
// aborts the process) or hangs forever (3.13.1+, 3.14). The gate refuses such attaches before
// they reach CPython (docs/design.md, invariants 4 and 5; the protocol is in detail/slot.hpp).
//
// Binding (interpreter.hpp lists the calls that bind). Invariant: a generation is never open
// without its close hook either registered or queued to run before CPython's atexit callbacks
// ("armed"), so a native thread that finds the gate open may take the GIL. Only a thread that
// holds the GIL binds, because only then can the interpreter not finalize between the check and
// the hook's registration; a native thread that finds the gate unbound is refused (not_bound).
// - bind_here(): on a thread holding the GIL. Imports `threading` if nobody has (3.9–3.12: the
//   first importer becomes threading's main thread, and a persistent state there hangs
//   Py_FinalizeEx), registers the hooks for the next generation, then opens it.
// - bind_at_load(): when a shared object holding pyattach (an extension module) is loaded into a
//   running interpreter by a thread holding the GIL, as `import` does. That runs inside dlopen,
//   under the dynamic loader's lock, where running Python code could deadlock (bytecode or I/O
//   may hand the GIL to a thread that then blocks in dlopen on that lock). So it only opens the
//   gate and queues the rest with Py_AddPendingCall, which needs no Python code. The pending call
//   runs on the main thread at its next bytecode boundary (in practice before `import` returns),
//   and in any case before the atexit callbacks: Py_FinalizeEx runs pending calls between
//   joining threading's threads and calling atexit (pylifecycle.c, 3.9 through 3.15).
//
// Hooks, per interpreter generation:
// - atexit.register(close): Python runs atexit callbacks in Py_FinalizeEx after joining
//   non-daemon threading.Threads and before marking the runtime finalizing, on 3.9–3.15
//   (Python/pylifecycle.c; tests/cpp/test_exit.cpp relies on that order on every leg).
//   Registered at bind time, so it runs after callbacks registered later (atexit is LIFO),
//   which may still use native threads.
// - Py_AtExit(gone): runs at the very end of Py_FinalizeEx; the gate becomes unbound, so the next
//   Py_Initialize binds a new generation and every old slot is known to be stale.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.hpp"

namespace pyattach {
namespace detail {

gate_state g_gate;

std::mutex& gate_transition_mutex() {
  static std::mutex* m = new std::mutex;  // never destroyed: threads may exit after main
  return *m;
}

namespace {
long membarrier(int cmd) noexcept { return ::syscall(SYS_membarrier, cmd, 0, 0); }
}  // namespace

// Linux 4.14+. Refused (ENOSYS, EINVAL, or a seccomp filter's EPERM): the inline attach stays off
// and every pass is taken with a fence. The registration is per process and survives fork()
// (measured on this kernel; the child's mm inherits the membarrier state).
bool register_heavy_barrier() noexcept {
  // PYATTACH_MEMBARRIER=off: behave as if the kernel refused (tests race that mode too).
  const char* mode = std::getenv("PYATTACH_MEMBARRIER");
  if (mode != nullptr && std::string(mode) == "off") return false;
  const long cmds = membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds < 0 || (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
  return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

void heavy_barrier() noexcept {
  // The closer's own side: its store of the word before its reads of the passes.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!g_gate.fast_ok.load(std::memory_order_relaxed)) return;  // every pass fenced its own
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return;
  // Registered but refused now: not expected. The slower system-wide barrier gives the same
  // guarantee (it waits for every CPU to pass a quiescent state).
  if (membarrier(MEMBARRIER_CMD_GLOBAL) == 0) return;
  std::fputs("pyattach: membarrier failed after registration; the gate's ordering with threads "
             "attaching right now is not guaranteed\n", stderr);
}

std::int64_t passes_inside(std::uint64_t gen, const slot* self) noexcept {
  std::int64_t n = g_gate.inside.load(std::memory_order_acquire);  // one-off passes
  std::lock_guard<std::mutex> lock(registry().mutex);
  for (const slot* s : registry().slots) {
    if (s == self || s->gen.load(std::memory_order_relaxed) != gen) continue;
    n += s->passes.load(std::memory_order_acquire);
  }
  return n;
}

namespace {
close_result g_last_close;      // protected by gate_transition_mutex()
std::atomic<std::uint64_t> g_hooks_generation{0};   // the generation whose hooks are registered
std::atomic<long long> g_close_timeout_ms{-1};  // -1: not read from the environment yet

// The thread running Py_FinalizeEx for a generation: it runs the atexit hook. CPython never ends
// that thread for taking the GIL (it is the finalizing one), so it may re-attach after the close.
std::atomic<std::uint64_t> g_finalizer_tid{0};
std::atomic<std::uint64_t> g_finalizer_gen{0};

PyObject* on_atexit(PyObject*, PyObject*) {
  // Runs on the finalizing thread with the GIL held; close_gate_impl releases it while waiting.
  g_finalizer_tid.store(this_os_tid());
  g_finalizer_gen.store(g_gate.word.load() >> 2);
  close_gate_impl(default_close_timeout());
  Py_RETURN_NONE;
}
PyMethodDef g_atexit_def = {"_pyattach_close_gate", on_atexit, METH_NOARGS,
                            "Closes pyattach's gate before the interpreter finalizes."};

void on_runtime_gone() {
  // Py_AtExit: the end of Py_FinalizeEx. No GIL, no Python objects: only our own state.
  std::lock_guard<std::mutex> lock(gate_transition_mutex());
  const std::uint64_t w = g_gate.word.load();
  g_gate.word.store(gate_word(w >> 2, phase_unbound), std::memory_order_seq_cst);
}

// True if the calling thread holds the GIL with a main-interpreter state of its own: then the
// interpreter cannot start finalizing under us (Py_FinalizeEx needs the GIL to get there).
bool holds_gil_in_main() noexcept {
  if (Py_IsInitialized() == 0) return false;
  PyThreadState* const cur = compat::current_state_unchecked();
  if (cur == nullptr) return false;
  // ≤3.11: the current state is the global GIL holder; it is ours only if PyGILState says so.
  if (!compat::current_state_is_per_thread && cur != PyGILState_GetThisThreadState()) return false;
  return PyThreadState_GetInterpreter(cur) == PyInterpreterState_Main();
}

// Imports `threading` on this thread unless some thread already has (see the top of the file).
// PRECONDITION: holds_gil_in_main(). Keeps a Python exception the caller may be handling.
void import_threading_here() noexcept {
  const error_scope keep;
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  if (modules != nullptr && PyDict_GetItemString(modules, "threading") == nullptr) {
    PyObject* threading = PyImport_ImportModule("threading");
    if (threading == nullptr) {
      PyErr_Print();
      std::fputs("pyattach: could not import threading while binding\n", stderr);
    }
    Py_XDECREF(threading);
  }
}

// Py_AddPendingCall's callback for bind_at_load: on the main thread, GIL held, from the eval loop
// or from Py_FinalizeEx's pending-call flush. Must leave no exception set and return 0.
int finish_bind_at_load(void*) {
  import_threading_here();
  bind_here();
  return 0;
}

void bind_at_load() noexcept {
  // Before main() in an executable (not initialized yet), or loaded by a thread without the GIL
  // (e.g. a C++ plugin loader): nothing to do; the first pyattach call with the GIL binds.
  if (!holds_gil_in_main() || compat::runtime_is_finalizing()) return;
  if ((g_gate.word.load() & 3) != phase_unbound) return;
  // Queue the hooks first: a gate open without them queued would break the invariant. Queued
  // calls cannot run before this returns (they run on the main thread between bytecodes, and
  // this thread holds the GIL).
  if (Py_AddPendingCall(finish_bind_at_load, nullptr) != 0) return;  // queue full: stay unbound
  bind_gate();
}

// Runs when the object file is loaded: at program start for an executable, at dlopen for an
// extension module (gate.cpp is always linked: the inline attach path refers to g_gate).
const bool g_bound_at_load = (bind_at_load(), true);
}  // namespace

bool is_finalizing_thread(std::uint64_t gen) noexcept {
  return g_finalizer_gen.load() == gen && g_finalizer_tid.load() == this_os_tid();
}

std::uint64_t bind_here() noexcept {
  std::uint64_t w = g_gate.word.load();
  if ((w & 3) != phase_unbound && g_hooks_generation.load() == (w >> 2)) return w;  // armed
  if (!holds_gil_in_main()) return w;
  if ((w & 3) == phase_unbound) {
    if (compat::runtime_is_finalizing()) return w;
    import_threading_here();
    // Arm, then open (the invariant at the top of the file). Only bind_gate starts a generation,
    // and binders hold the GIL, so the next one is (w >> 2) + 1.
    if (!register_gate_hooks((w >> 2) + 1)) return w;  // stays unbound; the error was printed
    return bind_gate();
  }
  // Open (or closing) without registered hooks: bound at load, its pending call not run yet.
  register_gate_hooks(w >> 2);
  return w;
}

std::chrono::milliseconds default_close_timeout() noexcept {
  long long ms = g_close_timeout_ms.load(std::memory_order_relaxed);
  if (ms < 0) {
    const char* v = std::getenv("PYATTACH_CLOSE_TIMEOUT_MS");
    ms = (v != nullptr && *v != '\0') ? std::atoll(v) : 2000;
    if (ms < 0) ms = 0;
    long long expected = -1;
    g_close_timeout_ms.compare_exchange_strong(expected, ms);
    ms = g_close_timeout_ms.load(std::memory_order_relaxed);
  }
  return std::chrono::milliseconds(ms);
}

std::uint64_t bind_gate() noexcept {
  observe_init_once();  // PYATTACH_METRICS, PYATTACH_TRACE: from the first bind on
  std::lock_guard<std::mutex> lock(gate_transition_mutex());
  const std::uint64_t w = g_gate.word.load();
  if ((w & 3) != phase_unbound) return w;
  // Py_IsInitialized and the finalizing flag are plain reads of runtime fields: no GIL needed.
  if (Py_IsInitialized() == 0 || compat::runtime_is_finalizing()) return w;
  // opt-in: this generation's view of the main interpreter, for the entry guards; published before
  // the word, so whoever sees the generation open sees its view. Out of memory: stay unbound (a
  // later attach retries). The previous generation's view is never closed: a thread the closer
  // gave up on may still be about to use it (a few bytes per generation). No-op before 3.15.
  const compat::interpreter_view view = compat::open_main_view();
  if (!view.valid()) return w;
  g_gate.view.exchange(view);
  // Before the first generation is published: the inline attach is allowed only once every
  // closer can reach it with the expedited barrier (detail/slot.hpp, "Ordering").
  if (!g_gate.fast_ok.load(std::memory_order_relaxed) && register_heavy_barrier()) {
    g_gate.fast_ok.store(true, std::memory_order_relaxed);
  }
  const std::uint64_t bound = gate_word((w >> 2) + 1, phase_open);
  // No pass of the new generation exists yet; a one-off pass left over belongs to a finalized
  // one (a thread the closer gave up on), which its holder never returns (it sees the
  // generation gone). Start from zero so that this generation's closer does not wait for it.
  // (The slots' passes carry their generation: passes_inside() skips the old ones.)
  g_gate.inside.store(0, std::memory_order_seq_cst);
  g_gate.word.store(bound, std::memory_order_seq_cst);
  return bound;
}

bool register_gate_hooks(std::uint64_t gen) noexcept {
  std::uint64_t prev = g_hooks_generation.load();
  if (prev == gen) return true;
  if (!g_hooks_generation.compare_exchange_strong(prev, gen)) return prev == gen;
  // The caller may be in the middle of handling a Python exception: keep it intact.
  const error_scope keep;
  PyObject* fn = PyCFunction_New(&g_atexit_def, nullptr);
  PyObject* atexit = fn ? PyImport_ImportModule("atexit") : nullptr;
  PyObject* r = atexit ? PyObject_CallMethod(atexit, "register", "O", fn) : nullptr;
  const bool ok = r != nullptr;
  if (!ok) {
    PyErr_Print();
    std::fputs("pyattach: could not register the atexit hook; the gate closes only if the "
               "embedding helper or close_gate() closes it\n", stderr);
    g_hooks_generation.store(prev);  // let a later call try again
  }
  Py_XDECREF(r);
  Py_XDECREF(atexit);
  Py_XDECREF(fn);
  // Py_AtExit holds at most 32 functions per runtime and consumes them at each finalization.
  if (Py_AtExit(on_runtime_gone) != 0) {
    std::fputs("pyattach: Py_AtExit is full; a re-initialized interpreter will not be noticed\n",
               stderr);
  }
  return ok;
}

attach_status refusal_status(std::uint64_t word) noexcept {
  switch (word & 3) {
    case phase_closing:
    case phase_closed: return attach_status::finalizing;
    default: break;
  }
  // Unbound while initialized: finalizing already, or never bound (nobody holding the GIL called
  // pyattach). CPython's finalizing flag stays set after Py_FinalizeEx returns (3.9–3.13), so it
  // also tells "finalized" from "never started" when pyattach was never bound to that interpreter.
  if (Py_IsInitialized() != 0) {
    return compat::runtime_is_finalizing() ? attach_status::finalizing : attach_status::not_bound;
  }
  if ((word >> 2) != 0 || compat::runtime_is_finalizing()) return attach_status::finalized;
  return attach_status::not_initialized;
}

// The wait after the shutdown request (rule 4): long enough for Python code to unwind out of a
// scope, short enough that exit stays within the close bound plus a small margin. Unwinding runs
// Python code (finally blocks, an uncaught exception's printing): measured from the request to
// the scope's end, about 15 ms on 3.11 and 40-50 ms on 3.14.10 and 3.15.2 on an idle machine,
// past 75 ms under load (docs/versions.md, "3.14"), so the grace is at least 250 ms.
std::chrono::milliseconds leave_grace(std::chrono::milliseconds timeout) noexcept {
  return std::clamp(timeout / 4, std::chrono::milliseconds(250), std::chrono::milliseconds(500));
}

PyObject* new_shutdown_request_type() noexcept {
  // A BaseException, so that `except Exception` handlers let it through; SystemExit would make
  // PyErr_Print() (which embedders call on errors) exit the process from that thread.
  PyObject* type = PyErr_NewExceptionWithDoc(
      "pyattach.InterpreterShutdown",
      "Raised asynchronously in a thread still inside a pyattach scope when the interpreter "
      "finalizes: leave the scope.",
      PyExc_BaseException, nullptr);
  if (type == nullptr) PyErr_Clear();
  return type;
}

namespace {
// Runs `fn` with the GIL: the closer's own state if it held the GIL before waiting (`saved`),
// else a PyGILState pair. The runtime is not finalizing while the gate is closing (the atexit
// hook that precedes it is this closer, or waits for it); checked anyway: if it is, skip.
template <typename Fn>
void with_gil(PyThreadState* saved, Fn fn) noexcept {
  if (saved != nullptr) {
    PyEval_RestoreThread(saved);
    fn();
    PyEval_SaveThread();
    return;
  }
  if (compat::runtime_is_finalizing()) return;
  const PyGILState_STATE st = PyGILState_Ensure();
  fn();
  PyGILState_Release(st);
}

// The threads other than `self` that hold a pass and are not parked (read through the slots'
// atomics only; a thread left over from an earlier generation has no state in this one, so what
// is done for it below finds nothing). PRECONDITION: registry().mutex held.
template <typename Fn>
void for_each_inside(const slot* self, Fn fn) {
  for (slot* s : registry().slots) {
    if (s == self || s->passes.load(std::memory_order_relaxed) == 0) continue;
    if (s->phase.load(std::memory_order_relaxed) == slot_phase::parked) continue;
    fn(s);
  }
}

// Rule 4 (docs/safety.md, "Exit"): the threads still inside when the close bound expired are
// asked to leave with an asynchronous pyattach.InterpreterShutdown, waited for `grace`, and the
// ones still running Python after that are parked by a trace function, waited for `grace` again.
// PRECONDITION: the gate is closing (generation `gen`), and this thread does not hold the GIL
// (`saved`: its state if it held the GIL before). Returns true if every pass but the caller's
// own was returned.
bool ask_threads_to_leave(const slot* self, std::uint64_t gen,
                          PyThreadState* saved, std::chrono::milliseconds grace) noexcept {
  const auto drained = [&] { return passes_inside(gen, self) <= 0; };
  const auto wait = [&](auto done) {
    const auto until = std::chrono::steady_clock::now() + grace;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return true;
  };
  with_gil(saved, [&] {
    PyObject* const type = new_shutdown_request_type();
    if (type == nullptr) return;
    // GIL, then the registry mutex: the order every thread that holds both takes them in.
    std::lock_guard<std::mutex> lock(registry().mutex);
    for_each_inside(self, [&](slot* s) {
      // Delivered at the thread's next bytecode boundary (or when it runs Python again); the
      // state is looked up by thread id under CPython's own lock, so a gone thread is skipped.
      PyThreadState_SetAsyncExc(s->py_ident, type);
    });
    Py_DECREF(type);  // each state that got it holds its own reference
  });
  if (wait(drained)) return true;

  // Still running Python (attached, or waiting for the GIL to run it): park at the next line.
  bool flagged = false;
  with_gil(saved, [&] {
    std::lock_guard<std::mutex> lock(registry().mutex);
    for_each_inside(self, [&](slot* s) {
      if (s->phase.load(std::memory_order_relaxed) == slot_phase::detached) return;
      s->must_park.store(true, std::memory_order_release);  // before its tracer can run
      if (compat::install_park_tracer(PyInterpreterState_Main(), s->py_ident, park_tracer)) {
        flagged = true;
      } else {
        s->must_park.store(false, std::memory_order_relaxed);
      }
    });
  });
  if (!flagged) return false;
  const auto parked_or_left = [&] {
    std::lock_guard<std::mutex> lock(registry().mutex);
    bool all = true;
    for_each_inside(self, [&](slot* s) {
      if (s->must_park.load(std::memory_order_relaxed)) all = false;
    });
    return all;
  };
  const bool all_parked = wait(parked_or_left);
  // 3.13: the tracer was set on every thread; take it off again unless a flagged thread has yet
  // to reach it (it parks at its next line, even after finalization started).
  if (all_parked) with_gil(saved, [] { compat::clear_park_tracers(); });
  return drained();
}
}  // namespace

close_result close_gate_impl(std::chrono::milliseconds timeout) noexcept {
  // One bound for the pools' stop and the gate's drain together, so that exit takes at most the
  // close bound plus the graces after it (docs/safety.md, "Exit", rule 2).
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  // Every thread_pool first, while the gate is still open: queued tasks complete with
  // pool_error(finalizing), running ones finish and each worker runs its stop hook, which may
  // attach (bounded by `timeout`; GIL released meanwhile, the workers may need it). Idempotent.
  if ((g_gate.word.load() & 3) == phase_open) {
    PyThreadState* saved = attached_here(tls_slot) ? PyEval_SaveThread() : nullptr;
    stop_pools_for_finalization(timeout);
    // Then the sub-interpreters pyattach made, while the main interpreter still runs normally.
    end_owned_subinterpreters(timeout);
    if (saved != nullptr) PyEval_RestoreThread(saved);  // not finalizing yet: the hook runs first
  }

  std::uint64_t w;
  {
    std::unique_lock<std::mutex> lock(gate_transition_mutex());
    w = g_gate.word.load();
    if ((w & 3) == phase_unbound && Py_IsInitialized() != 0) {
      lock.unlock();
      w = bind_gate();  // never attached so far: bind, so that closing means something
      lock.lock();
      w = g_gate.word.load();
    }
    if ((w & 3) != phase_open) {
      // Closed, or another thread is closing. Wait for that closer (it is bounded) without the
      // lock and without the GIL (the threads it waits for may need it); then report its result.
      lock.unlock();
      if ((g_gate.word.load() & 3) == phase_closing) {
        PyThreadState* saved = attached_here(tls_slot) ? PyEval_SaveThread() : nullptr;
        while ((g_gate.word.load() & 3) == phase_closing) {
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        if (saved != nullptr) PyEval_RestoreThread(saved);  // not finalizing: the hook runs first
      }
      lock.lock();
      return g_last_close;
    }
    // Store `closing` before reading the passes (see detail/slot.hpp, "Ordering").
    g_gate.word.store(gate_word(w >> 2, phase_closing), std::memory_order_seq_cst);
  }
  trace_instant("gate closing", "");
  // Every attacher that stored its pass before this point is seen below; every later one sees
  // `closing` and leaves.
  heavy_barrier();

  // Passes held by the caller itself (an attach scope around the shutdown) do not block it.
  const slot* self = tls_slot;
  const std::uint64_t gen = w >> 2;

  // Release the GIL while waiting: the threads inside need it to finish (keeping it made every
  // drain time out when the gate was prototyped). Only if this thread holds it.
  PyThreadState* saved = attached_here(self) ? PyEval_SaveThread() : nullptr;

  auto pause = std::chrono::microseconds(20);
  bool drained = false;
  for (;;) {
    if (passes_inside(gen, self) <= 0) {
      drained = true;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
  if (!drained) drained = ask_threads_to_leave(self, gen, saved, leave_grace(timeout));
  close_result result;
  result.drained = drained;
  result.waited =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  if (!drained) {
    std::lock_guard<std::mutex> lock(registry().mutex);
    for (const slot* s : registry().slots) {
      if (s == self || s->passes.load(std::memory_order_relaxed) == 0) continue;
      const bool parked = s->phase.load(std::memory_order_relaxed) == slot_phase::parked;
      (parked ? result.parked : result.still_inside).push_back(thread_label(s->os_tid));
    }
  }

  {
    std::lock_guard<std::mutex> lock(gate_transition_mutex());
    g_gate.word.store(gate_word(w >> 2, phase_closed), std::memory_order_seq_cst);
    g_last_close = result;
  }
  if (!drained) {
    std::string names, parked;
    for (const auto& n : result.still_inside) names += " " + n;
    for (const auto& n : result.parked) parked += " " + n;
    std::fprintf(stderr,
                 "pyattach: gate closed after %lld ms with threads still inside:%s%s%s; they are "
                 "parked if they come back to Python\n",
                 static_cast<long long>(result.waited.count() / 1000), names.c_str(),
                 parked.empty() ? "" : "; parked:", parked.c_str());
  }
  if (saved != nullptr) PyEval_RestoreThread(saved);  // the runtime is not finalizing yet
  observe_gate_closed();  // PYATTACH_TRACE: its file is written now
  return result;
}

}  // namespace detail

close_result close_gate(std::chrono::milliseconds timeout) { return detail::close_gate_impl(timeout); }

void set_close_timeout(std::chrono::milliseconds timeout) noexcept {
  detail::g_close_timeout_ms.store(timeout.count() < 0 ? 0 : timeout.count());
}

const char* to_string(gate_phase phase) noexcept {
  switch (phase) {
    case gate_phase::unbound: return "unbound";
    case gate_phase::open: return "open";
    case gate_phase::closing: return "closing";
    case gate_phase::closed: return "closed";
  }
  return "unknown";
}

gate_phase current_gate_phase() noexcept {
  return static_cast<gate_phase>(detail::g_gate.word.load() & 3);
}

std::uint64_t current_generation() noexcept { return detail::g_gate.word.load() >> 2; }

}  // namespace pyattach

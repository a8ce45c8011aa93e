// pyattach/detail/compat.hpp — the one place that branches on the CPython version.
//
// Everything in pyattach that behaves differently between CPython 3.9 and 3.15 goes through the
// functions below; no other file tests PY_VERSION_HEX. Each function says which versions do what.
// docs/versions.md gives the sources (CPython docs, headers, PRs) for every claim made here.
// Not part of the public API.
#pragma once

#include <Python.h>

#include <atomic>

#if PY_VERSION_HEX < 0x03090000
#error "pyattach supports CPython 3.9 and later"
#endif

#ifdef Py_GIL_DISABLED
// Free-threaded builds (3.13t+) have no GIL; "attached" still means something, but pyattach's gate
// and measurements have not been validated there yet. Refuse rather than pretend.
#error "pyattach has not been validated on free-threaded (Py_GIL_DISABLED) builds yet"
#endif

// PEP 788 (interpreter views and guards, CPython 3.15) around every attach: off by default.
// Measured on 3.15.2 (docs/versions.md, "3.15"): a guard taken and closed around each attach costs
// +211 instructions per attach+detach (388 -> 599 for the bare pair; docs/benchmarks.md, row
// floor_pep788), more than all of pyattach's own overhead; a guard held across a GIL wait is
// copied into a fork() child whose thread does not exist there, and Py_FinalizeEx in the child
// waits for it for ever (4 hangs in 5 forks with a busy pool, tests/cpp/test_fork.cpp); and it
// adds no guarantee over the gate, which closes in an atexit callback, before CPython stops
// handing out guards. -DPYATTACH_PEP788=1 turns it on: compile-checked only (tests/compat).
#ifndef PYATTACH_PEP788
#define PYATTACH_PEP788 0
#endif
// Whether this CPython has PEP 788's API at all, whatever PYATTACH_PEP788 says (the benchmark's
// guarded floor row uses it to measure what the guards would cost).
#define PYATTACH_HAS_PEP788_API (PY_VERSION_HEX >= 0x030F00B2)
#if PYATTACH_PEP788 && PY_VERSION_HEX < 0x030F00B2
#error "PYATTACH_PEP788 needs CPython 3.15.0b2 or later (PEP 788's views and guards)"
#endif

namespace pyattach::detail::compat {

// The thread state attached on *this* OS thread, or nullptr. Never fails, never needs the GIL.
// 3.12+: CPython keeps the attached state in a C thread-local, so this is exact.
// 3.9–3.11: CPython keeps one global "current" state (the GIL holder). Comparing it with a state
// that this thread owns is still exact: only this thread can make its own state current.
// Callers therefore only ever compare the result with a state they know belongs to this thread.
inline PyThreadState* current_state_unchecked() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return PyThreadState_GetUnchecked();  // public since 3.13; unchanged in 3.14 and 3.15
#else
  return _PyThreadState_UncheckedGet();  // private but exported 3.5–3.12
#endif
}

// True once Py_FinalizeEx has marked the runtime finalizing (after atexit callbacks ran).
// 3.13–3.15: Py_IsFinalizing() (public since 3.13, same meaning in 3.14 and 3.15). On 3.15 an
// earlier point exists that this does not show: after the atexit callbacks and before this flag,
// CPython stops handing out interpreter guards; only a failing entry_guard (below) sees it.
inline bool runtime_is_finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// The state PyGILState knows for this thread (PyGILState_GetThisThreadState), or nullptr when it
// knows none that is usable. Needs no GIL.
//   3.9-3.14: PyGILState keeps it under a TSS key that Py_FinalizeEx deletes; after a new
//             Py_Initialize every thread reads NULL until it gets a state of the new runtime.
//   3.15:     it is a C thread-local (python/cpython#132510), and Py_FinalizeEx clears it on the
//             finalizing thread only. Any other thread that had a state keeps pointing at it after
//             Py_FinalizeEx + Py_Initialize: a state CPython cleared at finalization (its memory
//             stays allocated: the thread still holds a reference to it) whose attach hangs the
//             thread for good (PyEval_RestoreThread, and PyGILState_Ensure, which attaches it).
//             Measured on 3.15.2: tests/cpp/test_lifecycle.cpp, TwoInterpreterCycles*.
//             Such a state has _status.cleared set; a live one never has.
inline PyThreadState* gilstate_of_this_thread() noexcept {
  PyThreadState* const ts = PyGILState_GetThisThreadState();
#if PY_VERSION_HEX >= 0x030F0000
  if (ts != nullptr && ts->_status.cleared) return nullptr;  // left over from a finalized runtime
#endif
  return ts;
}

// Makes a state for this thread in the main interpreter that PyGILState knows (invariant 2 in
// docs/design.md), and attaches it. PRECONDITION: gilstate_of_this_thread() == nullptr, and the
// gate admits this thread (the runtime is not finalizing). Returns the new state.
//   Normally PyGILState_Ensure, which registers the state with PyGILState on every version
//   (PyThreadState_New does so only from 3.12, and only for a thread that has none).
//   3.15, after a re-initialization, with the stale state above still bound: PyGILState_Ensure
//   would attach the stale one and hang. PyThreadState_New, then PyEval_RestoreThread, whose
//   attach rebinds PyGILState to the new state (tstate_activate, 3.12+; it also marks the stale
//   one unbound, which is a write to memory that is still allocated, see above).
// Either way the state's PyGILState counter is 1 and pyattach deletes it itself later.
inline PyThreadState* new_main_state_attached() noexcept {
#if PY_VERSION_HEX >= 0x030F0000
  if (PyGILState_GetThisThreadState() != nullptr) {
    PyThreadState* const ts = PyThreadState_New(PyInterpreterState_Main());
    PyEval_RestoreThread(ts);
    return ts;
  }
#endif
  PyGILState_Ensure();
  return PyGILState_GetThisThreadState();
}

// The kernel thread id CPython recorded for a state: 3.11+ only (0 before; pyattach's own
// slots record it themselves). PRECONDITION: GIL held (the state must not be deleted meanwhile).
inline unsigned long native_thread_id_of(const PyThreadState* ts) noexcept {
#if PY_VERSION_HEX >= 0x030B0000
  return ts->native_thread_id;
#else
  (void)ts;
  return 0;
#endif
}

// Parking a thread that still runs Python when the gate's closer gives up on it (docs/safety.md,
// "Exit"): a C trace function that releases the GIL and blocks at the thread's next traced event
// (a line, in a tight loop too), before CPython can end or hang the thread.
//   3.9–3.12: set on that thread only: _PyEval_SetTrace(tstate, ...) is private but exported
//             (Include/cpython/ceval.h); 3.12 instruments the code objects already executing.
//   3.13+:    _PyEval_SetTrace is internal (not exported): PyEval_SetTraceAllThreads (public since
//             3.12) sets it on every thread; the closer clears it again once the threads parked.
// On 3.14+ CPython would also hang such a thread itself once it takes the GIL during
// finalization (PyThread_hang_thread), but without a word: nobody could tell a parked thread
// from a deadlock, and parked_thread_count() would not count it. So pyattach parks it on every
// version (measured on 3.14.10 and 3.15.2: tests/cpp/test_exit.cpp, PythonLoopIgnoringTheRequest*).
// install_park_tracer(interp, ident, fn): for the state in `interp` of the thread whose CPython
// thread id is `ident` (threading.get_ident()); false if it has none there. Looked up in the
// interpreter's list, newest first, whose states cannot be deleted while the caller holds that
// interpreter's GIL (a thread needs it to delete its current state). PRECONDITION: the calling
// thread is attached to `interp` (its GIL held). Required, not only for the GIL: 3.12's
// _PyEval_SetTrace registers the legacy-tracing callbacks and sets the monitored events on the
// CURRENT interpreter (_PyMonitoring_RegisterCallback, _PyMonitoring_SetEvents:
// _PyInterpreterState_GET()), and 3.13+'s PyEval_SetTraceAllThreads walks the current
// interpreter's states only (Python/legacy_tracing.c, 3.12.1 and 3.13.0).
inline bool install_park_tracer(PyInterpreterState* interp, unsigned long ident,
                                Py_tracefunc fn) noexcept {
  for (PyThreadState* ts = PyInterpreterState_ThreadHead(interp); ts != nullptr;
       ts = PyThreadState_Next(ts)) {
    if (ts->thread_id != ident) continue;
#if PY_VERSION_HEX < 0x030D0000
    if (_PyEval_SetTrace(ts, fn, nullptr) < 0) PyErr_Clear();  // fails only in an audit hook
#else
    PyEval_SetTraceAllThreads(fn, nullptr);
#endif
    return true;
  }
  return false;
}
// 3.13+: takes the tracer off every state of the current interpreter (no-op before).
inline void clear_park_tracers() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  PyEval_SetTraceAllThreads(nullptr, nullptr);
#endif
}

// ≤3.12: `threading` keeps a `_DummyThread` entry for every foreign thread that ever called
// threading.current_thread(), forever (a stale name in threading.enumerate(), and a wrong name
// for the next thread that reuses the ident). 3.13+ removes it when the thread state is cleared.
constexpr bool threading_keeps_stale_dummy_threads = PY_VERSION_HEX < 0x030D0000;

// 3.12+: the attached state is kept per thread, so any non-null current_state_unchecked() is this
// thread's. 3.9–3.11: it is the global GIL holder, which may belong to another thread.
// (PyGILState registers a PyThreadState_New state with the thread that *created* it, on every
// version, if that thread has none yet; a state made on one thread for use on another is never
// this thread's PyGILState state. pyattach makes states with PyGILState_Ensure on their own
// thread, which registers them everywhere: docs/design.md, invariant 2.)
constexpr bool current_state_is_per_thread = PY_VERSION_HEX >= 0x030C0000;

// What a native thread that takes the GIL (PyEval_RestoreThread, PyGILState_Ensure,
// Py_END_ALLOW_THREADS) while the runtime finalizes gets from CPython itself:
//   3.9–3.12, 3.13.0: ended with pthread_exit (C++ frames are force-unwound; measured here)
//   3.13.x after 3.13.0: pthread_exit, or a hang in a patch release that carries the backport of
//                        gh-87135 (python/cpython#137827); not measured here
//   3.14+: hung forever (PyThread_hang_thread; python/cpython#105805)
//   3.15+: the same for those calls; PEP 788 guards are refused instead (not used by default)
// pyattach's gate exists so that no thread ever reaches that point; see docs/versions.md.
constexpr const char* finalizing_attach_behaviour =
#if PYATTACH_PEP788
    "thread hangs forever (3.14+); a PEP 788 guard is refused instead, and pyattach takes one "
    "before every attach through its gate (3.15+)";
#elif PY_VERSION_HEX >= 0x030E0000
    "thread hangs forever (3.14+)";
#elif PY_VERSION_HEX > 0x030D00F0
    "thread ended by pthread_exit, or hung if this 3.13 patch release has the gh-87135 backport";
#else
    "thread ended by pthread_exit (3.9-3.13.0)";
#endif

// ---- PEP 788: interpreter views and entry guards (only with -DPYATTACH_PEP788=1) ---------------
// Off by default (see PYATTACH_PEP788 at the top of this file for the measurements); with it off,
// every type below is the empty no-op variant, on every version. Comments at the call sites
// (attach.hpp, src/attach.cpp, src/gate.cpp) mark these steps "opt-in".
//
// CPython 3.15 (PEP 788, "Protecting the C API from Interpreter Finalization"):
//   PyInterpreterView_FromMain()      a view of the main interpreter; no attached state needed;
//                                     NULL only when out of memory
//   PyInterpreterGuard_FromView(view) a guard: finalization cannot start while one is held; NULL
//                                     (no exception) once finalization has started, if the
//                                     interpreter is gone, or out of memory; no attached state
//                                     needed
//   PyInterpreterGuard_Close(guard)   cannot fail; no attached state needed
//   PyInterpreterView_Close(view)     cannot fail; no attached state needed
// A guard that is never closed makes Py_FinalizeEx wait forever. pyattach therefore holds a guard
// only *across the attach itself* (an entry guard) and closes it as soon as the thread is attached:
// a thread that then stays inside never delays shutdown (PEP 788 shows the same pattern in its
// "daemon thread" example). Threads still inside when the gate's bounded drain expires remain the
// gate's documented limit. Intended use (gate bind, then every outermost entry through the gate):
//
//   bind (any thread, GIL not needed):   g_gate.view.exchange(compat::open_main_view());
//   entry:  const compat::interpreter_view v = g_gate.view.load();   // after reading the word
//           take a pass; confirm the word;
//           compat::entry_guard guard(v);
//           if (!guard) { return the pass; refuse as finalizing; }
//           PyEval_RestoreThread(ts);   // or PyGILState_Ensure()
//           guard.close();
//
// With PYATTACH_PEP788 off (the default, and always before 3.15) every type below is empty,
// entry_guard converts to a constexpr `true` and every function is an inline no-op: the code
// above compiles to exactly the gate alone.

constexpr bool has_interpreter_guards = PYATTACH_PEP788 != 0;

// A view of the main interpreter: a plain, trivially copyable handle. Before 3.15: empty.
struct interpreter_view {
#if PYATTACH_PEP788
  PyInterpreterView* handle = nullptr;
  bool valid() const noexcept { return handle != nullptr; }
#else
  constexpr bool valid() const noexcept { return true; }
#endif
};

// 3.15+: a new view of the main interpreter (invalid only when out of memory). Needs no GIL and
// no attached thread state. Before 3.15: an empty, valid view.
inline interpreter_view open_main_view() noexcept {
#if PYATTACH_PEP788
  return interpreter_view{PyInterpreterView_FromMain()};
#else
  return interpreter_view{};
#endif
}

// 3.15+: closes (frees) the view. Only when no thread can still read it: an entry_guard made
// from a closed view is a use after free. pyattach's gate never closes its views (one small
// allocation per interpreter generation), because a thread the closer gave up on may still
// hold one. Before 3.15: no-op.
inline void close_view(interpreter_view& view) noexcept {
#if PYATTACH_PEP788
  if (view.handle != nullptr) PyInterpreterView_Close(view.handle);
  view.handle = nullptr;
#else
  (void)view;
#endif
}

// Where the gate keeps the current generation's view: written under the gate's transition mutex
// before the generation is published (release), read lock-free by attaching threads (acquire).
// Constant-initialized. Before 3.15: empty; load() is a constexpr empty view.
class view_cell {
 public:
#if PYATTACH_PEP788
  interpreter_view load() const noexcept {
    return interpreter_view{handle_.load(std::memory_order_acquire)};
  }
  // Publishes `view`; returns the previous one (which the caller may leak or retire).
  interpreter_view exchange(interpreter_view view) noexcept {
    return interpreter_view{handle_.exchange(view.handle, std::memory_order_acq_rel)};
  }

 private:
  std::atomic<PyInterpreterView*> handle_{nullptr};
#else
  constexpr interpreter_view load() const noexcept { return interpreter_view{}; }
  interpreter_view exchange(interpreter_view) noexcept { return interpreter_view{}; }
#endif
};

// An entry guard: taken just before a thread takes the GIL through the gate, closed right after
// it is attached (or by the destructor). False if CPython refused the guard: the interpreter has
// started finalizing (or is gone, or memory ran out), so the attach must be refused — taking the
// GIL now would hang the thread. An invalid view also yields false (fail closed).
// Needs no GIL and no attached thread state. Not copyable, not movable.
// Before 3.15: empty, always true, close() does nothing.
#if PYATTACH_PEP788
class entry_guard {
 public:
  explicit entry_guard(interpreter_view view) noexcept
      : guard_(view.handle != nullptr ? PyInterpreterGuard_FromView(view.handle) : nullptr) {}
  ~entry_guard() { close(); }
  entry_guard(const entry_guard&) = delete;
  entry_guard& operator=(const entry_guard&) = delete;
  entry_guard(entry_guard&&) = delete;
  entry_guard& operator=(entry_guard&&) = delete;

  explicit operator bool() const noexcept { return guard_ != nullptr; }
  // Lets the interpreter finalize again (if no other guard remains). Idempotent.
  void close() noexcept {
    if (guard_ != nullptr) PyInterpreterGuard_Close(guard_);
    guard_ = nullptr;
  }

 private:
  PyInterpreterGuard* guard_;
};
#else
class entry_guard {
 public:
  constexpr explicit entry_guard(interpreter_view) noexcept {}
  entry_guard(const entry_guard&) = delete;
  entry_guard& operator=(const entry_guard&) = delete;
  entry_guard(entry_guard&&) = delete;
  entry_guard& operator=(entry_guard&&) = delete;

  constexpr explicit operator bool() const noexcept { return true; }
  constexpr void close() noexcept {}
};
#endif

}  // namespace pyattach::detail::compat

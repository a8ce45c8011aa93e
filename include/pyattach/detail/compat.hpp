// pyattach/detail/compat.hpp — the one place that branches on the CPython version.
//
// Everything in pyattach that behaves differently between CPython 3.9 and 3.15 goes through the
// functions below; no other file tests PY_VERSION_HEX. Each function says which versions do what.
// Not part of the public API.
#pragma once

#include <Python.h>

#if PY_VERSION_HEX < 0x03090000
#error "pyattach supports CPython 3.9 and later"
#endif

#ifdef Py_GIL_DISABLED
// Free-threaded builds (3.13t+) have no GIL; "attached" still means something, but pyattach's gate
// and measurements have not been validated there yet. Refuse rather than pretend.
#error "pyattach has not been validated on free-threaded (Py_GIL_DISABLED) builds yet"
#endif

namespace pyattach::detail::compat {

// The thread state attached on *this* OS thread, or nullptr. Never fails, never needs the GIL.
// 3.12+: CPython keeps the attached state in a C thread-local, so this is exact.
// 3.9–3.11: CPython keeps one global "current" state (the GIL holder). Comparing it with a state
// that this thread owns is still exact: only this thread can make its own state current.
// Callers therefore only ever compare the result with a state they know belongs to this thread.
inline PyThreadState* current_state_unchecked() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return PyThreadState_GetUnchecked();  // public since 3.13
#else
  return _PyThreadState_UncheckedGet();  // private but exported 3.5–3.12
#endif
}

// True once Py_FinalizeEx has marked the runtime finalizing (after atexit callbacks ran).
inline bool runtime_is_finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;  // public since 3.13
#else
  return _Py_IsFinalizing() != 0;
#endif
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

// ≤3.12: `threading` keeps a `_DummyThread` entry for every foreign thread that ever called
// threading.current_thread(), forever (a stale name in threading.enumerate(), and a wrong name
// for the next thread that reuses the ident). 3.13+ removes it when the thread state is cleared.
constexpr bool threading_keeps_stale_dummy_threads = PY_VERSION_HEX < 0x030D0000;

// 3.12+: the attached state is kept per thread, so any non-null current_state_unchecked() is this
// thread's. 3.9–3.11: it is the global GIL holder, which may belong to another thread.
// (PyGILState registers a PyThreadState_New state with the thread that *created* it, on every
// version, if that thread has none yet; a state made on one thread for use on another is never
// this thread's PyGILState state. pyattach makes states with PyGILState_Ensure on their own
// thread, which registers them everywhere: DESIGN.md invariant 2.)
constexpr bool current_state_is_per_thread = PY_VERSION_HEX >= 0x030C0000;

// What a native thread that attaches while the runtime finalizes gets from CPython itself:
//   3.9–3.12 and 3.13.0: ended with pthread_exit (C++ frames are force-unwound)
//   3.13.x later patches and 3.14: hung forever (PyThread_hang_thread)
//   3.15: PEP 788 guards/views can refuse cleanly
// pyattach's gate exists so that no thread ever reaches that point; see docs/versions.md.
constexpr const char* finalizing_attach_behaviour =
#if PY_VERSION_HEX >= 0x030F0000
    "refused by PEP 788 views (3.15+)";
#elif PY_VERSION_HEX >= 0x030E0000
    "thread hangs forever (3.14)";
#elif PY_VERSION_HEX > 0x030D00F0
    "thread hangs forever (3.13.1+)";
#else
    "thread ended by pthread_exit (3.9-3.13.0)";
#endif

}  // namespace pyattach::detail::compat

// pyattach/subinterpreter.hpp — interpreters other than the main one: native threads that run
// Python in several interpreters, each with its own GIL (PEP 684, CPython 3.12+), so that N
// interpreters run Python on N cores at once.
//
// Contract
// - subinterpreter is a handle: a cheap, copyable reference to one interpreter's record. It is
//   made by create() (pyattach makes the interpreter), adopt() (an interpreter something else
//   made: C code's PyInterpreterState*, or concurrent.interpreters' by its id), or main().
//   Copies refer to the same interpreter; the record lives while a handle or a thread's cached
//   state refers to it. Destroying handles never ends the interpreter: end() does.
// - attach_scope(handle) (attach.hpp) attaches the calling thread to that interpreter. Each
//   native thread keeps at most ONE persistent thread state per interpreter: made on its first
//   attach there, on that thread, and reused by every later one (found in O(1), no allocation);
//   destroyed on that thread when it exits, or by the interpreter's end, whichever comes first.
//   A scope on another interpreter inside a scope swaps: the outer state is released (its GIL
//   too) and the inner one attached; the inner scope's end restores the outer. On the main
//   interpreter's handle, a scope is the ordinary attach_scope (every rule of attach.hpp).
// - PyGILState on the thread keeps meaning its main-interpreter state (CPython's PyGILState_*
//   API supports the main interpreter only; CPython 3.12+ would rebind it to each state made
//   current: docs/subinterpreters.md). A thread that has no PyGILState state gets its
//   main-interpreter state first, through the main gate (one attach+detach of the main
//   interpreter, once per thread); while that gate refuses (not bound, finalizing), such a
//   thread's first attach to a sub-interpreter is refused with the same status. Inside a
//   sub-interpreter scope, do not call PyGILState_Ensure (pybind11's and nanobind's GIL guards):
//   it reaches for the main state, which is not current. Nest attach_scope(main()) instead.
// - Ending (end(), or anything that calls Py_EndInterpreter on an interpreter pyattach knows):
//   the interpreter's own gate closes first. Later attaches to it are refused with
//   attach_status::finalizing (finalized once it is gone); the end waits, its GIL released and
//   within its bound, for the threads inside a scope of it. Then, as at the main interpreter's
//   exit (docs/safety.md, "Exit"), the threads still running Python in it get an asynchronous
//   pyattach.InterpreterShutdown (a BaseException made in that interpreter) and a grace
//   (a quarter of the bound, 250-500 ms) to leave their scopes; those still running Python
//   after that are parked at their next line (blocked for good without its GIL, counted in
//   parked_thread_count()), and waited for a grace again. Threads that stay only because they sit
//   in a detach_scope (running no Python) are abandoned once theirs are the only passes left,
//   unless they began to re-attach: the end takes over their passes, destroys their states, and
//   each parks when its detach_scope ends. If threads are still inside after that (holding its
//   GIL in C++, or re-attaching), end() returns false and the interpreter stays (closed to new
//   attaches): ending it then would kill or crash those threads. Otherwise
//   Py_EndInterpreter runs on a thread of its own, and pyattach's callback there destroys every
//   thread's cached state of it first (threads that are not inside use none; a parked thread's
//   is never used again). Other interpreters keep running. The close runs from an atexit
//   callback registered in the interpreter, so an interpreter that Python code ends
//   (concurrent.interpreters' Interpreter.close()) closes the same way: its wait has no bound
//   of its own, so it asks after 2 s, parks, then waits for good (CPython aborts the process on
//   a thread state left behind).
// - The main interpreter's end (Py_FinalizeEx, pyattach::interpreter's destructor) ends the
//   sub-interpreters pyattach created first, from its close hook, before the main gate closes.
// - Versions: create() and adopt() need CPython 3.12+ (PyInterpreterConfig, per-interpreter
//   GIL); before, they throw interpreter_error, and main() is the only handle.
// - Thread-safety: every function may be called from any thread. end() may run on any thread,
//   attached or not, except inside a scope of the interpreter it ends (reported as
//   misuse_kind::release_while_attached, and refused).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "pyattach/detail/compat.hpp"
#include "pyattach/interpreter.hpp"

namespace pyattach {

namespace detail {
struct interp_core;
}  // namespace detail

// What a new interpreter may do (CPython's PyInterpreterConfig, 3.12+). The defaults are an
// isolated interpreter with its own GIL; legacy() is the shared-GIL configuration that
// Py_NewInterpreter() uses.
struct interpreter_options {
  bool own_gil = true;             // PyInterpreterConfig_OWN_GIL; else the main interpreter's GIL
  bool use_main_obmalloc = false;  // must be false with own_gil (CPython refuses otherwise)
  bool allow_fork = false;
  bool allow_exec = false;
  bool allow_threads = true;          // threading.Thread in the interpreter
  bool allow_daemon_threads = false;  // daemon threads in the interpreter
  // Refuse to import single-phase-init extension modules, which cannot be shared safely between
  // interpreters (required with own_gil): their import raises ImportError.
  bool check_multi_interp_extensions = true;

#if PY_VERSION_HEX >= 0x030C0000
  // The same as CPython's configuration, for Py_NewInterpreterFromConfig.
  PyInterpreterConfig config() const noexcept {
    PyInterpreterConfig c{};
    c.use_main_obmalloc = use_main_obmalloc ? 1 : 0;
    c.allow_fork = allow_fork ? 1 : 0;
    c.allow_exec = allow_exec ? 1 : 0;
    c.allow_threads = allow_threads ? 1 : 0;
    c.allow_daemon_threads = allow_daemon_threads ? 1 : 0;
    c.check_multi_interp_extensions = check_multi_interp_extensions ? 1 : 0;
    c.gil = own_gil ? PyInterpreterConfig_OWN_GIL : PyInterpreterConfig_SHARED_GIL;
    return c;
  }
#endif

  static interpreter_options legacy() noexcept {
    interpreter_options o;
    o.own_gil = false;
    o.use_main_obmalloc = true;
    o.allow_fork = o.allow_exec = o.allow_threads = o.allow_daemon_threads = true;
    o.check_multi_interp_extensions = false;
    return o;
  }
};

// Counters of one interpreter's record (pyattach's view), for tests and reports.
struct subinterpreter_stats {
  std::uint64_t states_made = 0;      // thread states pyattach made in it (one per thread)
  std::uint64_t states_destroyed = 0; // of those, destroyed (at thread exit, or by its end)
  std::uint64_t attaches = 0;         // scopes that made a state current in it
  std::uint64_t refused = 0;          // attaches refused because its gate was closed
  std::uint64_t threads = 0;          // threads that hold a cached state of it now
};

class subinterpreter {
 public:
  // A new interpreter (Py_NewInterpreterFromConfig), made on the calling thread; its creation
  // state is kept, never current, until it ends (src/subinterpreter_internal.hpp,
  // interp_core::anchor).
  // Throws interpreter_error if CPython refuses, is older than 3.12 or a debug build (Py_DEBUG),
  // or the main gate is not open. PRECONDITION: the calling thread is not
  // inside a scope of another sub-interpreter. The calling thread may be attached to the main
  // interpreter or not; it is left as it was.
  static subinterpreter create(const interpreter_options& options = {});
  // The main interpreter: attach_scope(subinterpreter::main()) is attach_scope().
  static subinterpreter main();
  // An interpreter something else made and ends (C code, concurrent.interpreters). Registers
  // pyattach's close hook in it (an atexit callback). PRECONDITION: `interp` exists and is not
  // finalizing; the calling thread is not inside a scope of it. Adopting the same interpreter
  // twice gives the same record. Throws interpreter_error before 3.12 or if it cannot attach.
  static subinterpreter adopt(PyInterpreterState* interp);
  // The interpreter with this id (PyInterpreterState_GetID; in Python, concurrent.interpreters'
  // Interpreter.id, 3.14+, or _interpreters' ids, 3.13), adopted as adopt() does unless pyattach
  // knows it already; 0 is the main interpreter. PRECONDITION: it stays alive meanwhile (Python
  // keeps an interpreter made by concurrent.interpreters.create() while its Interpreter object
  // lives); the calling thread is not inside a scope of a sub-interpreter. Throws
  // interpreter_error if no interpreter has that id, and as adopt() does.
  static subinterpreter adopt_id(std::int64_t id);
  // The interpreter with this id (PyInterpreterState_GetID), if pyattach knows it (created or
  // adopted) and it has not ended.
  static std::optional<subinterpreter> find(std::int64_t id);

  bool is_main() const noexcept;
  std::int64_t id() const noexcept;
  // Null once it has ended.
  PyInterpreterState* state() const noexcept;
  bool own_gil() const noexcept;
  bool ended() const noexcept;
  subinterpreter_stats stats() const;

  // Ends the interpreter (see "Ending" above). Returns true once it has ended (also if it had
  // already); false if threads were still inside after the bound and the graces (it is then
  // closed, not ended), or for the main interpreter (never ended from here:
  // pyattach::interpreter does that). Timeline, with grace = clamp(bound / 4, 250 ms, 500 ms):
  //   [0, bound]            waits for the threads inside (returns as soon as none is);
  //   then, within a grace  a helper thread with its own state there takes its GIL and asks the
  //                         threads running Python in it to leave, and end() waits for them;
  //   then, within a grace  the same helper kind installs the park tracer, and end() waits for
  //                         the threads to park or leave, abandoning those in a detach_scope
  //                         once theirs are the only passes left (they park when it ends);
  //   then Py_EndInterpreter (on a thread of its own). So end() returns within about
  //   bound + 2 * grace (plus Py_EndInterpreter's own time). It never waits for the interpreter's
  //   GIL beyond a grace: if a thread holds it in C++, end() gives up (false) and the helper,
  //   which holds a pass, asks nothing when it gets the GIL later, deletes its state and gives
  //   the pass back (a later end() waits for it). A thread flagged for parking that has not
  //   reached its next line when end() gives up parks there later. A parked thread gives back
  //   its passes of every sub-interpreter (it never runs again) but not its main-interpreter ones.
  // An adopted interpreter is not pyattach's to end (its owner may keep states in it): end() lets
  // go of it, closing its gate and destroying pyattach's states in it as an end would, and its
  // owner ends it.
  bool end(std::chrono::milliseconds bound = std::chrono::milliseconds(2000));

  friend bool operator==(const subinterpreter& a, const subinterpreter& b) noexcept {
    return a.core_ == b.core_;
  }
  friend bool operator!=(const subinterpreter& a, const subinterpreter& b) noexcept {
    return !(a == b);
  }

  // Internal (pyattach's own files): the record; null for the main interpreter.
  const std::shared_ptr<detail::interp_core>& record() const noexcept { return core_; }
  explicit subinterpreter(std::shared_ptr<detail::interp_core> core) noexcept
      : core_(std::move(core)) {}

 private:
  std::shared_ptr<detail::interp_core> core_;  // null for main()
};

// How many sub-interpreter thread states pyattach holds for the calling thread (its cache), for
// tests: at most one per interpreter.
std::size_t cached_subinterpreter_states() noexcept;

}  // namespace pyattach

// pyattach/diagnostics.hpp — how pyattach reports misuse.
//
// Contract
// - Misuse (releasing a scope twice, ending a scope on another thread, ending nested scopes out of
//   order, a detach scope with nothing attached, ...) never reaches CPython: pyattach detects it
//   before the C API call that would crash, skips that call, and reports one `misuse_report`.
// - The report names the misuse and two source locations: where the scope was made and where it
//   was misused (the call site of an explicit `release()`, or, when a destructor is the culprit,
//   the code that ran it, resolved from its return address).
// - The handler is process-wide. The default prints one line to stderr and returns, so the
//   program keeps running; with set_misuse_action(misuse_action::abort) or the environment
//   variable PYATTACH_ON_MISUSE=abort it aborts after printing, which is what tests want.
// - Thread-safety: set_misuse_handler() may be called from any thread at any time; the handler is
//   called on the thread that misused, with whatever it held (maybe the GIL), and must not throw
//   (it is noexcept; an exception terminates) and must not call into pyattach or Python.
// - Finalization: reporting never touches CPython, so it works before, during and after it.
#pragma once

#include <cstdint>
#include <string>

namespace pyattach {

// A place in the source: captured at the call site through a defaulted argument.
struct source_site {
  const char* file = "?";
  int line = 0;
  const char* function = "?";

#if defined(__GNUC__) || defined(__clang__)
  static constexpr source_site current(const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE(),
                                       const char* function = __builtin_FUNCTION()) noexcept {
    return source_site{file, line, function};
  }
#else
  static constexpr source_site current() noexcept { return source_site{}; }
#endif
};

// Every misuse pyattach detects. Each has a stable name (to_string) used in messages and tests.
enum class misuse_kind : std::uint8_t {
  double_release,         // release() called on a scope that was already released
  wrong_thread,           // a scope ended (released or destroyed) on a thread that did not make it
  out_of_order,           // an outer scope ended while a scope nested inside it was still open
  detach_without_attach,  // detach_scope on a thread that pyattach has not attached
  release_while_attached, // release_thread_state() while scopes are open on this thread
  other_interpreter,      // attach while this thread is attached to another interpreter (a
                          // sub-interpreter's state, or scopes of an earlier, finalized one)
  scope_outlived_interpreter,  // a scope ended after its interpreter started finalizing or was
                               // finalized; its CPython call was skipped
  python_without_state,   // expect_attached() found no attached thread state on this thread
  pool_call_from_worker,  // thread_pool::wait() or shutdown() (or its destructor, unless
                          // detach() came first) on one of that pool's own workers, which would
                          // wait for itself (pool.hpp)
  scope_outlived_thread,  // a thread exited with scopes still open (e.g. a scope leaked on the
                          // heap); pyattach released the GIL and the thread state for it
};
// There is no "moved-from scope" kind: attach_scope and detach_scope are neither copyable nor
// movable, so using a moved-from scope does not compile (tests/cpp/test_scopes.cpp checks it).

const char* to_string(misuse_kind kind) noexcept;

struct misuse_report {
  misuse_kind kind;
  source_site made_at;          // where the scope involved was made
  std::string misused_at;       // where it was misused ("file:line (function)" or a code address)
  std::string other;            // the other party, when there is one (the scope still open, ...)
  std::uint64_t made_on_thread; // OS thread id (gettid) that made the scope
  std::uint64_t misused_on_thread;
  std::string message;          // the full one-line message, as the default handler prints it
};

using misuse_handler = void (*)(const misuse_report&) noexcept;

// Replaces the process-wide handler; returns the previous one. nullptr restores the default.
misuse_handler set_misuse_handler(misuse_handler handler) noexcept;

// What the default handler does after printing. The initial value comes from the environment
// variable PYATTACH_ON_MISUSE ("abort" or "report"; read once, at the first report or the first
// call below); set_misuse_action() overrides it, e.g. in a test's main(). Thread-safe.
enum class misuse_action : std::uint8_t { report, abort };
void set_misuse_action(misuse_action action) noexcept;
misuse_action current_misuse_action() noexcept;

// The default: print report.message to stderr; then abort if current_misuse_action() is abort.
void default_misuse_handler(const misuse_report& report) noexcept;

// How many misuse reports this process has produced (for tests and the thread report).
std::uint64_t misuse_count() noexcept;

}  // namespace pyattach

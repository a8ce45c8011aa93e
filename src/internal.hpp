// src/internal.hpp — what the compiled core's files share. Not installed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "pyattach/attach.hpp"
#include "pyattach/interpreter.hpp"

namespace pyattach::detail {

// Adds n to a counter that one thread writes and others only read: a relaxed load and store
// rather than fetch_add, which needs no locked instruction and loses nothing with one writer.
template <class T>
inline void add_owned(std::atomic<T>& counter, typename std::atomic<T>::value_type n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// Keeps the calling thread's pending Python exception through a scope in which pyattach makes
// C-API calls of its own on the caller's behalf (an import, an attribute lookup): those calls
// neither see nor lose an exception the caller is handling, and whatever they leave set is
// dropped when the scope restores the caller's (nanobind's error_scope does the same).
// PRECONDITION: the GIL is held for the whole scope, on one thread.
class error_scope {
 public:
#if PY_VERSION_HEX >= 0x030C0000
  error_scope() noexcept : exc_(PyErr_GetRaisedException()) {}
  ~error_scope() { PyErr_SetRaisedException(exc_); }  // clears what is set, then restores
#else
  error_scope() noexcept { PyErr_Fetch(&type_, &value_, &traceback_); }
  ~error_scope() { PyErr_Restore(type_, value_, traceback_); }  // clears what is set first
#endif
  error_scope(const error_scope&) = delete;
  error_scope& operator=(const error_scope&) = delete;

 private:
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* exc_;
#else
  PyObject *type_, *value_, *traceback_;
#endif
};

// Every live slot, for the thread report and for naming the threads a closer waited for.
// Protected by: mutex. A slot is added by its thread on creation and removed by its thread before
// it is freed, so a slot found here under the mutex is alive while the mutex is held.
struct slot_registry {
  std::mutex mutex;
  std::vector<slot*> slots;
};
slot_registry& registry();

std::uint64_t this_os_tid() noexcept;

// Before the main gate closes (gate.cpp): ends the sub-interpreters pyattach created, each within
// `bound`, and closes the others to new attaches (src/subinterpreter_end.cpp). GIL not held.
void end_owned_subinterpreters(std::chrono::milliseconds bound) noexcept;
// "name (tid N)" using the OS thread name, readable from another thread.
std::string thread_label(std::uint64_t os_tid);

// ---- gate (gate.cpp) ----
// Opens a new generation if the gate is unbound and CPython is initialized and not finalizing.
// Needs no GIL. Returns the gate word after the attempt. Only for callers that armed the close
// hooks first (bind_here, bind_at_load) or close the gate at once (close_gate_impl): gate.cpp.
std::uint64_t bind_gate() noexcept;
// Binds and arms the gate if the calling thread holds the GIL with a main-interpreter state (see
// gate.cpp); otherwise, or if it is bound and armed already, only returns the gate word.
std::uint64_t bind_here() noexcept;
// Registers the atexit/Py_AtExit hooks for generation `gen`, once; true if they are in place.
// PRECONDITION: GIL held.
bool register_gate_hooks(std::uint64_t gen) noexcept;
// True on the thread that runs Py_FinalizeEx for generation `gen` (it ran the atexit hook): it
// may take the GIL after the gate closed, since CPython never ends the finalizing thread.
bool is_finalizing_thread(std::uint64_t gen) noexcept;
// The status for a refused attach, given the gate word.
attach_status refusal_status(std::uint64_t word) noexcept;
// The closer's half of the asymmetric barrier (detail/slot.hpp, "Ordering"): registers the
// process for expedited membarrier (at the first bind; false if the kernel refuses), and runs it.
bool register_heavy_barrier() noexcept;
void heavy_barrier() noexcept;
// The passes of generation `gen` held by threads other than `self`, plus the one-off passes.
// Takes registry().mutex: never call it with that mutex held.
std::int64_t passes_inside(std::uint64_t gen, const slot* self) noexcept;
// Closes the gate (see interpreter.hpp), from any thread, GIL held or not.
close_result close_gate_impl(std::chrono::milliseconds timeout) noexcept;
std::chrono::milliseconds default_close_timeout() noexcept;
// Serializes bind, close and the end-of-finalize hook (gate.cpp); fork.cpp holds it across fork.
std::mutex& gate_transition_mutex();

// ---- pools (pool.cpp) ----
// Stops every thread_pool for the interpreter's end: refuses submissions, completes queued
// tasks with pool_error(finalizing), then waits (at most `bound`) for their workers to finish
// their running task and their stop hook. Called by the gate's closer before it closes,
// without the GIL.
void stop_pools_for_finalization(std::chrono::milliseconds bound) noexcept;
// (OS thread id, pool name) of every pool worker that has started, for the thread report.
std::vector<std::pair<std::uint64_t, std::string>> pool_workers();
// fork.cpp's child handler: forgets every pool of the parent (their workers are gone).
void forget_pools_in_forked_child() noexcept;

// ---- fork (fork.cpp) ----
// Registers pyattach's pthread_atfork handlers, once per process.
void install_fork_handlers() noexcept;

// ---- interpreter (interpreter.cpp) ----
// fork.cpp's child handler, on the child's only thread: that thread is the live interpreter's
// creator in the child (under its new tid) if it was the creator in the parent, where its tid was
// `forking_tid_in_parent`; otherwise no thread of the child is.
void interpreter_after_fork_in_child(std::uint64_t forking_tid_in_parent) noexcept;

// ---- the shutdown request (gate.cpp; docs/safety.md, "Exit", rule 4) ----
// The wait after the shutdown request, and again after parking, for a close bounded by `timeout`:
// a quarter of it, within 250-500 ms (the main gate's close and a sub-interpreter's end).
std::chrono::milliseconds leave_grace(std::chrono::milliseconds timeout) noexcept;
// A new pyattach.InterpreterShutdown type (a BaseException) made in the interpreter whose GIL the
// caller holds, for PyThreadState_SetAsyncExc; null (no error set) if it cannot be made.
PyObject* new_shutdown_request_type() noexcept;

// ---- parking (attach.cpp; docs/safety.md, "Exit") ----
// Blocks the calling thread for good: it must not continue (the code above it would run Python
// without a thread state). PRECONDITION: the thread does not hold the GIL. Marks its slot parked,
// tells its pool (if it is a worker), prints one line with `why`, and never returns.
[[noreturn]] void park(slot* s, const std::string& why) noexcept;
// The trace function a closer installs on threads still running Python when it gives up on them
// (compat::install_park_tracer): parks the thread if its slot's must_park is set.
int park_tracer(PyObject* obj, PyFrameObject* frame, int what, PyObject* arg) noexcept;
// A pool worker about to park: its pool stops waiting to join it (pool.cpp). No-op elsewhere.
void note_worker_parked() noexcept;

// True if the calling thread is attached with a thread state, as far as can be known without
// the GIL on this version (see compat::current_state_unchecked).
bool attached_here(const slot* s) noexcept;

// This thread's slot, made now if it has none (nullptr after its exit clean-up, or if it cannot
// be allocated). Needs no GIL.
slot* this_thread_slot() noexcept;

// ---- thread report (report.cpp) ----
// threading's name of every thread in threading._active, by ident. PRECONDITION: GIL held.
std::map<unsigned long, std::string> python_thread_names();

// ---- observation (metrics.cpp, trace_recording.cpp; pyattach/observe.hpp) ----
// Reads PYATTACH_METRICS and PYATTACH_TRACE, once per process (make_slot, bind_gate).
void observe_init_once() noexcept;
// What a new slot records (slot::observe). PRECONDITION: registry().mutex held, so that a
// concurrent switch either sees the new slot or is seen by it.
std::uint8_t observe_bits() noexcept;
// The thread exits: its metrics are summed into its pool's exited record and its trace buffer
// kept for the writer. PRECONDITION: the slot is the caller's, still registered.
void obs_retire(slot* s) noexcept;
// A pool worker starts: its task spans carry (pool, worker).
void obs_worker_start(const std::string& pool, const std::string& worker) noexcept;
bool tracing_anywhere() noexcept;  // a trace runs (relaxed: a hint for the pool's task spans)
bool observing_anywhere() noexcept;  // metrics or a trace are on (relaxed: a hint)
void obs_task(bool begin, std::uint64_t task_number) noexcept;
// An instant event on the calling thread (gate closing, misuse), while a trace runs.
void trace_instant(const std::string& name, const std::string& message) noexcept;
// The gate closed for the interpreter's end: writes PYATTACH_TRACE's file and ends its trace.
void observe_gate_closed() noexcept;

// ---- diagnostics (diagnostics.cpp) ----
struct misuse_details {
  misuse_kind kind;
  const char* what;            // "attach_scope", "detach_scope", "release_thread_state()"
  source_site made_at;
  const source_site* misused_site;  // exact call site, when known
  void* misused_code;               // else: the code address that ended the scope
  std::string other;
  std::uint64_t made_on_thread;
};
void report_misuse(const misuse_details& details) noexcept;
std::string site_text(const source_site& site);
std::string describe_code_address(void* address);

}  // namespace pyattach::detail

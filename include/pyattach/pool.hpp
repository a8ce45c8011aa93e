// pyattach/pool.hpp — a thread pool whose workers keep their Python identity and never hold the
// GIL while idle.
//
// Why this exists
//   Ray-style C++ services run Python on boost::asio pools: an init task calls PyGILState_Ensure
//   and a later task releases it. Done by hand, a worker either keeps the GIL while it waits for
//   work (every other pool stalls) or loses its thread state between tasks (threading.local data,
//   trace functions and py-spy's view of the thread go with it). A thread_pool worker owns one
//   persistent thread state (attach.hpp) and attaches it only around tasks that need Python.
//
// The worker loop (what runs where, and where exceptions go)
//   set the OS thread name ("<pool><separator><index>", the pool name shortened to fit 15
//     characters)
//   run the start hook (attached if options.start_hook_python), once; if it throws, the pool's
//     constructor stops every worker and throws pool_error(start_hook_failed): never half-started.
//     On a spawn_on_demand pool (no constructor to throw from) the pool breaks instead: see
//     "On demand" below
//   loop:
//     wait for a task with no GIL held (the worker is detached: invariant 3)
//     C++ task:    run it; its result or exception goes to its future (or to on_error)
//     Python task: attach (attach_scope); the first time, name the thread in Python
//                  (threading.current_thread().name = "<pool><separator><index>"); run it; a Python
//                  exception left set when it returns, or a python_error it throws, goes to its
//                  future as python_error (type, message, traceback text); then, still attached,
//                  if the queue's head is another Python task, take it and run it the same way
//                  (a batch: one attach for several tasks, unless options.batch_python is
//                  false); detach when the queue is empty, its
//                  head is a C++ task, a posted task failed (on_error is called detached), or
//                  the batch has been attached for half of sys.getswitchinterval() (read once
//                  per worker and interpreter lifetime; the worker then pauses 50 us detached,
//                  so that a thread waiting for the GIL gets it within about the interval). A
//                  batch never waits for work attached, and never runs a C++ task attached.
//                  If attaching is refused (the interpreter is finalizing or gone) the task is
//                  not run and completes with pool_error(finalizing); each later task tries
//                  (and is refused) on its own.
//     nothing ever kills the worker: every exception ends in a future or in on_error
//   run the stop hook (attached if options.stop_hook_python and still possible; see
//     worker_context::python), once, after the worker's last task; a throw goes to on_error
//   thread exit: the worker's thread state is destroyed on the worker (attach.hpp); on <= 3.12
//     its entry in threading._active goes with it
//
// Contract
// - Lifetime: the constructor starts every worker and returns once all start hooks have run
//   (unless options.spawn_on_demand: see "On demand"). The destructor is
//   shutdown(shutdown_mode::drain), or, after detach(), nothing but letting go. Workers share the
//   pool's internal state, so a pool destroyed from one of its own workers cannot free what that
//   worker still uses; without detach() first that is misuse, reported.
// - Stopping without joining: stop() stops accepting and drains or cancels the queue exactly as
//   shutdown() does, and returns at once; the workers finish the queue (drain), run their stop
//   hooks and exit on their own; a later shutdown() or the destructor joins them. detach() is
//   stop(drain) (unless something stopped the pool already) and lets the threads go: shutdown()
//   and the destructor no longer join them, so the pool may be destroyed anywhere, including on
//   its own worker (a garbage-collected executor finalized on one of its workers). A detached
//   worker keeps the pool's internal state alive until its thread exits, and the interpreter's
//   finalization still stops it and waits for it (see "Finalization") while it runs.
// - Thread-safety: every member function may be called from any thread, concurrently; callables
//   run on the workers. wait() and shutdown() called from one of this pool's own workers would
//   deadlock: they report misuse_kind::pool_call_from_worker and throw pool_error instead (stop()
//   and detach() never block, and are allowed there). On its own worker, a submit to a full queue
//   fails with queue_full instead of blocking.
// - On demand (options.spawn_on_demand), as concurrent.futures.ThreadPoolExecutor does: the
//   constructor starts no worker. A submit starts the next worker (index 0, 1, ... in start
//   order) when the task it queues would otherwise wait, i.e. when the queued tasks outnumber the
//   started workers not busy with a task (idle, being woken, finishing a task whose future is
//   already ready, or still starting), and fewer than options.workers have started; so one task
//   at a time keeps reusing worker 0. The thread is created by the submitting thread, outside the
//   pool's lock; the submit does not wait for the start hook. If the thread cannot be created
//   (std::system_error) while a worker has started, the task stays queued and a started worker
//   takes it; with none started the submit throws that error and the task is not queued (tasks
//   other submits queued meanwhile, counting on that thread, complete with the same error).
//   A start hook that throws breaks the pool, as shutdown(shutdown_mode::cancel) would: tasks
//   still queued complete with pool_error(start_hook_failed) without running, later submits throw
//   it (its message names the worker and the hook's error), workers already running finish their
//   task and run their stop hooks; the failure also goes to options.on_error (where "start
//   hook"). The broken pool is joined by shutdown() or the destructor as usual. Only started
//   workers exist for stats(), the thread report, shutdown and finalization.
// - The GIL: submitting, waiting and shutting down from a thread that holds the GIL release it
//   while they block (a worker's Python task may need it) and take it back before returning.
// - Binding: a pool constructed by a thread that holds the GIL binds pyattach's gate
//   (interpreter.hpp, "Binding"). In a program that initializes CPython itself, a pool made
//   without the GIL before anything bound the gate cannot run Python tasks: they complete with
//   pool_error(not_bound) until pyattach::bind() is called.
// - Finalization: pyattach's gate (interpreter.hpp) stops every pool before it closes, while
//   Python can still be attached: submissions are refused with pool_error(finalizing), tasks
//   still queued complete with pool_error(finalizing) without running, and the closer waits
//   (GIL released, within its close timeout) for each worker to finish its running task and run
//   its stop hook. A worker still busy when that bound expires runs its stop hook later, with
//   worker_context::python == finalizing or finalized if it asked for Python. The threads are
//   joined by shutdown() or the destructor. A pool does not outlive the interpreter it ran under.
//   A worker that pyattach parks (its task's detach_scope ended after the gate closed on it;
//   attach.hpp, "Exit") fails that task's future with pool_error(finalizing) and is not joined:
//   shutdown() and the destructor let it go, and the process exits without it. A pool that was
//   stopped (stop(), detach()) but whose workers still run is stopped the same way: its queue is
//   abandoned with pool_error(finalizing) and the closer waits for its workers, detached or not.
// - Captured Python objects: a task's callable is destroyed on the worker, right after it ran,
//   while attached for a Python task. A task that is cancelled or refused is destroyed on the
//   thread that cancelled or refused it, possibly without the GIL: do not capture owned Python
//   references in tasks that may be cancelled.
// - fork(): a pool's threads do not exist in a child process; do not use the pool there.
// - Interpreter (options.interpreter, CPython 3.12+ for any but the main one): the workers'
//   Python tasks and Python hooks attach to that interpreter (attach_scope(handle),
//   subinterpreter.hpp), each worker keeping one state in it. Pools on interpreters that have
//   their own GIL run Python in parallel. A task must only use objects of that interpreter
//   (CPython's objects are not shared between interpreters). When that interpreter ends
//   (subinterpreter::end(), or Python ends it), end() waits for a batch in progress (each ends
//   within half the switch interval), and later Python tasks complete with
//   pool_error(finalizing) without running; C++ tasks still run. The main interpreter's
//   finalization stops the pool as above, whatever its interpreter.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pyattach/attach.hpp"
#include "pyattach/diagnostics.hpp"
#include "pyattach/subinterpreter.hpp"

namespace pyattach {

// A Python exception raised in a task, captured while the worker was attached.
class python_error : public std::runtime_error {
 public:
  python_error(std::string type_name, std::string message, std::string traceback);
  // Takes the calling thread's current Python exception (and clears it). PRECONDITION: attached.
  // With no exception set, returns a python_error of type "SystemError".
  static python_error fetch();
  const std::string& type_name() const noexcept { return type_name_; }  // e.g. "ValueError"
  const std::string& message() const noexcept { return message_; }      // str(exception)
  const std::string& traceback() const noexcept { return traceback_; }  // traceback.format_exception

 private:
  std::string type_name_, message_, traceback_;
};

// Why a pool refused or abandoned work.
enum class pool_errc : std::uint8_t {
  shut_down,           // submitted after shutdown(), stop() or detach() began
  cancelled,           // queued when shutdown() or stop() with shutdown_mode::cancel ran: never
                       // started
  finalizing,          // the interpreter is finalizing or gone: refused, or never started
  queue_full,          // options.max_queued reached and options.when_full == full_policy::fail
  start_hook_failed,   // a worker's start hook threw: the constructor stopped the pool, or (on
                       // demand) the pool broke: queued tasks were abandoned, submits refused
  called_from_worker,  // wait() or shutdown() on one of this pool's own workers (would deadlock)
  not_bound,           // a Python task's attach was refused with attach_status::not_bound: the
                       // pool was made before pyattach was bound (interpreter.hpp, "Binding")
};
const char* to_string(pool_errc code) noexcept;

class pool_error : public std::runtime_error {
 public:
  pool_error(pool_errc code, const std::string& what);
  pool_errc code() const noexcept { return code_; }

 private:
  pool_errc code_;
};

// What a hook is told about the worker it runs on.
struct worker_context {
  const std::string& pool_name;
  std::size_t index;          // 0 .. workers-1
  const std::string& name;    // "<pool><separator><index>": the Python thread name
  // For a hook that asked for Python: attached if the worker is attached for it; anything else if
  // the attach was refused (the interpreter is finalizing or gone): the hook must then not call
  // Python. Always not_initialized for a hook that did not ask.
  attach_status python;
};

// A failure that has no future to go to (post() tasks, stop hooks), for options.on_error.
struct task_failure {
  std::string pool_name;
  std::size_t worker_index;   // static_cast<std::size_t>(-1): the task never reached a worker
  const char* where;          // "task", "stop hook", or "start hook" (spawn_on_demand only)
  std::exception_ptr error;   // a pool_error, python_error, or whatever the callable threw
  std::string what;           // error's what(), or "unknown exception"
};

enum class shutdown_mode : std::uint8_t {
  drain,   // run every queued task, then stop
  cancel,  // tasks not yet started complete with pool_error(cancelled); running ones finish
};

enum class full_policy : std::uint8_t {
  block,  // submit waits (GIL released) until the queue has room
  fail,   // submit throws pool_error(queue_full)
};

struct pool_options {
  // Workers are named "<name><name_separator><index>" in Python and in stats; the OS name (the
  // kernel keeps 15 characters) shortens <name> so that "<name_separator><index>" stays visible.
  std::string name = "pool";
  std::string name_separator = "-";  // "_" gives ThreadPoolExecutor's "<prefix>_<index>"
  std::size_t workers = 1;        // at least 1; with spawn_on_demand, the most that may start
  // Start workers lazily, one per submit that would otherwise wait (see "On demand" above),
  // instead of all of them in the constructor.
  bool spawn_on_demand = false;
  std::size_t max_queued = 0;     // tasks waiting to start; 0: unbounded
  full_policy when_full = full_policy::block;
  std::function<void(const worker_context&)> on_start;  // on each worker, before its first task
  bool start_hook_python = false;                        // run on_start attached
  std::function<void(const worker_context&)> on_stop;   // on each worker, after its last task
  bool stop_hook_python = false;                         // run on_stop attached
  // Failures with no future: post() tasks that threw or were cancelled or refused, stop hooks.
  // Called on the worker (or, for a task that never reached one, on the thread that cancelled
  // it: shutdown()'s, or the finalizing thread with the GIL held); must not throw and must not
  // call into this pool. Default: one line to stderr.
  std::function<void(const task_failure&)> on_error;
  // Measure each worker's wait to attach and time attached (one clock read more per batch of
  // Python tasks: see the worker loop).
  bool measure_python_time = false;
  // Run Python tasks queued behind each other under one attach (see the worker loop). Batches
  // cost a fraction of an attach per task, but hand the GIL over less often: a batch holds it for
  // at most half of sys.getswitchinterval(), then pauses 50 us so that a thread waiting for the
  // GIL takes it, so another thread waits about the interval at most (2 workers, Debian 3.11,
  // 5 ms interval: p99 1.9 ms with Python calls, 4.8 ms with C-API-only tasks; with one attach
  // per task, 0.4 ms; docs/benchmarks.md, "Pools"). false: one attach per Python task.
  bool batch_python = true;
  // The interpreter the workers' Python tasks and hooks attach to (see "Interpreter" above).
  subinterpreter interpreter = subinterpreter::main();
};

struct worker_stats {
  std::string name;               // "<pool><separator><index>"
  std::uint64_t os_tid = 0;       // the kernel's thread id
  std::uint64_t tasks = 0;        // tasks it took from the queue (ran, or was refused to run)
  // attach_scopes it made: one per batch of Python tasks (see the worker loop), so at most its
  // Python tasks, fewer when they queued up behind each other; and one per hook run attached
  // (start_hook_python, stop_hook_python).
  std::uint64_t attaches = 0;
  // Time inside callables (tasks and hooks): each C++ task and hook, and each batch of Python
  // tasks from attached to its last task's end (the clock is read per batch, not per task).
  std::chrono::nanoseconds busy{0};
  std::chrono::nanoseconds attach_wait{0};   // waiting for the GIL (measure_python_time)
  std::chrono::nanoseconds attached{0};      // attached for tasks (measure_python_time)
  bool named_in_python = false;   // threading.current_thread().name was set
};

// A snapshot; counters are monotonic. started = sum of the workers' tasks; completed counts
// successes; failed counts tasks that ran and threw (or left a Python error); cancelled counts
// tasks completed without running (shutdown(cancel), finalization, a refused attach, a broken
// on-demand pool). workers lists the started workers only, in index order.
struct pool_stats {
  std::string name;
  std::uint64_t submitted = 0, started = 0, completed = 0, failed = 0, cancelled = 0;
  std::size_t queued = 0;
  std::vector<worker_stats> workers;
};

namespace detail {
class pool_core;

// A queued unit of work: the callable and what completes it. Exactly one of run()+complete() or
// abandon() happens, once. run() and complete() are separate so that the pool's counters are
// updated before the future becomes ready (a caller that saw every future ready sees them).
class pool_task {
 public:
  pool_task(bool python, bool has_future) noexcept : python_(python), has_future_(has_future) {}
  virtual ~pool_task() = default;
  pool_task(const pool_task&) = delete;
  pool_task& operator=(const pool_task&) = delete;
  // Runs the callable and keeps its result. Returns the failure (nullptr on success).
  virtual std::exception_ptr run() noexcept = 0;
  // Makes the future, if any, ready with what run() kept.
  virtual void complete() noexcept = 0;
  // Makes the future, if any, ready with `why` without running the callable.
  virtual void abandon(std::exception_ptr why) noexcept = 0;
  bool python() const noexcept { return python_; }
  // False for post(): the pool sends failures to options.on_error instead.
  bool has_future() const noexcept { return has_future_; }
  pool_task* next = nullptr;  // the pool's queue link (owned by the pool while queued)

 private:
  bool python_;
  bool has_future_;
};

// Captures the Python exception a Python task left set when it returned, as python_error, and
// clears it. PRECONDITION: attached. nullptr if no Python error is set.
std::exception_ptr take_python_error() noexcept;

// Runs store(fn) and returns what it threw, or the Python error it left set (Python tasks only).
template <class F, class Store>
std::exception_ptr run_callable(bool python, F& fn, Store&& store) noexcept {
  try {
    store(fn);
  } catch (...) {
    std::exception_ptr e = std::current_exception();
    if (python) (void)take_python_error();  // never leak a Python error into the next task
    return e;
  }
  return python ? take_python_error() : nullptr;
}

template <class F, class R>
class future_task final : public pool_task {
 public:
  future_task(bool python, F fn) : pool_task(python, true), fn_(std::move(fn)) {}
  std::future<R> future() { return promise_.get_future(); }
  std::exception_ptr run() noexcept override {
    error_ = run_callable(python(), fn_, [this](F& f) { value_.emplace(f()); });
    return error_;
  }
  void complete() noexcept override {
    if (error_) {
      promise_.set_exception(error_);
    } else {
      promise_.set_value(std::move(*value_));
    }
  }
  void abandon(std::exception_ptr why) noexcept override { promise_.set_exception(why); }

 private:
  F fn_;
  std::optional<R> value_;
  std::exception_ptr error_;
  std::promise<R> promise_;
};

template <class F>
class future_task<F, void> final : public pool_task {
 public:
  future_task(bool python, F fn) : pool_task(python, true), fn_(std::move(fn)) {}
  std::future<void> future() { return promise_.get_future(); }
  std::exception_ptr run() noexcept override {
    error_ = run_callable(python(), fn_, [](F& f) { f(); });
    return error_;
  }
  void complete() noexcept override {
    if (error_) {
      promise_.set_exception(error_);
    } else {
      promise_.set_value();
    }
  }
  void abandon(std::exception_ptr why) noexcept override { promise_.set_exception(why); }

 private:
  F fn_;
  std::exception_ptr error_;
  std::promise<void> promise_;
};

template <class F>
class posted_task final : public pool_task {
 public:
  posted_task(bool python, F fn) : pool_task(python, false), fn_(std::move(fn)) {}
  std::exception_ptr run() noexcept override {
    return run_callable(python(), fn_, [](F& f) { f(); });
  }
  void complete() noexcept override {}
  void abandon(std::exception_ptr) noexcept override {}

 private:
  F fn_;
};
}  // namespace detail

class thread_pool {
 public:
  // Starts options.workers threads and runs their start hooks. Throws pool_error
  // (start_hook_failed, with the hook's message) after stopping every worker if a hook threw,
  // std::invalid_argument for workers == 0, std::system_error if a thread cannot start.
  // With options.spawn_on_demand it starts no thread and throws only std::invalid_argument.
  explicit thread_pool(pool_options options, source_site site = source_site::current());
  // Convenience: thread_pool("custom_pool", 1).
  thread_pool(std::string name, std::size_t workers, source_site site = source_site::current());
  ~thread_pool();  // shutdown(shutdown_mode::drain)
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  // Runs fn() on a worker WITHOUT attaching: it must not call Python. The future receives its
  // result (returned by value) or exception. Throws pool_error (shut_down, finalizing,
  // queue_full, start_hook_failed) if refused; on demand, std::system_error if it had to start
  // the first worker and could not (see "On demand").
  template <class F>
  auto submit(F&& fn) -> std::future<std::invoke_result_t<std::decay_t<F>&>> {
    return submit_impl(false, std::forward<F>(fn));
  }
  // Runs fn() on a worker attached to Python (an attach_scope around it). A Python exception set
  // when fn returns (a C API call returned NULL) arrives as python_error, as does a thrown one.
  template <class F>
  auto submit_python(F&& fn) -> std::future<std::invoke_result_t<std::decay_t<F>&>> {
    return submit_impl(true, std::forward<F>(fn));
  }
  // Fire and forget: failures go to options.on_error. Refusal throws as for submit().
  // Returns true if this call started a worker (spawn_on_demand; see "On demand"): its start
  // hook runs next on that thread, whichever worker takes the task.
  template <class F>
  bool post(F&& fn) {
    using T = detail::posted_task<std::decay_t<F>>;
    return enqueue(std::unique_ptr<detail::pool_task>(new T(false, std::forward<F>(fn))));
  }
  template <class F>
  bool post_python(F&& fn) {
    using T = detail::posted_task<std::decay_t<F>>;
    return enqueue(std::unique_ptr<detail::pool_task>(new T(true, std::forward<F>(fn))));
  }

  // Blocks until the queue is empty and no task is running (GIL released while waiting).
  // From one of this pool's workers: misuse, throws pool_error(called_from_worker).
  void wait(source_site site = source_site::current());
  // stop(mode), then joins the workers once they ran their stop hooks (GIL released while
  // joining), except detached or parked ones. Idempotent; a second call waits for the first to
  // finish. From one of this pool's workers: misuse, throws pool_error(called_from_worker).
  void shutdown(shutdown_mode mode = shutdown_mode::drain,
                source_site site = source_site::current());
  // Stops accepting work (later submits throw pool_error(shut_down)) and, for cancel, completes
  // every task still queued with pool_error(cancelled) (posts: on_error); returns at once. The
  // workers finish the queue (drain) and their running tasks, run their stop hooks and exit on
  // their own. Idempotent, and never blocks: allowed on the pool's own workers. A later call with
  // cancel still cancels what is queued then.
  void stop(shutdown_mode mode = shutdown_mode::drain);
  // stop(drain) unless the pool is already stopped, then lets the threads go
  // (std::thread::detach): shutdown() and the destructor no longer join them, and the destructor
  // may then run on one of the pool's own workers without a misuse report. Never blocks; allowed
  // on any thread. Until they exit, the workers still appear in the thread report and are
  // stopped and waited for by the interpreter's finalization.
  void detach() noexcept;

  pool_stats stats() const;
  const std::string& name() const noexcept;
  std::size_t size() const noexcept;  // options.workers (on demand: the most that may start)
  const subinterpreter& interpreter() const noexcept;  // options.interpreter
  // True on one of this pool's workers.
  bool on_worker() const noexcept;

 private:
  template <class F>
  auto submit_impl(bool python, F&& fn) -> std::future<std::invoke_result_t<std::decay_t<F>&>> {
    using R = std::invoke_result_t<std::decay_t<F>&>;
    auto task =
        std::make_unique<detail::future_task<std::decay_t<F>, R>>(python, std::forward<F>(fn));
    std::future<R> f = task->future();
    enqueue(std::move(task));
    return f;
  }
  bool enqueue(std::unique_ptr<detail::pool_task> task);

  std::shared_ptr<detail::pool_core> core_;
};

}  // namespace pyattach

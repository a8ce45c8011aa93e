// src/pool_internal.hpp — what the two halves of thread_pool share: a worker's record, the
// pool's core (its state and its locking rules), the registry of pools, and gil_released.
// pool.cpp submits, waits, stops and reports; pool_worker.cpp is the worker loop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "internal.hpp"
#include "pyattach/pool.hpp"

namespace pyattach::detail {

// ---- the pool's shared state -------------------------------------------------------------------

using steady = std::chrono::steady_clock;

// One worker. Protected by: `name` and `os_name` are set by pool_core's constructor; `thread` is
// set by the thread that created it before the worker is counted in pool_core::started (under
// the pool mutex), and after that read, moved out (to join) or detached only under the pool mutex;
// the atomics are written only by the worker (plain load+store) and read relaxed by stats();
// os_tid is published before the start report (under the pool mutex).
struct worker_rec {
  std::string name;     // "<pool><separator><index>"
  std::string os_name;  // the same, shortened to 15 characters for the kernel
  std::thread thread;
  std::atomic<std::uint64_t> os_tid{0};
  std::atomic<std::uint64_t> tasks{0}, completed{0}, failed{0}, refused{0};
  std::atomic<std::uint64_t> attaches{0};  // attach_scopes made: per batch, and per Python hook
  std::atomic<std::int64_t> busy_ns{0}, attach_wait_ns{0}, attached_ns{0};
  std::atomic<bool> named_in_python{false};
  std::uint64_t named_generation = 0;  // worker-only: the generation its Python name was set in
  // worker-only: sys.getswitchinterval() in ns, read with the name (once per interpreter
  // generation): the longest a batch of Python tasks holds the GIL (run_python).
  std::int64_t switch_interval_ns = 5000000;
  pool_task* current = nullptr;        // worker-only: the task it is running
  bool done = false;                   // protected by pool_core::m: past its stop hook
  bool parked = false;                 // protected by pool_core::m: parked for good (attach.cpp)
};

class pool_core : public std::enable_shared_from_this<pool_core> {
 public:
  pool_core(pool_options options, source_site site);
  void start();
  // Returns true if it started a worker (on demand) for this task.
  bool enqueue(std::unique_ptr<pool_task> task);
  void wait(const source_site& site);
  void shutdown(shutdown_mode mode, const source_site& site);
  // Stops accepting; for cancel, abandons the queue with pool_error(cancelled, `why`). Never
  // blocks (but for the pool mutex).
  void stop(shutdown_mode mode, const char* why);
  void detach() noexcept;
  void destroy(void* code) noexcept;  // ~thread_pool; `code`: the code that destroyed it
  void stop_for_finalization() noexcept;
  // Waits until every worker is past its stop hook, or `deadline`. PRECONDITION: not on one of
  // this pool's workers, and no GIL held (a stop hook may need it).
  void wait_workers_done(std::chrono::steady_clock::time_point deadline) noexcept;
  void worker_parked() noexcept;  // on a worker that pyattach parks (note_worker_parked)
  pool_stats stats() const;
  bool on_worker() const noexcept;
  void worker_tids(std::vector<std::pair<std::uint64_t, std::string>>& out) const;

  const pool_options opts;
  const source_site site;             // where the pool was made
  const std::uint64_t creator_tid;    // the thread that made it

 private:
  void worker_main(std::size_t index);
  // Runs one task on worker w (never attaching) and counts it: completed or failed, and no
  // longer busy. Returns its failure; the caller makes its future ready (complete()).
  std::exception_ptr run_counted(worker_rec& w, pool_task& task);
  void run_task(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task);
  // A Python task, and the Python tasks queued right behind it, under one attach (a batch).
  // Returns with the last task it ran still counted in `running`, as run_task does.
  void run_python(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task);
  // A Python task the gate refused (status): fails it with pool_error and counts it. Returns the
  // failure to report to on_error, or null if the task's future carries it.
  std::exception_ptr refuse_python(worker_rec& w, std::unique_ptr<pool_task> task,
                                   attach_status status);
  // Under m: pops the queue's head and counts it as running on this worker.
  pool_task* pop_locked(worker_rec& w) noexcept;
  std::exception_ptr run_hook(const std::function<void(const worker_context&)>& hook, bool python,
                              worker_rec& w, std::size_t index);
  void name_in_python(worker_rec& w) noexcept;
  void report_failure(std::size_t index, const char* where, std::exception_ptr e) noexcept;
  void abandon_all(pool_task* list, pool_errc code, const char* why) noexcept;
  void abandon_all(pool_task* list, std::exception_ptr why) noexcept;
  // On demand: creates the thread that enqueue() counted in `launching` (without m held) and
  // registers it as the next worker; `mine` is the task that enqueue queued. See pool.hpp.
  // Returns true if the thread was created.
  bool launch_on_demand(pool_task* mine);
  // On demand: a start hook threw. Breaks the pool (see pool.hpp, "On demand").
  void break_on_start_failure(std::size_t index, std::exception_ptr e) noexcept;
  std::string start_failure_message(std::size_t index, std::exception_ptr e) const;
  // Reports misuse_kind::pool_call_from_worker (at `at`, or else at code address `code`).
  void report_from_worker(const char* call, const source_site* at, void* code) noexcept;
  [[noreturn]] void refuse_from_worker(const char* call, const source_site& at);
  // Joins every worker thread still held (but this thread's own and parked ones, which it lets
  // go), after any thread being created is registered.
  void join_workers();
  void mark_done(worker_rec& w) noexcept;
  // Stops taking work: workers leave once the queue is empty. Returns the queue, emptied, if
  // `take_queue` (the caller abandons it, outside the lock). PRECONDITION: m held.
  pool_task* stop_locked(bool take_queue) noexcept;
  // After stop_locked, with m released: wakes the idle workers and the blocked submitters.
  void wake_all() noexcept;

  // Protected by m: everything below up to `workers`.
  mutable std::mutex m;
  std::condition_variable work_cv;   // workers: a task was queued, or stop
  std::condition_variable space_cv;  // submitters blocked on max_queued
  std::condition_variable idle_cv;   // wait(): queue empty and nothing running
  std::condition_variable state_cv;  // start reports, shutdown finished
  pool_task* head = nullptr;         // FIFO, linked through pool_task::next
  pool_task* tail = nullptr;
  std::size_t queued = 0;
  std::size_t running = 0;           // tasks popped and not yet finished
  std::size_t idle_workers = 0;      // workers waiting on work_cv
  std::size_t wakeups_pending = 0;   // notify_one calls whose worker has not woken yet
  std::size_t blocked_submitters = 0;
  std::size_t waiters = 0;           // threads in wait()
  std::size_t start_reports = 0;
  std::size_t workers_done = 0;      // workers past their stop hook (or their failed start)
  std::size_t started = 0;           // workers whose thread exists: workers[0, started)
  std::size_t launching = 0;         // on demand: threads being created, not yet in `started`
  std::exception_ptr start_error;
  std::size_t start_error_worker = 0;
  bool accepting = true;
  bool stopping = false;             // workers leave once the queue is empty
  bool finalizing = false;           // stopped by the gate: refusals say "finalizing"
  bool broken = false;               // on demand: a start hook threw; refusals say broken_why
  std::string broken_why;
  bool detached = false;             // detach(): threads let go, never joined
  bool shutdown_started = false, shutdown_done = false;
  std::uint64_t submitted = 0, cancelled = 0;

  // On demand: tasks popped whose completion has not begun. Incremented by the worker under m
  // when it pops, decremented before the task's future is made ready (without m), so that a
  // submitter who saw the future ready never counts that worker as busy: it is about to look at
  // the queue again.
  std::atomic<std::size_t> busy{0};

  std::vector<worker_rec> workers;   // sized once in the constructor; never resized (atomics)
};

// Every pool, for the gate's finalization stop and the thread report. Protected by its mutex.
struct pool_registry {
  std::mutex mutex;
  std::vector<std::weak_ptr<pool_core>> pools;
};
pool_registry& pools();

// The pool whose worker this thread is (nullptr elsewhere), and which worker.
extern thread_local pool_core* tls_worker_of;
extern thread_local std::size_t tls_worker_index;

// Releases the GIL for the lifetime of the object if the calling thread holds it, so that a
// blocking wait cannot starve a worker's Python task. Must be made before any pool lock is taken
// and end after it is released: taking the GIL back while holding the pool mutex would invert
// the lock order with a worker that holds the GIL and wants the mutex.
class gil_released {
 public:
  explicit gil_released(const source_site& site) {
    if (is_attached()) nogil_.emplace(site);
  }

 private:
  std::optional<detach_scope> nogil_;
};

}  // namespace pyattach::detail

// src/pool.cpp — thread_pool: the queue, the worker loop, shutdown, and the finalization stop.
// The contract and the worker loop in pseudo-code are in include/pyattach/pool.hpp.
#include "pyattach/pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "internal.hpp"

namespace pyattach {

// ---- errors ------------------------------------------------------------------------------------

python_error::python_error(std::string type_name, std::string message, std::string traceback)
    : std::runtime_error(type_name + ": " + message),
      type_name_(std::move(type_name)),
      message_(std::move(message)),
      traceback_(std::move(traceback)) {}

namespace {
// str(obj), or `fallback` if that fails (the failure is cleared). PRECONDITION: attached.
std::string str_of(PyObject* obj, const char* fallback) {
  PyObject* s = obj ? PyObject_Str(obj) : nullptr;
  const char* utf8 = s ? PyUnicode_AsUTF8(s) : nullptr;
  std::string out = utf8 ? utf8 : fallback;
  Py_XDECREF(s);
  if (utf8 == nullptr) PyErr_Clear();
  return out;
}
}  // namespace

python_error python_error::fetch() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  if (type == nullptr) return python_error("SystemError", "no Python exception was set", "");
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr && value != nullptr) PyException_SetTraceback(value, tb);
  std::string name = PyType_Check(type) ? reinterpret_cast<PyTypeObject*>(type)->tp_name : "?";
  std::string message = str_of(value, "<str() failed>");
  // "".join(traceback.format_exception(type, value, tb)): what Python itself would print.
  std::string text;
  PyObject* mod = PyImport_ImportModule("traceback");
  PyObject* lines = mod ? PyObject_CallMethod(mod, "format_exception", "OOO", type,
                                              value ? value : Py_None, tb ? tb : Py_None)
                        : nullptr;
  PyObject* empty = lines ? PyUnicode_FromString("") : nullptr;
  PyObject* joined = empty ? PyUnicode_Join(empty, lines) : nullptr;
  text = joined ? str_of(joined, "") : name + ": " + message + "\n";
  if (joined == nullptr) PyErr_Clear();
  Py_XDECREF(joined);
  Py_XDECREF(empty);
  Py_XDECREF(lines);
  Py_XDECREF(mod);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return python_error(std::move(name), std::move(message), std::move(text));
}

const char* to_string(pool_errc code) noexcept {
  switch (code) {
    case pool_errc::shut_down: return "shut_down";
    case pool_errc::cancelled: return "cancelled";
    case pool_errc::finalizing: return "finalizing";
    case pool_errc::queue_full: return "queue_full";
    case pool_errc::start_hook_failed: return "start_hook_failed";
    case pool_errc::called_from_worker: return "called_from_worker";
    case pool_errc::not_bound: return "not_bound";
  }
  return "unknown";
}

pool_error::pool_error(pool_errc code, const std::string& what)
    : std::runtime_error(what), code_(code) {}

namespace detail {

std::exception_ptr take_python_error() noexcept {
  if (PyErr_Occurred() == nullptr) return nullptr;
  try {
    return std::make_exception_ptr(python_error::fetch());
  } catch (...) {
    PyErr_Clear();
    return std::current_exception();  // std::bad_alloc while describing it
  }
}

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
  void run_task(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task);
  // A Python task, and the Python tasks queued right behind it, under one attach (a batch).
  // Returns with the last task it ran still counted in `running`, as run_task does.
  void run_python(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task);
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
pool_registry*& pools_ptr() {
  static pool_registry* r = new pool_registry;  // never destroyed: workers may outlive main()
  return r;
}
pool_registry& pools() { return *pools_ptr(); }

// The pool whose worker this thread is (nullptr elsewhere), and which worker.
thread_local pool_core* tls_worker_of = nullptr;
thread_local std::size_t tls_worker_index = 0;

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

std::string shorten_for_kernel(const std::string& name, const std::string& suffix) {
  // The kernel keeps 15 characters (TASK_COMM_LEN 16 with the NUL); keep the index visible.
  const std::size_t room = suffix.size() >= 15 ? 0 : 15 - suffix.size();
  return name.substr(0, room) + suffix;
}

pool_core::pool_core(pool_options options, source_site made_at)
    : opts(std::move(options)), site(made_at), creator_tid(this_os_tid()), workers(opts.workers) {
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const std::string suffix = opts.name_separator + std::to_string(i);
    workers[i].name = opts.name + suffix;
    workers[i].os_name = shorten_for_kernel(opts.name, suffix);
  }
}

void pool_core::start() {
  {
    // Entries of pools that are gone go here: a detached pool's entry stays until its core is
    // freed, when its last worker exits (shutdown() erases the others').
    std::lock_guard<std::mutex> lock(pools().mutex);
    auto& v = pools().pools;
    v.erase(std::remove_if(v.begin(), v.end(), [](const auto& p) { return p.expired(); }),
            v.end());
    v.push_back(weak_from_this());
  }
  if (opts.spawn_on_demand) return;  // the submits that need them start the workers
  std::size_t launched = 0;
  try {
    for (; launched < workers.size(); ++launched) {
      // The thread holds the core: a pool destroyed from its own worker cannot free it early.
      workers[launched].thread =
          std::thread([self = shared_from_this(), launched] { self->worker_main(launched); });
      std::lock_guard<std::mutex> lock(m);
      ++started;
    }
  } catch (...) {
    // std::system_error: stop what started (their start reports still come), then rethrow.
    {
      std::lock_guard<std::mutex> lock(m);
      stop_locked(false);
    }
    wake_all();
    join_workers();
    throw;
  }
  std::exception_ptr failed;
  std::size_t failed_worker = 0;
  {
    gil_released nogil(site);  // start hooks that ask for Python need the GIL
    std::unique_lock<std::mutex> lock(m);
    state_cv.wait(lock, [&] { return start_reports == workers.size(); });
    failed = start_error;
    failed_worker = start_error_worker;
  }
  if (failed) {
    shutdown(shutdown_mode::drain, site);  // the others run their stop hooks, exactly once
    throw pool_error(pool_errc::start_hook_failed, start_failure_message(failed_worker, failed));
  }
}

std::string pool_core::start_failure_message(std::size_t index, std::exception_ptr e) const {
  std::string what = "unknown exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    what = x.what();
  } catch (...) {
  }
  return "pyattach::thread_pool '" + opts.name + "': the start hook of worker " +
         workers[index].name + " threw: " + what + "; the pool was stopped";
}

bool pool_core::launch_on_demand(pool_task* mine) {
  std::promise<std::size_t> index;
  std::thread t;
  std::exception_ptr failed;
  try {
    // The thread holds the core (as in start()). It learns its index once it is registered, so
    // that indices stay dense, in start order, when another creation fails meanwhile.
    t = std::thread([self = shared_from_this(), at = index.get_future()]() mutable {
      self->worker_main(at.get());
    });
  } catch (...) {
    failed = std::current_exception();  // std::system_error (or std::bad_alloc)
  }
  std::unique_lock<std::mutex> lock(m);
  --launching;
  if (!failed) {
    const std::size_t i = started++;
    if (detached) {
      t.detach();
    } else {
      workers[i].thread = std::move(t);
    }
    lock.unlock();
    state_cv.notify_all();  // join_workers and wait_workers_done wait for launching == 0
    index.set_value(i);
    return true;
  }
  // A started worker takes the task: it is queued, and workers leave only with the queue empty
  // (or take it to abandon it). The submit succeeded.
  if (started > 0) return false;
  // None started: none can take it. Unqueue it (unless a stop already took it and completed it)
  // and fail the submit. If no other creation is under way either, the tasks other submits
  // queued meanwhile, counting on this thread or on one that also failed, have no worker coming:
  // they complete with the same error.
  bool unqueued = false;
  for (pool_task **link = &head, *prev = nullptr; *link != nullptr; prev = *link, link = &prev->next) {
    if (*link != mine) continue;
    *link = mine->next;
    if (tail == mine) tail = prev;
    --queued;
    --submitted;
    unqueued = true;
    break;
  }
  pool_task* stranded = nullptr;
  if (launching == 0) {
    stranded = head;
    head = tail = nullptr;
    queued = 0;
  }
  if (waiters > 0 && running == 0 && head == nullptr) idle_cv.notify_all();
  lock.unlock();
  space_cv.notify_all();
  abandon_all(stranded, failed);
  if (unqueued) {
    delete mine;
    std::rethrow_exception(failed);
  }
  return false;
}

// ---- the worker ----------------------------------------------------------------------------------

void pool_core::worker_main(std::size_t index) {
  worker_rec& w = workers[index];
  tls_worker_of = this;
  tls_worker_index = index;
  pthread_setname_np(pthread_self(), w.os_name.c_str());
  w.os_tid.store(this_os_tid(), std::memory_order_relaxed);
  obs_worker_start(opts.name, w.name);

  std::exception_ptr start_failed;
  if (opts.on_start) start_failed = run_hook(opts.on_start, opts.start_hook_python, w, index);
  if (start_failed && opts.spawn_on_demand) break_on_start_failure(index, start_failed);
  {
    std::lock_guard<std::mutex> lock(m);
    if (start_failed && !start_error) {
      start_error = start_failed;
      start_error_worker = index;
    }
    ++start_reports;
  }
  state_cv.notify_all();
  if (start_failed) {  // never started: no tasks, no stop hook
    mark_done(w);
    return;
  }

  std::unique_ptr<pool_task> task;
  bool finished_one = false;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(m);
      if (finished_one) {  // the previous task's end, under the same lock as the next pop
        finished_one = false;
        --running;
        if (waiters > 0 && running == 0 && head == nullptr) idle_cv.notify_all();
      }
      while (head == nullptr && !stopping) {
        ++idle_workers;
        work_cv.wait(lock);  // idle: no GIL held here (invariant 3)
        --idle_workers;
        if (wakeups_pending > 0) --wakeups_pending;  // (a spurious wake-up may take one: harmless)
      }
      if (head == nullptr) break;  // stopping, and nothing left to drain
      task.reset(pop_locked(w));
    }
    if (task->python()) {
      run_python(w, index, std::move(task));
    } else {
      run_task(w, index, std::move(task));
    }
    finished_one = true;
  }
  if (opts.on_stop) {
    if (std::exception_ptr e = run_hook(opts.on_stop, opts.stop_hook_python, w, index)) {
      report_failure(index, "stop hook", e);
    }
  }
  mark_done(w);
  tls_worker_of = nullptr;
  // Thread exit next: the core's clean-up destroys this worker's thread state on this thread
  // (and, <= 3.12, its threading._active entry), through the gate (attach.cpp).
}

pool_task* pool_core::pop_locked(worker_rec& w) noexcept {
  pool_task* t = head;
  head = head->next;
  if (head == nullptr) tail = nullptr;
  --queued;
  ++running;
  if (opts.spawn_on_demand) busy.fetch_add(1, std::memory_order_relaxed);
  if (blocked_submitters > 0) space_cv.notify_one();
  w.tasks.store(w.tasks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return t;
}

void pool_core::run_task(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task) {
  // A C++ task: never attached.
  const bool has_future = task->has_future();
  const auto t0 = steady::now();
  w.current = task.get();  // its own scopes may park this worker too
  const bool traced = tracing_anywhere();
  const std::uint64_t number = w.tasks.load(std::memory_order_relaxed);
  if (traced) obs_task(true, number);
  const std::exception_ptr failure = task->run();
  if (traced) obs_task(false, number);
  w.current = nullptr;
  // The counters are updated before the future is made ready (complete()), so that whoever saw
  // every future ready also sees them in stats(), and, on demand, sees this worker not busy.
  if (opts.spawn_on_demand) busy.fetch_sub(1, std::memory_order_relaxed);
  w.busy_ns.store(w.busy_ns.load(std::memory_order_relaxed) + (steady::now() - t0).count(),
                  std::memory_order_relaxed);
  std::atomic<std::uint64_t>& c = failure ? w.failed : w.completed;
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  task->complete();
  task.reset();
  if (failure && !has_future) report_failure(index, "task", failure);
}

// Batching. Attaching costs more than a trivial Python task (and, with two workers, each attach
// may hand the GIL over), so a worker that finds more Python tasks at the head of its queue when
// a Python task ends runs them under the same attach_scope: it pops the next one under the pool
// mutex while still attached (the lock order is GIL, then m: nothing takes the GIL holding m) and
// never waits on work_cv attached (invariant 3: no GIL held while idle). The batch ends, and the
// worker detaches, when:
//   - the queue is empty, or its head is a C++ task (C++ tasks never run attached);
//   - a posted task failed: on_error is called detached, as for an unbatched task;
//   - the batch has held the GIL for half of sys.getswitchinterval() (the time bound, below).
// The time bound. A thread waiting for the GIL waits switch_interval, then sets CPython's drop
// request, which the holder honours only while it runs bytecode (the eval breaker), or when it
// releases the GIL: PyEval_SaveThread then hands the GIL over to the waiter (FORCE_SWITCHING).
// Tasks that call Python code therefore give the GIL away inside the batch on their own; tasks
// that only use the C API never would, so a batch must end by itself. Ending it is not enough:
// CPython's GIL is not handed over in order, and a worker that drops it and takes its next task
// takes the GIL back before the waiter it woke gets to run (every change of hands also restarts
// that waiter's wait for its drop request). Measured with 2 workers (Debian 3.11, 5 ms interval,
// bench/pool_alternatives.cpp gilwait rows): bound = the interval and no pause, another thread's
// wait p99 5-17 ms; a 100 us bound with a yield, still 5-14 ms. So a batch that ends on the bound
// pauses 50 us, detached, before this worker attaches again: the woken waiter (the longest
// waiting first, as the condition variable wakes them) takes the GIL. The waiter may be this
// pool's other worker, whose batch then runs first, hence half the interval: a thread that waits
// behind two batches still gets the GIL within about the interval (Debian 3.11: p99 1.9 ms with
// Python calls, 4.8 ms with C-API-only tasks; other interpreters in docs/benchmarks.md). The pause costs 50 us per 2.5 ms batch (2%) and happens only when the bound ended
// the batch, never when the queue ran dry. Without reading the clock after every task: the
// clock is read after the 1st task and then at checkpoints, every `step` tasks, where step is
// sized from the tasks' average duration so far so that reaching the next checkpoint takes at
// most half the time left (1 for tasks as long as the interval, at most kMaxStep for trivial
// ones: one read per 32 tasks). A task much longer than those before it can overrun the bound
// by at most one step; one task longer than the interval holds the GIL for its whole duration,
// as it would unbatched (it then gives it away itself if it runs bytecode).
// Clock reads per batch: one after attaching, the checkpoints, none more at its end (the last
// checkpoint's, if it ended there, or one). measure_python_time adds one before attaching.
// w.busy_ns counts the batch from attached to its end; attach_wait_ns and attached_ns are summed
// per batch.
void pool_core::run_python(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task) {
  constexpr std::size_t kMaxStep = 32;
  const bool measure = opts.measure_python_time;
  std::exception_ptr to_report;  // a posted task's failure: reported once detached
  bool timed_out = false;
  {
    steady::time_point t0{};
    if (measure) t0 = steady::now();
    attach_scope py(nothrow);
    if (!py) {
      // The gate refused: the interpreter is finalizing or gone (or pyattach was never bound to
      // it). Never run Python without a state. Only this task: the worker loop takes the next
      // one, which tries (and is refused) on its own.
      to_report = std::make_exception_ptr(pool_error(
          py.status() == attach_status::not_bound ? pool_errc::not_bound : pool_errc::finalizing,
          "pyattach::thread_pool '" + opts.name + "': the task was not run: "
                                 "attaching to Python was refused (" + to_string(py.status()) + ")"));
      if (opts.spawn_on_demand) busy.fetch_sub(1, std::memory_order_relaxed);
      w.refused.store(w.refused.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      task->abandon(to_report);
      if (task->has_future()) to_report = nullptr;
      task.reset();
    } else {
      w.attaches.store(w.attaches.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      name_in_python(w);
      const steady::time_point t1 = steady::now();  // the batch's start: attached
      const std::int64_t limit = w.switch_interval_ns / 2;  // the time bound (above)
      std::size_t ran = 0, next_check = 1;
      for (;;) {
        w.current = task.get();  // if the task parks this worker, worker_parked() fails it
        const bool traced = tracing_anywhere();
        const std::uint64_t number = w.tasks.load(std::memory_order_relaxed);
        if (traced) obs_task(true, number);
        const std::exception_ptr failure = task->run();
        if (traced) obs_task(false, number);
        w.current = nullptr;
        ++ran;
        // The counters first: complete() below makes the future ready (see run_task).
        if (opts.spawn_on_demand) busy.fetch_sub(1, std::memory_order_relaxed);
        std::atomic<std::uint64_t>& c = failure ? w.failed : w.completed;
        c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        if (failure && !task->has_future()) to_report = failure;

        bool go_on = !to_report && opts.batch_python;
        steady::time_point now{};
        bool have_now = false;
        if (go_on && ran == next_check) {
          now = steady::now();
          have_now = true;
          const std::int64_t elapsed = (now - t1).count();
          if (elapsed >= limit) {
            go_on = false;
            timed_out = true;
          } else {
            // The next checkpoint: at the average so far, at most half the time left away.
            const std::int64_t avg = elapsed / static_cast<std::int64_t>(ran) + 1;
            const std::int64_t step = (limit - elapsed) / (2 * avg);
            next_check = ran + static_cast<std::size_t>(std::clamp<std::int64_t>(
                                   step, 1, static_cast<std::int64_t>(kMaxStep)));
          }
        }
        std::unique_ptr<pool_task> next;
        if (go_on) {
          std::lock_guard<std::mutex> lock(m);
          if (head != nullptr && head->python()) {
            next.reset(pop_locked(w));
            --running;  // the task that ended (its complete() follows; `next` keeps running > 0)
          }
        }
        if (!next) {
          // The batch ends. Its time goes into the stats before the last future is made ready.
          if (!have_now) now = steady::now();
          w.busy_ns.store(w.busy_ns.load(std::memory_order_relaxed) + (now - t1).count(),
                          std::memory_order_relaxed);
          if (measure) {
            w.attach_wait_ns.store(
                w.attach_wait_ns.load(std::memory_order_relaxed) + (t1 - t0).count(),
                std::memory_order_relaxed);
            w.attached_ns.store(w.attached_ns.load(std::memory_order_relaxed) + (now - t1).count(),
                                std::memory_order_relaxed);
          }
        }
        task->complete();
        task.reset();  // the callable (and what it captured) is destroyed while attached
        if (!next) break;
        task = std::move(next);
      }
    }
  }  // detached: the last task stays counted in `running` until the worker loop takes m again
  // Ended by the time bound: let the thread waiting for the GIL take it first (above).
  if (timed_out) std::this_thread::sleep_for(std::chrono::microseconds(50));
  if (to_report) report_failure(index, "task", to_report);
}

std::exception_ptr pool_core::run_hook(const std::function<void(const worker_context&)>& hook,
                                       bool python, worker_rec& w, std::size_t index) {
  const auto t0 = steady::now();
  std::exception_ptr e;
  if (python) {
    attach_scope py(nothrow);
    if (py) {
      name_in_python(w);
      w.attaches.store(w.attaches.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    const worker_context ctx{opts.name, index, w.name, py.status()};
    try {
      hook(ctx);
    } catch (...) {
      e = std::current_exception();
    }
    if (py) {
      std::exception_ptr py_err = take_python_error();
      if (!e) e = py_err;
    }
  } else {
    const worker_context ctx{opts.name, index, w.name, attach_status::not_initialized};
    try {
      hook(ctx);
    } catch (...) {
      e = std::current_exception();
    }
  }
  w.busy_ns.store(w.busy_ns.load(std::memory_order_relaxed) + (steady::now() - t0).count(),
                  std::memory_order_relaxed);
  return e;
}

void pool_core::name_in_python(worker_rec& w) noexcept {
  // Once per interpreter lifetime: a re-initialized interpreter gives the worker a new state.
  const std::uint64_t gen = current_generation();
  if (w.named_generation == gen) return;
  w.named_generation = gen;
  // threading.current_thread() makes a _DummyThread for a foreign thread; its name is what
  // threading.enumerate(), tracebacks and py-spy show. PRECONDITION: attached (the caller's scope).
  const error_scope keep;
  PyObject* threading = PyImport_ImportModule("threading");
  PyObject* current = threading ? PyObject_CallMethod(threading, "current_thread", nullptr) : nullptr;
  PyObject* name = current ? PyUnicode_FromString(w.name.c_str()) : nullptr;
  const bool ok = name != nullptr && PyObject_SetAttrString(current, "name", name) == 0;
  if (!ok) PyErr_Clear();
  Py_XDECREF(name);
  Py_XDECREF(current);
  Py_XDECREF(threading);
  // 3.14+: setting the current thread's Python name also renames the OS thread, cut to 15 bytes
  // (Lib/threading.py, Thread.name's setter), which drops the "_M" suffix that the pool's OS
  // name keeps. Name the OS thread again (measured on 3.14.10 and 3.15.2:
  // tests/python/test_executor.py, test_os_thread_name).
  if (ok) pthread_setname_np(pthread_self(), w.os_name.c_str());
  // The batch bound (run_python): sys.getswitchinterval(), read here once per interpreter
  // lifetime; on failure the default, 5 ms, stays.
  PyObject* get = PySys_GetObject("getswitchinterval");  // borrowed
  PyObject* interval = get ? PyObject_CallNoArgs(get) : nullptr;
  const double seconds = interval ? PyFloat_AsDouble(interval) : -1.0;
  Py_XDECREF(interval);
  if (seconds > 0) {
    w.switch_interval_ns = static_cast<std::int64_t>(seconds * 1e9);
  } else {
    PyErr_Clear();
  }
  w.named_in_python.store(ok, std::memory_order_relaxed);
}

void pool_core::report_failure(std::size_t index, const char* where, std::exception_ptr e) noexcept {
  try {
    task_failure f{opts.name, index, where, e, "unknown exception"};
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      f.what = ex.what();
    } catch (...) {
    }
    if (opts.on_error) {
      opts.on_error(f);
    } else {
      std::fprintf(stderr, "pyattach: thread_pool '%s' worker %s: %s failed: %s\n", opts.name.c_str(),
                   index < workers.size() ? workers[index].name.c_str() : "(none)", where,
                   f.what.c_str());
    }
  } catch (...) {
    std::fputs("pyattach: thread_pool: a failure could not be reported\n", stderr);
  }
}

// ---- submitting, waiting, stopping ---------------------------------------------------------------

bool pool_core::enqueue(std::unique_ptr<pool_task> task) {
  std::unique_lock<std::mutex> lock(m);
  auto refuse_if_closed = [&] {
    if (accepting) return;
    if (finalizing) {
      throw pool_error(pool_errc::finalizing, "pyattach::thread_pool '" + opts.name +
                                                  "': the interpreter is finalizing; the pool "
                                                  "was stopped");
    }
    if (broken) throw pool_error(pool_errc::start_hook_failed, broken_why);
    throw pool_error(pool_errc::shut_down, "pyattach::thread_pool '" + opts.name +
                                               "': submitted after shutdown(), stop() or "
                                               "detach()");
  };
  refuse_if_closed();
  if (opts.max_queued != 0 && queued >= opts.max_queued) {
    // On its own worker a blocking submit could wait for itself: fail instead.
    if (opts.when_full == full_policy::fail || tls_worker_of == this) {
      throw pool_error(pool_errc::queue_full, "pyattach::thread_pool '" + opts.name + "': " +
                                                  std::to_string(queued) + " tasks queued (max_queued)");
    }
    lock.unlock();
    {
      gil_released nogil(site);  // before the lock, see gil_released
      std::unique_lock<std::mutex> wait_lock(m);
      ++blocked_submitters;
      space_cv.wait(wait_lock, [&] { return !accepting || queued < opts.max_queued; });
      --blocked_submitters;
    }  // the pool mutex is released before the GIL is taken back (the end of nogil)
    lock.lock();
    refuse_if_closed();
    // Another submitter may have taken the room meanwhile: over by at most the blocked ones.
  }
  pool_task* t = task.release();
  t->next = nullptr;
  if (tail != nullptr) {
    tail->next = t;
  } else {
    head = t;
  }
  tail = t;
  ++queued;
  ++submitted;
  // Wake a sleeping worker unless enough are already being woken: a notify_one per task while
  // the woken worker has not yet taken the lock would be a futex call each for nothing.
  const bool wake = idle_workers > wakeups_pending;
  if (wake) ++wakeups_pending;
  // On demand: start a worker if the queued tasks outnumber the workers that will look at the
  // queue without one (started or being started, and not busy: idle, being woken, finishing a
  // task, starting). busy <= started (each started worker holds at most one), and a stale read
  // of it only errs towards starting a worker, within the limit.
  const bool spawn = opts.spawn_on_demand && started + launching < workers.size() &&
                     queued > started + launching - busy.load(std::memory_order_relaxed);
  if (spawn) ++launching;
  lock.unlock();
  if (wake) work_cv.notify_one();
  return spawn && launch_on_demand(t);
}

void pool_core::report_from_worker(const char* call, const source_site* at, void* code) noexcept {
  try {
    // PRECONDITION: on one of this pool's workers (tls_worker_index is its index).
    misuse_details d{misuse_kind::pool_call_from_worker, "thread_pool", site, at, code,
                     std::string("thread_pool '") + opts.name + "'::" + call + " on worker " +
                         workers[tls_worker_index].name,
                     creator_tid};
    report_misuse(d);
  } catch (...) {
    std::fputs("pyattach: misuse: pool_call_from_worker (details unavailable)\n", stderr);
  }
}

void pool_core::refuse_from_worker(const char* call, const source_site& at) {
  report_from_worker(call, &at, nullptr);
  throw pool_error(pool_errc::called_from_worker,
                   "pyattach::thread_pool '" + opts.name + "': " + call +
                       " called on the pool's own worker would wait for itself");
}

void pool_core::wait(const source_site& at) {
  if (tls_worker_of == this) refuse_from_worker("wait()", at);
  gil_released nogil(at);
  std::unique_lock<std::mutex> lock(m);
  ++waiters;
  idle_cv.wait(lock, [&] { return head == nullptr && running == 0; });
  --waiters;
}

void pool_core::abandon_all(pool_task* list, pool_errc code, const char* why) noexcept {
  if (list == nullptr) return;
  std::exception_ptr e;
  try {
    e = std::make_exception_ptr(pool_error(code, "pyattach::thread_pool '" + opts.name + "': " + why));
  } catch (...) {
    e = std::current_exception();
  }
  abandon_all(list, e);
}

void pool_core::abandon_all(pool_task* list, std::exception_ptr e) noexcept {
  if (list == nullptr) return;
  std::size_t n = 0;
  while (list != nullptr) {
    std::unique_ptr<pool_task> t(list);
    list = list->next;
    t->abandon(e);
    if (!t->has_future()) report_failure(static_cast<std::size_t>(-1), "task", e);
    ++n;
  }
  std::lock_guard<std::mutex> lock(m);
  cancelled += n;
  if (waiters > 0 && running == 0 && head == nullptr) idle_cv.notify_all();
}

void pool_core::shutdown(shutdown_mode mode, const source_site& at) {
  if (tls_worker_of == this) refuse_from_worker("shutdown()", at);
  gil_released nogil(at);  // joined workers may be finishing a Python task
  stop(mode, "cancelled by shutdown() before it started");
  {
    std::unique_lock<std::mutex> lock(m);
    if (shutdown_started) {
      state_cv.wait(lock, [&] { return shutdown_done; });  // a second caller waits for the first
      return;
    }
    shutdown_started = true;
  }
  join_workers();
  bool let_go;
  {
    std::lock_guard<std::mutex> lock(m);
    shutdown_done = true;
    let_go = detached;
  }
  state_cv.notify_all();
  // A detached pool stays registered while its threads run (finalization must still stop them);
  // its entry expires with its core.
  if (let_go) return;
  std::lock_guard<std::mutex> lock(pools().mutex);
  auto& v = pools().pools;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [&](const std::weak_ptr<pool_core>& p) {
                           auto sp = p.lock();
                           return !sp || sp.get() == this;
                         }),
          v.end());
}

void pool_core::join_workers() {
  const std::thread::id self = std::this_thread::get_id();
  std::size_t n;
  {
    // Nothing is launched once stopped, and a thread being created is registered (or given up)
    // shortly: after this, every thread there is lies in workers[0, n).
    std::unique_lock<std::mutex> lock(m);
    state_cv.wait(lock, [&] { return launching == 0; });
    n = started;
  }
  for (std::size_t i = 0; i < n; ++i) {
    worker_rec& w = workers[i];
    std::thread t;
    bool let_go;
    {
      // A worker that started returns after mark_done, unless pyattach parked it (it never
      // returns then: let it go instead of waiting for ever). This thread cannot join itself
      // (the destructor on its own worker). detach() may take the thread meanwhile.
      std::unique_lock<std::mutex> lock(m);
      if (!w.thread.joinable()) continue;  // let go by detach()
      let_go = w.thread.get_id() == self;
      if (!let_go) {
        state_cv.wait(lock, [&] { return w.done || w.parked || !w.thread.joinable(); });
        if (!w.thread.joinable()) continue;
        let_go = w.parked;
      }
      t = std::move(w.thread);
    }
    if (let_go) {
      t.detach();
    } else {
      t.join();
    }
  }
}

void pool_core::destroy(void* code) noexcept {
  if (tls_worker_of != this) {
    try {
      shutdown(shutdown_mode::drain, source_site{"~thread_pool", 0, "~thread_pool"});
    } catch (...) {
      // Only std::system_error from join can get here; the workers hold the core alive.
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lock(m);
    if (detached) return;  // stopped and let go already: nothing to wait for, nothing misused
  }
  // Destroyed from its own worker: report, stop the others and join them, and let this worker
  // finish on its own (it holds the core).
  report_from_worker("~thread_pool()", nullptr, code);
  {
    std::lock_guard<std::mutex> lock(m);
    shutdown_started = true;
    stop_locked(false);
  }
  wake_all();
  try {
    join_workers();
  } catch (...) {
    // std::system_error from join, as in shutdown(); the workers hold the core alive.
  }
}

void pool_core::stop(shutdown_mode mode, const char* why) {
  pool_task* list;
  {
    std::lock_guard<std::mutex> lock(m);
    list = stop_locked(mode == shutdown_mode::cancel);
  }
  wake_all();
  abandon_all(list, pool_errc::cancelled, why);
}

void pool_core::detach() noexcept {
  {
    std::lock_guard<std::mutex> lock(m);
    if (accepting) stop_locked(false);  // stop(drain) unless already stopped, in any way
    detached = true;  // a thread still being created is let go when registered
    for (std::size_t i = 0; i < started; ++i) {
      if (workers[i].thread.joinable()) workers[i].thread.detach();
    }
  }
  wake_all();
  state_cv.notify_all();  // a join_workers() waiting for one of them moves on
}

void pool_core::break_on_start_failure(std::size_t index, std::exception_ptr e) noexcept {
  std::string why;
  std::exception_ptr refusal;
  try {
    why = start_failure_message(index, e);
    refusal = std::make_exception_ptr(pool_error(pool_errc::start_hook_failed, why));
  } catch (...) {
    refusal = std::current_exception();  // std::bad_alloc
  }
  pool_task* list;
  {
    // As shutdown(cancel), but the refusals say why. The first failure's message stays.
    std::lock_guard<std::mutex> lock(m);
    if (!broken) {
      broken = true;
      broken_why.swap(why);
    }
    list = stop_locked(true);
  }
  wake_all();
  report_failure(index, "start hook", e);
  abandon_all(list, refusal);
}

pool_task* pool_core::stop_locked(bool take_queue) noexcept {
  accepting = false;
  stopping = true;
  if (!take_queue) return nullptr;
  pool_task* list = head;
  head = tail = nullptr;
  queued = 0;
  return list;
}

void pool_core::wake_all() noexcept {
  work_cv.notify_all();
  space_cv.notify_all();
}

void pool_core::mark_done(worker_rec& w) noexcept {
  {
    std::lock_guard<std::mutex> lock(m);
    ++workers_done;
    w.done = true;
  }
  state_cv.notify_all();
}

void pool_core::worker_parked() noexcept {
  // On the worker itself, which park() never lets return: its running task (if any) will never
  // finish, so fail its future now, and count the worker as done so that nothing waits for it.
  worker_rec& w = workers[tls_worker_index];
  {
    std::lock_guard<std::mutex> lock(m);
    w.parked = true;
    ++workers_done;
    if (w.current != nullptr && running > 0) --running;
    if (waiters > 0 && running == 0 && head == nullptr) idle_cv.notify_all();
  }
  state_cv.notify_all();
  if (w.current != nullptr) {
    w.current->abandon(std::make_exception_ptr(pool_error(
        pool_errc::finalizing, "pyattach::thread_pool '" + opts.name + "': worker " + w.name +
                                   " was parked while running this task: the interpreter began "
                                   "finalizing while it was inside")));
  }
}

void pool_core::wait_workers_done(std::chrono::steady_clock::time_point deadline) noexcept {
  std::unique_lock<std::mutex> lock(m);
  state_cv.wait_until(lock, deadline, [&] { return launching == 0 && workers_done == started; });
}

void pool_core::stop_for_finalization() noexcept {
  pool_task* list = nullptr;
  {
    std::lock_guard<std::mutex> lock(m);
    if (shutdown_done && !detached) return;  // shut down and joined: nothing left to stop
    finalizing = true;
    list = stop_locked(true);
  }
  wake_all();
  abandon_all(list, pool_errc::finalizing, "the interpreter is finalizing: the task was not run");
}

pool_stats pool_core::stats() const {
  pool_stats s;
  s.name = opts.name;
  std::size_t n;
  {
    std::lock_guard<std::mutex> lock(m);
    n = started;  // only started workers exist for stats (on demand)
  }
  std::uint64_t refused = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const worker_rec& w = workers[i];
    worker_stats ws;
    ws.name = w.name;
    ws.os_tid = w.os_tid.load(std::memory_order_relaxed);
    ws.tasks = w.tasks.load(std::memory_order_relaxed);
    ws.attaches = w.attaches.load(std::memory_order_relaxed);
    ws.busy = std::chrono::nanoseconds(w.busy_ns.load(std::memory_order_relaxed));
    ws.attach_wait = std::chrono::nanoseconds(w.attach_wait_ns.load(std::memory_order_relaxed));
    ws.attached = std::chrono::nanoseconds(w.attached_ns.load(std::memory_order_relaxed));
    ws.named_in_python = w.named_in_python.load(std::memory_order_relaxed);
    s.started += ws.tasks;
    s.completed += w.completed.load(std::memory_order_relaxed);
    s.failed += w.failed.load(std::memory_order_relaxed);
    refused += w.refused.load(std::memory_order_relaxed);
    s.workers.push_back(std::move(ws));
  }
  std::lock_guard<std::mutex> lock(m);
  s.submitted = submitted;
  s.cancelled = cancelled + refused;
  s.queued = queued;
  return s;
}

bool pool_core::on_worker() const noexcept { return tls_worker_of == this; }

void pool_core::worker_tids(std::vector<std::pair<std::uint64_t, std::string>>& out) const {
  for (const auto& w : workers) {
    const std::uint64_t tid = w.os_tid.load(std::memory_order_relaxed);
    if (tid != 0) out.emplace_back(tid, opts.name);
  }
}

// ---- what the gate and the report use (internal.hpp) --------------------------------------------

namespace {
// Every pool still alive, held so that none is freed while the caller uses it.
std::vector<std::shared_ptr<pool_core>> live_pools() {
  std::vector<std::shared_ptr<pool_core>> live;
  std::lock_guard<std::mutex> lock(pools().mutex);
  for (const auto& p : pools().pools) {
    if (auto sp = p.lock()) live.push_back(std::move(sp));
  }
  return live;
}
}  // namespace

void stop_pools_for_finalization(std::chrono::milliseconds bound) noexcept {
  std::vector<std::shared_ptr<pool_core>> live;
  try {
    live = live_pools();
  } catch (...) {
    // Out of memory: the pools are then only stopped by the gate's refusals.
  }
  for (const auto& p : live) p->stop_for_finalization();
  // Then let their workers finish the running task and run their stop hooks while Python can
  // still be attached (a stop hook may need it); bounded, so that a task blocked in C++ cannot
  // hold up the interpreter's shutdown for ever. A worker cannot wait for itself.
  const auto deadline = std::chrono::steady_clock::now() + bound;
  for (const auto& p : live) {
    if (tls_worker_of != p.get()) p->wait_workers_done(deadline);
  }
}

void note_worker_parked() noexcept {
  if (tls_worker_of != nullptr) tls_worker_of->worker_parked();
}

void forget_pools_in_forked_child() noexcept {
  // The parent's pools have no workers here. Leak the registry and every core without touching
  // them: a vanished worker may have held a pool's mutex, a condition variable's internal lock
  // or the registry's mutex at the fork.
  pools_ptr() = new pool_registry;
}

std::vector<std::pair<std::uint64_t, std::string>> pool_workers() {
  std::vector<std::pair<std::uint64_t, std::string>> out;
  for (const auto& p : live_pools()) p->worker_tids(out);
  return out;
}

}  // namespace detail

// ---- thread_pool ---------------------------------------------------------------------------------

namespace {
pool_options named(std::string name, std::size_t workers) {
  pool_options o;
  o.name = std::move(name);
  o.workers = workers;
  return o;
}
}  // namespace

thread_pool::thread_pool(pool_options options, source_site site) {
  if (options.workers == 0) throw std::invalid_argument("pyattach::thread_pool: workers must be >= 1");
  // Made by a thread that holds the GIL: bind the gate now, so that the workers' Python tasks
  // can attach (interpreter.hpp, "Binding"); does nothing otherwise.
  detail::bind_here();
  core_ = std::make_shared<detail::pool_core>(std::move(options), site);
  core_->start();
}

thread_pool::thread_pool(std::string name, std::size_t workers, source_site site)
    : thread_pool(named(std::move(name), workers), site) {}

thread_pool::~thread_pool() {
  // Its own return address is the code that destroyed the pool (for a misuse report).
  if (core_) core_->destroy(__builtin_return_address(0));
}

bool thread_pool::enqueue(std::unique_ptr<detail::pool_task> task) {
  return core_->enqueue(std::move(task));
}
void thread_pool::wait(source_site site) { core_->wait(site); }
void thread_pool::shutdown(shutdown_mode mode, source_site site) { core_->shutdown(mode, site); }
void thread_pool::stop(shutdown_mode mode) {
  core_->stop(mode, "cancelled by stop() before it started");
}
void thread_pool::detach() noexcept { core_->detach(); }
pool_stats thread_pool::stats() const { return core_->stats(); }
const std::string& thread_pool::name() const noexcept { return core_->opts.name; }
std::size_t thread_pool::size() const noexcept { return core_->opts.workers; }
bool thread_pool::on_worker() const noexcept { return core_->on_worker(); }

}  // namespace pyattach

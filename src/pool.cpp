// src/pool.cpp — thread_pool: starting workers, the queue, waiting, shutdown, the finalization
// stop and stats. The contract is in include/pyattach/pool.hpp; the worker loop is in
// pool_worker.cpp; what both share is in pool_internal.hpp.
#include "pyattach/pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "pool_internal.hpp"

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

// ---- the registry of pools -------------------------------------------------------------------

pool_registry*& pools_ptr() {
  static pool_registry* r = new pool_registry;  // never destroyed: workers may outlive main()
  return r;
}
pool_registry& pools() { return *pools_ptr(); }

thread_local pool_core* tls_worker_of = nullptr;
thread_local std::size_t tls_worker_index = 0;

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
const subinterpreter& thread_pool::interpreter() const noexcept { return core_->opts.interpreter; }
bool thread_pool::on_worker() const noexcept { return core_->on_worker(); }

}  // namespace pyattach

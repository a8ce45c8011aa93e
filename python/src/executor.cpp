// python/src/executor.cpp — the native part of pyattach.ThreadPoolExecutor (python/pyattach/
// _executor.py wraps it): work items, runners on a pyattach::thread_pool, interpreter exit, fork.
//
// How an executor runs Python work
//   An executor is a pyattach::thread_pool (workers started on demand, named "<prefix>_<M>", each
//   with one persistent thread state) plus a queue of work items (future, fn, args, kwargs) that
//   is the executor's own: cancelling or failing queued work must touch Python objects, which the
//   pool's own queue cannot do (it destroys cancelled tasks without the GIL). submit() appends an
//   item and, when no runner is about to take it, posts a *runner* to the pool: a Python task that
//   runs queued items one after the other under one attach and returns when the queue is empty.
//   A runner never holds the GIL while the queue is empty, and never longer than CPython lets any
//   thread: the items it runs are Python calls, whose eval loop gives the GIL up when another
//   thread asks (sys.getswitchinterval()).
//
// Starting a worker, as concurrent.futures does (its submit starts a thread and waits for it)
//   A submit whose runner made the pool start a worker waits, with the GIL released, until that
//   worker's start hook (start_worker) has made its Python thread object (in the executor's
//   _threads when submit returns) and, with no initializer, *claimed* the oldest queued item:
//   marked it running, so that shutdown(cancel_futures=True) can no longer cancel it, and moved
//   it to `claimed`, which runners empty before the queue. The runner that submit posted runs
//   it, on whichever worker takes the runner first. An initializer runs in the hook too, after
//   the submit was released (as the standard worker runs it after its start), and then nothing
//   is claimed: a failing initializer must fail every queued item.
//
// Locking: every executor_state member is read and written only by a thread that holds the GIL
//   (submit and shutdown are Python calls; runners run attached), so the GIL is its lock.
//   pyattach builds for GIL builds only (detail/compat.hpp refuses Py_GIL_DISABLED). Nothing here
//   calls Python between reading and writing the state in one step, because a Python call may
//   let another thread take the GIL. Work items are popped before they are run or dropped.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "pyattach/pyattach.hpp"

using namespace nb::literals;

namespace {

// Looked up once at import and kept for the life of the process (strong references).
struct python_names {
  PyObject* future_type = nullptr;  // concurrent.futures.Future
  PyObject* broken_type = nullptr;  // concurrent.futures.thread.BrokenThreadPool
  PyObject* set_running = nullptr;  // "set_running_or_notify_cancel"
  PyObject* set_result = nullptr;
  PyObject* set_exception = nullptr;
  PyObject* cancel = nullptr;
  PyObject* done = nullptr;
} g_py;

// Set by shutdown_all() (threading's exit hook): submits then raise as the standard executor's
// do. Protected by the GIL.
bool g_interpreter_shutdown = false;

std::uint64_t os_tid() noexcept {
  thread_local const std::uint64_t tid = static_cast<std::uint64_t>(::syscall(SYS_gettid));
  return tid;
}

// A submitted call. Owns its references; made, run and dropped with the GIL held.
struct work_item {
  PyObject* future;
  PyObject* fn;
  PyObject* args;    // a tuple
  PyObject* kwargs;  // a dict, or nullptr for none
};

void drop(work_item& item) noexcept {
  Py_DECREF(item.future);
  Py_DECREF(item.fn);
  Py_DECREF(item.args);
  Py_XDECREF(item.kwargs);
}

// The calling thread's current exception, normalized, with its traceback attached (what
// `except BaseException as exc` gives a Python caller), and cleared. PRECONDITION: one is set.
PyObject* take_exception() noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();  // 3.12+: already normalized, __traceback__ set
#else
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
#endif
}

// Calls future.<method>(arg) and reports a failure as unraisable (none is expected: a future a
// runner set running cannot be cancelled, and only its runner completes it).
void call_future(PyObject* future, PyObject* method, PyObject* arg) noexcept {
  PyObject* r = arg ? PyObject_CallMethodOneArg(future, method, arg)
                    : PyObject_CallMethodNoArgs(future, method);
  if (r == nullptr) {
    PyErr_WriteUnraisable(future);
  } else {
    Py_DECREF(r);
  }
}

std::uint64_t next_executor_id() noexcept {
  static std::uint64_t last = 0;  // protected by the GIL
  return ++last;
}

// What an executor's runners share with it. See the top of the file for the locking rule.
struct executor_state {
  const std::uint64_t id = next_executor_id();
  std::size_t max_workers = 1;
  std::deque<work_item> queue;
  std::deque<work_item> claimed;  // marked running by a start hook, waiting for a runner
  std::size_t runners = 0;  // runners posted and not yet returned
  std::size_t busy = 0;     // runners inside an item (runners - busy are about to take one)
  std::size_t launched = 0;  // workers that this executor's submits started
  bool shut_down = false;
  bool posted_any = false;   // a runner was ever posted: a worker started
  bool forked_away = false;  // this process is a fork() child: the workers do not exist here
  std::string broken;        // non-empty: an initializer failed (BrokenThreadPool's message)
  PyObject* init_worker = nullptr;  // owned; nullptr: no initializer
  PyObject* on_worker_start = nullptr;  // owned: makes the worker's Python thread object
  PyObject* fini_worker = nullptr;      // owned; nullptr: nothing to run as a worker leaves
  std::uint64_t submitted = 0, completed = 0, failed = 0, cancelled = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> items_by_tid;  // per worker (kernel tid)

 private:
  std::mutex ready_m;
  std::condition_variable ready_cv;
  std::size_t ready = 0;

 public:

  ~executor_state() {
    // Normally the last reference goes with the Python object or a runner, both with the GIL. A
    // runner the pool abandoned at finalization is destroyed without it: then leak, since
    // decref without the GIL is undefined and the process is ending.
    if (!pyattach::is_attached()) return;
    Py_XDECREF(init_worker);
    Py_XDECREF(on_worker_start);
    Py_XDECREF(fini_worker);
    for (auto& item : queue) drop(item);
    for (auto& item : claimed) drop(item);
  }

  // Start hooks that reached the point a starting submit waits for. Not under the GIL: the
  // submit waits for it with the GIL released.
  void worker_ready() {
    {
      std::lock_guard<std::mutex> lock(ready_m);
      ++ready;
    }
    ready_cv.notify_all();
  }
  // PRECONDITION: the GIL is released (the hook that counts needs it).
  void wait_ready(std::size_t n) {
    std::unique_lock<std::mutex> lock(ready_m);
    ready_cv.wait(lock, [&] { return ready >= n; });
  }

  // Moves the oldest queued item that is not cancelled to `claimed`, marked running; cancelled
  // ones met on the way are dropped (and counted), as a runner would. PRECONDITION: GIL held.
  void claim_first() noexcept {
    while (!queue.empty() && broken.empty()) {
      work_item item = queue.front();
      queue.pop_front();
      PyObject* go = PyObject_CallMethodNoArgs(item.future, g_py.set_running);
      const bool run = go == Py_True;
      if (go == nullptr) PyErr_WriteUnraisable(item.future);
      Py_XDECREF(go);
      if (run) {
        claimed.push_back(item);
        return;
      }
      if (go != nullptr) ++cancelled;
      drop(item);
    }
  }

  // Fails every queued item with BrokenThreadPool(broken). PRECONDITION: GIL held.
  void fail_queue_broken() noexcept {
    std::deque<work_item> items;
    items.swap(queue);
    for (auto& item : items) {
      PyObject* done = PyObject_CallMethodNoArgs(item.future, g_py.done);
      const bool already = done == Py_True;
      if (done == nullptr) PyErr_Clear();
      Py_XDECREF(done);
      if (!already) {
        PyObject* exc = PyObject_CallOneArg(g_py.broken_type,
                                            PyUnicode_FromString(broken.c_str()));
        if (exc == nullptr) exc = take_exception();
        call_future(item.future, g_py.set_exception, exc);
        Py_DECREF(exc);
        ++failed;
      }
      drop(item);
    }
  }
};

// Runs one item the way concurrent.futures' _WorkItem.run does; false if it did not run (it was
// cancelled while queued). `marked`: claim_first already set it running. PRECONDITION: attached.
bool run_item(executor_state& s, work_item& item, bool marked) noexcept {
  if (!marked) {
    PyObject* go = PyObject_CallMethodNoArgs(item.future, g_py.set_running);
    if (go == nullptr) {
      PyErr_WriteUnraisable(item.future);
      return false;
    }
    const bool run = go == Py_True;
    Py_DECREF(go);
    if (!run) {
      ++s.cancelled;
      return false;
    }
  }
  PyObject* result = PyObject_Call(item.fn, item.args, item.kwargs);
  if (result != nullptr) {
    ++s.completed;
    call_future(item.future, g_py.set_result, result);
    Py_DECREF(result);
  } else {
    ++s.failed;
    PyObject* exc = take_exception();
    call_future(item.future, g_py.set_exception, exc);
    Py_DECREF(exc);
  }
  return true;
}

// A runner: a Python task on one of the pool's workers (attached). See the top of the file.
// Claimed items run even in a broken pool: they were running before it broke, as in
// concurrent.futures, where a worker that took an item finishes it.
void run_batch(executor_state& s) noexcept {
  std::uint64_t& mine = s.items_by_tid[os_tid()];  // node-based map: the reference stays valid
  while (!s.forked_away) {
    const bool marked = !s.claimed.empty();
    std::deque<work_item>& from = marked ? s.claimed : s.queue;
    if (from.empty() || (!marked && !s.broken.empty())) break;
    work_item item = from.front();
    from.pop_front();
    ++s.busy;
    if (run_item(s, item, marked)) ++mine;
    drop(item);
    --s.busy;
  }
  --s.runners;
}

// The start hook of every worker (attached unless the interpreter is finalizing). See "Starting
// a worker" at the top of the file. Whatever happens, it counts the worker as ready: a submit
// waits for that.
void start_worker(executor_state& s, const pyattach::worker_context& ctx) noexcept {
  const bool attached = ctx.python == pyattach::attach_status::attached;
  if (attached) {
    // on_worker_start (python/pyattach/_executor.py) makes the threading.Thread the program sees
    // for this worker (threading.current_thread() here, and one of executor._threads).
    PyObject* name = PyUnicode_FromStringAndSize(ctx.name.data(),
                                                 static_cast<Py_ssize_t>(ctx.name.size()));
    PyObject* r = name != nullptr ? PyObject_CallOneArg(s.on_worker_start, name) : nullptr;
    if (r == nullptr) PyErr_WriteUnraisable(s.on_worker_start);
    Py_XDECREF(r);
    Py_XDECREF(name);
    if (s.init_worker == nullptr && !s.forked_away) s.claim_first();
  }
  s.worker_ready();
  if (!attached || s.init_worker == nullptr || !s.broken.empty()) return;
  // init_worker runs the user's initializer and logs its exception as the standard executor
  // does; it returns whether it succeeded.
  PyObject* ok = PyObject_CallNoArgs(s.init_worker);
  const bool good = ok == Py_True;
  if (ok == nullptr) PyErr_WriteUnraisable(s.init_worker);
  Py_XDECREF(ok);
  if (!good && s.broken.empty()) {
    s.broken = "A thread initializer failed, the thread pool is not usable anymore";
    s.fail_queue_broken();
  }
}

class executor;
// Live executors (for shutdown_all, stats and fork) and retired pools: the pools of executors
// collected without shutdown(wait=True), stopped and waiting to be joined. Protected by the GIL.
std::vector<executor*> g_live;
struct retired_pool {
  std::shared_ptr<executor_state> state;
  std::unique_ptr<pyattach::thread_pool> pool;
};
std::vector<retired_pool> g_retired;

[[noreturn]] void raise(PyObject* type, const char* message) {
  PyErr_SetString(type, message);
  throw nb::python_error();
}

class executor {
 public:
  executor(std::size_t max_workers, std::string prefix, nb::object on_worker_start,
           nb::object init_worker, nb::object fini_worker)
      : state_(std::make_shared<executor_state>()) {
    if (max_workers == 0) throw nb::value_error("max_workers must be greater than 0");
    reap_retired(false);
    state_->max_workers = max_workers;
    state_->on_worker_start = on_worker_start.release().ptr();
    if (!init_worker.is_none()) state_->init_worker = init_worker.release().ptr();
    pyattach::pool_options o;
    // The state, not the executor: a hook may run after the executor is gone (stop() without
    // a join, then collected).
    o.on_start = [state = state_](const pyattach::worker_context& ctx) { start_worker(*state, ctx); };
    o.start_hook_python = true;
    if (!fini_worker.is_none()) {
      state_->fini_worker = fini_worker.release().ptr();
      // After the worker's last item, as concurrent.futures' worker finalizes its context.
      o.on_stop = [state = state_](const pyattach::worker_context& ctx) {
        if (ctx.python != pyattach::attach_status::attached) return;  // finalizing: no Python
        PyObject* r = PyObject_CallNoArgs(state->fini_worker);
        if (r == nullptr) PyErr_WriteUnraisable(state->fini_worker);
        Py_XDECREF(r);
      };
      o.stop_hook_python = true;
    }
    o.name = std::move(prefix);
    o.name_separator = "_";  // concurrent.futures' scheme: "<prefix>_<M>"
    o.workers = max_workers;
    o.spawn_on_demand = true;  // like concurrent.futures: a worker starts when none is idle
    pool_ = std::make_unique<pyattach::thread_pool>(std::move(o));
    name_ = pool_->name();
    g_live.push_back(this);
  }

  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  // Deallocation (GIL held, any thread, possibly one of this pool's own workers): an executor
  // never shut down lets its workers finish the queue and exit, as concurrent.futures' do. The
  // pool is stopped without waiting and kept to be joined later (never on its own worker).
  ~executor() {
    g_live.erase(std::remove(g_live.begin(), g_live.end(), this), g_live.end());
    if (pool_ == nullptr) return;  // forked_away: nothing to stop
    if (!joined_) {
      state_->shut_down = true;
      pool_->stop();
      g_retired.push_back({state_, std::move(pool_)});
    }
  }

  nb::object submit(nb::handle fn, nb::args args, nb::kwargs kwargs) {
    executor_state& s = *state_;
    if (!s.broken.empty()) raise(g_py.broken_type, s.broken.c_str());
    if (s.shut_down) raise(PyExc_RuntimeError, "cannot schedule new futures after shutdown");
    if (g_interpreter_shutdown) {
      raise(PyExc_RuntimeError, "cannot schedule new futures after interpreter shutdown");
    }
    if (s.forked_away) {
      raise(PyExc_RuntimeError,
            "cannot schedule new futures in a fork() child on an executor of the parent: its "
            "workers do not exist here; make a new executor");
    }
    PyObject* future = PyObject_CallNoArgs(g_py.future_type);
    if (future == nullptr) throw nb::python_error();
    PyObject* kw = PyDict_GET_SIZE(kwargs.ptr()) != 0 ? kwargs.ptr() : nullptr;
    Py_INCREF(future);  // one for the item, one returned
    Py_INCREF(fn.ptr());
    Py_INCREF(args.ptr());
    Py_XINCREF(kw);
    s.queue.push_back(work_item{future, fn.ptr(), args.ptr(), kw});
    ++s.submitted;
    // A runner posted but not yet running takes one item each; post one more if the queue
    // holds more than they will take (at most max_workers runners).
    if (s.runners - s.busy < s.queue.size() + s.claimed.size() && s.runners < s.max_workers) {
      ++s.runners;
      s.posted_any = true;
      bool started = false;
      try {
        started = pool_->post_python([state = state_] { run_batch(*state); });
      } catch (const pyattach::pool_error&) {
        // The gate stopped the pool (the interpreter is finalizing): take the item back.
        --s.runners;
        work_item item = s.queue.back();
        s.queue.pop_back();
        --s.submitted;
        drop(item);
        Py_DECREF(future);
        raise(PyExc_RuntimeError, "cannot schedule new futures after interpreter shutdown");
      }
      if (started) {
        // As concurrent.futures' submit waits for the thread it starts: see the top of the file.
        const std::size_t n = ++s.launched;
        std::shared_ptr<executor_state> keep = state_;
        nb::gil_scoped_release nogil;
        keep->wait_ready(n);
      }
    }
    return nb::steal(future);
  }

  void shutdown(bool wait, bool cancel_futures) {
    executor_state& s = *state_;
    s.shut_down = true;
    if (cancel_futures) {
      std::deque<work_item> items;
      items.swap(s.queue);
      for (auto& item : items) {
        call_future(item.future, g_py.cancel, nullptr);
        ++s.cancelled;
        drop(item);
      }
    }
    if (pool_ == nullptr || joined_) return;
    if (!wait) {
      pool_->stop();  // returns at once; the workers finish the queue and exit
      return;
    }
    if (pool_->on_worker()) {
      pool_->stop();
      raise(PyExc_RuntimeError, "cannot join current thread");  // threading's message
    }
    pool_->shutdown();  // joins, with the GIL released while it waits
    joined_ = true;
  }

  nb::dict stats() const {
    const executor_state& s = *state_;
    nb::dict d;
    d["name"] = name();
    d["max_workers"] = s.max_workers;
    d["submitted"] = s.submitted;
    d["completed"] = s.completed;
    d["failed"] = s.failed;
    d["cancelled"] = s.cancelled;
    d["queued"] = s.queue.size();
    d["running"] = s.busy + s.claimed.size();
    d["shutdown"] = s.shut_down;
    d["broken"] = !s.broken.empty();
    nb::list workers;
    if (pool_ != nullptr) {
      const pyattach::pool_stats ps = pool_->stats();
      for (const auto& w : ps.workers) {
        nb::dict wd;
        wd["name"] = w.name;
        wd["native_id"] = w.os_tid;
        const auto it = s.items_by_tid.find(w.os_tid);
        wd["tasks"] = it == s.items_by_tid.end() ? 0 : it->second;
        // One per batch (runners queued behind each other on a worker run under one attach),
        // and one for the start hook (and fini_worker's stop hook).
        wd["attaches"] = w.attaches;
        wd["busy_seconds"] = std::chrono::duration<double>(w.busy).count();
        workers.append(wd);
      }
    }
    d["workers"] = workers;
    return d;
  }

  const std::string& name() const noexcept { return name_; }

  // What the standard class keeps in _broken (False, or the message) and _shutdown.
  nb::object broken() const {
    if (state_->broken.empty()) return nb::bool_(false);
    return nb::str(state_->broken.c_str());
  }
  bool is_shut_down() const noexcept { return state_->shut_down; }
  std::size_t queued() const noexcept { return state_->queue.size(); }
  // Removes the oldest queued item and returns (future, fn, args, kwargs), or None: what
  // _work_queue.get_nowait() gives (the item leaves the executor, as from the standard queue).
  nb::object take_queued() {
    executor_state& s = *state_;
    if (s.queue.empty()) return nb::none();
    work_item item = s.queue.front();
    s.queue.pop_front();
    nb::object kwargs = item.kwargs ? nb::borrow(item.kwargs) : nb::dict();
    nb::object out = nb::make_tuple(nb::borrow(item.future), nb::borrow(item.fn),
                                    nb::borrow(item.args), kwargs);
    drop(item);
    return out;
  }

  // At interpreter exit (shutdown_all): stop accepting like concurrent.futures after its
  // _python_exit, run what is queued, and join. PRECONDITION: not on one of its workers.
  void finish_for_exit() {
    if (pool_ != nullptr && !joined_) {
      pool_->shutdown();
      joined_ = true;
    }
    // concurrent.futures' workers mark their executor shut down as they leave, so an executor
    // that ever started one refuses later submits "after shutdown", and one that never did
    // "after interpreter shutdown" (the same on 3.9–3.13).
    if (state_->posted_any) state_->shut_down = true;
  }

  // In a fork() child: the workers are gone, and so are whatever locks they held; never touch
  // the pool (pyattach forgot it, fork.hpp) and never free it (its destructor would join).
  void forget_after_fork() noexcept {
    state_->forked_away = true;
    (void)pool_.release();
  }

  // Joins retired pools: all of them (exit) or those whose runners are done.
  static void reap_retired(bool all) {
    for (std::size_t i = 0; i < g_retired.size();) {
      retired_pool& r = g_retired[i];
      if ((all || r.state->runners == 0) && !r.pool->on_worker()) {
        retired_pool gone = std::move(r);
        g_retired.erase(g_retired.begin() + static_cast<std::ptrdiff_t>(i));
        gone.pool->shutdown();  // GIL released while joining; g_retired may change meanwhile
        i = 0;
      } else {
        ++i;
      }
    }
  }

 private:
  std::shared_ptr<executor_state> state_;
  std::unique_ptr<pyattach::thread_pool> pool_;
  std::string name_;  // the thread name prefix
  bool joined_ = false;
};

// threading's exit hook (python/pyattach/_executor.py registers it with threading._register_atexit,
// as concurrent.futures does): from now on submits raise; what is queued runs; then every worker
// is joined, before the interpreter finalizes.
void shutdown_all() {
  g_interpreter_shutdown = true;
  for (std::size_t i = 0; i < g_live.size(); ++i) {
    // finish_for_exit releases the GIL: an executor may come or go meanwhile, so take it by
    // index and re-check the bound.
    g_live[i]->finish_for_exit();
  }
  executor::reap_retired(true);
}

void after_fork_in_child() noexcept {
  for (executor* e : g_live) e->forget_after_fork();
  for (auto& r : g_retired) {
    r.state->forked_away = true;
    (void)r.pool.release();
  }
  g_retired.clear();
  g_interpreter_shutdown = false;
}

nb::list all_stats() {
  nb::list out;
  for (const executor* e : g_live) out.append(e->stats());
  return out;
}

PyObject* attr_of(const char* module, const char* name) {
  nb::object m = nb::module_::import_(module);
  return nb::getattr(m, name).release().ptr();
}

PyObject* interned(const char* s) {
  PyObject* p = PyUnicode_InternFromString(s);
  if (p == nullptr) throw nb::python_error();
  return p;
}


}  // namespace

void bind_executor(nb::module_& m) {
  g_py.future_type = attr_of("concurrent.futures", "Future");
  g_py.broken_type = attr_of("concurrent.futures.thread", "BrokenThreadPool");
  g_py.set_running = interned("set_running_or_notify_cancel");
  g_py.set_result = interned("set_result");
  g_py.set_exception = interned("set_exception");
  g_py.cancel = interned("cancel");
  g_py.done = interned("done");

  nb::class_<executor>(m, "Executor",
                       "An executor's native part; pyattach.ThreadPoolExecutor wraps it.")
      .def(nb::init<std::size_t, std::string, nb::object, nb::object, nb::object>(),
           "max_workers"_a, "prefix"_a, "on_worker_start"_a, "init_worker"_a.none(),
           "fini_worker"_a.none(),
           "on_worker_start(name): called on each new worker first (it makes the worker's "
           "threading.Thread). init_worker: None, or a callable run once on each worker before "
           "its first item, returning True on success (False breaks the executor). fini_worker: "
           "None, or a callable run on each worker after its last item.")
      // fn is positional-only (no name), as in Executor.submit(self, fn, /, *args, **kwargs).
      .def("submit", &executor::submit,
           "Queues fn(*args, **kwargs) and returns its concurrent.futures.Future.")
      .def("shutdown", &executor::shutdown, "wait"_a, "cancel_futures"_a,
           "Stops accepting work; cancels queued items if cancel_futures; joins if wait.")
      .def("stats", &executor::stats, "This executor's counters and workers.")
      .def_prop_ro("broken", &executor::broken, "False, or why the executor is broken.")
      .def_prop_ro("shut_down", &executor::is_shut_down, "Whether it accepts no more work.")
      .def("queued", &executor::queued, "How many items wait for a worker.")
      .def("take_queued", &executor::take_queued,
           "Removes the oldest waiting item: (future, fn, args, kwargs), or None.");
  m.def("shutdown_all", &shutdown_all,
        "threading's exit hook: refuse new work, run what is queued, join every worker.");
  m.def("after_fork_in_child", &after_fork_in_child,
        "os.register_at_fork(after_in_child=...): forget the parent's workers.");
  m.def("stats", &all_stats, "stats() of every live executor.");
}

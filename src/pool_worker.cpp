// src/pool_worker.cpp — thread_pool's worker loop: start hook, tasks (C++ ones detached, Python
// ones attached, in batches), stop hook, and the worker's names. The contract and the loop in
// pseudo-code are in include/pyattach/pool.hpp; the queue and shutdown are in pool.cpp.
#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "pool_internal.hpp"

namespace pyattach::detail {


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
  // (and, <= 3.12, its threading._active entry), through the gate (slot.cpp).
}

pool_task* pool_core::pop_locked(worker_rec& w) noexcept {
  pool_task* t = head;
  head = head->next;
  if (head == nullptr) tail = nullptr;
  --queued;
  ++running;
  if (opts.spawn_on_demand) busy.fetch_add(1, std::memory_order_relaxed);
  if (blocked_submitters > 0) space_cv.notify_one();
  add_owned(w.tasks, 1);
  return t;
}

// Attaches the worker to the pool's interpreter: the main one through the plain attach_scope
// (the core's inline path), another through its handle (subinterpreter.hpp).
void attach_worker(std::optional<attach_scope>& py, const subinterpreter& in,
                   source_site site = source_site::current()) noexcept {
  if (in.is_main()) {
    py.emplace(nothrow, site);
  } else {
    py.emplace(nothrow, in, site);
  }
}

std::exception_ptr pool_core::run_counted(worker_rec& w, pool_task& task) {
  w.current = &task;  // its own scopes, or the gate, may park this worker: worker_parked() fails it
  const bool traced = tracing_anywhere();
  const std::uint64_t number = w.tasks.load(std::memory_order_relaxed);
  if (traced) obs_task(true, number);
  std::exception_ptr failure = task.run();
  if (traced) obs_task(false, number);
  w.current = nullptr;
  // The counters are updated before the future is made ready (the caller's complete()), so that
  // whoever saw every future ready also sees them in stats(), and, on demand, sees this worker
  // not busy.
  if (opts.spawn_on_demand) busy.fetch_sub(1, std::memory_order_relaxed);
  add_owned(failure ? w.failed : w.completed, 1);
  return failure;
}

void pool_core::run_task(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task) {
  // A C++ task: never attached.
  const bool has_future = task->has_future();
  const auto t0 = steady::now();
  const std::exception_ptr failure = run_counted(w, *task);
  add_owned(w.busy_ns, (steady::now() - t0).count());
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
std::exception_ptr pool_core::refuse_python(worker_rec& w, std::unique_ptr<pool_task> task,
                                             attach_status status) {
  std::exception_ptr why = std::make_exception_ptr(pool_error(
      status == attach_status::not_bound ? pool_errc::not_bound : pool_errc::finalizing,
      "pyattach::thread_pool '" + opts.name + "': the task was not run: "
          "attaching to Python was refused (" + to_string(status) + ")"));
  if (opts.spawn_on_demand) busy.fetch_sub(1, std::memory_order_relaxed);
  add_owned(w.refused, 1);
  task->abandon(why);
  return task->has_future() ? nullptr : why;
}

// The batch's time bound (above), with the clock read at checkpoints only.
struct batch_bound {
  static constexpr std::size_t kMaxStep = 32;
  steady::time_point start;  // attached
  std::int64_t limit;        // ns: half the switch interval
  std::size_t next_check = 1;

  // After the batch's `ran`-th task: false once the bound is reached. Sets *now if it read the
  // clock (at a checkpoint).
  bool allows_more(std::size_t ran, std::optional<steady::time_point>* now) {
    if (ran != next_check) return true;
    *now = steady::now();
    const std::int64_t elapsed = (**now - start).count();
    if (elapsed >= limit) return false;
    // The next checkpoint: at the average so far, at most half the time left away.
    const std::int64_t avg = elapsed / static_cast<std::int64_t>(ran) + 1;
    const std::int64_t step = (limit - elapsed) / (2 * avg);
    next_check = ran + static_cast<std::size_t>(
                           std::clamp<std::int64_t>(step, 1, static_cast<std::int64_t>(kMaxStep)));
    return true;
  }
};

void pool_core::run_python(worker_rec& w, std::size_t index, std::unique_ptr<pool_task> task) {
  const bool measure = opts.measure_python_time;
  std::exception_ptr to_report;  // a posted task's failure: reported once detached
  bool timed_out = false;
  {
    steady::time_point t0{};
    if (measure) t0 = steady::now();
    std::optional<attach_scope> py;
    attach_worker(py, opts.interpreter);
    if (!*py) {
      // The gate refused: the interpreter is finalizing or gone (or pyattach was never bound to
      // it). Never run Python without a state. Only this task: the worker loop takes the next
      // one, which tries (and is refused) on its own.
      to_report = refuse_python(w, std::move(task), py->status());
    } else {
      add_owned(w.attaches, 1);
      name_in_python(w);
      batch_bound bound{steady::now(), w.switch_interval_ns / 2};
      std::size_t ran = 0;
      for (;;) {
        const std::exception_ptr failure = run_counted(w, *task);
        ++ran;
        if (failure && !task->has_future()) to_report = failure;
        std::optional<steady::time_point> now;
        bool go_on = !to_report && opts.batch_python;
        if (go_on && !bound.allows_more(ran, &now)) {
          go_on = false;
          timed_out = true;
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
          const steady::time_point end = now ? *now : steady::now();
          add_owned(w.busy_ns, (end - bound.start).count());
          if (measure) {
            add_owned(w.attach_wait_ns, (bound.start - t0).count());
            add_owned(w.attached_ns, (end - bound.start).count());
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
    std::optional<attach_scope> py;
    attach_worker(py, opts.interpreter);
    if (*py) {
      name_in_python(w);
      add_owned(w.attaches, 1);
    }
    const worker_context ctx{opts.name, index, w.name, py->status()};
    try {
      hook(ctx);
    } catch (...) {
      e = std::current_exception();
    }
    if (*py) {
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
  add_owned(w.busy_ns, (steady::now() - t0).count());
  return e;
}

void pool_core::name_in_python(worker_rec& w) noexcept {
  // Once per interpreter lifetime: a re-initialized interpreter gives the worker a new state. (A
  // pool on a sub-interpreter names its workers there once: that interpreter is never re-made,
  // and the main one's re-initialization has ended it.)
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

}  // namespace pyattach::detail

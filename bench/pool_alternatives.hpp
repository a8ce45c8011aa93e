// bench/pool_alternatives.hpp — the pools pyattach_pool_bench compares (bench/pool_alternatives.cpp
// says what and why): the run's options and Python objects, counting tasks, and each alternative
// (boost::asio with PyGILState per task or a kept state per thread, pyattach::thread_pool with
// post/submit, batched or not). Included by pool_alternatives.cpp; the thread-state probe and
// the rest both benchmark binaries share are in harness.hpp.
#pragma once

#include <Python.h>

#include <benchmark/benchmark.h>
#include <valgrind/callgrind.h>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/version.hpp>
#include <pyattach/pyattach.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "harness.hpp"

namespace bench {

constexpr std::size_t kWorkers = 2;

struct options {
  bool smoke = false;
  std::uint64_t noop_tasks = 1000000;
  std::uint64_t python_tasks = 200000;
  int probes = 2000;
  int gil_probes = 300;           // pool/gilwait*: attaches timed by the prober thread
  std::uint64_t counted = 0;      // --callgrind N: N tasks per counted row; 0: the benchmarks
};

inline options g_options;
inline PyObject* g_globals = nullptr;  // owns the namespace below
inline PyObject* g_noop = nullptr;     // def noop(): return None (borrowed from g_globals)
inline double g_switch_interval_s = 0;  // sys.getswitchinterval(), read at start

// ---- counting tasks --------------------------------------------------------------------------

// One per worker thread, on its own cache line. Written only by its thread (a relaxed load and
// store: a plain increment, no lock prefix); read by the main thread after the pool's wait,
// join or future get(), which orders the reads after the last task's writes.
struct alignas(64) task_counter {
  std::atomic<std::uint64_t> tasks{0};
  std::atomic<std::uint64_t> failures{0};  // Python calls that raised
};
constexpr std::size_t kCounters = 4096;  // every worker thread of the run gets its own
inline task_counter g_counters[kCounters];
inline std::atomic<std::size_t> g_counters_used{0};

inline task_counter& my_counter() {
  thread_local task_counter* mine = [] {
    const std::size_t i = g_counters_used.fetch_add(1);
    if (i >= kCounters) {
      std::fprintf(stderr, "pyattach_pool_bench: more than %zu worker threads\n", kCounters);
      std::abort();
    }
    return &g_counters[i];
  }();
  return *mine;
}

inline void bump(std::atomic<std::uint64_t>& c) {
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

struct totals {
  std::uint64_t tasks = 0, failures = 0;
};
inline totals count_all() {
  totals t;
  const std::size_t n = std::min(g_counters_used.load(), kCounters);
  for (std::size_t i = 0; i < n; ++i) {
    t.tasks += g_counters[i].tasks.load(std::memory_order_relaxed);
    t.failures += g_counters[i].failures.load(std::memory_order_relaxed);
  }
  return t;
}

// The workloads. Both capture nothing, so every pool moves the same empty callable.
struct noop_task {
  void operator()() const { bump(my_counter().tasks); }
};
struct python_task {
  // PRECONDITION: attached (every Python alternative's task runs attached).
  void operator()() const {
    PyObject* r = PyObject_CallNoArgs(g_noop);  // g_noop lives until after every pool is gone
    task_counter& c = my_counter();
    if (__builtin_expect(r == nullptr, 0)) {
      PyErr_Clear();
      bump(c.failures);
    } else {
      Py_DECREF(r);
    }
    bump(c.tasks);
  }
};

// A Python task that runs no bytecode (C API only): CPython's drop request is never honoured
// inside it, so only the pool's own bound hands the GIL to a waiting thread (gilwait rows).
struct capi_task {
  // PRECONDITION: attached.
  void operator()() const {
    PyObject* v = PyLong_FromLong(1000);
    task_counter& c = my_counter();
    if (__builtin_expect(v == nullptr, 0)) {
      PyErr_Clear();
      bump(c.failures);
    } else {
      Py_DECREF(v);
    }
    bump(c.tasks);
  }
};

// ---- the alternatives ------------------------------------------------------------------------
//
// Shape: the constructor starts kWorkers threads; submit(f) runs f as one task of this kind
// (attached for a Python alternative); blocking(f), inside a task, runs f with the GIL released;
// finish() returns once every submitted task has run (asio: join(), so it is the last call);
// pool() is the pyattach pool, for its stats (nullptr for asio).
// warm_states: thread states the warm-up (one task per worker) is expected to create;
// per_task_states: whether the measured run creates one per task (else it must create none).
// Each alternative is its name and submit() over a base: the pool it runs its tasks on (the pool,
// finish() and pool()), itself over the kind of its tasks (the constants and blocking).

// The constants: C++ tasks never attach, so they make no thread state; every Python alternative's
// warm-up makes one per worker (kept, or, with PerTaskStates, one per task destroyed at its end).
template <bool Python, bool PerTaskStates = false>
struct task_kind {
  static constexpr bool python = Python;
  static constexpr int warm_states = Python ? kWorkers : 0;
  static constexpr bool per_task_states = PerTaskStates;
};

// C++ tasks: blocking(f) only calls f.
struct cxx_tasks : task_kind<false> {
  template <class F>
  static void blocking(F&& f) {
    f();
  }
};

// Python tasks attached with CPython's own calls (asio): blocking(f) lets go of the GIL
// (PyEval_SaveThread) and takes it back.
template <bool PerTaskStates>
struct raw_python_tasks : task_kind<true, PerTaskStates> {
  template <class F>
  static void blocking(F&& f) {
    PyThreadState* s = PyEval_SaveThread();  // attached inside a task: let go of the GIL
    f();
    PyEval_RestoreThread(s);
  }
};

// Python tasks on pyattach's pool (each worker makes its state on its first Python task and keeps
// it): blocking(f) runs f in a detach_scope (inside the pool's attach_scope: GIL released, state
// kept).
struct pyattach_python_tasks : task_kind<true> {
  template <class F>
  static void blocking(F&& f) {
    pyattach::detach_scope nogil;
    f();
  }
};

// boost::asio::thread_pool(kWorkers); finish() joins it (no stop(): join waits until the pool has
// no outstanding work), so it is the last call.
template <class Tasks>
class on_asio_pool : public Tasks {
 public:
  void finish() { pool_.join(); }
  pyattach::thread_pool* pool() { return nullptr; }

 protected:
  boost::asio::thread_pool pool_{kWorkers};
};

struct asio_post : on_asio_pool<cxx_tasks> {
  static constexpr const char* name = "asio_post";
  template <class F>
  void submit(F f) {
    boost::asio::post(pool_, std::move(f));
  }
};

struct asio_gilstate : on_asio_pool<raw_python_tasks<true>> {
  static constexpr const char* name = "asio_gilstate";
  template <class F>
  void submit(F f) {
    boost::asio::post(pool_, [f = std::move(f)] {
      // No state on an asio thread: Ensure makes one and attaches it; the outermost Release
      // clears and deletes it and drops the GIL. The interpreter outlives every pool here.
      const PyGILState_STATE g = PyGILState_Ensure();
      f();
      PyGILState_Release(g);
    });
  }
};

// The floor's state for the calling asio thread: made on its first task, deleted at thread exit.
struct floor_state {
  PyThreadState* ts = nullptr;
  ~floor_state() {
    if (ts == nullptr) return;
    PyEval_RestoreThread(ts);       // the interpreter outlives every pool's threads
    PyThreadState_Clear(ts);        // attached: its data is freed under the GIL
    PyThreadState_DeleteCurrent();  // deletes ts and releases the GIL
  }
};
inline PyThreadState* my_floor_state() {
  thread_local floor_state s;
  // Made on the thread that uses it (PyGILState registers it as this thread's); no GIL needed.
  if (s.ts == nullptr) s.ts = PyThreadState_New(PyInterpreterState_Main());
  return s.ts;
}

struct asio_floor : on_asio_pool<raw_python_tasks<false>> {
  static constexpr const char* name = "asio_floor";
  template <class F>
  void submit(F f) {
    boost::asio::post(pool_, [f = std::move(f)] {
      PyEval_RestoreThread(my_floor_state());  // takes the GIL
      f();
      PyEval_SaveThread();  // drops it, keeps the state
    });
  }
};

inline pyattach::pool_options pool_options_for_bench() {
  pyattach::pool_options o;
  o.name = "pool_bench";
  o.workers = kWorkers;
  o.on_error = [](const pyattach::task_failure& f) {
    fail("thread_pool on_error: " + std::string(f.where) + ": " + f.what);
  };
  return o;
}

// pyattach::thread_pool (pool_options_for_bench(), or the options given); finish() waits until
// every task has run.
template <class Tasks>
class on_pyattach_pool : public Tasks {
 public:
  on_pyattach_pool() = default;
  explicit on_pyattach_pool(pyattach::pool_options o) : pool_(std::move(o)) {}
  void finish() { pool_.wait(); }
  pyattach::thread_pool* pool() { return &pool_; }

 protected:
  pyattach::thread_pool pool_{pool_options_for_bench()};
};

// The same pool for a submit alternative, and the futures: reserved up front for the run's task
// count (not timed), kept until finish() get()s them all (rethrowing what a task threw: none
// here). The pool is destroyed before the futures.
template <class Tasks>
class on_pyattach_pool_futures : public Tasks {
 public:
  on_pyattach_pool_futures() {
    futures_.reserve((Tasks::python ? g_options.python_tasks : g_options.noop_tasks) + 16);
  }
  void finish() {
    for (auto& f : futures_) f.get();
    futures_.clear();
  }
  pyattach::thread_pool* pool() { return &pool_; }

 protected:
  std::vector<std::future<void>> futures_;
  pyattach::thread_pool pool_{pool_options_for_bench()};
};

struct pyattach_post : on_pyattach_pool<cxx_tasks> {
  static constexpr const char* name = "pyattach_post";
  template <class F>
  void submit(F f) {
    pool_.post(std::move(f));
  }
};

struct pyattach_submit : on_pyattach_pool_futures<cxx_tasks> {
  static constexpr const char* name = "pyattach_submit";
  template <class F>
  void submit(F f) {
    futures_.push_back(pool_.submit(std::move(f)));
  }
};

struct pyattach_post_python : on_pyattach_pool<pyattach_python_tasks> {
  static constexpr const char* name = "pyattach_post_python";
  pyattach_post_python() = default;
  template <class F>
  void submit(F f) {
    pool_.post_python(std::move(f));
  }

 protected:
  explicit pyattach_post_python(pyattach::pool_options o) : on_pyattach_pool(std::move(o)) {}
};

// The same pool with batching off (pool_options::batch_python = false): one attach per Python
// task, as before batching; the reference for what batching gains and what it costs a waiter.
struct pyattach_post_python_unbatched : pyattach_post_python {
  static constexpr const char* name = "pyattach_post_python_unbatched";
  pyattach_post_python_unbatched() : pyattach_post_python(unbatched_options()) {}

 private:
  static pyattach::pool_options unbatched_options() {
    pyattach::pool_options o = pool_options_for_bench();
    o.batch_python = false;
    return o;
  }
};

struct pyattach_submit_python : on_pyattach_pool_futures<pyattach_python_tasks> {
  static constexpr const char* name = "pyattach_submit_python";
  template <class F>
  void submit(F f) {
    futures_.push_back(pool_.submit_python(std::move(f)));
  }
};

}  // namespace bench

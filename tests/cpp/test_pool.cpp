// tests/cpp/test_pool.cpp — pyattach::thread_pool (pool.hpp).
//
// What is checked, one behaviour per test:
// - identity: a worker keeps ONE thread state (threading.local, PyThreadState, ident) across
//   10,000 Python tasks; workers differ; the thread-state count grows by the worker count, never
//   the task count, and returns to its baseline after shutdown;
// - the GIL: C++ tasks never attach; idle workers hold no GIL; two pools never block each other;
//   submit/wait/shutdown/the destructor from a thread holding the GIL release it while blocking;
// - futures: values, C++ exceptions with their type, Python errors (left set, or thrown
//   python_error::fetch()) as python_error; post() failures to on_error; the worker survives;
// - names (OS and Python), hooks, shutdown (drain, cancel, refusal, misuse from a worker),
//   finalization, back-pressure, stats, the thread report, and a 100,000-task stress run;
// - what a ThreadPoolExecutor on top needs: workers started on demand (none up front, worker 0
//   reused by one task at a time, min(tasks, workers) for blocking ones, a throwing start hook
//   breaks the pool), the name separator, stop() without joining, and detach() (destroyed
//   without joining, by its own worker without misuse, still stopped by finalization).
//
// Cases that can hang (a worker or a blocked caller that kept the GIL, a pool waiting for its own
// worker), that misuse (misuse_count() must stay 0 in the shared process), or that need their own
// interpreter lifetime run in child processes (child_process.hpp). In-process tests wait for
// futures with a deadline and end the process through fatal_stuck() instead of hanging.
#include <gtest/gtest.h>

#include <pyattach/pool.hpp>

#include <dirent.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;
using pyattach::full_policy;
using pyattach::pool_errc;
using pyattach::pool_error;
using pyattach::pool_options;
using pyattach::python_error;
using pyattach::shutdown_mode;
using pyattach::thread_pool;

namespace {

// Deadlines for things that take milliseconds when they work (generous: Debug, 2 cores, TSan).
constexpr std::chrono::milliseconds k_wait = k_sanitized ? 60s : 20s;
// "Promptly": what a short Python task on an idle pool must take at most.
constexpr std::chrono::milliseconds k_prompt = k_sanitized ? 5s : 2s;

// How an exception_ptr / a ready future ended, as text for comparisons and messages:
// "value", "pool_error:<code>", "python_error:<type>:<message>", "exception:<what>", "unknown".
std::string describe_error(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const pool_error& x) {
    return std::string("pool_error:") + pyattach::to_string(x.code());
  } catch (const python_error& x) {
    return "python_error:" + x.type_name() + ":" + x.message();
  } catch (const std::exception& x) {
    return std::string("exception:") + x.what();
  } catch (...) {
    return "unknown";
  }
}

template <class T>
std::string outcome(std::future<T>& f) {
  try {
    f.get();
    return "value";
  } catch (...) {
    return describe_error(std::current_exception());
  }
}

// Ends the process (fatal_stuck) if `f` is not ready within `timeout`: a hang must fail fast.
template <class T>
void require_ready(std::future<T>& f, const std::string& what,
                   std::chrono::milliseconds timeout = k_wait) {
  if (f.wait_for(timeout) != std::future_status::ready) {
    fatal_stuck("future not ready within " + std::to_string(timeout.count()) + " ms: " + what);
  }
}

template <class T>
bool is_ready(std::future<T>& f) {
  return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

// Runs fn on a new thread with a deadline (fatal_stuck on expiry); for calls that must return.
template <class F>
void run_with_deadline(const std::string& what, F fn, std::chrono::milliseconds timeout = k_wait) {
  auto done = std::make_shared<latch>();
  std::thread t([done, fn]() mutable {
    fn();
    done->set();
  });
  if (!done->wait(timeout)) {
    t.detach();
    fatal_stuck(what + " did not return within " + std::to_string(timeout.count()) + " ms");
  }
  t.join();
}

// Before reading the contents of exceptions that workers produced: waits until every worker has
// finished its task, so the worker's own references (its exception_ptr copies, the promise it
// destroys) are dropped before the reads, ordered by the pool's mutex. Needed under TSan only in
// effect: libstdc++ is not instrumented, so TSan cannot see the atomic reference count of
// exception_ptr (or of the exception's COW message) and reports the worker freeing the last
// reference after our what() as a race (reproduced without pyattach: a promise destroyed on
// another thread after the future's exception was read). Weakens no assertion.
void settle(thread_pool& pool) {
  run_with_deadline("wait() before reading exceptions", [&] { pool.wait(); });
}

// The kernel's name of one of this process's threads ("" if it is gone).
std::string thread_comm(std::uint64_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string s;
  std::getline(f, s);
  return s;
}

std::size_t os_thread_count() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
    closedir(d);
  }
  return n;
}

// Polls until the process has `expected` threads (a joined thread may linger in /proc briefly).
bool os_thread_count_becomes(std::size_t expected, std::chrono::milliseconds timeout = 5s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (os_thread_count() != expected) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The thread count once it has stopped changing (the same value 10 polls in a row, 2 ms apart;
// at most 1 s): a baseline taken right after a join may still count the joined thread.
std::size_t settled_os_thread_count() {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  std::size_t last = os_thread_count();
  for (int same = 0; same < 10 && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const std::size_t n = os_thread_count();
    same = n == last ? same + 1 : 0;
    last = n;
  }
  return last;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// n threads meet: each arrive_and_wait() returns once all n arrived (true) or at the timeout.
class rendezvous {
 public:
  explicit rendezvous(std::size_t n) : n_(n) {}
  bool arrive_and_wait(std::chrono::milliseconds timeout = k_wait) {
    std::unique_lock<std::mutex> g(m_);
    ++arrived_;
    cv_.notify_all();
    return cv_.wait_for(g, timeout, [&] { return arrived_ >= n_; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::size_t n_;
  std::size_t arrived_ = 0;
};

// Runs fn() attached once on EVERY worker of `pool`: pool.size() Python tasks that meet at a
// rendezvous (detached, GIL released) after fn, so no worker can take two of them. fn's results.
template <class F>
auto python_on_each_worker(thread_pool& pool, F fn) -> std::vector<decltype(fn())> {
  using R = decltype(fn());
  auto meet = std::make_shared<rendezvous>(pool.size());
  std::vector<std::future<std::pair<R, bool>>> fs;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    fs.push_back(pool.submit_python([meet, fn]() mutable {
      R r = fn();
      bool met;
      {
        pyattach::detach_scope nogil;
        met = meet->arrive_and_wait();
      }
      return std::make_pair(std::move(r), met);
    }));
  }
  std::vector<R> out;
  for (auto& f : fs) {
    require_ready(f, "python_on_each_worker on " + pool.name());
    auto p = f.get();
    EXPECT_TRUE(p.second) << "the workers of " << pool.name() << " did not all meet";
    out.push_back(std::move(p.first));
  }
  return out;
}

// The same with C++ tasks (never attached).
template <class F>
auto cpp_on_each_worker(thread_pool& pool, F fn) -> std::vector<decltype(fn())> {
  using R = decltype(fn());
  auto meet = std::make_shared<rendezvous>(pool.size());
  std::vector<std::future<std::pair<R, bool>>> fs;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    fs.push_back(pool.submit([meet, fn]() mutable {
      R r = fn();
      const bool met = meet->arrive_and_wait();
      return std::make_pair(std::move(r), met);
    }));
  }
  std::vector<R> out;
  for (auto& f : fs) {
    require_ready(f, "cpp_on_each_worker on " + pool.name());
    auto p = f.get();
    EXPECT_TRUE(p.second) << "the workers of " << pool.name() << " did not all meet";
    out.push_back(std::move(p.first));
  }
  return out;
}

// worker os_tid -> its stats entry.
std::map<std::uint64_t, pyattach::worker_stats> workers_by_tid(const thread_pool& pool) {
  std::map<std::uint64_t, pyattach::worker_stats> m;
  for (const auto& w : pool.stats().workers) m.emplace(w.os_tid, w);
  return m;
}

// A globals dict with `threading` imported and `code` run in it. PRECONDITION: not attached.
PyObject* make_globals(const std::string& code = "") {
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  py_exec("import threading, sys, time\n" + code, g);
  return g;
}
void drop(PyObject* o) {
  pyattach::attach_scope py;
  Py_XDECREF(o);
}

// Records every on_error call (called on the workers; must not throw).
struct error_log {
  struct entry {
    std::string pool_name;
    std::size_t worker_index;
    std::string where;
    std::string error;  // describe_error(failure.error)
    std::string what;
    std::string expected_what;  // what() of the rethrown error, or "unknown exception"
    std::uint64_t tid;
  };
  std::mutex m;
  std::vector<entry> entries;

  std::function<void(const pyattach::task_failure&)> handler() {
    return [this](const pyattach::task_failure& f) {
      entry e{f.pool_name, f.worker_index, f.where ? f.where : "(null)", describe_error(f.error),
              f.what, "", os_tid()};
      try {
        std::rethrow_exception(f.error);
      } catch (const std::exception& x) {
        e.expected_what = x.what();
      } catch (...) {
        e.expected_what = "unknown exception";
      }
      std::lock_guard<std::mutex> g(m);
      entries.push_back(std::move(e));
    };
  }
  std::vector<entry> snapshot() {
    std::lock_guard<std::mutex> g(m);
    return entries;
  }
  std::size_t count(const std::string& error) {
    std::lock_guard<std::mutex> g(m);
    return static_cast<std::size_t>(std::count_if(entries.begin(), entries.end(),
                                                  [&](const entry& e) { return e.error == error; }));
  }
};

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

#define EXPECT_CHILD_CLEAN(r)                                                   \
  do {                                                                          \
    EXPECT_TRUE((r).exited_cleanly()) << (r).describe();                        \
    EXPECT_EQ((r).out.find("CHILD-FAIL"), std::string::npos) << (r).describe(); \
    EXPECT_NE((r).out.find("done\n"), std::string::npos) << (r).describe();     \
  } while (0)

}  // namespace

// ==== 1. a worker keeps ONE thread state =======================================================

namespace {
// What a Python task saw of its thread's identity.
struct identity_sample {
  std::uint64_t tid = 0;
  const void* tstate = nullptr;
  unsigned long ident = 0;
  long tl_id = -1;  // threading.local: the id this thread's local got on its first task
  long tl_n = -1;   // threading.local: how many tasks this thread's local has counted
  bool gil = false;
};

constexpr const char* k_identity_setup =
    "import itertools\n"
    "tl = threading.local()\n"
    "ids = itertools.count()\n"
    "def bump():\n"
    "    if not hasattr(tl, 'id'):\n"
    "        tl.id = next(ids)\n"
    "        tl.n = 0\n"
    "    tl.n += 1\n"
    "    return (tl.id, tl.n, threading.get_ident())\n";

// A Python task body: calls bump() (in globals) and records what it saw.
identity_sample identity_task(PyObject* code, PyObject* globals) {
  identity_sample s;
  s.tid = os_tid();
  s.tstate = PyThreadState_Get();
  s.gil = PyGILState_Check() == 1;
  PyObject* r = PyEval_EvalCode(code, globals, globals);
  if (r == nullptr) return s;  // the error arrives in the future as python_error
  s.tl_id = PyLong_AsLong(PyTuple_GetItem(r, 0));
  s.tl_n = PyLong_AsLong(PyTuple_GetItem(r, 1));
  s.ident = PyLong_AsUnsignedLong(PyTuple_GetItem(r, 2));
  Py_DECREF(r);
  return s;
}

PyObject* compile_eval(const char* expr) {
  pyattach::attach_scope py;
  PyObject* c = Py_CompileString(expr, "<pool-test>", Py_eval_input);
  if (c == nullptr) PyErr_Print();
  return c;
}
}  // namespace

TEST(Pool, OneWorkerKeepsOneThreadStateAcross10000PythonTasks) {
  constexpr int k_tasks = 10000;
  const std::size_t baseline = thread_states();
  PyObject* globals = make_globals(k_identity_setup);
  PyObject* code = compile_eval("bump()");
  ASSERT_NE(code, nullptr);
  {
    thread_pool pool("persist", 1);
    EXPECT_EQ(thread_states(), baseline) << "a worker made a thread state before any Python task";
    std::vector<std::future<identity_sample>> fs;
    fs.reserve(k_tasks);
    for (int i = 0; i < k_tasks; ++i) {
      fs.push_back(pool.submit_python([code, globals] { return identity_task(code, globals); }));
    }
    std::vector<identity_sample> s;
    for (auto& f : fs) {
      require_ready(f, "a persistence task");
      s.push_back(f.get());
    }
    ASSERT_EQ(s.size(), static_cast<std::size_t>(k_tasks));
    const identity_sample& first = s.front();
    int diff_tid = 0, diff_state = 0, diff_ident = 0, diff_local = 0, no_gil = 0;
    std::vector<long> ns;
    for (const auto& x : s) {
      diff_tid += x.tid != first.tid;
      diff_state += x.tstate != first.tstate;
      diff_ident += x.ident != first.ident;
      diff_local += x.tl_id != first.tl_id;
      no_gil += !x.gil;
      ns.push_back(x.tl_n);
    }
    EXPECT_EQ(diff_tid, 0) << "a one-worker pool ran tasks on several threads";
    EXPECT_EQ(diff_state, 0) << "tasks ran on different PyThreadStates";
    EXPECT_EQ(diff_ident, 0) << "threading.get_ident() changed between tasks";
    EXPECT_EQ(diff_local, 0) << "threading.local was reset: its id changed";
    EXPECT_EQ(no_gil, 0) << "PyGILState_Check() was not 1 inside a Python task";
    std::sort(ns.begin(), ns.end());
    EXPECT_EQ(ns.front(), 1);
    EXPECT_EQ(ns.back(), k_tasks) << "threading.local's counter did not reach the task count";
    EXPECT_EQ(std::adjacent_find(ns.begin(), ns.end()), ns.end()) << "a tl.n value repeats";
    EXPECT_EQ(thread_states(), baseline + 1) << "10,000 tasks on one worker: one thread state";
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 1u);
    EXPECT_EQ(st.workers[0].os_tid, first.tid);
    EXPECT_TRUE(st.workers[0].named_in_python);
    pool.shutdown();
    EXPECT_EQ(thread_states(), baseline) << "the worker's thread state survived its thread";
  }
  EXPECT_EQ(thread_states(), baseline);
  drop(code);
  drop(globals);
}

TEST(Pool, EachWorkerHasItsOwnThreadStateAndTheCountGrowsByTheWorkerCountOnly) {
  constexpr std::size_t k_workers = 4;
  constexpr int k_tasks = 10000;
  const std::size_t baseline = thread_states();
  PyObject* globals = make_globals(k_identity_setup);
  PyObject* code = compile_eval("bump()");
  ASSERT_NE(code, nullptr);
  {
    pool_options o;
    o.name = "states";
    o.workers = k_workers;
    thread_pool pool(o);
    EXPECT_EQ(thread_states(), baseline) << "workers made thread states before any Python task";
    // One Python task on each worker: every worker now has its state.
    std::vector<identity_sample> s =
        python_on_each_worker(pool, [code, globals] { return identity_task(code, globals); });
    EXPECT_EQ(thread_states(), baseline + k_workers);
    std::vector<std::future<identity_sample>> fs;
    for (int i = 0; i < k_tasks; ++i) {
      fs.push_back(pool.submit_python([code, globals] { return identity_task(code, globals); }));
    }
    for (auto& f : fs) {
      require_ready(f, "an identity task");
      s.push_back(f.get());
    }
    EXPECT_EQ(thread_states(), baseline + k_workers)
        << "the thread-state count must grow by the worker count, never the task count";

    std::map<std::uint64_t, std::vector<identity_sample>> by_tid;
    for (const auto& x : s) by_tid[x.tid].push_back(x);
    const auto workers = workers_by_tid(pool);
    ASSERT_EQ(by_tid.size(), k_workers) << "tasks ran on a thread that is not one of the 4 workers";
    std::set<long> local_ids;
    std::set<const void*> states;
    std::set<unsigned long> idents;
    std::size_t total = 0;
    for (const auto& [tid, v] : by_tid) {
      EXPECT_EQ(workers.count(tid), 1u) << "tid " << tid << " is not in stats().workers";
      std::vector<long> ns;
      int diff = 0;
      for (const auto& x : v) {
        diff += x.tstate != v[0].tstate || x.ident != v[0].ident || x.tl_id != v[0].tl_id;
        ns.push_back(x.tl_n);
      }
      EXPECT_EQ(diff, 0) << "worker " << tid << " changed PyThreadState, ident or threading.local";
      std::sort(ns.begin(), ns.end());
      // This worker's threading.local counted exactly the tasks it ran: 1, 2, ..., v.size().
      EXPECT_EQ(ns.front(), 1) << "worker " << tid;
      EXPECT_EQ(ns.back(), static_cast<long>(v.size())) << "worker " << tid;
      EXPECT_EQ(std::adjacent_find(ns.begin(), ns.end()), ns.end()) << "worker " << tid;
      local_ids.insert(v[0].tl_id);
      states.insert(v[0].tstate);
      idents.insert(v[0].ident);
      total += v.size();
    }
    EXPECT_EQ(total, k_tasks + k_workers);
    EXPECT_EQ(local_ids.size(), k_workers) << "two workers shared a threading.local";
    EXPECT_EQ(states.size(), k_workers) << "two workers shared a PyThreadState";
    EXPECT_EQ(idents.size(), k_workers);
    pool.shutdown();
    EXPECT_EQ(thread_states(), baseline) << "worker thread states were not destroyed at exit";
  }
  drop(code);
  drop(globals);
}

// ==== 2. C++ tasks never attach ================================================================

TEST(Pool, CppTaskNeverAttachesAnotherThreadRunsPythonWhileItBlocks) {
  const std::size_t baseline = thread_states();
  thread_pool pool("cxxonly", 1);
  latch started, release;
  std::atomic<bool> attached_inside{true}, gil_inside{true};
  auto f = pool.submit([&] {
    attached_inside = pyattach::is_attached();
    gil_inside = PyGILState_Check() == 1;
    started.set();
    return release.wait(k_wait);
  });
  ASSERT_TRUE(started.wait(k_wait));
  // The C++ task is blocked: if the worker had attached for it, it would hold the GIL now.
  const bool ran = other_thread_can_run_python(k_prompt);
  if (!ran) {
    release.set();
    fatal_stuck("another thread could not run Python while a C++ pool task blocked");
  }
  EXPECT_TRUE(ran);
  EXPECT_EQ(thread_states(), baseline) << "the C++ task's worker has a thread state";
  release.set();
  require_ready(f, "the blocked C++ task");
  EXPECT_TRUE(f.get());
  EXPECT_FALSE(attached_inside.load()) << "is_attached() inside a C++ task";
  EXPECT_FALSE(gil_inside.load()) << "PyGILState_Check() inside a C++ task";
}

TEST(Pool, PoolThatRanOnlyCppTasksAddsNoThreadState) {
  const std::size_t baseline = thread_states();
  pool_options o;
  o.name = "cxxonly2";
  o.workers = 3;
  thread_pool pool(o);
  std::atomic<int> attached{0}, ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 1000; ++i) {
    fs.push_back(pool.submit([&, i] {
      attached += pyattach::is_attached();
      ++ran;
      return i;
    }));
    pool.post([&] {
      attached += pyattach::is_attached();
      ++ran;
    });
  }
  for (int i = 0; i < 1000; ++i) {
    require_ready(fs[static_cast<size_t>(i)], "C++ task");
    EXPECT_EQ(fs[static_cast<size_t>(i)].get(), i);
  }
  pool.wait();
  EXPECT_EQ(ran.load(), 2000);
  EXPECT_EQ(attached.load(), 0);
  EXPECT_EQ(thread_states(), baseline) << "a pool that ran only C++ tasks made thread states";
  const auto st = pool.stats();
  std::set<std::uint64_t> tids;
  for (const auto& w : st.workers) {
    EXPECT_FALSE(w.named_in_python) << w.name;
    tids.insert(w.os_tid);
  }
  const auto report = pyattach::make_thread_report();
  for (const auto& t : report.threads) {
    if (tids.count(t.os_tid)) {
      EXPECT_FALSE(t.has_thread_state) << "worker " << t.os_tid << " has a state";
    }
  }
}

// ==== 3. idle workers hold no GIL ==============================================================

TEST(Pool, IdleWorkersHoldNoGilAfterRunningPythonTasks) {
  pool_options o;
  o.name = "idle";
  o.workers = 4;
  thread_pool pool(o);
  python_on_each_worker(pool, [] { return PyRun_SimpleString("_idle_x = sum(range(100))\n") == 0; });
  // A burst more, so the workers go idle right after Python work.
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 200; ++i) {
    fs.push_back(pool.submit_python([] { return PyRun_SimpleString("_idle_y = 1\n"); }));
  }
  for (auto& f : fs) {
    require_ready(f, "idle burst");
    EXPECT_EQ(f.get(), 0);
  }
  pool.wait();
  for (int k = 0; k < 5; ++k) {
    // A brand-new native thread attaches at once: no idle worker holds the GIL.
    if (!other_thread_can_run_python(k_sanitized ? 3000ms : 1000ms)) {
      fatal_stuck("an idle pool's worker holds the GIL (attempt " + std::to_string(k) + ")");
    }
  }
  // The thread report agrees: every worker is detached.
  const auto tids = workers_by_tid(pool);
  const auto report = pyattach::make_thread_report();
  std::size_t seen = 0;
  for (const auto& t : report.threads) {
    if (!tids.count(t.os_tid)) continue;
    ++seen;
    EXPECT_EQ(t.state, pyattach::thread_attachment::detached)
        << "idle worker " << t.os_tid << " is " << pyattach::to_string(t.state);
  }
  EXPECT_EQ(seen, 4u) << pyattach::to_string(report);
}

// ==== 4. futures ===============================================================================

namespace {
struct custom_failure {  // not a std::exception
  int code;
};
}  // namespace

TEST(Pool, FuturesReceiveValuesOfEveryKind) {
  pool_options o;
  o.name = "values";
  o.workers = 2;
  thread_pool pool(o);
  auto a = pool.submit([] { return 42; });
  auto b = pool.submit([] { return std::string("forty-two"); });
  std::atomic<int> side{0};
  auto c = pool.submit([&] { side = 7; });  // void
  auto d = pool.submit_python([] {
    PyObject* n = PyLong_FromLong(6);
    PyObject* m = PyNumber_Multiply(n, n);
    const long v = PyLong_AsLong(m) + 6;
    Py_DECREF(m);
    Py_DECREF(n);
    return v;
  });
  auto e = pool.submit([] { return std::make_unique<int>(5); });  // move-only result
  require_ready(a, "int");
  require_ready(b, "string");
  require_ready(c, "void");
  require_ready(d, "python value");
  require_ready(e, "unique_ptr");
  EXPECT_EQ(a.get(), 42);
  EXPECT_EQ(b.get(), "forty-two");
  c.get();
  EXPECT_EQ(side.load(), 7);
  EXPECT_EQ(d.get(), 42);
  auto p = e.get();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

TEST(Pool, FuturesReceiveCppExceptionsWithTheirTypeAndTheWorkerSurvives) {
  thread_pool pool("cxxerr", 1);
  auto tid_of = [&] { return pool.submit([] { return os_tid(); }); };
  auto t0 = tid_of();
  auto a = pool.submit([]() -> int { throw std::out_of_range("index 9 out of range"); });
  auto b = pool.submit([]() -> int { throw custom_failure{17}; });
  auto c = pool.submit_python([]() -> int { throw std::invalid_argument("from a python task"); });
  auto t1 = tid_of();
  auto after = pool.submit([] { return 1; });
  for (auto* f : {&a, &b, &c}) require_ready(*f, "throwing task");
  settle(pool);
  try {
    a.get();
    ADD_FAILURE() << "no exception";
  } catch (const std::out_of_range& x) {
    EXPECT_STREQ(x.what(), "index 9 out of range");
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  try {
    b.get();
    ADD_FAILURE() << "no exception";
  } catch (const custom_failure& x) {
    EXPECT_EQ(x.code, 17);
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  try {
    c.get();
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& x) {
    EXPECT_STREQ(x.what(), "from a python task");
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  require_ready(after, "task after the failures");
  EXPECT_EQ(after.get(), 1);
  require_ready(t1, "tid");
  EXPECT_EQ(t0.get(), t1.get()) << "the worker was replaced after the exceptions";
}

TEST(Pool, PythonErrorLeftSetArrivesAsPythonErrorAndTheWorkerSurvives) {
  thread_pool pool("pyerr", 1);
  PyObject* g = make_globals();
  // PyRun_String leaves the error set (PyRun_SimpleString would print and clear it).
  auto raise = pool.submit_python([g] {
    PyObject* r = PyRun_String("raise ValueError('boom')\n", Py_file_input, g, g);
    const bool ok = r != nullptr;
    Py_XDECREF(r);
    return ok;
  });
  auto set = pool.submit_python([] {
    PyErr_SetString(PyExc_KeyError, "k");
    return 0;
  });
  // The next task on the same (only) worker finds no error set and runs normally.
  auto next = pool.submit_python([g] {
    const bool clean = PyErr_Occurred() == nullptr;
    PyObject* r = PyRun_String("1 + 1", Py_eval_input, g, g);
    const long v = r ? PyLong_AsLong(r) : -1;
    Py_XDECREF(r);
    return std::make_pair(clean, v);
  });
  require_ready(raise, "raise ValueError");
  require_ready(set, "PyErr_SetString");
  require_ready(next, "task after the errors");
  settle(pool);
  try {
    raise.get();
    ADD_FAILURE() << "a Python error left set did not reach the future";
  } catch (const python_error& e) {
    EXPECT_EQ(e.type_name(), "ValueError");
    EXPECT_EQ(e.message(), "boom");
    EXPECT_TRUE(contains(e.traceback(), "ValueError")) << e.traceback();
    EXPECT_TRUE(contains(e.traceback(), "boom")) << e.traceback();
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  try {
    set.get();
    ADD_FAILURE() << "PyErr_SetString did not reach the future";
  } catch (const python_error& e) {
    EXPECT_EQ(e.type_name(), "KeyError");
    EXPECT_EQ(e.message(), "'k'") << "message must be str(exception)";
    EXPECT_TRUE(contains(e.traceback(), "KeyError")) << e.traceback();
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  const auto n = next.get();
  EXPECT_TRUE(n.first) << "a Python error leaked into the next task";
  EXPECT_EQ(n.second, 2);
  drop(g);
}

TEST(Pool, ThrownPythonErrorFetchArrivesAndClearsTheError) {
  thread_pool pool("pyfetch", 1);
  PyObject* g = make_globals();
  auto thrown = pool.submit_python([g]() -> int {
    PyObject* r = PyRun_String("def f():\n    raise ValueError('boom')\nf()\n", Py_file_input, g, g);
    if (r == nullptr) {
      pyattach::python_error e = python_error::fetch();
      // fetch() took (and cleared) the error: nothing is left set for the pool to find.
      if (PyErr_Occurred() != nullptr) return -2;
      throw e;
    }
    Py_DECREF(r);
    return 0;
  });
  auto none = pool.submit_python([]() -> int { throw python_error::fetch(); });  // nothing set
  auto next = pool.submit_python([] { return PyErr_Occurred() == nullptr; });
  require_ready(thrown, "thrown fetch");
  require_ready(none, "fetch without an error");
  require_ready(next, "next");
  settle(pool);
  try {
    const int v = thrown.get();
    ADD_FAILURE() << "no exception, value " << v;
  } catch (const python_error& e) {
    EXPECT_EQ(e.type_name(), "ValueError");
    EXPECT_EQ(e.message(), "boom");
    EXPECT_TRUE(contains(e.traceback(), "ValueError")) << e.traceback();
    EXPECT_TRUE(contains(e.traceback(), "in f")) << "the traceback names the frame: " << e.traceback();
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  try {
    none.get();
    ADD_FAILURE() << "no exception";
  } catch (const python_error& e) {
    EXPECT_EQ(e.type_name(), "SystemError") << "fetch() with no error set";
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
  EXPECT_TRUE(next.get()) << "an error leaked into the next task";
  drop(g);
}

TEST(Pool, CppThrowFromPythonTaskWinsAndItsPythonErrorDoesNotLeak) {
  thread_pool pool("pymixed", 1);
  auto f = pool.submit_python([]() -> int {
    PyErr_SetString(PyExc_RuntimeError, "left behind");
    throw std::logic_error("thrown");
  });
  auto next = pool.submit_python([] { return PyErr_Occurred() == nullptr; });
  require_ready(f, "throwing python task");
  require_ready(next, "next");
  settle(pool);
  EXPECT_EQ(outcome(f), "exception:thrown");
  EXPECT_TRUE(next.get()) << "the Python error of a task that threw leaked into the next task";
}

TEST(Pool, PythonErrorAccessors) {
  const python_error e("ValueError", "boom", "Traceback...\nValueError: boom\n");
  EXPECT_EQ(e.type_name(), "ValueError");
  EXPECT_EQ(e.message(), "boom");
  EXPECT_EQ(e.traceback(), "Traceback...\nValueError: boom\n");
  const pool_error p(pool_errc::queue_full, "full");
  EXPECT_EQ(p.code(), pool_errc::queue_full);
  EXPECT_TRUE(contains(p.what(), "full")) << p.what();
  std::set<std::string> names;
  for (auto c : {pool_errc::shut_down, pool_errc::cancelled, pool_errc::finalizing,
                 pool_errc::queue_full, pool_errc::start_hook_failed, pool_errc::called_from_worker}) {
    names.insert(pyattach::to_string(c));
  }
  EXPECT_EQ(names.size(), 6u) << "to_string(pool_errc) names must be distinct";
  EXPECT_STREQ(pyattach::to_string(pool_errc::called_from_worker), "called_from_worker");
}

// ==== 5. post() failures go to on_error ========================================================

TEST(Pool, PostFailuresGoToOnErrorWithWhereTaskAndTheWorkerSurvives) {
  error_log log;
  pool_options o;
  o.name = "posterr";
  o.workers = 2;
  o.on_error = log.handler();
  thread_pool pool(o);
  PyObject* g = make_globals();
  std::atomic<int> ok{0};
  pool.post([] { throw std::runtime_error("posted boom"); });
  pool.post_python([g] {
    PyObject* r = PyRun_String("raise ValueError('pyboom')\n", Py_file_input, g, g);
    Py_XDECREF(r);
  });
  pool.post_python([] {
    PyErr_SetString(PyExc_TypeError, "typed");
    throw python_error::fetch();
  });
  pool.post([] { throw 7; });
  for (int i = 0; i < 10; ++i) pool.post([&] { ++ok; });
  pool.post_python([&] { ok += PyRun_SimpleString("_posted = 1\n") == 0; });
  pool.wait();
  EXPECT_EQ(ok.load(), 11) << "the workers did not survive the failures";
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 4u);
  const auto tids = workers_by_tid(pool);
  std::multiset<std::string> errors;
  for (const auto& e : entries) {
    errors.insert(e.error);
    EXPECT_EQ(e.where, "task");
    EXPECT_EQ(e.pool_name, "posterr");
    EXPECT_LT(e.worker_index, 2u);
    EXPECT_EQ(e.what, e.expected_what) << "task_failure::what must be error's what()";
    ASSERT_EQ(tids.count(e.tid), 1u) << "on_error was not called on a worker";
    EXPECT_EQ(tids.at(e.tid).name, "posterr-" + std::to_string(e.worker_index))
        << "worker_index does not name the worker that ran the task";
  }
  EXPECT_EQ(errors.count("exception:posted boom"), 1u) << join({errors.begin(), errors.end()});
  EXPECT_EQ(errors.count("python_error:ValueError:pyboom"), 1u) << join({errors.begin(), errors.end()});
  EXPECT_EQ(errors.count("python_error:TypeError:typed"), 1u) << join({errors.begin(), errors.end()});
  EXPECT_EQ(errors.count("unknown"), 1u) << join({errors.begin(), errors.end()});
  for (const auto& e : entries) {
    if (e.error == "unknown") {
      EXPECT_EQ(e.what, "unknown exception");
    }
  }
  drop(g);
}

// ==== 6. names =================================================================================

namespace {
struct name_sample {
  std::uint64_t tid = 0;
  std::string comm;         // /proc/self/task/<tid>/comm, read on the worker
  std::string python_name;  // threading.current_thread().name
  unsigned long ident = 0;
};

name_sample name_task(PyObject* g) {
  name_sample s;
  s.tid = os_tid();
  s.comm = thread_comm(s.tid);
  s.python_name = py_eval_str("threading.current_thread().name", g);
  s.ident = PyThread_get_thread_ident();
  return s;
}

std::vector<std::string> enumerate_names(PyObject* g) {
  pyattach::attach_scope py;
  std::vector<std::string> names;
  PyObject* list = py_eval("[t.name for t in threading.enumerate()]", g);
  if (list == nullptr) return names;
  for (Py_ssize_t i = 0; i < PyList_Size(list); ++i) {
    const char* s = PyUnicode_AsUTF8(PyList_GetItem(list, i));
    names.push_back(s ? s : "?");
  }
  Py_DECREF(list);
  return names;
}
}  // namespace

TEST(Pool, WorkerOsAndPythonNamesArePoolDashIndex) {
  PyObject* g = make_globals();
  pool_options o;
  o.name = "pnames";
  o.workers = 3;
  std::mutex m;
  std::map<std::size_t, std::string> hook_names;  // index -> worker_context::name
  o.on_start = [&](const pyattach::worker_context& c) {
    std::lock_guard<std::mutex> lock(m);
    hook_names[c.index] = c.name;
  };
  thread_pool pool(o);
  EXPECT_EQ(pool.name(), "pnames");
  EXPECT_EQ(pool.size(), 3u);
  const auto st = pool.stats();
  EXPECT_EQ(st.name, "pnames");
  ASSERT_EQ(st.workers.size(), 3u);
  std::map<std::uint64_t, std::string> name_of_tid;
  for (std::size_t i = 0; i < 3; ++i) {
    const std::string expected = "pnames-" + std::to_string(i);
    EXPECT_EQ(st.workers[i].name, expected);
    EXPECT_NE(st.workers[i].os_tid, 0u);
    EXPECT_EQ(thread_comm(st.workers[i].os_tid), expected) << "OS name of worker " << i;
    EXPECT_EQ(hook_names[i], expected) << "worker_context::name of worker " << i;
    name_of_tid[st.workers[i].os_tid] = expected;
  }
  const auto samples = python_on_each_worker(pool, [g] { return name_task(g); });
  std::set<std::string> seen;
  for (const auto& s : samples) {
    ASSERT_EQ(name_of_tid.count(s.tid), 1u) << "task on an unknown thread " << s.tid;
    EXPECT_EQ(s.comm, name_of_tid[s.tid]) << "OS name read on the worker";
    EXPECT_EQ(s.python_name, s.comm) << "threading.current_thread().name must equal the OS name";
    seen.insert(s.python_name);
  }
  EXPECT_EQ(seen.size(), 3u);
  const auto names = enumerate_names(g);
  for (const auto& n : {"pnames-0", "pnames-1", "pnames-2"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end())
        << n << " missing from threading.enumerate(): " << join(names);
  }
  for (const auto& w : pool.stats().workers) EXPECT_TRUE(w.named_in_python) << w.name;
  drop(g);
}

TEST(Pool, LongPoolNameShortensOnlyTheOsNameTo15CharactersKeepingTheIndex) {
  // pool.hpp: workers are named "<name>-<index>" in Python, in stats and in worker_context; the
  // OS name (the kernel keeps 15 characters) shortens <name> so that "-<index>" stays visible.
  const std::string long_name = "a_rather_long_pool_name";  // 23 characters
  constexpr std::size_t k_workers = 11;                      // indices up to two digits
  PyObject* g = make_globals();
  pool_options o;
  o.name = long_name;
  o.workers = k_workers;
  std::mutex m;
  std::map<std::size_t, std::string> hook_names;
  o.on_start = [&](const pyattach::worker_context& c) {
    std::lock_guard<std::mutex> lock(m);
    hook_names[c.index] = c.name;
  };
  thread_pool pool(o);
  EXPECT_EQ(pool.name(), long_name);
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), k_workers);
  std::map<std::uint64_t, std::string> full_of_tid;
  std::set<std::string> distinct;
  for (std::size_t i = 0; i < k_workers; ++i) {
    const std::string full = long_name + "-" + std::to_string(i);
    const std::string comm = thread_comm(st.workers[i].os_tid);
    const std::string tail = "-" + std::to_string(i);
    EXPECT_LE(comm.size(), 15u) << comm;
    EXPECT_TRUE(ends_with(comm, tail)) << "worker " << i << " OS name '" << comm << "' lost its index";
    const std::string prefix = comm.substr(0, comm.size() >= tail.size() ? comm.size() - tail.size() : 0);
    EXPECT_FALSE(prefix.empty()) << comm;
    EXPECT_EQ(long_name.compare(0, prefix.size(), prefix), 0)
        << "'" << comm << "' does not start with a prefix of the pool name";
    EXPECT_EQ(st.workers[i].name, full) << "worker_stats::name";
    EXPECT_EQ(hook_names[i], full) << "worker_context::name";
    full_of_tid[st.workers[i].os_tid] = full;
    distinct.insert(comm);
  }
  EXPECT_EQ(distinct.size(), k_workers) << "two workers share an OS name";
  for (const auto& s : python_on_each_worker(pool, [g] { return name_task(g); })) {
    EXPECT_EQ(s.python_name, full_of_tid[s.tid]) << "the Python name is the full <pool>-<index>";
  }
  drop(g);
}

TEST(Pool, WorkersLeaveThreadingActiveAndEnumerateAfterShutdown) {
#if PY_VERSION_HEX >= 0x030D0000
  GTEST_SKIP() << "pool.hpp promises the threading._active clean-up on <= 3.12 only";
#else
  PyObject* g = make_globals();
  std::vector<name_sample> samples;
  {
    pool_options o;
    o.name = "gone";
    o.workers = 3;
    thread_pool pool(o);
    samples = python_on_each_worker(pool, [g] { return name_task(g); });
    const auto names = enumerate_names(g);
    for (const auto& s : samples) {
      ASSERT_NE(std::find(names.begin(), names.end(), s.python_name), names.end())
          << "precondition: " << s.python_name << " in threading.enumerate(): " << join(names);
    }
    pool.shutdown();
    const auto after = enumerate_names(g);
    pyattach::attach_scope py;
    for (const auto& s : samples) {
      PyObject* key = PyLong_FromUnsignedLong(s.ident);
      PyDict_SetItemString(g, "_key", key);
      Py_DECREF(key);
      EXPECT_FALSE(py_eval_bool("_key in threading._active", g))
          << s.python_name << " (ident " << s.ident << ") still in threading._active";
      EXPECT_EQ(std::find(after.begin(), after.end(), s.python_name), after.end())
          << s.python_name << " still in threading.enumerate(): " << join(after);
    }
  }
  drop(g);
#endif
}

// ==== 7. hooks =================================================================================

namespace {
struct hook_event {
  std::string kind;  // "start", "task", "stop"
  std::uint64_t tid;
  std::size_t index = 0;
  std::string name, pool_name;
  pyattach::attach_status python = pyattach::attach_status::attached;
  bool attached = false;  // is_attached()
  bool gil = false;       // PyGILState_Check()
  const void* tstate = nullptr;
  std::string tl_mark;    // Python hooks/tasks: threading.local's mark on this thread
};

struct event_log {
  std::mutex m;
  std::vector<hook_event> events;
  void add(hook_event e) {
    std::lock_guard<std::mutex> g(m);
    events.push_back(std::move(e));
  }
  std::vector<hook_event> snapshot() {
    std::lock_guard<std::mutex> g(m);
    return events;
  }
  std::size_t count(const std::string& kind) {
    std::lock_guard<std::mutex> g(m);
    return static_cast<std::size_t>(std::count_if(events.begin(), events.end(),
                                                  [&](const hook_event& e) { return e.kind == kind; }));
  }
};

hook_event hook_record(const char* kind, const pyattach::worker_context& c) {
  hook_event e;
  e.kind = kind;
  e.tid = os_tid();
  e.index = c.index;
  e.name = c.name;
  e.pool_name = c.pool_name;
  e.python = c.python;
  e.attached = pyattach::is_attached();
  e.gil = PyGILState_Check() == 1;
  return e;
}
}  // namespace

TEST(Pool, StartAndStopHooksRunOncePerWorkerOnTheWorkerAroundItsTasks) {
  constexpr std::size_t k_workers = 3;
  event_log log;
  pool_options o;
  o.name = "hooks";
  o.workers = k_workers;
  o.on_start = [&](const pyattach::worker_context& c) { log.add(hook_record("start", c)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(hook_record("stop", c)); };
  std::optional<thread_pool> pool;
  pool.emplace(o);
  // The constructor returns once every start hook has run.
  EXPECT_EQ(log.count("start"), k_workers);
  EXPECT_EQ(log.count("stop"), 0u);
  const auto tids = workers_by_tid(*pool);
  cpp_on_each_worker(*pool, [&] {  // every worker runs at least one task
    hook_event e;
    e.kind = "task";
    e.tid = os_tid();
    log.add(e);
    return 0;
  });
  for (int i = 0; i < 60; ++i) {
    if (i % 2 == 0) {
      pool->post([&] {
        hook_event e;
        e.kind = "task";
        e.tid = os_tid();
        log.add(e);
      });
    } else {
      pool->post_python([&] {
        hook_event e;
        e.kind = "task";
        e.tid = os_tid();
        log.add(e);
      });
    }
  }
  pool->wait();
  EXPECT_EQ(log.count("stop"), 0u) << "a stop hook ran before shutdown";
  pool->shutdown();
  EXPECT_EQ(log.count("stop"), k_workers) << "shutdown() returned before every stop hook ran";
  pool.reset();
  const auto events = log.snapshot();
  EXPECT_EQ(log.count("start"), k_workers);
  EXPECT_EQ(log.count("stop"), k_workers) << "a stop hook ran twice (shutdown, then destructor)";
  std::map<std::uint64_t, std::vector<hook_event>> by_tid;
  for (const auto& e : events) by_tid[e.tid].push_back(e);
  EXPECT_EQ(by_tid.size(), k_workers) << "hooks or tasks ran on a thread that is not a worker";
  std::set<std::size_t> indices;
  for (const auto& [tid, v] : by_tid) {
    ASSERT_EQ(tids.count(tid), 1u) << "thread " << tid << " is not a worker";
    ASSERT_GE(v.size(), 3u) << "worker " << tid << ": start, >= 1 task, stop";
    EXPECT_EQ(v.front().kind, "start") << "worker " << tid << ": first event";
    EXPECT_EQ(v.back().kind, "stop") << "worker " << tid << ": last event";
    EXPECT_EQ(std::count_if(v.begin(), v.end(), [](const hook_event& e) { return e.kind == "start"; }), 1);
    EXPECT_EQ(std::count_if(v.begin(), v.end(), [](const hook_event& e) { return e.kind == "stop"; }), 1);
    const hook_event& s = v.front();
    EXPECT_EQ(s.name, tids.at(tid).name);
    EXPECT_EQ(s.name, "hooks-" + std::to_string(s.index));
    EXPECT_EQ(s.pool_name, "hooks");
    EXPECT_EQ(v.back().index, s.index) << "stop hook's context names another worker";
    for (const hook_event* h : {&v.front(), &v.back()}) {
      EXPECT_EQ(h->python, pyattach::attach_status::not_initialized)
          << h->kind << " hook did not ask for Python: worker_context::python must be not_initialized";
      EXPECT_FALSE(h->attached) << h->kind << " hook ran attached without asking";
      EXPECT_FALSE(h->gil) << h->kind << " hook: PyGILState_Check()";
    }
    indices.insert(s.index);
  }
  EXPECT_EQ(indices, (std::set<std::size_t>{0, 1, 2}));
}

TEST(Pool, PythonHooksRunAttachedAndShareTheWorkersThreadState) {
  constexpr std::size_t k_workers = 2;
  const std::size_t baseline = thread_states();
  PyObject* g = make_globals("tl = threading.local()\n");
  event_log log;
  auto python_record = [g](const char* kind, const pyattach::worker_context& c, bool set) {
    hook_event e = hook_record(kind, c);
    if (e.attached) {
      e.tstate = PyThreadState_Get();
      if (set) py_exec("tl.mark = 'w" + std::to_string(c.index) + "'\n", g);
      e.tl_mark = py_eval_str("getattr(tl, 'mark', 'unset')", g);
    }
    return e;
  };
  pool_options o;
  o.name = "pyhooks";
  o.workers = k_workers;
  o.start_hook_python = true;
  o.stop_hook_python = true;
  o.on_start = [&](const pyattach::worker_context& c) { log.add(python_record("start", c, true)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(python_record("stop", c, false)); };
  {
    thread_pool pool(o);
    EXPECT_EQ(thread_states(), baseline + k_workers) << "Python start hooks made the workers' states";
    const auto tasks = python_on_each_worker(pool, [g] {
      hook_event e;
      e.kind = "task";
      e.tid = os_tid();
      e.tstate = PyThreadState_Get();
      e.tl_mark = py_eval_str("getattr(tl, 'mark', 'unset')", g);
      return e;
    });
    for (const auto& t : tasks) log.add(t);
    EXPECT_EQ(thread_states(), baseline + k_workers);
  }
  EXPECT_EQ(thread_states(), baseline);
  const auto events = log.snapshot();
  std::map<std::uint64_t, std::vector<hook_event>> by_tid;
  for (const auto& e : events) by_tid[e.tid].push_back(e);
  ASSERT_EQ(by_tid.size(), k_workers);
  for (const auto& [tid, v] : by_tid) {
    ASSERT_EQ(v.size(), 3u) << "worker " << tid << ": start, task, stop";
    const hook_event &start = v[0], &task = v[1], &stop = v[2];
    EXPECT_EQ(start.kind, "start");
    EXPECT_EQ(task.kind, "task");
    EXPECT_EQ(stop.kind, "stop");
    const std::string mark = "w" + std::to_string(start.index);
    for (const hook_event* h : {&start, &stop}) {
      EXPECT_EQ(h->python, pyattach::attach_status::attached) << h->kind << " hook";
      EXPECT_TRUE(h->attached) << h->kind << " hook asked for Python but is not attached";
      EXPECT_TRUE(h->gil) << h->kind << " hook: PyGILState_Check() != 1";
      EXPECT_EQ(h->tl_mark, mark) << h->kind << " hook";
      EXPECT_EQ(h->tstate, task.tstate) << h->kind << " hook ran on another thread state";
    }
    EXPECT_EQ(task.tl_mark, mark) << "threading.local set in the start hook is lost in tasks";
  }
  drop(g);
}

CHILD_CASE(pool_start_hook_failure) {
  // args[0]: "python" to run the hooks attached.
  const bool python = !args.empty() && args[0] == "python";
  pyattach::interpreter py;
  // A first thread, joined: TSan starts its background thread at the first pthread_create, and
  // it must be in the baseline, not counted as a worker left behind.
  std::thread([] {}).join();
  const std::size_t baseline_threads = settled_os_thread_count();
  const std::size_t baseline_states = thread_states();
  constexpr std::size_t k_workers = 4;
  std::mutex m;
  std::map<std::size_t, int> started, stopped;
  std::map<std::size_t, std::uint64_t> start_tid, stop_tid;
  pool_options o;
  o.name = "badstart";
  o.workers = k_workers;
  o.start_hook_python = python;
  o.stop_hook_python = python;
  o.on_start = [&](const pyattach::worker_context& c) {
    if (python && PyRun_SimpleString("_start = 1\n") != 0) std::printf("python failed in hook\n");
    if (c.index == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));  // let the others start first
      throw std::runtime_error("start hook 2 failed");
    }
    std::lock_guard<std::mutex> g(m);
    ++started[c.index];
    start_tid[c.index] = os_tid();
  };
  o.on_stop = [&](const pyattach::worker_context& c) {
    std::lock_guard<std::mutex> g(m);
    ++stopped[c.index];
    stop_tid[c.index] = os_tid();
  };
  bool threw = false;
  try {
    thread_pool pool(o);
    std::printf("constructor returned\n");
  } catch (const pool_error& e) {
    threw = true;
    std::printf("pool_error %s: %s\n", pyattach::to_string(e.code()), e.what());
    CHILD_CHECK(e.code() == pool_errc::start_hook_failed);
    CHILD_CHECK(contains(e.what(), "start hook 2 failed"));
  } catch (const std::exception& e) {
    std::printf("wrong exception: %s\n", e.what());
  }
  CHILD_CHECK(threw);
  {
    std::lock_guard<std::mutex> g(m);
    CHILD_CHECK(started.count(2) == 0);
    for (const auto& [index, n] : started) {
      std::printf("worker %zu: start %d, stop %d\n", index, n, stopped[index]);
      CHILD_CHECK(n == 1);
      CHILD_CHECK(stopped[index] == 1);  // its start hook succeeded: its stop hook ran, once
      CHILD_CHECK(stop_tid[index] == start_tid[index]);
    }
    std::printf("failed worker: stop %d\n", stopped.count(2) ? stopped[2] : 0);
    CHILD_CHECK((stopped.count(2) ? stopped[2] : 0) <= 1);
    std::printf("started %zu of %zu\n", started.size(), k_workers);
  }
  // Never half-started: every worker thread is gone, and their thread states with them.
  CHILD_CHECK(os_thread_count_becomes(baseline_threads));
  std::printf("threads %zu (baseline %zu)\n", os_thread_count(), baseline_threads);
  CHILD_CHECK(thread_states() == baseline_states);
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_start_hook_failure);

TEST(Pool, ThrowingStartHookFailsTheConstructorAndStopsEveryWorker) {
  const auto r = run_child(uses_pool_start_hook_failure);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, ThrowingPythonStartHookFailsTheConstructorAndStopsEveryWorker) {
  child_options o;
  o.args = {"python"};
  const auto r = run_child(uses_pool_start_hook_failure, o);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, ThrowingStopHookGoesToOnErrorWithWhereStopHook) {
  error_log log;
  pool_options o;
  o.name = "badstop";
  o.workers = 2;
  o.on_error = log.handler();
  o.on_stop = [](const pyattach::worker_context& c) {
    throw std::runtime_error("stop hook " + std::to_string(c.index) + " failed");
  };
  std::map<std::uint64_t, pyattach::worker_stats> tids;
  {
    thread_pool pool(o);
    tids = workers_by_tid(pool);
    auto f = pool.submit([] { return 1; });
    require_ready(f, "task");
    EXPECT_EQ(f.get(), 1);
    EXPECT_TRUE(log.snapshot().empty());
    run_with_deadline("shutdown with throwing stop hooks", [&] { pool.shutdown(); });
  }
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 2u) << "one on_error call per worker's stop hook";
  std::set<std::size_t> indices;
  for (const auto& e : entries) {
    EXPECT_EQ(e.where, "stop hook");
    EXPECT_EQ(e.pool_name, "badstop");
    EXPECT_EQ(e.error, "exception:stop hook " + std::to_string(e.worker_index) + " failed");
    EXPECT_EQ(e.what, "stop hook " + std::to_string(e.worker_index) + " failed");
    ASSERT_EQ(tids.count(e.tid), 1u) << "on_error for a stop hook not called on the worker";
    EXPECT_EQ(tids.at(e.tid).name, "badstop-" + std::to_string(e.worker_index));
    indices.insert(e.worker_index);
  }
  EXPECT_EQ(indices, (std::set<std::size_t>{0, 1}));
}

// ==== 8. several pools side by side ============================================================

TEST(Pool, TwoPoolsSideBySideNeitherBlocksTheOther) {
  // Like Ray's concurrency groups: a default pool and a custom one, one worker each.
  thread_pool default_pool("default_pool", 1);
  thread_pool custom_pool("custom_pool", 1);
  EXPECT_EQ(default_pool.name(), "default_pool");
  EXPECT_EQ(custom_pool.size(), 1u);
  auto py_task = [](thread_pool& p) {
    return p.submit_python([] {
      return PyRun_SimpleString("import threading\n_side = threading.current_thread().name\n") == 0;
    });
  };
  auto prompt = [&](thread_pool& p, const std::string& while_what) {
    const auto t0 = std::chrono::steady_clock::now();
    auto f = py_task(p);
    if (f.wait_for(k_prompt) != std::future_status::ready) {
      fatal_stuck("a Python task on " + p.name() + " did not complete " + while_what);
    }
    EXPECT_TRUE(f.get());
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    EXPECT_LT(ms, k_prompt) << p.name() << " " << while_what;
    return ms;
  };
  prompt(default_pool, "first");
  prompt(custom_pool, "first");
  default_pool.wait();
  custom_pool.wait();
  // Both idle, each with a thread state: neither holds the GIL for the other.
  for (int i = 0; i < 20; ++i) prompt(custom_pool, "while default_pool is idle");
  for (int i = 0; i < 20; ++i) prompt(default_pool, "while custom_pool is idle");
  // default_pool busy in a long C++ task.
  {
    latch started, release;
    auto long_task = default_pool.submit([&] {
      started.set();
      return release.wait(k_wait);
    });
    ASSERT_TRUE(started.wait(k_wait));
    for (int i = 0; i < 20; ++i) prompt(custom_pool, "while default_pool runs a long C++ task");
    EXPECT_FALSE(is_ready(long_task)) << "precondition: the long task was still running";
    release.set();
    require_ready(long_task, "long C++ task");
    EXPECT_TRUE(long_task.get());
  }
  // custom_pool busy in a long Python task that blocks detached (detach_scope), and the reverse.
  {
    latch started, release;
    auto long_task = custom_pool.submit_python([&] {
      PyRun_SimpleString("_long = 1\n");
      started.set();
      pyattach::detach_scope nogil;
      return release.wait(k_wait);
    });
    ASSERT_TRUE(started.wait(k_wait));
    for (int i = 0; i < 20; ++i) prompt(default_pool, "while custom_pool blocks detached in a Python task");
    EXPECT_FALSE(is_ready(long_task));
    release.set();
    require_ready(long_task, "long Python task");
    EXPECT_TRUE(long_task.get());
  }
}

// ==== 9. shutdown ==============================================================================

namespace {
// On another thread: submits probes until the pool refuses one (shutdown began), then releases
// `release`. The probes accepted before that are returned through `probes`.
std::thread release_when_shut_down(thread_pool& pool, latch& release, std::vector<std::future<int>>& probes,
                                   std::optional<pool_errc>& refusal) {
  return std::thread([&] {
    const auto end = std::chrono::steady_clock::now() + k_wait;
    while (std::chrono::steady_clock::now() < end) {
      try {
        probes.push_back(pool.submit([] { return -1; }));
      } catch (const pool_error& e) {
        refusal = e.code();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    release.set();
  });
}
}  // namespace

TEST(Pool, ShutdownDrainRunsEveryQueuedTask) {
  error_log log;
  pool_options o;
  o.name = "drain";
  o.workers = 1;
  o.on_error = log.handler();
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 50; ++i) {
    fs.push_back(pool.submit([&, i] {
      ++ran;
      return i;
    }));
    fs.push_back(pool.submit_python([&, i] {
      ++ran;
      return PyRun_SimpleString("_drained = 1\n") == 0 ? i : -2;
    }));
    pool.post([&] { ++ran; });
    pool.post_python([&] { ++ran; });
  }
  EXPECT_EQ(pool.stats().queued, 200u);
  std::vector<std::future<int>> probes;
  std::optional<pool_errc> refusal;
  std::thread releaser = release_when_shut_down(pool, release, probes, refusal);
  run_with_deadline("shutdown(drain)", [&] { pool.shutdown(shutdown_mode::drain); });
  releaser.join();
  ASSERT_TRUE(refusal.has_value()) << "submit was never refused while shutdown ran";
  EXPECT_STREQ(pyattach::to_string(*refusal), "shut_down");
  EXPECT_EQ(ran.load(), 200) << "shutdown(drain) did not run every queued task";
  ASSERT_TRUE(is_ready(blocker));
  EXPECT_EQ(blocker.get(), 1);
  for (std::size_t i = 0; i < fs.size(); ++i) {
    ASSERT_TRUE(is_ready(fs[i])) << "future " << i << " not ready after shutdown(drain)";
    EXPECT_EQ(fs[i].get(), static_cast<int>(i / 2)) << "future " << i;
  }
  for (auto& p : probes) {
    ASSERT_TRUE(is_ready(p));
    EXPECT_EQ(outcome(p), "value") << "a probe queued before shutdown was not drained";
  }
  EXPECT_TRUE(log.snapshot().empty());
  const auto st = pool.stats();
  EXPECT_EQ(st.completed, 201u + probes.size());
  EXPECT_EQ(st.cancelled, 0u);
  EXPECT_EQ(st.queued, 0u);
}

TEST(Pool, ShutdownCancelCompletesQueuedTasksWithCancelledAndReportsCancelledPosts) {
  error_log log;
  pool_options o;
  o.name = "cancel";
  o.workers = 1;
  o.on_error = log.handler();
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 30; ++i) {
    fs.push_back(pool.submit([&] { return ++ran; }));
    fs.push_back(pool.submit_python([&] { return ++ran; }));
  }
  for (int i = 0; i < 5; ++i) {
    pool.post([&] { ++ran; });
    pool.post_python([&] { ++ran; });
  }
  std::vector<std::future<int>> probes;
  std::optional<pool_errc> refusal;
  std::thread releaser = release_when_shut_down(pool, release, probes, refusal);
  run_with_deadline("shutdown(cancel)", [&] { pool.shutdown(shutdown_mode::cancel); });
  releaser.join();
  ASSERT_TRUE(refusal.has_value());
  EXPECT_STREQ(pyattach::to_string(*refusal), "shut_down");
  ASSERT_TRUE(is_ready(blocker));
  EXPECT_EQ(blocker.get(), 1) << "the running task must finish";
  EXPECT_EQ(ran.load(), 0) << "shutdown(cancel) ran a queued task";
  std::size_t cancelled = 0;
  for (auto* v : {&fs, &probes}) {
    for (auto& f : *v) {
      ASSERT_TRUE(is_ready(f)) << "a cancelled task's future was left unresolved";
      const std::string how = outcome(f);
      EXPECT_EQ(how, "pool_error:cancelled");
      cancelled += how == "pool_error:cancelled";
    }
  }
  EXPECT_EQ(cancelled, 60u + probes.size());
  // The 10 cancelled post tasks have no future: they are reported to on_error.
  const auto entries = log.snapshot();
  EXPECT_EQ(entries.size(), 10u);
  for (const auto& e : entries) {
    EXPECT_EQ(e.where, "task");
    EXPECT_EQ(e.error, "pool_error:cancelled");
    EXPECT_EQ(e.pool_name, "cancel");
    EXPECT_EQ(e.what, e.expected_what);
    EXPECT_EQ(e.worker_index, static_cast<std::size_t>(-1)) << "a cancelled post never reached a worker";
  }
  const auto st = pool.stats();
  EXPECT_EQ(st.cancelled, 70u + probes.size());
  EXPECT_EQ(st.started, 1u);
  EXPECT_EQ(st.completed, 1u);
  EXPECT_EQ(st.failed, 0u);
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(st.submitted, 71u + probes.size());
}

TEST(Pool, WaitBlocksUntilTheQueueIsEmptyAndNoTaskIsRunning) {
  pool_options o;
  o.name = "waiter";
  o.workers = 2;
  thread_pool pool(o);
  // Two running tasks (blocked) and queued ones behind them; wait() must not return meanwhile.
  latch release;
  std::atomic<int> running{0}, finished{0};
  for (int i = 0; i < 2; ++i) {
    pool.post([&] {
      ++running;
      release.wait(k_wait);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ++finished;  // the task's last action: wait() must see it
    });
  }
  for (int i = 0; i < 10; ++i) pool.post([&] { ++finished; });
  const auto end = std::chrono::steady_clock::now() + k_wait;
  while (running.load() < 2 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(running.load(), 2);
  latch returned;
  std::thread waiter([&] {
    pool.wait();
    returned.set();
  });
  EXPECT_FALSE(returned.wait(std::chrono::milliseconds(100))) << "wait() returned while tasks were running";
  release.set();
  const bool ok = returned.wait(k_wait);
  if (!ok) {
    waiter.detach();
    fatal_stuck("wait() did not return after the tasks finished");
  }
  waiter.join();
  EXPECT_EQ(finished.load(), 12) << "wait() returned before every task had finished";
  // Once more with only running tasks and an empty queue.
  latch release2;
  std::atomic<bool> done{false};
  pool.post([&] {
    release2.wait(k_wait);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    done = true;
  });
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    release2.set();
  });
  run_with_deadline("wait() for one running task", [&] { pool.wait(); });
  releaser.join();
  EXPECT_TRUE(done.load()) << "wait() returned while a task was running (queue empty)";
}

TEST(Pool, SubmitAfterShutdownThrowsShutDownAndShutdownIsIdempotent) {
  event_log hooks;
  pool_options o;
  o.name = "closed";
  o.workers = 2;
  o.on_stop = [&](const pyattach::worker_context& c) { hooks.add(hook_record("stop", c)); };
  thread_pool pool(o);
  auto f = pool.submit([] { return 3; });
  require_ready(f, "task");
  EXPECT_EQ(f.get(), 3);
  run_with_deadline("shutdown", [&] { pool.shutdown(); });
  auto refused = [](auto&& fn) -> std::string {
    try {
      fn();
      return "accepted";
    } catch (const pool_error& e) {
      return std::string("pool_error:") + pyattach::to_string(e.code());
    } catch (...) {
      return describe_error(std::current_exception());
    }
  };
  EXPECT_EQ(refused([&] { pool.submit([] { return 1; }); }), "pool_error:shut_down");
  EXPECT_EQ(refused([&] { pool.submit_python([] { return 1; }); }), "pool_error:shut_down");
  EXPECT_EQ(refused([&] { pool.post([] {}); }), "pool_error:shut_down");
  EXPECT_EQ(refused([&] { pool.post_python([] {}); }), "pool_error:shut_down");
  // A second shutdown (either mode) and wait() return at once; stop hooks do not run again.
  run_with_deadline("second shutdown", [&] { pool.shutdown(shutdown_mode::cancel); });
  run_with_deadline("wait after shutdown", [&] { pool.wait(); });
  EXPECT_EQ(hooks.count("stop"), 2u);
  const auto st = pool.stats();
  EXPECT_EQ(st.completed, 1u);
  EXPECT_EQ(st.submitted, st.completed + st.failed + st.cancelled)
      << "every submitted task ends exactly one way (refused ones were never submitted)";
}

TEST(Pool, ConcurrentShutdownsBothWaitForTheFirst) {
  pool_options o;
  o.name = "twice";
  o.workers = 2;
  std::atomic<int> stops{0};
  o.on_stop = [&](const pyattach::worker_context&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ++stops;
  };
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait);
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::atomic<int> stops_seen_by_second{-1};
  std::thread first([&] { pool.shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::thread second([&] {
    pool.shutdown();
    stops_seen_by_second = stops.load();  // "a second call waits for the first to finish"
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  release.set();
  run_with_deadline("joining two shutdown callers", [&] {
    first.join();
    second.join();
  });
  EXPECT_EQ(stops.load(), 2);
  EXPECT_EQ(stops_seen_by_second.load(), 2) << "the second shutdown returned before the first finished";
  EXPECT_TRUE(blocker.get());
}

// ---- from a thread that holds the GIL (child processes: a deadlock would hang) ---------------
// args[0]: "shutdown", "destructor", "wait" or "cancel".
CHILD_CASE(pool_blocking_calls_holding_the_gil) {
  const std::string how = args.empty() ? "shutdown" : args[0];
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  pool_options o;
  o.name = "gilholder";
  o.workers = 2;
  auto pool = std::make_unique<thread_pool>(o);
  std::atomic<int> ran{0};
  std::vector<std::future<long>> fs;
  std::thread holder([&] {
    pyattach::attach_scope gil;
    CHILD_CHECK(PyGILState_Check() == 1);
    PyThreadState* mine = PyThreadState_Get();
    // Submitted while this thread holds the GIL: the workers cannot even attach yet, so every
    // task is still queued (or waiting for the GIL) when the blocking call below starts.
    for (int i = 0; i < 40; ++i) {
      fs.push_back(pool->submit_python([&, i]() -> long {
        ++ran;
        PyObject* v = PyLong_FromLong(i);
        const long r = PyLong_AsLong(v);
        Py_DECREF(v);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return r;
      }));
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (how == "shutdown") {
      pool->shutdown(shutdown_mode::drain);
    } else if (how == "cancel") {
      pool->shutdown(shutdown_mode::cancel);
    } else if (how == "destructor") {
      pool.reset();
    } else {
      pool->wait();
    }
    std::printf("%s took %.1f ms\n", how.c_str(),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    // It took the GIL back before returning, on the same thread state.
    CHILD_CHECK(pyattach::is_attached());
    CHILD_CHECK(PyGILState_Check() == 1);
    CHILD_CHECK(PyThreadState_Get() == mine);
    CHILD_CHECK(PyRun_SimpleString("_after = 1\n") == 0);
  });
  holder.join();
  long values = 0, cancelled = 0, other = 0;
  for (std::size_t i = 0; i < fs.size(); ++i) {
    if (!is_ready(fs[i])) {
      ++other;
      continue;
    }
    try {
      values += fs[i].get() == static_cast<long>(i);
    } catch (const pool_error& e) {
      cancelled += e.code() == pool_errc::cancelled;
    } catch (...) {
      ++other;
    }
  }
  std::printf("values %ld cancelled %ld other %ld ran %d\n", values, cancelled, other, ran.load());
  CHILD_CHECK(other == 0);
  if (how == "cancel") {
    // Every task either ran (it had started) or was cancelled; nothing vanished.
    CHILD_CHECK(values + cancelled == 40);
    CHILD_CHECK(values == ran.load());
    // While this thread held the GIL, at most one task per worker could have been taken (each
    // then waits to attach): the rest were still queued when shutdown(cancel) began.
    CHILD_CHECK(cancelled >= 40 - 2);
  } else {
    CHILD_CHECK(values == 40);
    CHILD_CHECK(ran.load() == 40);
  }
  pool.reset();
  CHILD_CHECK(thread_states() == baseline);
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_blocking_calls_holding_the_gil);

TEST(Pool, ShutdownFromAThreadHoldingTheGilWithQueuedPythonTasksDoesNotDeadlock) {
  child_options o;
  o.args = {"shutdown"};
  const auto r = run_child(uses_pool_blocking_calls_holding_the_gil, o);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, ShutdownCancelFromAThreadHoldingTheGilWithQueuedPythonTasksDoesNotDeadlock) {
  child_options o;
  o.args = {"cancel"};
  const auto r = run_child(uses_pool_blocking_calls_holding_the_gil, o);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, DestructorFromAThreadHoldingTheGilWithQueuedPythonTasksDoesNotDeadlock) {
  child_options o;
  o.args = {"destructor"};
  const auto r = run_child(uses_pool_blocking_calls_holding_the_gil, o);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, WaitFromAThreadHoldingTheGilWithQueuedPythonTasksDoesNotDeadlock) {
  child_options o;
  o.args = {"wait"};
  const auto r = run_child(uses_pool_blocking_calls_holding_the_gil, o);
  EXPECT_CHILD_CLEAN(r);
}

// ---- wait() / shutdown() from the pool's own worker: misuse, refused -------------------------
namespace {
std::mutex g_pool_reports_mutex;
std::vector<pyattach::misuse_report> g_pool_reports;
void record_pool_report(const pyattach::misuse_report& r) noexcept {
  std::lock_guard<std::mutex> lock(g_pool_reports_mutex);
  g_pool_reports.push_back(r);
}
std::string site_of(int line) { return std::string(__FILE__) + ":" + std::to_string(line); }
}  // namespace

CHILD_CASE(pool_wait_or_shutdown_from_own_worker) {
  pyattach::interpreter py;
  CHILD_CHECK(pyattach::set_misuse_handler(record_pool_report) == nullptr);
  const int made = __LINE__; thread_pool pool("selfcall", 1);
  thread_pool other("othercall", 1);
  int wait_line = 0, shutdown_line = 0, pywait_line = 0;
  auto call = [](auto&& fn) -> std::string {
    try {
      fn();
      return "returned";
    } catch (const pool_error& e) {
      return std::string("pool_error:") + pyattach::to_string(e.code());
    } catch (...) {
      return describe_error(std::current_exception());
    }
  };
  auto w = pool.submit([&] {
    wait_line = __LINE__; return call([&] { pool.wait(); });
  });
  auto s = pool.submit([&] {
    shutdown_line = __LINE__; return call([&] { pool.shutdown(); });
  });
  auto pw = pool.submit_python([&] {  // attached: refused all the same, GIL kept
    pywait_line = __LINE__; std::string r = call([&] { pool.wait(); });
    if (!pyattach::is_attached()) r += " (no longer attached)";
    return r;
  });
  // On another pool's worker, this pool's wait() is legitimate; and the reverse.
  auto cross = other.submit([&] {
    const bool mine = pool.on_worker();
    return call([&] { pool.wait(); }) + (mine ? " (on_worker true)" : "");
  });
  auto self_check = pool.submit([&] { return pool.on_worker() && !other.on_worker(); });
  auto after = pool.submit([] { return std::string("survived"); });
  for (auto* f : {&w, &s, &pw, &cross, &after}) require_ready(*f, "a task calling wait()/shutdown()");
  require_ready(self_check, "on_worker");
  const std::string rw = w.get(), rs = s.get(), rpw = pw.get(), rc = cross.get();
  std::printf("wait: %s\nshutdown: %s\npython wait: %s\ncross: %s\n", rw.c_str(), rs.c_str(),
              rpw.c_str(), rc.c_str());
  CHILD_CHECK(rw == "pool_error:called_from_worker");
  CHILD_CHECK(rs == "pool_error:called_from_worker");
  CHILD_CHECK(rpw == "pool_error:called_from_worker");
  CHILD_CHECK(rc == "returned");
  CHILD_CHECK(self_check.get());
  CHILD_CHECK(!pool.on_worker());
  CHILD_CHECK(after.get() == "survived");
  // The refused shutdown() did not shut the pool down.
  auto still = pool.submit([] { return 5; });
  require_ready(still, "a task after the refused shutdown");
  CHILD_CHECK(still.get() == 5);

  const std::uint64_t worker_tid = pool.stats().workers.at(0).os_tid;
  std::vector<pyattach::misuse_report> reports;
  {
    std::lock_guard<std::mutex> lock(g_pool_reports_mutex);
    reports = g_pool_reports;
  }
  CHILD_CHECK(reports.size() == 3);
  CHILD_CHECK(pyattach::misuse_count() == 3);
  const int lines[3] = {wait_line, shutdown_line, pywait_line};
  const char* calls[3] = {"wait", "shutdown", "wait"};
  for (std::size_t i = 0; i < reports.size() && i < 3; ++i) {
    const auto& r = reports[i];
    std::printf("REPORT %s\n  other: %s\n  misused_at: %s\n", r.message.c_str(), r.other.c_str(),
                r.misused_at.c_str());
    CHILD_CHECK(r.kind == pyattach::misuse_kind::pool_call_from_worker);
    CHILD_CHECK(contains(r.message, "pool_call_from_worker"));
    CHILD_CHECK(std::string(r.made_at.file) == __FILE__);
    CHILD_CHECK(r.made_at.line == made);  // where the pool was made
    CHILD_CHECK(contains(r.misused_at, site_of(lines[i])));  // the wait()/shutdown() call
    CHILD_CHECK(contains(r.message, std::string(calls[i]) + "()"));  // which call
    CHILD_CHECK(contains(r.message, "selfcall"));                     // which pool
    CHILD_CHECK(r.misused_on_thread == worker_tid);
  }
  pyattach::set_misuse_handler(nullptr);
  pool.shutdown();
  other.shutdown();
  CHILD_CHECK(pyattach::misuse_count() == 3);
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_wait_or_shutdown_from_own_worker);

TEST(Pool, WaitOrShutdownFromItsOwnWorkerThrowsCalledFromWorkerAndReportsMisuse) {
  const auto r = run_child(uses_pool_wait_or_shutdown_from_own_worker);
  EXPECT_CHILD_CLEAN(r);
}

CHILD_CASE(pool_destroyed_from_own_worker) {
  pyattach::interpreter py;
  pool_options o;
  o.name = "selfdelete";
  o.workers = 2;
  auto* pool = new thread_pool(o);
  latch deleted;
  auto warm = pool->submit_python([] { return PyRun_SimpleString("_w = 1\n") == 0; });
  require_ready(warm, "warm-up");
  CHILD_CHECK(warm.get());
  // The task destroys the pool from one of its own workers (misuse, reported, must not crash
  // or hang), then carries on: the pool's state it still uses must be alive.
  pool->post([pool, &deleted] {
    delete pool;
    std::printf("deleted from worker\n");
    deleted.set();
  });
  CHILD_CHECK(deleted.wait(k_wait));
  CHILD_CHECK(pyattach::misuse_count() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_destroyed_from_own_worker);

TEST(Pool, DestroyedFromItsOwnWorkerIsReportedAndDoesNotCrashOrHang) {
  const auto r = run_child(uses_pool_destroyed_from_own_worker);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_NE(r.err.find("pool_call_from_worker"), std::string::npos) << r.describe();
}

// ==== 10. finalization =========================================================================
// pool.hpp: the gate stops every pool before it closes, while Python can still be attached;
// queued tasks complete with pool_error(finalizing) without running; the closer waits (within its
// close timeout) for each worker to finish its running task and run its stop hook; a worker still
// busy when the bound expires runs its stop hook later, with python == finalizing.
// args[0]: "python": the running task is a Python task sleeping 0.3 s in time.sleep (within the
//          default 2 s bound): it finishes, and the stop hook runs attached, before the
//          interpreter's destructor returns;
//          "cpp": the running task is a C++ task blocked on a latch past the bound (300 ms here):
//          the destructor returns without it, and its stop hook runs later, refused Python.
CHILD_CASE(pool_interpreter_destroyed_with_queued_tasks) {
  const bool python_blocker = !args.empty() && args[0] == "python";
  pyattach::interpreter::options io;
  if (!python_blocker) io.close_timeout = std::chrono::milliseconds(300);
  auto py = std::make_unique<pyattach::interpreter>(io);
  error_log log;
  std::atomic<int> stops{0};
  std::atomic<int> stop_status{-1};
  pool_options o;
  o.name = "finpool";
  o.workers = 1;
  o.on_error = log.handler();
  o.stop_hook_python = true;
  o.on_stop = [&](const pyattach::worker_context& c) {
    ++stops;
    stop_status = static_cast<int>(c.python);
    if (c.python == pyattach::attach_status::attached) PyRun_SimpleString("_stop = 1\n");
  };
  auto pool = std::make_unique<thread_pool>(o);
  // The worker has a thread state before finalization.
  auto warm = pool->submit_python([] { return PyRun_SimpleString("import time\n_warm = 1\n") == 0; });
  require_ready(warm, "warm-up");
  CHILD_CHECK(warm.get());
  latch started, release;
  std::future<int> blocker;
  if (python_blocker) {
    blocker = pool->submit_python([&] {
      started.set();
      return PyRun_SimpleString("time.sleep(0.3)\n") == 0 ? 7 : -1;
    });
  } else {
    blocker = pool->submit([&] {
      started.set();
      return release.wait(k_wait) ? 7 : -1;
    });
  }
  CHILD_CHECK(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(pool->submit_python([&] { return ++ran; }));
  for (int i = 0; i < 5; ++i) fs.push_back(pool->submit([&] { return ++ran; }));
  for (int i = 0; i < 3; ++i) pool->post_python([&] { ++ran; });
  CHILD_CHECK(pool->stats().queued == 28);

  const auto t0 = std::chrono::steady_clock::now();
  py.reset();  // Py_FinalizeEx: the gate stops the pool first
  const double destroy_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("interpreter destroyed in %.1f ms; stop hooks so far %d (status %d)\n", destroy_ms,
              stops.load(), stop_status.load());
  if (python_blocker) {
    // The closer waited for the running task and the stop hook, which ran attached.
    CHILD_CHECK(stops.load() == 1);
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  } else {
    // The bound expired with the worker still busy: no stop hook yet, and no hang.
    CHILD_CHECK(stops.load() == 0);
    CHILD_CHECK(destroy_ms >= 250);
    CHILD_CHECK(destroy_ms < (k_sanitized ? 20000 : 5000));
  }
  // None vanished: every queued task completed, with finalizing, without running.
  std::size_t ready = 0, finalizing = 0;
  for (auto& f : fs) {
    if (!is_ready(f)) continue;
    ++ready;
    const std::string how = outcome(f);
    if (how == "pool_error:finalizing") {
      ++finalizing;
    } else {
      std::printf("queued task ended as %s\n", how.c_str());
    }
  }
  std::printf("ready %zu finalizing %zu ran %d of %zu\n", ready, finalizing, ran.load(), fs.size());
  CHILD_CHECK(ready == fs.size());
  CHILD_CHECK(finalizing == fs.size());
  CHILD_CHECK(ran.load() == 0);
  CHILD_CHECK(log.count("pool_error:finalizing") == 3);  // the posts: no future, reported
  for (const auto& e : log.snapshot()) {
    CHILD_CHECK(e.where == "task");
    CHILD_CHECK(e.worker_index == static_cast<std::size_t>(-1));  // never reached the worker
  }
  // Submissions are refused now.
  for (int kind = 0; kind < 4; ++kind) {
    std::string how = "accepted";
    try {
      if (kind == 0) pool->submit([] { return 0; });
      if (kind == 1) pool->submit_python([] { return 0; });
      if (kind == 2) pool->post([] {});
      if (kind == 3) pool->post_python([] {});
    } catch (const pool_error& e) {
      how = pyattach::to_string(e.code());
    } catch (...) {
      how = describe_error(std::current_exception());
    }
    std::printf("submit kind %d after finalization: %s\n", kind, how.c_str());
    CHILD_CHECK(how == "finalizing");
  }
  // The running task finished (Python: the closer waited for its pass) or finishes now (C++).
  if (python_blocker) {
    CHILD_CHECK(is_ready(blocker));
  } else {
    CHILD_CHECK(!is_ready(blocker));
    release.set();
  }
  require_ready(blocker, "the running task");
  const std::string how = blocker.valid() ? std::to_string(blocker.get()) : "invalid";
  std::printf("running task: %s\n", how.c_str());
  CHILD_CHECK(how == "7");
  const auto st = pool->stats();
  std::printf("stats: submitted %llu started %llu completed %llu failed %llu cancelled %llu queued %zu\n",
              (unsigned long long)st.submitted, (unsigned long long)st.started,
              (unsigned long long)st.completed, (unsigned long long)st.failed,
              (unsigned long long)st.cancelled, st.queued);
  CHILD_CHECK(st.cancelled == 28);
  CHILD_CHECK(st.queued == 0);
  CHILD_CHECK(st.submitted == 30);  // warm-up, running task, 28 queued
  CHILD_CHECK(st.completed == 2);
  // The worker left its loop (stopped, queue empty): its stop hook has run, or runs now.
  const auto hook_deadline = std::chrono::steady_clock::now() + k_wait;
  while (stops.load() == 0 && std::chrono::steady_clock::now() < hook_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHILD_CHECK(stops.load() == 1);
  // "A pool does not outlive the interpreter it ran under": a new interpreter does not revive it.
  {
    pyattach::interpreter again;
    std::string how2 = "accepted";
    try {
      pool->submit_python([] { return 0; });
    } catch (const pool_error& e) {
      how2 = pyattach::to_string(e.code());
    }
    std::printf("submit under a new interpreter: %s\n", how2.c_str());
    CHILD_CHECK(how2 == "finalizing");
    CHILD_CHECK(other_thread_can_run_python());
  }
  // The destructor after the interpreter is gone: returns, runs the stop hook (refused Python).
  pool.reset();
  std::printf("stop hooks %d, status %d\n", stops.load(), stop_status.load());
  CHILD_CHECK(stops.load() == 1);
  if (python_blocker) {
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  } else {
    // Refused: pool.hpp says "finalizing"; a hook that runs after Py_FinalizeEx returned gets
    // "finalized" (worker_context: "anything else if the attach was refused"). Either, never
    // attached and never not_initialized.
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::finalizing) ||
                stop_status.load() == static_cast<int>(pyattach::attach_status::finalized));
  }
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_interpreter_destroyed_with_queued_tasks);

TEST(Pool, InterpreterDestroyedWithQueuedTasksCompletesThemWithFinalizing) {
  child_options o;
  o.args = {"cpp"};
  const auto r = run_child(uses_pool_interpreter_destroyed_with_queued_tasks, o);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, RunningPythonTaskFinishesWhenTheInterpreterFinalizesAndTheQueuedOnesDoNotRun) {
  child_options o;
  o.args = {"python"};
  const auto r = run_child(uses_pool_interpreter_destroyed_with_queued_tasks, o);
  EXPECT_CHILD_CLEAN(r);
}

// ==== 11. back-pressure ========================================================================

CHILD_CASE(pool_queue_full_fail) {
  pyattach::interpreter py;
  pool_options o;
  o.name = "bounded";
  o.workers = 1;
  o.max_queued = 3;
  o.when_full = full_policy::fail;
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait);
  });
  CHILD_CHECK(started.wait(k_wait));
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(pool.submit([i] { return i; }));
  CHILD_CHECK(pool.stats().queued == 3);
  int refused = 0;
  for (int kind = 0; kind < 4; ++kind) {
    try {
      if (kind == 0) pool.submit([] { return 0; });
      if (kind == 1) pool.submit_python([] { return 0; });
      if (kind == 2) pool.post([] {});
      if (kind == 3) pool.post_python([] {});
      std::printf("kind %d accepted with a full queue\n", kind);
    } catch (const pool_error& e) {
      std::printf("kind %d: %s\n", kind, pyattach::to_string(e.code()));
      refused += e.code() == pool_errc::queue_full;
    }
  }
  CHILD_CHECK(refused == 4);
  CHILD_CHECK(pool.stats().queued == 3);
  release.set();
  pool.wait();
  for (int i = 0; i < 3; ++i) CHILD_CHECK(fs[static_cast<size_t>(i)].get() == i);
  CHILD_CHECK(blocker.get());
  // Room again.
  auto again = pool.submit([] { return 9; });
  require_ready(again, "after the queue drained");
  CHILD_CHECK(again.get() == 9);
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_queue_full_fail);

TEST(Pool, QueueFullWithFailPolicyThrowsQueueFull) {
  const auto r = run_child(uses_pool_queue_full_fail);
  EXPECT_CHILD_CLEAN(r);
}

CHILD_CASE(pool_queue_full_block) {
  pyattach::interpreter py;
  pool_options o;
  o.name = "blocking";
  o.workers = 1;
  o.max_queued = 2;
  o.when_full = full_policy::block;
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait);
  });
  CHILD_CHECK(started.wait(k_wait));
  std::vector<std::future<int>> fs;
  std::atomic<int> phase{0};
  std::atomic<bool> still_attached{false};
  std::thread submitter([&] {
    pyattach::attach_scope gil;  // submits while holding the GIL
    for (int i = 0; i < 3; ++i) {
      // Python tasks: they need the GIL that this thread holds, so it must be released while
      // the third submit blocks (and the worker runs the first two after release).
      fs.push_back(pool.submit_python([i] {
        PyObject* v = PyLong_FromLong(i);
        const int r = static_cast<int>(PyLong_AsLong(v));
        Py_DECREF(v);
        return r;
      }));
      phase = i + 1;
    }
    still_attached = pyattach::is_attached() && PyGILState_Check() == 1;
  });
  // Two fit; the third blocks.
  const auto end = std::chrono::steady_clock::now() + k_wait;
  while (phase.load() < 2 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHILD_CHECK(phase.load() == 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::printf("phase after 200 ms: %d, queued %zu\n", phase.load(), pool.stats().queued);
  CHILD_CHECK(phase.load() == 2);  // still blocked: the queue is full
  CHILD_CHECK(pool.stats().queued == 2);
  // The blocked submitter does not hold the GIL.
  CHILD_CHECK(other_thread_can_run_python(k_prompt));
  release.set();
  submitter.join();
  CHILD_CHECK(phase.load() == 3);
  CHILD_CHECK(still_attached.load());  // submit took the GIL back before returning
  pool.wait();
  for (int i = 0; i < 3; ++i) {
    CHILD_CHECK(is_ready(fs[static_cast<size_t>(i)]));
    CHILD_CHECK(fs[static_cast<size_t>(i)].get() == i);
  }
  CHILD_CHECK(blocker.get());
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_queue_full_block);

CHILD_CASE(pool_queue_full_submit_from_own_worker) {
  pyattach::interpreter py;
  pool_options o;
  o.name = "selffull";
  o.workers = 1;
  o.max_queued = 2;
  o.when_full = full_policy::block;  // blocking on its own worker would wait for itself
  thread_pool pool(o);
  std::vector<std::future<int>> inner;
  auto outer = pool.submit([&] {
    std::string how = "accepted";
    try {
      for (int i = 0; i < 3; ++i) inner.push_back(pool.submit([i] { return i; }));
    } catch (const pool_error& e) {
      how = pyattach::to_string(e.code());
    }
    return how;
  });
  require_ready(outer, "a task submitting to its own full pool");
  const std::string how = outer.get();
  std::printf("third submit from the worker: %s\n", how.c_str());
  CHILD_CHECK(how == "queue_full");
  CHILD_CHECK(inner.size() == 2);
  pool.wait();
  for (std::size_t i = 0; i < inner.size(); ++i) CHILD_CHECK(inner[i].get() == static_cast<int>(i));
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_queue_full_submit_from_own_worker);

TEST(Pool, QueueFullWithBlockPolicyBlocksTheSubmitterWithoutHoldingTheGil) {
  const auto r = run_child(uses_pool_queue_full_block);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, QueueFullWithBlockPolicyFailsInsteadOfBlockingOnItsOwnWorker) {
  const auto r = run_child(uses_pool_queue_full_submit_from_own_worker);
  EXPECT_CHILD_CLEAN(r);
}

// ==== 12. stats ================================================================================

TEST(Pool, StatsCountWhatWasDone) {
  error_log log;
  pool_options o;
  o.name = "counts";
  o.workers = 2;
  o.on_error = log.handler();
  thread_pool pool(o);
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(pool.submit([] { return 1; }));
  for (int i = 0; i < 4; ++i) fs.push_back(pool.submit([]() -> int { throw std::runtime_error("x"); }));
  for (int i = 0; i < 6; ++i) fs.push_back(pool.submit_python([] { return 1; }));
  for (int i = 0; i < 3; ++i) {
    fs.push_back(pool.submit_python([] {
      PyErr_SetString(PyExc_ValueError, "y");
      return 0;
    }));
  }
  // pool.hpp: the counters are updated before a future becomes ready, so once every future is
  // ready (no wait()), stats() already counts them.
  for (auto& f : fs) require_ready(f, "stats task");
  {
    const auto early = pool.stats();
    EXPECT_EQ(early.submitted, 23u);
    EXPECT_EQ(early.started, 23u);
    EXPECT_EQ(early.completed, 16u);
    EXPECT_EQ(early.failed, 7u);
  }
  for (int i = 0; i < 5; ++i) pool.post([] {});
  for (int i = 0; i < 2; ++i) pool.post([] { throw std::runtime_error("z"); });
  pool.post_python([] { PyErr_SetString(PyExc_ValueError, "w"); });
  pool.wait();
  for (auto& f : fs) ASSERT_TRUE(is_ready(f)) << "wait() returned before a future was ready";
  const auto st = pool.stats();
  EXPECT_EQ(st.name, "counts");
  EXPECT_EQ(st.submitted, 31u);
  EXPECT_EQ(st.started, 31u);
  EXPECT_EQ(st.completed, 21u);  // 10 + 6 + 5
  EXPECT_EQ(st.failed, 10u);     // 4 + 3 + 2 + 1
  EXPECT_EQ(st.cancelled, 0u);
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(log.snapshot().size(), 3u);
  ASSERT_EQ(st.workers.size(), 2u);
  std::uint64_t tasks = 0;
  for (const auto& w : st.workers) tasks += w.tasks;
  EXPECT_EQ(tasks, st.started) << "per-worker task counts must sum to started";

  // A blocked worker: queued and started as they are.
  thread_pool one("counts1", 1);
  latch started, release;
  auto blocker = one.submit([&] {
    started.set();
    return release.wait(k_wait);
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(one.submit([] { return 2; }));
  auto mid = one.stats();
  EXPECT_EQ(mid.submitted, 6u);
  EXPECT_EQ(mid.started, 1u);
  EXPECT_EQ(mid.queued, 5u);
  EXPECT_EQ(mid.completed, 0u);
  EXPECT_EQ(mid.workers.at(0).tasks, 1u);
  release.set();
  one.wait();
  auto end = one.stats();
  EXPECT_EQ(end.started, 6u);
  EXPECT_EQ(end.completed, 6u);
  EXPECT_EQ(end.queued, 0u);
  EXPECT_EQ(end.workers.at(0).tasks, 6u);
}

TEST(Pool, StatsMeasureBusyTimeAndAttachedTimeOnlyWhenAsked) {
  pool_options o;
  o.name = "timed";
  o.workers = 1;
  o.measure_python_time = true;
  thread_pool timed(o);
  o.name = "untimed";
  o.measure_python_time = false;
  thread_pool untimed(o);
  for (thread_pool* p : {&timed, &untimed}) {
    auto f = p->submit([] { std::this_thread::sleep_for(std::chrono::milliseconds(10)); });
    require_ready(f, "sleeping C++ task");
    p->wait();
    const auto w = p->stats().workers.at(0);
    EXPECT_GE(w.busy, std::chrono::milliseconds(10)) << p->name() << ": busy " << w.busy.count() << " ns";
    EXPECT_EQ(w.attached.count(), 0) << p->name() << ": a C++ task is not attached time";
  }
  for (thread_pool* p : {&timed, &untimed}) {
    auto f = p->submit_python([] { std::this_thread::sleep_for(std::chrono::milliseconds(10)); });
    require_ready(f, "sleeping Python task");
    p->wait();
  }
  const auto t = timed.stats().workers.at(0);
  const auto u = untimed.stats().workers.at(0);
  EXPECT_GE(t.busy, std::chrono::milliseconds(20)) << t.busy.count();
  EXPECT_GE(u.busy, std::chrono::milliseconds(20)) << u.busy.count();
  EXPECT_GE(t.attached, std::chrono::milliseconds(10))
      << "measure_python_time: a task that slept 10 ms attached, attached " << t.attached.count() << " ns";
  EXPECT_GE(t.attach_wait.count(), 0);
  EXPECT_EQ(u.attached.count(), 0) << "attached time measured without measure_python_time";
  EXPECT_EQ(u.attach_wait.count(), 0) << "attach wait measured without measure_python_time";
}

// ==== 13. the thread report ====================================================================

TEST(Pool, ThreadReportListsEachWorkerWithItsPool) {
  pool_options o;
  o.name = "rpool";
  o.workers = 3;
  thread_pool a(o);
  o.name = "rpool2";
  o.workers = 2;
  thread_pool b(o);
  for (thread_pool* p : {&a, &b}) {
    python_on_each_worker(*p, [] { return PyRun_SimpleString("_r = 1\n") == 0; });
    p->wait();
  }
  const auto report = pyattach::make_thread_report();
  ASSERT_TRUE(report.interpreter_available);
  for (thread_pool* p : {&a, &b}) {
    for (const auto& w : p->stats().workers) {
      const pyattach::thread_info* info = nullptr;
      for (const auto& t : report.threads) {
        if (t.os_tid == w.os_tid) info = &t;
      }
      ASSERT_NE(info, nullptr) << w.name << " missing from the report:\n" << pyattach::to_string(report);
      EXPECT_EQ(info->pool, p->name()) << w.name;
      EXPECT_EQ(info->python_name, w.name);
      EXPECT_TRUE(info->has_thread_state) << w.name;
      EXPECT_TRUE(info->known_to_pyattach) << w.name;
      EXPECT_TRUE(info->made_by_pyattach) << w.name;
      EXPECT_GE(info->scopes, 1u) << w.name;
    }
  }
  for (const auto& t : report.threads) {
    if (t.is_caller) {
      EXPECT_EQ(t.pool, "") << "the caller is no pool's worker";
    }
  }
  EXPECT_TRUE(contains(pyattach::to_string(report), "rpool2")) << pyattach::to_string(report);
}

// ==== 14. stress ===============================================================================

namespace {
enum stress_kind : int { k_cpp_value, k_cpp_throw, k_cpp_custom, k_py_value, k_py_left_set, k_py_thrown, k_kinds };
const char* const k_kind_names[k_kinds] = {"C++ value",      "C++ runtime_error", "C++ custom",
                                           "Python value",   "Python error set",  "python_error thrown"};
// The outcome as a kind, checking that it carries the task's own index (no cross-delivery).
int classify(std::future<long>& f, long i, std::string* bad) {
  try {
    const long v = f.get();
    if (v == i) return k_cpp_value;
    if (v == -i - 1) return k_py_value;
    *bad = "value " + std::to_string(v);
  } catch (const custom_failure& e) {
    if (e.code == static_cast<int>(i)) return k_cpp_custom;
    *bad = "custom " + std::to_string(e.code);
  } catch (const python_error& e) {
    if (e.type_name() == "ValueError" && e.message() == std::to_string(i)) return k_py_left_set;
    if (e.type_name() == "IndexError" && e.message() == std::to_string(i)) return k_py_thrown;
    *bad = "python_error " + e.type_name() + ": " + e.message();
  } catch (const pool_error& e) {
    *bad = std::string("pool_error ") + pyattach::to_string(e.code());
  } catch (const std::runtime_error& e) {
    if (e.what() == std::to_string(i)) return k_cpp_throw;
    *bad = std::string("runtime_error ") + e.what();
  } catch (...) {
    *bad = "unknown";
  }
  return -1;
}
}  // namespace

TEST(Pool, StressRandomCppAndPythonExceptionsEveryFutureResolvedExactlyOnce) {
  // 100,000 tasks on 8 workers from two submitting threads, with a third reading stats().
  // Under ASan/TSan everything runs several times slower: 10,000 tasks there.
  const long n = k_sanitized ? 10000 : 100000;
  constexpr int k_submitters = 2;
  pool_options o;
  o.name = "stress";
  o.workers = 8;
  thread_pool pool(o);
  const auto t0 = std::chrono::steady_clock::now();
  struct item {
    long i;
    int kind;
    std::future<long> f;
  };
  std::vector<std::vector<item>> items(k_submitters);
  std::vector<std::array<long, k_kinds>> expected(k_submitters);
  std::vector<std::thread> submitters;
  for (int s = 0; s < k_submitters; ++s) {
    submitters.emplace_back([&, s] {
      std::mt19937 rng(20240601u + static_cast<unsigned>(s));
      // Weights: mostly successes, some of every failure.
      std::discrete_distribution<int> pick({40, 10, 5, 30, 10, 5});
      expected[static_cast<size_t>(s)].fill(0);
      for (long i = s; i < n; i += k_submitters) {
        const int kind = pick(rng);
        ++expected[static_cast<size_t>(s)][static_cast<size_t>(kind)];
        std::future<long> f;
        switch (kind) {
          case k_cpp_value: f = pool.submit([i] { return i; }); break;
          case k_cpp_throw:
            f = pool.submit([i]() -> long { throw std::runtime_error(std::to_string(i)); });
            break;
          case k_cpp_custom:
            f = pool.submit([i]() -> long { throw custom_failure{static_cast<int>(i)}; });
            break;
          case k_py_value:
            f = pool.submit_python([i] {
              PyObject* v = PyLong_FromLong(-i - 1);
              const long r = PyLong_AsLong(v);
              Py_DECREF(v);
              return r;
            });
            break;
          case k_py_left_set:
            f = pool.submit_python([i] {
              PyErr_Format(PyExc_ValueError, "%ld", i);
              return 0L;
            });
            break;
          default:
            f = pool.submit_python([i]() -> long {
              PyErr_Format(PyExc_IndexError, "%ld", i);
              throw python_error::fetch();
            });
            break;
        }
        items[static_cast<size_t>(s)].push_back(item{i, kind, std::move(f)});
      }
    });
  }
  std::atomic<bool> stop_reader{false};
  std::atomic<long> snapshots{0};
  std::string reader_problem;
  std::thread reader([&] {
    pyattach::pool_stats last;
    while (!stop_reader.load()) {
      const auto st = pool.stats();
      if (st.submitted < last.submitted || st.started < last.started || st.completed < last.completed ||
          st.failed < last.failed || st.cancelled != 0) {
        if (reader_problem.empty()) reader_problem = "counters went backwards or cancelled != 0";
      }
      last = st;
      ++snapshots;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& t : submitters) t.join();
  const double submit_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::array<long, k_kinds> got{}, want{};
  long bad = 0, total = 0;
  std::string first_bad;
  const auto deadline = std::chrono::steady_clock::now() + (k_sanitized ? 300s : 120s);
  for (int s = 0; s < k_submitters; ++s) {
    for (int k = 0; k < k_kinds; ++k) want[static_cast<size_t>(k)] += expected[static_cast<size_t>(s)][static_cast<size_t>(k)];
    for (auto& it : items[static_cast<size_t>(s)]) {
      if (it.f.wait_until(deadline) != std::future_status::ready) {
        fatal_stuck("stress: task " + std::to_string(it.i) + " never resolved");
      }
    }
  }
  settle(pool);
  for (int s = 0; s < k_submitters; ++s) {
    for (auto& it : items[static_cast<size_t>(s)]) {
      std::string why;
      const int kind = classify(it.f, it.i, &why);  // get() exactly once per future
      ++total;
      if (kind != it.kind) {
        if (bad++ == 0) {
          first_bad = "task " + std::to_string(it.i) + " (" + k_kind_names[it.kind] + ") ended as " +
                      (kind >= 0 ? k_kind_names[kind] : why);
        }
      } else {
        ++got[static_cast<size_t>(kind)];
      }
    }
  }
  pool.wait();
  stop_reader = true;
  reader.join();
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(total, n);
  EXPECT_EQ(bad, 0) << first_bad;
  for (int k = 0; k < k_kinds; ++k) {
    EXPECT_EQ(got[static_cast<size_t>(k)], want[static_cast<size_t>(k)]) << k_kind_names[k];
    EXPECT_GT(want[static_cast<size_t>(k)], 0) << "the mix must contain every kind";
  }
  const auto st = pool.stats();
  const long values = want[k_cpp_value] + want[k_py_value];
  EXPECT_EQ(st.submitted, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.started, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.completed, static_cast<std::uint64_t>(values));
  EXPECT_EQ(st.failed, static_cast<std::uint64_t>(n - values));
  EXPECT_EQ(st.completed + st.failed, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.cancelled, 0u);
  std::uint64_t per_worker = 0;
  std::size_t busy_workers = 0;
  for (const auto& w : st.workers) {
    per_worker += w.tasks;
    busy_workers += w.tasks > 0;
  }
  EXPECT_EQ(per_worker, static_cast<std::uint64_t>(n));
  EXPECT_TRUE(reader_problem.empty()) << reader_problem;
  std::printf("stress: %ld tasks (%ld values, %ld failures) on %zu busy workers; submitted in %.2f s, "
              "all resolved in %.2f s; %ld stats snapshots\n",
              n, values, n - values, busy_workers, submit_s, total_s, snapshots.load());
}

// ==== the rest of the contract =================================================================

namespace {
// A callable that records where and how its last live copy was destroyed.
struct destruction_probe {
  struct record {
    std::atomic<int> destroyed{0};
    std::atomic<std::uint64_t> tid{0};
    std::atomic<bool> attached{false};
    std::atomic<bool> gil{false};
  };
  std::shared_ptr<record> r;
  bool live = true;
  explicit destruction_probe(std::shared_ptr<record> rec) : r(std::move(rec)) {}
  destruction_probe(destruction_probe&& o) noexcept : r(o.r), live(o.live) { o.live = false; }
  destruction_probe(const destruction_probe&) = delete;
  destruction_probe& operator=(const destruction_probe&) = delete;
  destruction_probe& operator=(destruction_probe&&) = delete;
  ~destruction_probe() {
    if (!live) return;
    r->tid = os_tid();
    r->attached = pyattach::is_attached();
    r->gil = PyGILState_Check() == 1;
    ++r->destroyed;
  }
  std::uint64_t operator()() const { return os_tid(); }
};
}  // namespace

TEST(Pool, TaskCallableIsDestroyedOnTheWorkerRightAfterItRanAttachedForPythonTasks) {
  thread_pool pool("dtor", 1);
  auto py_rec = std::make_shared<destruction_probe::record>();
  auto cpp_rec = std::make_shared<destruction_probe::record>();
  auto py_ran = pool.submit_python(destruction_probe(py_rec));
  // The next task sees the previous callable already destroyed ("right after it ran").
  auto py_next = pool.submit([py_rec] { return py_rec->destroyed.load(); });
  auto cpp_ran = pool.submit(destruction_probe(cpp_rec));
  auto cpp_next = pool.submit([cpp_rec] { return cpp_rec->destroyed.load(); });
  for (auto* f : {&py_ran, &cpp_ran}) require_ready(*f, "probe");
  require_ready(py_next, "next");
  require_ready(cpp_next, "next");
  const std::uint64_t worker = py_ran.get();
  EXPECT_EQ(cpp_ran.get(), worker);
  EXPECT_EQ(py_next.get(), 1) << "a Python task's callable was not destroyed before the next task";
  EXPECT_EQ(cpp_next.get(), 1) << "a C++ task's callable was not destroyed before the next task";
  EXPECT_EQ(py_rec->destroyed.load(), 1);
  EXPECT_EQ(py_rec->tid.load(), worker) << "a Python task's callable was destroyed off the worker";
  EXPECT_TRUE(py_rec->attached.load()) << "a Python task's callable must be destroyed attached";
  EXPECT_TRUE(py_rec->gil.load());
  EXPECT_EQ(cpp_rec->destroyed.load(), 1);
  EXPECT_EQ(cpp_rec->tid.load(), worker);
  EXPECT_FALSE(cpp_rec->attached.load()) << "a C++ task's callable was destroyed attached";
}

TEST(Pool, PythonTaskMayOwnPythonReferencesInItsCallable) {
  // The documented pattern: a Python task captures an owned reference and drops it in its
  // destructor, which runs attached on the worker.
  thread_pool pool("owned", 2);
  PyObject* g = make_globals("class Obj:\n    pass\nalive = []\n");
  struct owner {
    PyObject* obj;
    explicit owner(PyObject* o) : obj(o) {}
    owner(owner&& o) noexcept : obj(o.obj) { o.obj = nullptr; }
    owner(const owner&) = delete;
    ~owner() {
      if (obj != nullptr) Py_DECREF(obj);  // attached: pool.hpp
    }
    long operator()() const { return static_cast<long>(Py_REFCNT(obj)); }
  };
  std::vector<std::future<long>> fs;
  for (int i = 0; i < 200; ++i) {
    PyObject* o;
    {
      pyattach::attach_scope py;
      o = py_eval("Obj()", g);
    }
    fs.push_back(pool.submit_python(owner(o)));
  }
  for (auto& f : fs) {
    require_ready(f, "owning task");
    EXPECT_EQ(f.get(), 1);
  }
  pool.wait();
  drop(g);
}

TEST(Pool, OnWorkerIsTrueOnlyOnThisPoolsWorkers) {
  thread_pool a("onw_a", 2);
  thread_pool b("onw_b", 1);
  EXPECT_FALSE(a.on_worker());
  auto on_a = a.submit([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  auto on_a_py = a.submit_python([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  auto on_b = b.submit([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  for (auto* f : {&on_a, &on_a_py, &on_b}) require_ready(*f, "on_worker");
  EXPECT_EQ(on_a.get(), std::make_pair(true, false));
  EXPECT_EQ(on_a_py.get(), std::make_pair(true, false));
  EXPECT_EQ(on_b.get(), std::make_pair(false, true));
}

TEST(Pool, ZeroWorkersIsInvalidArgument) {
  pool_options o;
  o.workers = 0;
  EXPECT_THROW(thread_pool p(o), std::invalid_argument);
  EXPECT_THROW(thread_pool p("zero", 0), std::invalid_argument);
}

TEST(Pool, DefaultOptionsMakeOneWorkerNamedPool0) {
  thread_pool pool{pool_options{}};
  EXPECT_EQ(pool.size(), 1u);
  EXPECT_EQ(pool.name(), "pool");
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), 1u);
  EXPECT_EQ(st.workers[0].name, "pool-0");
  EXPECT_EQ(thread_comm(st.workers[0].os_tid), "pool-0");
}

// ==== 15. on demand, the name separator, stop() and detach() ===================================
// pool.hpp, "On demand" and "Stopping without joining": what concurrent.futures.ThreadPoolExecutor
// needs (lazy workers named <prefix>_<M>, shutdown(wait=False), a collected executor).

namespace {
pool_options on_demand(const std::string& name, std::size_t workers) {
  pool_options o;
  o.name = name;
  o.workers = workers;
  o.spawn_on_demand = true;
  return o;
}

std::vector<std::string> stats_names(const thread_pool& pool) {
  std::vector<std::string> v;
  for (const auto& w : pool.stats().workers) v.push_back(w.name);
  return v;
}

// How a call ended: "returned", "pool_error:<code>", or describe_error's text.
template <class F>
std::string call_outcome(F&& fn) {
  try {
    fn();
    return "returned";
  } catch (...) {
    return describe_error(std::current_exception());
  }
}
}  // namespace

TEST(Pool, OnDemandStartsNoWorkerAtConstruction) {
  std::thread([] {}).join();  // (TSan's background thread, if any, into the baseline)
  const std::size_t baseline = settled_os_thread_count();
  std::atomic<int> starts{0};
  pool_options o = on_demand("lazy", 4);
  o.on_start = [&](const pyattach::worker_context&) { ++starts; };
  {
    thread_pool pool(o);
    EXPECT_EQ(pool.size(), 4u) << "size() is the most workers that may start";
    EXPECT_TRUE(pool.stats().workers.empty()) << join(stats_names(pool));
    EXPECT_EQ(settled_os_thread_count(), baseline) << "the constructor started a thread";
    EXPECT_EQ(starts.load(), 0);
    auto f = pool.submit([] { return os_tid(); });
    require_ready(f, "the first task");
    const std::uint64_t tid = f.get();
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 1u);
    EXPECT_EQ(st.workers[0].name, "lazy-0");
    EXPECT_EQ(st.workers[0].os_tid, tid);
    EXPECT_EQ(thread_comm(tid), "lazy-0");
    EXPECT_EQ(starts.load(), 1);
    EXPECT_EQ(os_thread_count(), baseline + 1);
  }
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "the started worker was not joined";
  // Never used: nothing to start, nothing to join.
  run_with_deadline("destroying an unused on-demand pool", [&] { thread_pool unused(o); });
  EXPECT_EQ(starts.load(), 1);
}

TEST(Pool, OnDemandOneQuickTaskAtATimeReusesWorkerZero) {
  std::thread([] {}).join();
  const std::size_t baseline = settled_os_thread_count();
  thread_pool pool(on_demand("reuse", 4));
  // The worker destroys a task's callable right after making its future ready (pool.hpp): this
  // one's destructor keeps it there for 2 ms, neither idle nor running a task. It counts as free
  // all the same: the next submit must not start another worker meanwhile.
  struct slow_to_destroy {
    bool armed = true;
    slow_to_destroy() = default;
    slow_to_destroy(slow_to_destroy&& o) noexcept : armed(o.armed) { o.armed = false; }
    ~slow_to_destroy() {
      if (armed) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  std::set<std::uint64_t> tids;
  for (int i = 0; i < 100; ++i) {
    auto f = i % 2 == 0 ? pool.submit([s = slow_to_destroy{}] { return os_tid(); })
                        : pool.submit_python([s = slow_to_destroy{}] { return os_tid(); });
    require_ready(f, "sequential task " + std::to_string(i));
    tids.insert(f.get());
  }
  EXPECT_EQ(tids.size(), 1u) << "100 sequential tasks ran on several threads";
  EXPECT_EQ(stats_names(pool), std::vector<std::string>{"reuse-0"});
  EXPECT_EQ(os_thread_count(), baseline + 1);
  EXPECT_EQ(pool.stats().started, 100u);
}

TEST(Pool, OnDemandConcurrentBlockingTasksStartMinOfTasksAndWorkers) {
  // Fewer tasks than workers: one worker per task (they meet, so each needs its own), no more.
  {
    thread_pool pool(on_demand("few", 4));
    const auto tids = [&] {
      auto meet = std::make_shared<rendezvous>(2);
      std::vector<std::future<std::pair<std::uint64_t, bool>>> fs;
      for (int i = 0; i < 2; ++i) {
        fs.push_back(pool.submit([meet] { return std::make_pair(os_tid(), meet->arrive_and_wait()); }));
      }
      std::set<std::uint64_t> s;
      for (auto& f : fs) {
        require_ready(f, "a meeting task");
        auto p = f.get();
        EXPECT_TRUE(p.second) << "two tasks could not run at once: a second worker was not started";
        s.insert(p.first);
      }
      return s;
    }();
    EXPECT_EQ(tids.size(), 2u);
    EXPECT_EQ(stats_names(pool), (std::vector<std::string>{"few-0", "few-1"}));
  }
  // More tasks than workers: every worker starts, the rest wait in the queue.
  {
    thread_pool pool(on_demand("many", 3));
    latch release;
    std::atomic<int> running{0};
    std::vector<std::future<std::uint64_t>> fs;
    for (int i = 0; i < 5; ++i) {
      fs.push_back(pool.submit([&] {
        ++running;
        release.wait(k_wait);
        return os_tid();
      }));
    }
    const auto end = std::chrono::steady_clock::now() + k_wait;
    while (running.load() < 3 && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(running.load(), 3);
    const auto st = pool.stats();
    EXPECT_EQ(st.workers.size(), 3u);
    EXPECT_EQ(st.queued, 2u);
    release.set();
    std::set<std::uint64_t> tids;
    for (auto& f : fs) {
      require_ready(f, "a blocking task");
      tids.insert(f.get());
    }
    EXPECT_EQ(tids.size(), 3u);
    EXPECT_EQ(stats_names(pool), (std::vector<std::string>{"many-0", "many-1", "many-2"}));
  }
}

TEST(Pool, OnDemandPythonTasksAndHooksRunOnLazilyStartedWorkers) {
  const std::size_t baseline = thread_states();
  PyObject* g = make_globals();
  event_log log;
  pool_options o = on_demand("lazypy", 3);
  o.start_hook_python = true;
  o.stop_hook_python = true;
  o.on_start = [&](const pyattach::worker_context& c) { log.add(hook_record("start", c)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(hook_record("stop", c)); };
  {
    thread_pool pool(o);
    EXPECT_EQ(thread_states(), baseline) << "an on-demand pool made a thread state up front";
    const auto samples = python_on_each_worker(pool, [g] { return name_task(g); });
    EXPECT_EQ(thread_states(), baseline + 3) << "one thread state per started worker";
    std::set<std::string> seen;
    for (const auto& s : samples) {
      EXPECT_EQ(s.python_name, s.comm);
      seen.insert(s.python_name);
    }
    EXPECT_EQ(seen, (std::set<std::string>{"lazypy-0", "lazypy-1", "lazypy-2"}));
    const auto names = enumerate_names(g);
    for (const auto& n : seen) {
      EXPECT_NE(std::find(names.begin(), names.end(), n), names.end())
          << n << " missing from threading.enumerate(): " << join(names);
    }
    for (const auto& w : pool.stats().workers) EXPECT_TRUE(w.named_in_python) << w.name;
    // The start hooks ran attached on the workers the submits started.
    const auto starts = log.snapshot();
    ASSERT_EQ(starts.size(), 3u);
    for (const auto& e : starts) {
      EXPECT_EQ(e.kind, "start");
      EXPECT_EQ(e.python, pyattach::attach_status::attached) << e.name;
      EXPECT_TRUE(e.gil) << e.name;
      EXPECT_EQ(e.name, "lazypy-" + std::to_string(e.index));
    }
    run_with_deadline("shutdown", [&] { pool.shutdown(); });
    EXPECT_EQ(log.count("stop"), 3u);
    EXPECT_EQ(thread_states(), baseline) << "a lazily started worker's thread state survived it";
  }
  drop(g);
}

TEST(Pool, NameSeparatorUnderscoreGivesPoolUnderscoreIndex) {
  PyObject* g = make_globals();
  std::mutex m;
  std::map<std::size_t, std::string> hook_names;
  pool_options o;
  o.name = "X";
  o.name_separator = "_";
  o.workers = 2;
  o.on_start = [&](const pyattach::worker_context& c) {
    std::lock_guard<std::mutex> lock(m);
    hook_names[c.index] = c.name;
  };
  {
    thread_pool pool(o);
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 2u);
    for (std::size_t i = 0; i < 2; ++i) {
      const std::string expected = "X_" + std::to_string(i);
      EXPECT_EQ(st.workers[i].name, expected);
      EXPECT_EQ(thread_comm(st.workers[i].os_tid), expected);
      EXPECT_EQ(hook_names[i], expected);
    }
    std::set<std::string> py_names;
    for (const auto& s : python_on_each_worker(pool, [g] { return name_task(g); })) {
      py_names.insert(s.python_name);
    }
    EXPECT_EQ(py_names, (std::set<std::string>{"X_0", "X_1"}));
  }
  // The OS name keeps the whole suffix, separator included, when the pool name is shortened.
  o.name = "a_rather_long_pool_name";
  o.workers = 11;
  o.on_start = nullptr;
  thread_pool pool(o);
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), 11u);
  EXPECT_EQ(st.workers[10].name, "a_rather_long_pool_name_10");
  EXPECT_EQ(thread_comm(st.workers[10].os_tid), "a_rather_lon_10");
  EXPECT_EQ(thread_comm(st.workers[3].os_tid), "a_rather_long_3");
  drop(g);
}

TEST(Pool, StopReturnsBeforeTheRunningTaskFinishesAndALaterShutdownJoins) {
  std::thread([] {}).join();
  const std::size_t baseline = settled_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o;
  o.name = "stopper";
  o.workers = 1;
  o.on_stop = [&](const pyattach::worker_context&) { ++stops; };
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([i] { return 10 + i; }));
  run_with_deadline("stop() with a task running", [&] { pool.stop(); }, k_prompt);
  EXPECT_FALSE(is_ready(blocker)) << "stop() waited for the running task";
  EXPECT_EQ(stops.load(), 0);
  EXPECT_EQ(call_outcome([&] { pool.submit([] { return 0; }); }), "pool_error:shut_down");
  EXPECT_EQ(call_outcome([&] { pool.post_python([] {}); }), "pool_error:shut_down");
  run_with_deadline("a second stop()", [&] { pool.stop(); }, k_prompt);
  // stop() on the pool's own worker never blocks: allowed, no misuse (the refused submit
  // above proves the pool is stopped; this one must simply return). Checked on another pool.
  {
    thread_pool self_stop("selfstop", 1);
    const std::size_t misuses = pyattach::misuse_count();
    auto f = self_stop.submit([&] { return call_outcome([&] { self_stop.stop(); }); });
    require_ready(f, "stop() on its own worker");
    EXPECT_EQ(f.get(), "returned");
    EXPECT_EQ(pyattach::misuse_count(), misuses);
    EXPECT_EQ(call_outcome([&] { self_stop.submit([] { return 0; }); }), "pool_error:shut_down");
  }
  EXPECT_TRUE(os_thread_count_becomes(baseline + 1)) << "the stopped worker left before its task ended";
  release.set();
  // The worker drains the queue on its own (drain) and leaves; shutdown() joins it.
  for (auto& f : queued) require_ready(f, "a task queued before stop()");
  run_with_deadline("shutdown after stop()", [&] { pool.shutdown(); });
  EXPECT_EQ(blocker.get(), 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(queued[i].get(), 10 + i);
  EXPECT_EQ(stops.load(), 1);
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "shutdown() did not join the stopped worker";
}

TEST(Pool, StopCancelCompletesQueuedTasksWithCancelledAndLetsTheRunningOneFinish) {
  error_log log;
  pool_options o;
  o.name = "stopcancel";
  o.workers = 1;
  o.on_error = log.handler();
  thread_pool pool(o);
  latch started, release;
  auto blocker = pool.submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(pool.submit([&] { return ++ran; }));
  for (int i = 0; i < 2; ++i) fs.push_back(pool.submit_python([&] { return ++ran; }));
  pool.post([&] { ++ran; });
  pool.post_python([&] { ++ran; });
  run_with_deadline("stop(cancel)", [&] { pool.stop(shutdown_mode::cancel); }, k_prompt);
  // Cancelled at once, while the running task still runs.
  for (auto& f : fs) {
    ASSERT_TRUE(is_ready(f)) << "a queued task was not completed by stop(cancel)";
    EXPECT_EQ(outcome(f), "pool_error:cancelled");
  }
  EXPECT_FALSE(is_ready(blocker));
  EXPECT_EQ(log.count("pool_error:cancelled"), 2u) << "the cancelled posts go to on_error";
  EXPECT_EQ(call_outcome([&] { pool.submit([] { return 0; }); }), "pool_error:shut_down");
  release.set();
  run_with_deadline("shutdown after stop(cancel)", [&] { pool.shutdown(); });
  EXPECT_EQ(blocker.get(), 1);
  EXPECT_EQ(ran.load(), 0);
  const auto st = pool.stats();
  EXPECT_EQ(st.cancelled, 7u);
  EXPECT_EQ(st.completed, 1u);
}

TEST(Pool, DetachedPoolIsDestroyedWithoutJoiningAndItsWorkersFinishTheQueueOnTheirOwn) {
  std::thread([] {}).join();
  const std::size_t baseline = settled_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o;
  o.name = "letgo";
  o.workers = 1;
  o.on_stop = [&](const pyattach::worker_context&) { ++stops; };
  auto pool = std::make_unique<thread_pool>(o);
  // The worker runs Python once, so that the thread report knows it.
  python_on_each_worker(*pool, [] { return PyRun_SimpleString("_d = 1\n") == 0; });
  const std::uint64_t worker_tid = pool->stats().workers.at(0).os_tid;
  latch started, release;
  auto blocker = pool->submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 4; ++i) {
    queued.push_back(pool->submit([i] { return 20 + i; }));
  }
  run_with_deadline("detach()", [&] { pool->detach(); }, k_prompt);
  EXPECT_EQ(call_outcome([&] { pool->submit([] { return 0; }); }), "pool_error:shut_down");
  run_with_deadline("detach() again", [&] { pool->detach(); }, k_prompt);
  // The destructor does not wait for the running task: the threads were let go.
  run_with_deadline("destroying a detached pool with a task running", [&] { pool.reset(); },
                    k_prompt);
  EXPECT_FALSE(is_ready(blocker));
  // Still running, so still a pool worker in the thread report.
  const auto report = pyattach::make_thread_report();
  std::string pool_of_worker = "(not in the report)";
  for (const auto& t : report.threads) {
    if (t.os_tid == worker_tid) pool_of_worker = t.pool;
  }
  EXPECT_EQ(pool_of_worker, "letgo") << pyattach::to_string(report);
  release.set();
  require_ready(blocker, "the running task of a detached pool");
  EXPECT_EQ(blocker.get(), 1);
  for (int i = 0; i < 4; ++i) {
    require_ready(queued[i], "a task queued before detach()");
    EXPECT_EQ(queued[i].get(), 20 + i) << "detach() drains the queue";
  }
  // The worker runs its stop hook and exits on its own.
  const auto end = std::chrono::steady_clock::now() + k_wait;
  while (stops.load() < 1 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(stops.load(), 1);
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "a detached worker did not exit";
}

// A task destroys its own (on-demand, "_"-named: as an executor collected on its worker) pool
// after detach(): no misuse report, no crash, no hang; the worker then drains the queue, runs its
// stop hook and exits on its own. args[0]: "python" for a Python task, "cpp" for a C++ one.
CHILD_CASE(pool_detached_and_destroyed_on_own_worker) {
  const bool python = !args.empty() && args[0] == "python";
  pyattach::interpreter py;
  CHILD_CHECK(pyattach::set_misuse_handler(record_pool_report) == nullptr);
  std::thread([] {}).join();
  const std::size_t baseline = settled_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o = on_demand("collected", 1);
  o.name_separator = "_";
  o.stop_hook_python = python;
  o.on_stop = [&](const pyattach::worker_context&) { ++stops; };
  auto* pool = new thread_pool(o);
  latch go;
  auto self_destroy = [pool, &go, python] {
    CHILD_CHECK(go.wait(k_wait));
    pool->detach();
    delete pool;
    return python ? PyRun_SimpleString("_after = 1\n") == 0 : true;
  };
  std::future<bool> destroyer =
      python ? pool->submit_python(self_destroy) : pool->submit(self_destroy);
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool->submit([i] { return i; }));
  go.set();  // (the pool may be gone from here on: do not touch it)
  require_ready(destroyer, "the task that destroys its pool");
  CHILD_CHECK(destroyer.get());
  for (int i = 0; i < 3; ++i) {
    require_ready(queued[i], "a task queued behind the destroyer");
    CHILD_CHECK(queued[i].get() == i);
  }
  const auto end = std::chrono::steady_clock::now() + k_wait;
  while (stops.load() < 1 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHILD_CHECK(stops.load() == 1);
  CHILD_CHECK(os_thread_count_becomes(baseline));
  std::printf("misuse reports %zu\n", static_cast<std::size_t>(pyattach::misuse_count()));
  CHILD_CHECK(pyattach::misuse_count() == 0);
  pyattach::set_misuse_handler(nullptr);
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_detached_and_destroyed_on_own_worker);

TEST(Pool, DetachedPoolDestroyedByItsOwnCppTaskIsNoMisuse) {
  child_options o;
  o.args = {"cpp"};
  const auto r = run_child(uses_pool_detached_and_destroyed_on_own_worker, o);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_EQ(r.err.find("pool_call_from_worker"), std::string::npos) << r.describe();
}

TEST(Pool, DetachedPoolDestroyedByItsOwnPythonTaskIsNoMisuse) {
  child_options o;
  o.args = {"python"};
  const auto r = run_child(uses_pool_detached_and_destroyed_on_own_worker, o);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_EQ(r.err.find("pool_call_from_worker"), std::string::npos) << r.describe();
}

// The interpreter's end still stops a detached, destroyed pool whose worker runs: its queue
// completes with finalizing, and the closer waits for the running Python task and the stop hook
// (attached). It waits for started workers only: a second pool, on demand, with one of its four
// workers started, must not cost it the 2 s bound.
CHILD_CASE(pool_detached_pool_stopped_by_finalization) {
  std::optional<pyattach::interpreter> py;
  py.emplace();
  std::atomic<int> stops{0}, stop_status{-1};
  pool_options o = on_demand("orphan", 1);
  o.stop_hook_python = true;
  o.on_stop = [&](const pyattach::worker_context& c) {
    stop_status = static_cast<int>(c.python);
    ++stops;
  };
  auto pool = std::make_unique<thread_pool>(o);
  thread_pool lazy(on_demand("lazyfin", 4));
  auto one = lazy.submit([] { return 1; });
  require_ready(one, "a task on the on-demand pool");
  CHILD_CHECK(lazy.stats().workers.size() == 1);
  latch started;
  auto blocker = pool->submit_python([&] {
    started.set();
    return PyRun_SimpleString("import time\ntime.sleep(0.3)\n") == 0 ? 7 : -1;
  });
  CHILD_CHECK(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(pool->submit([&] { return ++ran; }));
  pool->detach();
  pool.reset();  // no join: the worker runs on, holding the pool
  const auto t0 = std::chrono::steady_clock::now();
  py.reset();  // Py_FinalizeEx: the gate stops every pool first, detached ones included
  const double destroy_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("interpreter destroyed in %.1f ms; stop hooks %d (status %d)\n", destroy_ms,
              stops.load(), stop_status.load());
  CHILD_CHECK(is_ready(blocker));  // the closer waited for it
  CHILD_CHECK(stops.load() == 1);
  CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  CHILD_CHECK(destroy_ms < 1500);  // the bound was not spent on workers never started
  require_ready(blocker, "the running Python task");
  CHILD_CHECK(blocker.get() == 7);
  std::size_t finalizing = 0;
  for (auto& f : fs) {
    require_ready(f, "a task queued in the detached pool");
    const std::string how = outcome(f);
    if (how != "pool_error:finalizing") std::printf("queued task ended as %s\n", how.c_str());
    finalizing += how == "pool_error:finalizing";
  }
  std::printf("finalizing %zu of %zu, ran %d\n", finalizing, fs.size(), ran.load());
  CHILD_CHECK(finalizing == fs.size());
  CHILD_CHECK(ran.load() == 0);
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_detached_pool_stopped_by_finalization);

TEST(Pool, DetachedPoolIsStillStoppedAndWaitedForByFinalization) {
  const auto r = run_child(uses_pool_detached_pool_stopped_by_finalization);
  EXPECT_CHILD_CLEAN(r);
}

TEST(Pool, OnDemandThrowingStartHookBreaksThePoolLikeShutdownCancel) {
  error_log log;
  std::atomic<int> stops{0};
  pool_options o = on_demand("brittle", 3);
  o.on_error = log.handler();
  o.on_start = [](const pyattach::worker_context& c) {
    if (c.index == 1) throw std::runtime_error("start hook 1 failed");
  };
  o.on_stop = [&](const pyattach::worker_context&) { ++stops; };
  std::optional<thread_pool> pool;
  ASSERT_NO_THROW(pool.emplace(o)) << "an on-demand pool runs no hook in its constructor";
  latch started, release;
  auto blocker = pool->submit([&] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
  ASSERT_TRUE(started.wait(k_wait));
  // Worker 0 is busy: this task starts worker 1, whose hook throws: the task never runs.
  std::atomic<int> ran{0};
  auto victim = pool->submit([&] { return ++ran; });
  require_ready(victim, "a task queued when the start hook threw");
  EXPECT_EQ(outcome(victim), "pool_error:start_hook_failed");
  std::string what;
  try {
    pool->submit([] { return 0; });
    what = "accepted";
  } catch (const pool_error& e) {
    what = std::string(pyattach::to_string(e.code())) + ": " + e.what();
  }
  EXPECT_TRUE(contains(what, "start_hook_failed: ")) << what;
  EXPECT_TRUE(contains(what, "start hook 1 failed")) << what;
  EXPECT_TRUE(contains(what, "brittle-1")) << what;
  // Worker 0 finishes its task, then its stop hook runs; worker 1 never started: no stop hook.
  EXPECT_FALSE(is_ready(blocker));
  release.set();
  run_with_deadline("shutdown of a broken pool", [&] { pool->shutdown(); });
  EXPECT_EQ(blocker.get(), 1);
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(stops.load(), 1);
  EXPECT_EQ(stats_names(*pool), (std::vector<std::string>{"brittle-0", "brittle-1"}));
  EXPECT_EQ(pool->stats().cancelled, 1u);
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].where, "start hook");
  EXPECT_EQ(entries[0].worker_index, 1u);
  EXPECT_EQ(entries[0].error, "exception:start hook 1 failed");
  pool.reset();
}

// ==== batches: Python tasks queued behind each other run under one attach ======================

namespace {

// Makes `pool`'s only worker busy with a C++ task until the returned latch is set, so that what
// is submitted meanwhile queues up behind it.
std::shared_ptr<latch> block_the_worker(thread_pool& pool) {
  auto started = std::make_shared<latch>();
  auto release = std::make_shared<latch>();
  pool.post([started, release] {
    started->set();
    release->wait(k_wait);
  });
  if (!started->wait(k_wait)) fatal_stuck("the blocking C++ task did not start");
  return release;
}

std::uint64_t attaches_of(const thread_pool& pool) {
  std::uint64_t n = 0;
  for (const auto& w : pool.stats().workers) n += w.attaches;
  return n;
}

}  // namespace

TEST(Pool, PythonTasksQueuedBehindEachOtherRunUnderFewAttachesEachWithItsOwnResult) {
  thread_pool pool("batch", 1);
  auto release = block_the_worker(pool);
  constexpr int n = 200;
  std::atomic<int> attached_inside{0};
  std::vector<std::future<long>> fs;
  for (int i = 0; i < n; ++i) {
    fs.push_back(pool.submit_python([i, &attached_inside]() -> long {
      if (pyattach::is_attached() && PyGILState_Check() == 1) ++attached_inside;
      if (i % 10 == 3) {  // every tenth fails: its own future gets the error, the batch goes on
        PyErr_SetString(PyExc_ValueError, "task failed");
        return -1;
      }
      PyObject* v = PyLong_FromLong(i);
      const long r = PyLong_AsLong(v);
      Py_DECREF(v);
      return r;
    }));
  }
  EXPECT_EQ(pool.stats().queued, static_cast<std::size_t>(n));
  release->set();
  for (int i = 0; i < n; ++i) {
    require_ready(fs[i], "batched Python task " + std::to_string(i));
    if (i % 10 == 3) {
      EXPECT_EQ(outcome(fs[i]), "python_error:ValueError:task failed") << i;
    } else {
      EXPECT_EQ(fs[i].get(), i);
    }
  }
  pool.wait();
  EXPECT_EQ(attached_inside.load(), n);
  const auto st = pool.stats();
  EXPECT_EQ(st.completed, static_cast<std::uint64_t>(n - n / 10 + 1));  // + the blocker
  EXPECT_EQ(st.failed, static_cast<std::uint64_t>(n / 10));
  ASSERT_EQ(st.workers.size(), 1u);
  EXPECT_EQ(st.workers[0].tasks, static_cast<std::uint64_t>(n + 1));
  // All 200 were queued when the first ran: one batch would do. The switch interval (5 ms) may
  // split it on a slow (sanitized, loaded) machine; without batching it would be 200.
  EXPECT_GE(st.workers[0].attaches, 1u);
  EXPECT_LE(st.workers[0].attaches, static_cast<std::uint64_t>(n / 10))
      << "queued Python tasks were not batched under one attach";
  // The worker holds no GIL once idle.
  require_other_thread_can_run_python("after a batch of Python tasks", k_prompt);
}

TEST(Pool, WithoutBatchPythonEachPythonTaskAttachesOnItsOwn) {
  pool_options o;
  o.name = "unbatched";
  o.batch_python = false;
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i) {
    pool.post_python([&] {
      if (pyattach::is_attached()) ++ran;
    });
  }
  release->set();
  pool.wait();
  EXPECT_EQ(ran.load(), 20);
  EXPECT_EQ(attaches_of(pool), 20u);
}

TEST(Pool, CppTaskBetweenPythonTasksRunsDetachedAndEndsTheBatch) {
  error_log log;
  pool_options o;
  o.name = "split";
  o.workers = 1;
  std::atomic<int> on_error_attached{0};
  auto forward = log.handler();
  o.on_error = [&, forward](const pyattach::task_failure& f) {
    if (pyattach::is_attached() || PyGILState_Check() == 1) ++on_error_attached;
    forward(f);
  };
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  std::atomic<int> python_ran{0};
  auto python_task = [&] {
    if (pyattach::is_attached()) ++python_ran;
  };
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  std::atomic<bool> cpp_attached{true}, cpp_gil{true};
  auto cpp = pool.submit([&] {
    cpp_attached = pyattach::is_attached();
    cpp_gil = PyGILState_Check() == 1;
  });
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  // A failing post ends its batch too: on_error runs detached, then the next batch starts.
  pool.post_python([] { PyErr_SetString(PyExc_RuntimeError, "posted failure"); });
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  release->set();
  require_ready(cpp, "the C++ task between Python tasks");
  pool.wait();
  EXPECT_FALSE(cpp_attached.load()) << "a C++ task ran inside a batch of Python tasks";
  EXPECT_FALSE(cpp_gil.load()) << "a C++ task ran holding the GIL";
  EXPECT_EQ(python_ran.load(), 15);
  EXPECT_EQ(on_error_attached.load(), 0) << "on_error called attached, inside a batch";
  ASSERT_EQ(log.snapshot().size(), 1u);
  EXPECT_EQ(log.snapshot()[0].error, "python_error:RuntimeError:posted failure");
  // 5 | C++ | 5 + the failing post | 5: at least 3 attaches (more if the switch interval split
  // one), at most one per Python task.
  const std::uint64_t attaches = attaches_of(pool);
  EXPECT_GE(attaches, 3u);
  EXPECT_LE(attaches, 16u);
}

// A thread waiting for the GIL while the worker has a long queue of Python tasks that never run
// bytecode (so CPython's own drop request is never honoured inside them): the batch's bound (the
// switch interval) must hand it the GIL. Without the bound it would wait for the whole queue.
CHILD_CASE(pool_batch_lets_a_waiting_thread_in) {
  pyattach::interpreter py;
  double interval_s = 0;
  {
    pyattach::attach_scope gil;
    PyObject* sys = PyImport_ImportModule("sys");
    PyObject* v = sys ? PyObject_CallMethod(sys, "getswitchinterval", nullptr) : nullptr;
    interval_s = v ? PyFloat_AsDouble(v) : 0;
    Py_XDECREF(v);
    Py_XDECREF(sys);
  }
  CHILD_CHECK(interval_s > 0);
  pool_options o;
  o.name = "greedy";
  o.on_error = [](const pyattach::task_failure&) {};  // the cancelled rest of the queue
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  // 12,000 tasks of 250 us each, attached, no bytecode: 3 s of GIL if nobody lets go.
  constexpr int n = 12000;
  const auto task_time = std::chrono::microseconds(250);
  std::atomic<int> ran{0};
  for (int i = 0; i < n; ++i) {
    pool.post_python([&ran, task_time] {
      const auto end = std::chrono::steady_clock::now() + task_time;
      while (std::chrono::steady_clock::now() < end) {
      }
      ran.fetch_add(1, std::memory_order_relaxed);
    });
  }
  release->set();
  while (ran.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::vector<double> waits_ms;
  for (int i = 0; i < 10; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    {
      pyattach::attach_scope gil;
      waits_ms.push_back(std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - t0).count());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int ran_by_then = ran.load();
  pool.shutdown(shutdown_mode::cancel);
  double worst = 0;
  std::printf("switch interval %.3f ms; waits (ms):", interval_s * 1e3);
  for (double w : waits_ms) {
    std::printf(" %.2f", w);
    worst = std::max(worst, w);
  }
  std::printf("; tasks run meanwhile %d of %d\n", ran_by_then, n);
  // Within a few switch intervals when it works (5 ms + one 250 us task); the queue's 3 s when
  // the batch ignores the bound. 500 ms: 100 intervals, for a loaded or sanitized machine.
  CHILD_CHECK(worst < 500.0);
  CHILD_CHECK(ran_by_then < n);  // the waits overlapped the queue (else they prove nothing)
  std::printf("done\n");
  return child_exit_code();
}
USES_CHILD_CASE(pool_batch_lets_a_waiting_thread_in);

TEST(Pool, BatchOfPythonTasksLetsAThreadWaitingForTheGilInWithinTheSwitchInterval) {
  const auto r = run_child(uses_pool_batch_lets_a_waiting_thread_in);
  EXPECT_CHILD_CLEAN(r);
  std::printf("%s", r.out.c_str());
}

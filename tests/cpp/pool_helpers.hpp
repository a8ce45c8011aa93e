// tests/cpp/pool_helpers.hpp — what the thread_pool tests (test_pool_*.cpp) share: deadlines,
// outcomes of futures and calls, thread counts and names from /proc, running a task on every
// worker, a held worker, pool options, a Python globals dict, and on_error / hook recorders.
#pragma once

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
#include <functional>
#include <future>
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

namespace pool_test {

using namespace testutil;
using pyattach::full_policy;
using pyattach::pool_errc;
using pyattach::pool_error;
using pyattach::pool_options;
using pyattach::python_error;
using pyattach::shutdown_mode;
using pyattach::thread_pool;


// Deadlines for things that take milliseconds when they work (generous: Debug, 2 cores, TSan).
constexpr std::chrono::milliseconds k_wait = k_sanitized ? 60s : 20s;
// "Promptly": what a short Python task on an idle pool must take at most.
constexpr std::chrono::milliseconds k_prompt = k_sanitized ? 5s : 2s;

// How an exception_ptr / a ready future ended, as text for comparisons and messages:
// "value", "pool_error:<code>", "python_error:<type>:<message>", "exception:<what>", "unknown".
inline std::string describe_error(std::exception_ptr e) {
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

// How a call ended: `if_returned` ("returned" unless told), or describe_error's text
// ("pool_error:<code>", ...).
template <class F>
std::string call_outcome(F&& fn, const char* if_returned = "returned") {
  try {
    fn();
    return if_returned;
  } catch (...) {
    return describe_error(std::current_exception());
  }
}

// Polls cond() every millisecond until it holds or `timeout` passes; cond()'s last value.
template <class F>
bool poll_until(F cond, std::chrono::milliseconds timeout = k_wait) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!cond() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return cond();
}

// Milliseconds from t0 to now.
inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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
inline void settle(thread_pool& pool) {
  run_with_deadline("wait() before reading exceptions", [&] { pool.wait(); });
}

// The kernel's name of one of this process's threads ("" if it is gone).
inline std::string thread_comm(std::uint64_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string s;
  std::getline(f, s);
  return s;
}

inline std::size_t os_thread_count() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
    closedir(d);
  }
  return n;
}

// Polls until the process has `expected` threads (a joined thread may linger in /proc briefly).
inline bool os_thread_count_becomes(std::size_t expected,
                                    std::chrono::milliseconds timeout = 5s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (os_thread_count() != expected) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The thread count once it has stopped changing (the same value 10 polls in a row, 2 ms apart;
// at most 1 s): a baseline taken right after a join may still count the joined thread.
inline std::size_t settled_os_thread_count() {
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

// The settled thread count before a test starts threads of its own. A first thread is started
// and joined beforehand: TSan starts its background thread at the first pthread_create, and it
// must be in the baseline, not counted as a worker left behind.
inline std::size_t baseline_os_thread_count() {
  std::thread([] {}).join();
  return settled_os_thread_count();
}

inline bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

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

// Runs fn() once on EVERY worker of `pool`: pool.size() tasks (Python tasks, attached, if
// `python`) that meet at a rendezvous after fn (a Python task detached, GIL released), so no
// worker can take two of them. fn's results.
template <class F>
auto on_each_worker(thread_pool& pool, bool python, F fn) -> std::vector<decltype(fn())> {
  using R = decltype(fn());
  auto meet = std::make_shared<rendezvous>(pool.size());
  auto task = [meet, fn, python]() mutable {
    R r = fn();
    std::optional<pyattach::detach_scope> nogil;
    if (python) nogil.emplace();
    const bool met = meet->arrive_and_wait();
    return std::make_pair(std::move(r), met);
  };
  std::vector<std::future<std::pair<R, bool>>> fs;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    fs.push_back(python ? pool.submit_python(task) : pool.submit(task));
  }
  std::vector<R> out;
  for (auto& f : fs) {
    require_ready(f, std::string(python ? "python" : "cpp") + "_on_each_worker on " + pool.name());
    auto p = f.get();
    EXPECT_TRUE(p.second) << "the workers of " << pool.name() << " did not all meet";
    out.push_back(std::move(p.first));
  }
  return out;
}
template <class F>
auto python_on_each_worker(thread_pool& pool, F fn) {
  return on_each_worker(pool, true, std::move(fn));
}
// The same with C++ tasks (never attached).
template <class F>
auto cpp_on_each_worker(thread_pool& pool, F fn) {
  return on_each_worker(pool, false, std::move(fn));
}

// worker os_tid -> its stats entry.
inline std::map<std::uint64_t, pyattach::worker_stats> workers_by_tid(const thread_pool& pool) {
  std::map<std::uint64_t, pyattach::worker_stats> m;
  for (const auto& w : pool.stats().workers) m.emplace(w.os_tid, w);
  return m;
}

// A globals dict with `threading` imported and `code` run in it. PRECONDITION: not attached.
inline PyObject* make_globals(const std::string& code = "") {
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  py_exec("import threading, sys, time\n" + code, g);
  return g;
}
inline void drop(PyObject* o) {
  pyattach::attach_scope py;
  Py_XDECREF(o);
}

// A list that several threads append to (hooks and on_error run on the workers).
template <class T>
class shared_list {
 public:
  void add(T x) {
    std::lock_guard<std::mutex> g(m_);
    items_.push_back(std::move(x));
  }
  std::vector<T> snapshot() const {
    std::lock_guard<std::mutex> g(m_);
    return items_;
  }
  template <class Pred>
  std::size_t count_if(Pred pred) const {
    std::lock_guard<std::mutex> g(m_);
    return static_cast<std::size_t>(std::count_if(items_.begin(), items_.end(), pred));
  }

 private:
  mutable std::mutex m_;
  std::vector<T> items_;
};

// One on_error call.
struct error_entry {
  std::string pool_name;
  std::size_t worker_index;
  std::string where;
  std::string error;  // describe_error(failure.error)
  std::string what;
  std::string expected_what;  // what() of the rethrown error, or "unknown exception"
  std::uint64_t tid;
};

// Records every on_error call (called on the workers; must not throw).
struct error_log : shared_list<error_entry> {
  std::function<void(const pyattach::task_failure&)> handler() {
    return [this](const pyattach::task_failure& f) {
      error_entry e{f.pool_name, f.worker_index, f.where ? f.where : "(null)", describe_error(f.error),
                    f.what, "", os_tid()};
      try {
        std::rethrow_exception(f.error);
      } catch (const std::exception& x) {
        e.expected_what = x.what();
      } catch (...) {
        e.expected_what = "unknown exception";
      }
      add(std::move(e));
    };
  }
  std::size_t count(const std::string& error) const {
    return count_if([&](const error_entry& e) { return e.error == error; });
  }
};

// ---- pool options ----
inline pool_options named_options(const std::string& name, std::size_t workers) {
  pool_options o;
  o.name = name;
  o.workers = workers;
  return o;
}
// The same, with every on_error call recorded in `log`.
inline pool_options logged_options(const std::string& name, std::size_t workers, error_log& log) {
  pool_options o = named_options(name, workers);
  o.on_error = log.handler();
  return o;
}
// A hook that counts its calls in `n` (on_start, on_stop).
inline std::function<void(const pyattach::worker_context&)> counting_hook(std::atomic<int>& n) {
  return [&n](const pyattach::worker_context&) { ++n; };
}

inline std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// Holds one of pool's workers busy so that the tasks submitted next queue up: a C++ task that
// sets `started` and waits for `release` (at most k_wait). Its future gives 1 if it was released
// in time, 0 if not. The caller waits for `started` before it relies on the worker being taken.
inline std::future<int> hold_a_worker(thread_pool& pool, latch& started, latch& release) {
  return pool.submit([&started, &release] {
    started.set();
    return release.wait(k_wait) ? 1 : 0;
  });
}

// The same, keeping the latches and the future together: `ASSERT_TRUE(held.hold(pool))`, then
// `held.release.set()`; `held.blocker` gives 1 if the task was released in time.
struct held_worker {
  latch started, release;
  std::future<int> blocker;
  // True once the task runs (within k_wait).
  bool hold(thread_pool& pool) {
    blocker = hold_a_worker(pool, started, release);
    return started.wait(k_wait);
  }
};

// The set-up of tests that queue tasks behind a running one and then shut down, stop or cancel:
// a one-worker pool named by the test, reporting to `log`, its worker held (held_worker) so that
// what the test submits queues up; `ran` counts the queued tasks that ran, `fs` keeps futures.
class PoolWithHeldWorker : public ::testing::Test {
 protected:
  // Makes the pool and holds its worker: ASSERT_NO_FATAL_FAILURE(start("name")).
  void start(const std::string& name) {
    pool.emplace(logged_options(name, 1, log));
    ASSERT_TRUE(held.hold(*pool));
  }

  error_log log;
  std::optional<thread_pool> pool;
  held_worker held;
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
};

// Tries each way to hand the pool a task (submit, submit_python, post, post_python): which
// way, and how the call ended ("accepted", or describe_error's text: "pool_error:<code>", ...).
inline std::vector<std::pair<std::string, std::string>> try_each_submit(thread_pool& pool) {
  return {{"submit", call_outcome([&] { pool.submit([] { return 0; }); }, "accepted")},
          {"submit_python", call_outcome([&] { pool.submit_python([] { return 0; }); }, "accepted")},
          {"post", call_outcome([&] { pool.post([] {}); }, "accepted")},
          {"post_python", call_outcome([&] { pool.post_python([] {}); }, "accepted")}};
}

// What a task throws when a test needs an exception that is not a std::exception.
struct custom_failure {
  int code;
};

// ---- names (test_pool_names_hooks.cpp, test_pool_on_demand.cpp) ----
struct name_sample {
  std::uint64_t tid = 0;
  std::string comm;         // /proc/self/task/<tid>/comm, read on the worker
  std::string python_name;  // threading.current_thread().name
  unsigned long ident = 0;
};

inline name_sample name_task(PyObject* g) {
  name_sample s;
  s.tid = os_tid();
  s.comm = thread_comm(s.tid);
  s.python_name = py_eval_str("threading.current_thread().name", g);
  s.ident = PyThread_get_thread_ident();
  return s;
}

inline std::vector<std::string> enumerate_names(PyObject* g) {
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

// Expects every name in `expected` among threading.enumerate()'s thread names.
inline void expect_in_threading_enumerate(PyObject* g, const std::vector<std::string>& expected) {
  const auto names = enumerate_names(g);
  for (const auto& n : expected) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end())
        << n << " missing from threading.enumerate(): " << join(names);
  }
}

// worker_context::name by worker index, as an on_start hook (hook()) saw it.
class start_hook_names {
 public:
  std::function<void(const pyattach::worker_context&)> hook() {
    return [this](const pyattach::worker_context& c) {
      std::lock_guard<std::mutex> lock(m_);
      names_[c.index] = c.name;
    };
  }
  std::string of(std::size_t index) {
    std::lock_guard<std::mutex> lock(m_);
    const auto it = names_.find(index);
    return it == names_.end() ? "(no start hook)" : it->second;
  }

 private:
  std::mutex m_;
  std::map<std::size_t, std::string> names_;
};

// ---- hooks (test_pool_names_hooks.cpp, test_pool_on_demand.cpp) ----
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

struct event_log : shared_list<hook_event> {
  std::size_t count(const std::string& kind) const {
    return count_if([&](const hook_event& e) { return e.kind == kind; });
  }
};

inline hook_event hook_record(const char* kind, const pyattach::worker_context& c) {
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

// What a task records: kind "task", on this thread.
inline hook_event task_event() {
  hook_event e;
  e.kind = "task";
  e.tid = os_tid();
  return e;
}

// Events grouped by the thread they ran on, in order.
inline std::map<std::uint64_t, std::vector<hook_event>> events_by_tid(const std::vector<hook_event>& events) {
  std::map<std::uint64_t, std::vector<hook_event>> by_tid;
  for (const auto& e : events) by_tid[e.tid].push_back(e);
  return by_tid;
}

// ---- misuse reports (test_pool_shutdown.cpp, test_pool_on_demand.cpp) ----
inline shared_list<pyattach::misuse_report> g_pool_reports;
inline void record_pool_report(const pyattach::misuse_report& r) noexcept { g_pool_reports.add(r); }

}  // namespace pool_test

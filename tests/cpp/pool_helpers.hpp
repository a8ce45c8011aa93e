// tests/cpp/pool_helpers.hpp — what the thread_pool tests (test_pool_*.cpp) share: deadlines,
// outcomes of futures, thread counts and names from /proc, running a task on every worker, a
// Python globals dict, an on_error recorder, and the child-case check.
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

// ---- misuse reports (test_pool_shutdown.cpp, test_pool_on_demand.cpp) ----
inline std::mutex g_pool_reports_mutex;
inline std::vector<pyattach::misuse_report> g_pool_reports;
inline void record_pool_report(const pyattach::misuse_report& r) noexcept {
  std::lock_guard<std::mutex> lock(g_pool_reports_mutex);
  g_pool_reports.push_back(r);
}

}  // namespace pool_test

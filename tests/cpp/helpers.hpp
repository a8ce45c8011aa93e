// tests/cpp/helpers.hpp — small Python and threading helpers shared by the tests and child cases.
#pragma once

#include <pyattach/pyattach.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "child_process.hpp"

// ---- which sanitizer this test binary was built with (scripts/test.sh's sanitizer legs) ----
#if defined(__SANITIZE_THREAD__)
#define PYATTACH_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PYATTACH_TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define PYATTACH_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYATTACH_TEST_ASAN 1
#endif
#endif

namespace testutil {

using namespace std::chrono_literals;

#ifdef PYATTACH_TEST_TSAN
inline constexpr bool k_tsan = true;
#else
inline constexpr bool k_tsan = false;
#endif
#ifdef PYATTACH_TEST_ASAN
inline constexpr bool k_asan = true;
#else
inline constexpr bool k_asan = false;
#endif
// Under either, every child starts and runs several times slower and memory figures are not ours.
inline constexpr bool k_sanitized = k_tsan || k_asan;

// The default size of a test: `normal`, or `sanitized` under ASan/TSan.
constexpr long size_default(long normal, long sanitized) { return k_sanitized ? sanitized : normal; }
// A positive integer from the environment, or `fallback`.
long env_long(const char* name, long fallback);

// ---- child cases that print one "RESULT key=value ..." line (child_process.hpp) ----
// The value of `key=` on the child's last "RESULT ..." line, or -1 if absent (so that a child
// that died before printing it can never pass as "zero problems").
long result_field(const std::string& out, const std::string& key);
// A child that ran to the end without a failed check and printed its RESULT line.
void expect_clean(const child_result& r);
// Runs a case that ends with child_done(), expects it clean (EXPECT_CHILD_CLEAN) and its stdout to
// contain `text`; returns the result for further checks.
child_result expect_child_prints(const child_case_use& use, const std::string& text,
                                 const child_options& options = {});
// CPython's debug allocator hooks, in every build: freed memory (thread states included) is
// overwritten with 0xDD, so a touch of a state that Py_FinalizeEx freed crashes the child instead
// of passing by luck.
extern const std::vector<std::pair<std::string, std::string>> k_debug_allocator;

// ---- Python (PRECONDITION for all: the calling thread is attached) ----
PyObject* new_globals();                                   // a fresh dict with __builtins__
bool py_exec(const std::string& code, PyObject* globals);  // prints the error, returns false
PyObject* py_eval(const std::string& expr, PyObject* globals);  // new ref, or nullptr
long py_eval_long(const std::string& expr, PyObject* globals, long fallback = -999999);
bool py_eval_bool(const std::string& expr, PyObject* globals);  // false on error too
std::string py_eval_str(const std::string& expr, PyObject* globals);  // "<error>" on error

// An embedder that called Py_InitializeEx itself and let other threads run (main_state is what
// PyEval_SaveThread returned): re-attaches the main thread and finalizes. True if Py_FinalizeEx
// returned 0.
bool restore_and_finalize(PyThreadState* main_state);

std::uint64_t os_tid();
std::size_t thread_states();  // count_thread_states(), or SIZE_MAX if refused

// The interpreter's thread-state count is read from the calling thread, which attaches for it.

// Another native thread (never used before) attaches, runs a line of Python and leaves, within
// `timeout`. False on timeout (the helper thread is then left behind, blocked).
bool other_thread_can_run_python(std::chrono::milliseconds timeout = 5s);

// Like other_thread_can_run_python, but a timeout in the test process means some thread kept
// the GIL: print why and end the process at once instead of hanging in teardown.
void require_other_thread_can_run_python(const char* context, std::chrono::milliseconds timeout = 5s);

// Prints a message and ends the process without cleanup (a thread is stuck on the GIL).
[[noreturn]] void fatal_stuck(const std::string& why);

// A native thread that runs posted functions one at a time, synchronously for the caller.
// Useful to interleave steps of a worker thread with checks on the test thread.
class worker {
 public:
  explicit worker(std::string name = "worker");
  ~worker();  // joins (the thread runs its exit clean-up before join returns)
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  // Runs fn on the worker and waits for it; a timeout is fatal (see fatal_stuck).
  void run(std::function<void()> fn, std::chrono::milliseconds timeout = 10s);
  // Posts fn without waiting; wait_idle() waits for everything posted.
  void post(std::function<void()> fn);
  void wait_idle(std::chrono::milliseconds timeout = 10s);
  std::uint64_t tid() const { return tid_; }
  void join();

 private:
  void loop();
  std::string name_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool busy_ = false;
  bool stop_ = false;
  std::uint64_t tid_ = 0;
  std::thread t_;
};

// A one-shot flag between threads.
class latch {
 public:
  void set() {
    std::lock_guard<std::mutex> g(m_);
    set_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> g(m_);
    return cv_.wait_for(g, timeout, [&] { return set_; });
  }
  bool is_set() {
    std::lock_guard<std::mutex> g(m_);
    return set_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool set_ = false;
};

}  // namespace testutil

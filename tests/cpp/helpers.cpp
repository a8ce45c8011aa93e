// tests/cpp/helpers.cpp — see helpers.hpp.
#include "helpers.hpp"

#include <gtest/gtest.h>

#include "child_process.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <limits>
#include <memory>

namespace testutil {

PyObject* new_globals() {
  PyObject* g = PyDict_New();
  if (g != nullptr) PyDict_SetItemString(g, "__builtins__", PyEval_GetBuiltins());
  return g;
}

bool py_exec(const std::string& code, PyObject* globals) {
  PyObject* r = PyRun_String(code.c_str(), Py_file_input, globals, globals);
  if (r == nullptr) {
    std::fprintf(stderr, "python error in:\n%s\n", code.c_str());
    PyErr_Print();
    return false;
  }
  Py_DECREF(r);
  return true;
}

PyObject* py_eval(const std::string& expr, PyObject* globals) {
  PyObject* r = PyRun_String(expr.c_str(), Py_eval_input, globals, globals);
  if (r == nullptr) {
    std::fprintf(stderr, "python error in: %s\n", expr.c_str());
    PyErr_Print();
  }
  return r;
}

long py_eval_long(const std::string& expr, PyObject* globals, long fallback) {
  PyObject* r = py_eval(expr, globals);
  if (r == nullptr) return fallback;
  long v = PyLong_AsLong(r);
  Py_DECREF(r);
  if (PyErr_Occurred() != nullptr) {
    PyErr_Print();
    return fallback;
  }
  return v;
}

bool py_eval_bool(const std::string& expr, PyObject* globals) {
  PyObject* r = py_eval(expr, globals);
  if (r == nullptr) return false;
  const int v = PyObject_IsTrue(r);
  Py_DECREF(r);
  if (v < 0) PyErr_Print();
  return v == 1;
}

std::string py_eval_str(const std::string& expr, PyObject* globals) {
  PyObject* r = py_eval(expr, globals);
  if (r == nullptr) return "<error>";
  PyObject* s = PyObject_Str(r);
  Py_DECREF(r);
  const char* utf8 = s ? PyUnicode_AsUTF8(s) : nullptr;
  std::string out = utf8 ? utf8 : "<error>";
  Py_XDECREF(s);
  PyErr_Clear();
  return out;
}

std::uint64_t os_tid() { return static_cast<std::uint64_t>(::syscall(SYS_gettid)); }

std::size_t thread_states() {
  auto n = pyattach::count_thread_states();
  return n ? *n : std::numeric_limits<std::size_t>::max();
}

bool other_thread_can_run_python(std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<bool>>();
  auto fut = done->get_future();
  std::thread t([done] {
    bool ok = false;
    {
      pyattach::attach_scope py(pyattach::nothrow);
      if (py) ok = PyRun_SimpleString("_pyattach_tests_probe = sum(range(10))\n") == 0;
    }
    done->set_value(ok);
  });
  if (fut.wait_for(timeout) != std::future_status::ready) {
    t.detach();  // stuck on the GIL: leave it behind
    return false;
  }
  t.join();  // let its exit clean-up (destroying its thread state) finish before counting
  return fut.get();
}

void fatal_stuck(const std::string& why) {
  std::fprintf(stderr, "FATAL (test process): %s; a thread is stuck on the GIL, exiting now\n",
               why.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  std::_Exit(3);
}

void require_other_thread_can_run_python(const char* context, std::chrono::milliseconds timeout) {
  if (!other_thread_can_run_python(timeout)) {
    fatal_stuck(std::string("another thread could not run Python within ") +
                std::to_string(timeout.count()) + " ms: " + context);
  }
}

worker::worker(std::string name) : name_(std::move(name)) {
  latch started;
  t_ = std::thread([this, &started] {
    tid_ = os_tid();
    started.set();
    loop();
  });
  started.wait();
}

worker::~worker() { join(); }

void worker::join() {
  {
    std::lock_guard<std::mutex> g(m_);
    stop_ = true;
    cv_.notify_all();
  }
  if (t_.joinable()) t_.join();
}

void worker::loop() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> g(m_);
      cv_.wait(g, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;
      fn = std::move(q_.front());
      q_.pop_front();
      busy_ = true;
    }
    fn();
    {
      std::lock_guard<std::mutex> g(m_);
      busy_ = false;
      cv_.notify_all();
    }
  }
}

void worker::post(std::function<void()> fn) {
  std::lock_guard<std::mutex> g(m_);
  q_.push_back(std::move(fn));
  cv_.notify_all();
}

void worker::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> g(m_);
  if (!cv_.wait_for(g, timeout, [&] { return q_.empty() && !busy_; })) {
    g.unlock();
    fatal_stuck("worker '" + name_ + "' did not finish its task within " +
                std::to_string(timeout.count()) + " ms");
  }
}

void worker::run(std::function<void()> fn, std::chrono::milliseconds timeout) {
  post(std::move(fn));
  wait_idle(timeout);
}

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (end != nullptr && *end == '\0' && n > 0) ? n : fallback;
}

long result_field(const std::string& out, const std::string& key) {
  const std::size_t line = out.rfind("RESULT ");
  if (line == std::string::npos) return -1;
  const std::size_t end = out.find('\n', line);
  const std::string text = out.substr(line, end == std::string::npos ? std::string::npos : end - line);
  const std::size_t at = text.find(" " + key + "=");
  if (at == std::string::npos) return -1;
  return std::atol(text.c_str() + at + key.size() + 2);
}

void expect_clean(const child_result& r) {
  EXPECT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_EQ(r.out.find("CHILD-FAIL"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("RESULT "), std::string::npos) << r.describe();
}

child_result expect_child_prints(const child_case_use& use, const std::string& text,
                                 const child_options& options) {
  child_result r = run_child(use, options);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_NE(r.out.find(text), std::string::npos) << r.describe();
  return r;
}

bool restore_and_finalize(PyThreadState* main_state) {
  PyEval_RestoreThread(main_state);
  return Py_FinalizeEx() == 0;
}

const std::vector<std::pair<std::string, std::string>> k_debug_allocator = {
    {"PYTHONMALLOC", "malloc_debug"}};

}  // namespace testutil

// tests/cpp/test_persistence.cpp — one persistent thread state per native thread.
//
// What is checked (each fails if the thread state were made per scope, as PyGILState_Ensure /
// Release does, or if exit clean-up were removed):
// - threading.local values, a trace function, threading.current_thread() and the thread state
//   survive 1,000 scopes on each of 8 native threads;
// - the interpreter's thread-state count returns to its baseline after 1,000 short-lived threads,
//   and no stale threading._DummyThread entries are left behind.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace testutil;

namespace {

constexpr int k_threads = 8;
constexpr int k_scopes = 1000;

std::array<std::atomic<long>, k_threads> g_c_trace_calls{};

// A C-level trace function (PyEval_SetTrace); obj is a PyLong holding the thread's index.
int c_tracer(PyObject* obj, PyFrameObject*, int what, PyObject*) {
  if (what == PyTrace_CALL) {
    const long i = PyLong_AsLong(obj);
    if (i >= 0 && i < k_threads) g_c_trace_calls[static_cast<size_t>(i)].fetch_add(1);
  }
  return 0;
}

struct thread_outcome {
  int scopes_checked = 0;
  int failures = 0;
  std::string first_failure;
  void fail(int k, const std::string& what) {
    if (failures++ == 0) first_failure = "scope " + std::to_string(k) + ": " + what;
  }
};

void persistent_worker(int index, thread_outcome* out) {
  const bool c_trace = index % 2 == 0;  // even threads: PyEval_SetTrace; odd: sys.settrace
  PyObject* globals = nullptr;
  PyObject* code = nullptr;
  PyObject* me = nullptr;
  PyThreadState* state = nullptr;
  long ident = 0;
  {
    pyattach::attach_scope py;
    if (!py.made_current()) out->fail(-1, "first scope did not make the state current");
    state = PyThreadState_Get();
    globals = new_globals();
    PyDict_SetItemString(globals, "INDEX", PyLong_FromLong(index));  // leaks one small int: fine
    py_exec(
        "import sys, threading\n"
        "tl = threading.local()\n"
        "tl.value = INDEX\n"
        "tl.n = 0\n"
        "def work():\n"
        "    return 1\n"
        "calls = [0]\n"
        "def tracer(frame, event, arg):\n"
        "    if event == 'call':\n"
        "        calls[0] += 1\n"
        "    return None\n"
        "me = threading.current_thread()\n"
        "ident = threading.get_ident()\n",
        globals);
    if (c_trace) {
      PyObject* obj = PyLong_FromLong(index);
      PyEval_SetTrace(c_tracer, obj);  // keeps its own reference
      Py_DECREF(obj);
    } else {
      py_exec("sys.settrace(tracer)\n", globals);
    }
    me = PyDict_GetItemString(globals, "me");
    Py_XINCREF(me);
    ident = py_eval_long("ident", globals);
    code = Py_CompileString(
        "tl.n += 1\n"
        "work()\n"
        "r_value = tl.value\n"
        "r_n = tl.n\n"
        "r_same_thread = threading.current_thread() is me\n"
        "r_ident = threading.get_ident()\n"
        "r_trace = sys.gettrace()\n"
        "r_trace_ok = (r_trace is tracer) if INDEX % 2 else (r_trace == INDEX)\n"
        "r_calls = calls[0]\n",
        "<persistence>", Py_file_input);
    if (code == nullptr) PyErr_Print();
  }
  if (code == nullptr) {
    out->fail(-1, "could not compile");
    return;
  }

  for (int k = 0; k < k_scopes; ++k) {
    pyattach::attach_scope py;
    if (!py.made_current()) out->fail(k, "scope did not make the state current");
    if (PyThreadState_Get() != state) out->fail(k, "a different PyThreadState is attached");
    PyObject* r = PyEval_EvalCode(code, globals, globals);
    if (r == nullptr) {
      PyErr_Print();
      out->fail(k, "python raised (threading.local attribute lost?)");
      continue;
    }
    Py_DECREF(r);
    const long value = py_eval_long("r_value", globals);
    const long n = py_eval_long("r_n", globals);
    const bool same = py_eval_bool("r_same_thread", globals);
    const long id = py_eval_long("r_ident", globals);
    const bool trace_ok = py_eval_bool("r_trace_ok", globals);
    const long calls = c_trace ? g_c_trace_calls[static_cast<size_t>(index)].load()
                               : py_eval_long("r_calls", globals);
    if (value != index) out->fail(k, "tl.value is " + std::to_string(value));
    if (n != k + 1) out->fail(k, "tl.n is " + std::to_string(n) + ", expected " + std::to_string(k + 1));
    if (!same) out->fail(k, "threading.current_thread() is a different object");
    if (id != ident) out->fail(k, "threading.get_ident() changed");
    if (!trace_ok) out->fail(k, "sys.gettrace() lost the trace function: " + py_eval_str("r_trace", globals));
    if (calls < k + 1) out->fail(k, "trace function saw " + std::to_string(calls) + " calls");
    ++out->scopes_checked;
  }

  {
    pyattach::attach_scope py;
    PyEval_SetTrace(nullptr, nullptr);
    Py_XDECREF(me);
    Py_DECREF(code);
    Py_DECREF(globals);
  }
}

}  // namespace

TEST(Persistence, ThreadLocalTraceAndIdentitySurvive1000ScopesOn8Threads) {
  for (auto& c : g_c_trace_calls) c = 0;
  const std::size_t baseline = thread_states();
  std::vector<thread_outcome> outcomes(k_threads);
  std::vector<std::thread> threads;
  for (int i = 0; i < k_threads; ++i) threads.emplace_back(persistent_worker, i, &outcomes[i]);
  for (auto& t : threads) t.join();
  for (int i = 0; i < k_threads; ++i) {
    EXPECT_EQ(outcomes[i].scopes_checked, k_scopes) << "thread " << i;
    EXPECT_EQ(outcomes[i].failures, 0) << "thread " << i << " first failure: " << outcomes[i].first_failure;
  }
  EXPECT_EQ(thread_states(), baseline) << "worker thread states were not destroyed at thread exit";
}

TEST(Persistence, ThreadStateCountReturnsToBaselineAfter1000ShortLivedThreads) {
  const std::size_t baseline = thread_states();
  std::atomic<int> attached{0};
  for (int batch = 0; batch < 1000 / 8; ++batch) {
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&] {
        pyattach::attach_scope py;
        if (PyThreadState_Get() != nullptr) attached.fetch_add(1);
      });
    }
    for (auto& t : threads) t.join();
  }
  EXPECT_EQ(attached.load(), 1000);
  EXPECT_EQ(thread_states(), baseline);
}

TEST(Persistence, NoStaleDummyThreadsAfter1000ThreadsCalledCurrentThread) {
  const std::size_t baseline = thread_states();
  std::size_t enumerate_baseline = 0;
  {
    pyattach::attach_scope py;
    PyObject* g = new_globals();
    py_exec("import threading\n", g);
    enumerate_baseline = static_cast<std::size_t>(py_eval_long("len(threading.enumerate())", g));
    Py_DECREF(g);
  }
  std::atomic<int> fresh{0};
  std::atomic<int> stale{0};
  std::string first_stale;
  std::mutex m;
  for (int batch = 0; batch < 1000 / 8; ++batch) {
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&, batch, i] {
        pyattach::attach_scope py;
        PyObject* g = new_globals();
        py_exec("import threading\nt = threading.current_thread()\n", g);
        // A fresh _DummyThread is named "Dummy-N". A stale entry left by an earlier thread with
        // the same ident (pthread idents are reused) still carries the name set below.
        const std::string name = py_eval_str("t.name", g);
        if (name.rfind("Dummy-", 0) == 0) {
          fresh.fetch_add(1);
        } else {
          stale.fetch_add(1);
          std::lock_guard<std::mutex> lock(m);
          if (first_stale.empty()) first_stale = name;
        }
        py_exec("t.name = 'short-lived-" + std::to_string(batch * 8 + i) + "'\n", g);
        Py_DECREF(g);
      });
    }
    for (auto& t : threads) t.join();
    if (batch % 25 == 0) {
      pyattach::attach_scope py;
      PyObject* g = new_globals();
      py_exec("import threading\n", g);
      EXPECT_EQ(py_eval_long("len(threading.enumerate())", g), static_cast<long>(enumerate_baseline))
          << "threading.enumerate() grows: " << py_eval_str("threading.enumerate()", g);
      Py_DECREF(g);
    }
  }
  EXPECT_EQ(fresh.load(), 1000);
  EXPECT_EQ(stale.load(), 0) << "a thread found a stale threading entry named " << first_stale;
  EXPECT_EQ(thread_states(), baseline);
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  py_exec("import threading\n", g);
  EXPECT_EQ(py_eval_long("len(threading.enumerate())", g), static_cast<long>(enumerate_baseline))
      << py_eval_str("threading.enumerate()", g);
  EXPECT_EQ(py_eval_long("sum(isinstance(t, threading._DummyThread) for t in threading.enumerate())", g), 0)
      << py_eval_str("threading.enumerate()", g);
  Py_DECREF(g);
}

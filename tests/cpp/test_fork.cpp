// tests/cpp/test_fork.cpp — fork() while native threads have pyattach states (fork.hpp).
//
// Each case forks inside a child process of the test binary (child_process.hpp), so the parent
// test only sees how that child ended and what both processes printed. The forked grandchild
// checks that the other threads' records are gone, that new threads attach and keep their
// threading.local, and that the interpreter (the embedding helper) finalizes cleanly there.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;
using namespace std::chrono_literals;

namespace {

std::size_t pyattach_threads_in_report() {
  std::size_t n = 0;
  for (const auto& t : pyattach::make_thread_report().threads) n += t.known_to_pyattach ? 1 : 0;
  return n;
}

// Threads that exist in the parent at fork time: 3 idle ones that attached once (persistent
// states, a threading.local each) and 1 that attaches and runs Python in a loop, so that the
// GIL is contended at the moment of the fork.
struct parent_threads {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;

  parent_threads() {
    for (int i = 0; i < 3; ++i) {
      threads.emplace_back([this, i] {
        {
          pyattach::attach_scope py;
          PyRun_SimpleString(("import threading\n_tl_parent_" + std::to_string(i) +
                              " = threading.local()\n").c_str());
        }
        ++ready;
        while (!stop) std::this_thread::sleep_for(1ms);
      });
    }
    threads.emplace_back([this] {
      bool counted = false;
      while (!stop) {
        pyattach::attach_scope py;
        PyRun_SimpleString("sum(range(2000))\n");
        if (!counted) ++ready, counted = true;
      }
    });
    while (ready < 4) std::this_thread::sleep_for(1ms);
  }
  ~parent_threads() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

// Runs in the forked grandchild; returns its exit code. `py` is the embedding helper.
int check_in_forked_child(std::optional<pyattach::interpreter>& py) {
  // Only this thread is left; the other threads' records were dropped without touching them.
  CHILD_CHECK(pyattach_threads_in_report() == 1);
  CHILD_CHECK(thread_states() == 1);  // PyOS_AfterFork_Child deleted the others' states
  // New threads attach, and each keeps its own state and threading.local across scopes.
  std::vector<std::thread> fresh;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    fresh.emplace_back([&ok, i] {
      const std::string name = "_tl_child_" + std::to_string(i);
      PyThreadState* first = nullptr;
      {
        pyattach::attach_scope py;
        first = PyThreadState_Get();
        PyRun_SimpleString(("import threading\n" + name + " = threading.local()\n" + name +
                            ".v = " + std::to_string(i) + "\n").c_str());
      }
      pyattach::attach_scope py;
      if (PyThreadState_Get() == first &&
          PyRun_SimpleString(("assert " + name + ".v == " + std::to_string(i) + "\n").c_str()) == 0) {
        ++ok;
      }
    });
  }
  for (auto& t : fresh) t.join();
  CHILD_CHECK(ok == 4);
  CHILD_CHECK(thread_states() == 1);  // their states went with them
  CHILD_CHECK(other_thread_can_run_python());
  py.reset();  // Py_FinalizeEx in the child, through the helper
  std::printf("forked child done\n");
  std::fflush(stdout);
  return child_exit_code();
}

// Waits for the forked grandchild (bounded) and checks that it exited 0.
void expect_forked_child_ok(pid_t pid) {
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 2000 && (r = waitpid(pid, &status, WNOHANG)) == 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    std::printf("forked child hung\n");
  }
  CHILD_CHECK(r == pid);
  CHILD_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace

CHILD_CASE(fork_process_from_cpp) {
  std::optional<pyattach::interpreter> py;
  py.emplace();
  pid_t pid = -1;
  {
    parent_threads others;
    pid = pyattach::fork_process();
    if (pid == 0) std::_Exit(check_in_forked_child(py));  // never unwind the parent's threads
    CHILD_CHECK(pid > 0);
    // The parent goes on as before: its threads still attach and run Python.
    CHILD_CHECK(other_thread_can_run_python());
  }
  expect_forked_child_ok(pid);
  CHILD_CHECK(pyattach_threads_in_report() >= 1);
  std::printf("done\n");
  return child_exit_code();
}

CHILD_CASE(fork_from_python_os_fork) {
  std::optional<pyattach::interpreter> py;
  py.emplace();
  long pid = -1;
  {
    parent_threads others;
    {
      pyattach::attach_scope attached;
      // os.fork() from Python, on a native thread, with the other threads running.
      PyRun_SimpleString("import os, warnings\nwarnings.simplefilter('ignore')\n_pid = os.fork()\n");
      pid = py_eval_long("_pid", PyModule_GetDict(PyImport_AddModule("__main__")));
    }
    if (pid == 0) std::_Exit(check_in_forked_child(py));
    CHILD_CHECK(pid > 0);
    CHILD_CHECK(other_thread_can_run_python());
  }
  expect_forked_child_ok(static_cast<pid_t>(pid));
  std::printf("done\n");
  return child_exit_code();
}

USES_CHILD_CASE(fork_process_from_cpp);
USES_CHILD_CASE(fork_from_python_os_fork);

namespace {
void expect_fork_case_ok(const child_case_use& use) {
  // ThreadSanitizer's runtime cannot follow a fork of a multithreaded process: the child dies at
  // its first new thread ("starting new threads after multi-threaded fork is not supported"), and
  // TSan documents die_after_fork=0 as unreliable (deadlocks in its own runtime). The plain legs
  // and the AddressSanitizer leg run these cases.
  if (k_tsan) GTEST_SKIP() << "ThreadSanitizer does not support threads after a multithreaded fork";
  const auto r = run_child(use);
  EXPECT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_EQ(r.out.find("CHILD-FAIL"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("forked child done\n"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("done\n"), std::string::npos) << r.describe();
}
}  // namespace

TEST(Fork, ForkProcessFromCppWithAttachedThreads) { expect_fork_case_ok(uses_fork_process_from_cpp); }

TEST(Fork, OsForkFromPythonWithAttachedThreads) { expect_fork_case_ok(uses_fork_from_python_os_fork); }

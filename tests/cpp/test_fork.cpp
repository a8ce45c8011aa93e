// tests/cpp/test_fork.cpp — fork() while native threads have pyattach states (fork.hpp).
//
// Each case forks inside a child process of the test binary (child_process.hpp), so the parent
// test only sees how that child ended and what both processes printed. The forked grandchild
// checks that the other threads' records are gone, that new threads attach and keep their
// threading.local, and that the interpreter (the embedding helper) finalizes cleanly there.
// Forks from the helper's creating thread must really finalize in the grandchild (the
// destructor once refused there, the forking thread having a new tid); forks from any other thread
// follow fork.hpp's rule for them. The fork-loop cases fork PYATTACH_FORK_RUNS times (default 5;
// the long mode is e.g. PYATTACH_FORK_RUNS=100 ctest -R Fork). ChildOfCreatorFinalizesWithBusyPool
// hung 3 of 100 children before the child forgot the parent's thread_pools (fork.hpp).
#include <gtest/gtest.h>

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <optional>
#include <string>
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

// How many forks a fork-loop case makes: PYATTACH_FORK_RUNS (default 5).
int fork_runs() {
  const char* v = std::getenv("PYATTACH_FORK_RUNS");
  const int n = (v != nullptr) ? std::atoi(v) : 0;
  return n > 0 ? n : 5;
}

// A thread_pool whose 2 workers run Python tasks without pause, fed by a native thread, so that at
// any fork the workers hold or wait for the GIL and the pool's lock.
struct busy_pool {
  pyattach::thread_pool pool{"busy", 2};
  std::atomic<bool> stop{false};
  std::atomic<long> tasks{0};
  std::atomic<long> failures{0};
  std::thread feeder;

  busy_pool() {
    feeder = std::thread([this] {
      while (!stop) {
        std::vector<std::future<void>> batch;
        for (int i = 0; i < 4; ++i) {
          batch.push_back(pool.submit_python([] { PyRun_SimpleString("sum(range(2000))\n"); }));
        }
        for (auto& f : batch) {
          try {
            f.get();
            ++tasks;
          } catch (...) {
            ++failures;
          }
        }
      }
    });
    while (tasks < 8 && failures == 0) std::this_thread::sleep_for(1ms);
  }
  ~busy_pool() {
    stop = true;
    feeder.join();
  }
};

// Waits (at most `deadline`) for a forked grandchild, killing it then. True if it exited 0.
bool forked_child_ok(pid_t pid, std::chrono::milliseconds deadline = 20s) {
  int status = 0;
  pid_t r = 0;
  const auto end = std::chrono::steady_clock::now() + deadline;
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(2ms);
  }
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    std::printf("forked child %d hung: killed\n", static_cast<int>(pid));
    std::fflush(stdout);
    return false;
  }
  if (r == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  if (r == pid && WIFSIGNALED(status)) {
    std::printf("forked child %d killed by signal %d\n", static_cast<int>(pid), WTERMSIG(status));
  } else if (r == pid && WIFEXITED(status)) {
    std::printf("forked child %d exited with %d\n", static_cast<int>(pid), WEXITSTATUS(status));
  }
  std::fflush(stdout);
  return false;
}

// Runs in the forked grandchild; returns its exit code. `py` is the embedding helper.
int check_in_forked_child(std::optional<pyattach::interpreter>& py) {
  // Only this thread is left; the other threads' records were dropped without touching them.
  CHILD_CHECK(pyattach_threads_in_report() == 1);
  // That record is this thread's, under the OS thread id it has in this process.
  for (const auto& t : pyattach::make_thread_report().threads) {
    if (t.known_to_pyattach) CHILD_CHECK(t.os_tid == os_tid());
  }
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
void expect_forked_child_ok(pid_t pid) { CHILD_CHECK(forked_child_ok(pid)); }

// In a grandchild forked by the helper's creating thread: the helper's destructor finalizes,
// without waiting for threads that do not exist here (the close timeout is 2 s).
int finalize_in_child_of_creator(std::optional<pyattach::interpreter>& py) {
  CHILD_CHECK(Py_IsInitialized() != 0);
  CHILD_CHECK(other_thread_can_run_python());
  const auto start = std::chrono::steady_clock::now();
  py.reset();  // Py_FinalizeEx, unless the destructor takes this thread for another one
  CHILD_CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHILD_CHECK(Py_IsInitialized() == 0);
  CHILD_CHECK(pyattach::current_gate_phase() == pyattach::gate_phase::unbound);
  std::printf("forked child finalized\n");
  std::fflush(stdout);
  return child_exit_code();
}

// Destroys `helper` on a new thread, if possible one with the pthread_t of `creator`, a thread that
// vanished at the fork: glibc hands the stacks (and so the pthread_t) of such threads to new
// ones. Keeps up to 16 new threads alive at once until one has it. True if one had it.
bool destroy_on_thread_like(pyattach::interpreter* helper, pthread_t creator) {
  constexpr int tries = 16;
  std::atomic<int> checked{0};
  std::atomic<bool> destroyed{false}, release{false};
  bool same_pthread = false;
  std::vector<std::thread> held;
  for (int i = 0; i < tries && !destroyed; ++i) {
    held.emplace_back([&, last = i == tries - 1] {
      const bool same = pthread_equal(pthread_self(), creator) != 0;
      if (same || last) {
        same_pthread = same;
        delete helper;
        destroyed = true;
      }
      ++checked;
      while (!release) std::this_thread::sleep_for(1ms);
    });
    while (checked < i + 1) std::this_thread::sleep_for(1ms);
  }
  release = true;
  for (auto& t : held) t.join();
  return same_pthread;
}

// In a grandchild forked by a thread that is not the helper's creator, following fork.hpp's rule:
// attach, use Python, do not finalize, end with std::_Exit. `helper` is reachable here (a heap
// object), so this also checks that its destructor refuses, even on a thread that has the
// creator's pthread_t.
int use_python_in_child_of_other_thread(pyattach::interpreter* helper, pthread_t creator) {
  CHILD_CHECK(Py_IsInitialized() != 0);
  CHILD_CHECK(thread_states() == 1);  // PyOS_AfterFork_Child deleted the creator's state too
  {
    pyattach::attach_scope attached;
    // PyOS_AfterFork_Child made this thread CPython's main thread, and threading's.
    CHILD_CHECK(PyRun_SimpleString("import threading\n"
                                   "assert threading.main_thread().ident == threading.get_ident()\n"
                                   "_forked_by_other = sum(range(1000))\n") == 0);
  }
  CHILD_CHECK(other_thread_can_run_python());
  const bool creators_pthread = destroy_on_thread_like(helper, creator);  // refuses
  CHILD_CHECK(Py_IsInitialized() != 0);
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("forked child of another thread done (new thread had the creator's pthread_t: %s)\n",
              creators_pthread ? "yes" : "no");
  std::fflush(stdout);
  return child_exit_code();
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
  return child_done();
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
  return child_done();
}

// Forks from the helper's creating thread, PYATTACH_FORK_RUNS times, while `Load` (threads made
// before the first fork) is running: each grandchild finalizes CPython through the helper, waited
// for `deadline`. `check_load` runs after the forks, while the load still runs.
namespace {
template <class Load, class Check>
int forks_from_creator(const char* what, std::chrono::milliseconds deadline, Check check_load) {
  const int runs = fork_runs();
  std::optional<pyattach::interpreter> py;
  py.emplace();
  int clean = 0;
  {
    Load load;
    for (int i = 0; i < runs; ++i) {
      const pid_t pid = pyattach::fork_process();
      if (pid == 0) std::_Exit(finalize_in_child_of_creator(py));  // never unwind the threads
      CHILD_CHECK(pid > 0);
      if (pid > 0 && forked_child_ok(pid, deadline)) ++clean;
    }
    CHILD_CHECK(other_thread_can_run_python());
    check_load(load);
  }
  std::printf("%s: %d clean of %d\n", what, clean, runs);
  CHILD_CHECK(clean == runs);
  py.reset();
  return child_done();
}
}  // namespace

// Other threads are attached and one runs Python at each fork.
CHILD_CASE(fork_from_creator_finalizes) {
  return forks_from_creator<parent_threads>("forks from the creator", 20s, [](parent_threads&) {});
}

// The same while a thread_pool runs Python tasks: its workers do not exist in the grandchild,
// which must finalize all the same.
CHILD_CASE(fork_from_creator_with_busy_pool) {
  return forks_from_creator<busy_pool>("forks from the creator with a busy pool", 10s,
                                       [](busy_pool& busy) { CHILD_CHECK(busy.failures == 0); });
}

// Forks from a pool worker, PYATTACH_FORK_RUNS times, while other threads are attached and one
// runs Python. The helper's creator is a thread other than the main one (so that its pthread_t
// can be reused in the grandchild), and stays alive in the parent, detached.
CHILD_CASE(fork_from_pool_worker) {
  const int runs = fork_runs();
  worker creator("creator");
  pyattach::interpreter* helper = nullptr;
  pthread_t creator_thread{};
  creator.run([&] {
    helper = new pyattach::interpreter();
    creator_thread = pthread_self();
  });
  int clean = 0;
  {
    parent_threads others;
    pyattach::thread_pool forker("forker", 1);
    for (int i = 0; i < runs; ++i) {
      // A C++ task: fork_process attaches the worker itself.
      const bool ok = forker.submit([helper, creator_thread] {
        const pid_t pid = pyattach::fork_process();
        // Never return from the task in the child: the worker loop would wait for tasks forever.
        if (pid == 0) std::_Exit(use_python_in_child_of_other_thread(helper, creator_thread));
        return pid > 0 && forked_child_ok(pid);
      }).get();
      if (ok) ++clean;
    }
    CHILD_CHECK(other_thread_can_run_python());
  }
  std::printf("forks from a pool worker: %d clean of %d\n", clean, runs);
  CHILD_CHECK(clean == runs);
  creator.run([&] { delete helper; });  // the creator finalizes as usual
  CHILD_CHECK(Py_IsInitialized() == 0);
  return child_done();
}

USES_CHILD_CASE(fork_process_from_cpp);
USES_CHILD_CASE(fork_from_python_os_fork);
USES_CHILD_CASE(fork_from_creator_finalizes);
USES_CHILD_CASE(fork_from_creator_with_busy_pool);
USES_CHILD_CASE(fork_from_pool_worker);

namespace {
// ThreadSanitizer's runtime cannot follow a fork of a multithreaded process: the child dies at its
// first new thread ("starting new threads after multi-threaded fork is not supported"), and TSan
// documents die_after_fork=0 as unreliable (deadlocks in its own runtime). The plain legs and the
// AddressSanitizer leg run these cases; every fork test starts with this skip.
#define SKIP_FORK_UNDER_TSAN() \
  if (k_tsan) GTEST_SKIP() << "ThreadSanitizer does not support threads after a multithreaded fork"

// Runs a fork case with a deadline that grows with PYATTACH_FORK_RUNS (by `per_fork`), and checks
// how it ended.
child_result run_fork_case(const child_case_use& use, std::chrono::seconds per_fork = 1s) {
  child_options options;
  options.timeout = 30s + fork_runs() * per_fork;
  auto r = run_child(use, options);
  EXPECT_CHILD_CLEAN(r);
  return r;
}

void expect_fork_case_ok(const child_case_use& use) {
  SKIP_FORK_UNDER_TSAN();
  const auto r = run_fork_case(use);
  EXPECT_NE(r.out.find("forked child done\n"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("CPython was not finalized"), std::string::npos) << r.describe();
}

// Every grandchild of the creating thread finalized, and no helper destructor refused.
void expect_every_fork_finalized(const child_case_use& use, std::chrono::seconds per_fork) {
  SKIP_FORK_UNDER_TSAN();
  const auto r = run_fork_case(use, per_fork);
  EXPECT_EQ(count_occurrences(r.out, "forked child finalized\n"), std::size_t(fork_runs()))
      << r.describe();
  EXPECT_EQ(r.err.find("CPython was not finalized"), std::string::npos) << r.describe();
}
}  // namespace

TEST(Fork, ForkProcessFromCppWithAttachedThreads) { expect_fork_case_ok(uses_fork_process_from_cpp); }

TEST(Fork, OsForkFromPythonWithAttachedThreads) { expect_fork_case_ok(uses_fork_from_python_os_fork); }

// The grandchild of the creating thread finalizes (the destructor used to refuse there:
// "created on thread X", X being the forking thread's tid in the parent).
TEST(Fork, ChildOfCreatorFinalizes) {
  expect_every_fork_finalized(uses_fork_from_creator_finalizes, 1s);
}

// The same with a thread_pool running Python tasks at each fork. Its grandchildren are waited
// for 10 s each (a hung one is killed).
TEST(Fork, ChildOfCreatorFinalizesWithBusyPool) {
  expect_every_fork_finalized(uses_fork_from_creator_with_busy_pool, 12s);
}

// A grandchild forked by another thread uses Python, does not finalize (the helper's destructor
// refuses there) and ends with std::_Exit; the parent's creator still finalizes.
TEST(Fork, ChildOfPoolWorkerUsesPythonWithoutFinalizing) {
  SKIP_FORK_UNDER_TSAN();
  const auto r = run_fork_case(uses_fork_from_pool_worker);
  const auto runs = std::size_t(fork_runs());
  EXPECT_EQ(count_occurrences(r.out, "forked child of another thread done"), runs)
      << r.describe();
  // Each grandchild's helper destructor refused, and nothing else did.
  EXPECT_EQ(count_occurrences(r.err, "of a process forked by a thread other than its creator; "
                                     "CPython was not finalized"), runs)
      << r.describe();
  EXPECT_EQ(count_occurrences(r.err, "CPython was not finalized"), runs) << r.describe();
}

// tests/cpp/test_report.cpp — make_thread_report(): every thread state joined with pyattach's slots.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "helpers.hpp"

using namespace testutil;

namespace {
const pyattach::thread_info* find_tid(const pyattach::thread_report& r, std::uint64_t tid) {
  for (const auto& t : r.threads) {
    if (t.os_tid == tid) return &t;
  }
  return nullptr;
}
}  // namespace

TEST(Report, ListsIdleNativeWorkersWithNamesTidsAndScopeCounts) {
  constexpr int k_workers = 4;
  std::vector<std::unique_ptr<worker>> workers;
  std::vector<unsigned long> idents(k_workers);
  for (int i = 0; i < k_workers; ++i) {
    workers.push_back(std::make_unique<worker>("report-" + std::to_string(i)));
    // Worker i runs i + 1 outermost scopes (plus nested ones, which do not count).
    for (int k = 0; k <= i; ++k) {
      workers.back()->run([&, i, k] {
        pyattach::attach_scope s;
        pyattach::attach_scope nested;
        if (k == 0) {
          ASSERT_EQ(PyRun_SimpleString(("import threading\nthreading.current_thread().name = 'worker-" +
                                        std::to_string(i) + "'\n")
                                           .c_str()),
                    0);
          idents[static_cast<size_t>(i)] = PyThread_get_thread_ident();
        }
      });
    }
  }
  worker never_used_python("no-python");

  const pyattach::thread_report r = pyattach::make_thread_report();
  ASSERT_TRUE(r.interpreter_available);
  EXPECT_EQ(r.python_version.rfind("3.", 0), 0u) << r.python_version;
  EXPECT_EQ(r.generation, pyattach::current_generation());
  std::size_t with_state = 0;
  int callers = 0;
  for (const auto& t : r.threads) {
    with_state += t.has_thread_state ? 1 : 0;
    if (t.is_caller) {
      ++callers;
      EXPECT_EQ(t.state, pyattach::thread_attachment::attached);
      EXPECT_EQ(t.os_tid, os_tid());
    }
  }
  EXPECT_EQ(callers, 1);
  EXPECT_EQ(r.thread_states, with_state);
  EXPECT_EQ(r.thread_states, thread_states());
  EXPECT_EQ(find_tid(r, never_used_python.tid()), nullptr) << "a thread that never used Python is listed";

  const std::string text = pyattach::to_string(r);
  for (int i = 0; i < k_workers; ++i) {
    SCOPED_TRACE("worker " + std::to_string(i));
    const pyattach::thread_info* t = find_tid(r, workers[static_cast<size_t>(i)]->tid());
    ASSERT_NE(t, nullptr) << text;
    EXPECT_TRUE(t->has_thread_state);
    EXPECT_TRUE(t->known_to_pyattach);
    EXPECT_TRUE(t->made_by_pyattach);
    EXPECT_FALSE(t->is_caller);
    EXPECT_EQ(t->python_name, "worker-" + std::to_string(i));
    EXPECT_EQ(t->ident, idents[static_cast<size_t>(i)]);
    EXPECT_EQ(t->state, pyattach::thread_attachment::detached);
    EXPECT_EQ(t->scopes, static_cast<std::uint64_t>(i + 1));
    EXPECT_NE(text.find("worker-" + std::to_string(i)), std::string::npos) << text;
    EXPECT_NE(text.find(std::to_string(t->os_tid)), std::string::npos) << text;
  }
  EXPECT_NE(text.find("made"), std::string::npos) << text;
  EXPECT_NE(text.find("detached"), std::string::npos) << text;
  EXPECT_NE(text.find(r.python_version), std::string::npos) << text;
}

TEST(Report, ShowsAWorkerWaitingForTheGil) {
  worker w("waiter");
  w.run([] {
    pyattach::attach_scope s;
    PyRun_SimpleString("import threading\nthreading.current_thread().name = 'waiter'\n");
  });
  pyattach::thread_attachment seen = pyattach::thread_attachment::detached;
  {
    pyattach::attach_scope hold;  // the test thread holds the GIL
    // While the report runs bytecode (threading's `name` property) a waiter that waited longer
    // than the switch interval could be handed the GIL early: make that interval long.
    PyRun_SimpleString("import sys\n_old_switch = sys.getswitchinterval()\nsys.setswitchinterval(30.0)\n");
    w.post([] { pyattach::attach_scope s; });
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      const auto r = pyattach::make_thread_report();
      const auto* t = find_tid(r, w.tid());
      if (t != nullptr && t->state == pyattach::thread_attachment::waiting) {
        seen = t->state;
        EXPECT_NE(pyattach::to_string(r).find("waiting"), std::string::npos);
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
    PyRun_SimpleString("sys.setswitchinterval(_old_switch)\n");
  }
  w.wait_idle();
  EXPECT_EQ(seen, pyattach::thread_attachment::waiting);
  const auto r = pyattach::make_thread_report();
  const auto* t = find_tid(r, w.tid());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->state, pyattach::thread_attachment::detached);
  EXPECT_EQ(t->scopes, 2u);
}

TEST(Report, AThreadAfterReleaseThreadStateIsKnownWithoutAState) {
  worker w("released");
  w.run([] {
    { pyattach::attach_scope s; }
    EXPECT_TRUE(pyattach::release_thread_state());
  });
  const auto r = pyattach::make_thread_report();
  const auto* t = find_tid(r, w.tid());
  ASSERT_NE(t, nullptr) << pyattach::to_string(r);
  EXPECT_TRUE(t->known_to_pyattach);
  EXPECT_FALSE(t->has_thread_state);
  EXPECT_NE(pyattach::to_string(r).find("no-state"), std::string::npos) << pyattach::to_string(r);
}

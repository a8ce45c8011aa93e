// tests/cpp/test_harness.cpp — the child-process harness itself: it captures output and exit
// status, reports signals, and (positive control) reports a deadlocked child as timed out.
// Plus the completeness check: every registered child case is used by some test.
#include <gtest/gtest.h>

#include <signal.h>

#include <cstdlib>
#include <mutex>
#include <thread>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;

CHILD_CASE(harness_echo) {
  std::printf("out:");
  for (const auto& a : args) std::printf(" %s", a.c_str());
  std::printf("\n");
  const char* v = std::getenv("HARNESS_ECHO");
  std::fprintf(stderr, "err: %s\n", v ? v : "(unset)");
  std::fprintf(stderr, "misuse policy: %s\n",
               std::getenv("PYATTACH_ON_MISUSE") ? std::getenv("PYATTACH_ON_MISUSE") : "(unset)");
  return 7;
}

CHILD_CASE(harness_abort) {
  std::printf("before abort\n");
  std::abort();
}

// Positive control: a real deadlock involving the GIL. Thread A attaches (holds the GIL) and
// then waits for a mutex that the main thread holds while it tries to attach.
CHILD_CASE(deadlock_positive_control) {
  pyattach::interpreter py;
  std::mutex m;
  latch a_attached;
  std::unique_lock<std::mutex> hold(m);
  std::thread a([&] {
    pyattach::attach_scope s;
    a_attached.set();
    std::lock_guard<std::mutex> g(m);  // never: main holds m until it attaches
  });
  a_attached.wait();
  std::printf("about to deadlock\n");
  pyattach::attach_scope s;  // never: A holds the GIL until it gets m
  hold.unlock();
  a.join();
  std::printf("not deadlocked?\n");
  return 0;
}

USES_CHILD_CASE(harness_echo);
USES_CHILD_CASE(harness_abort);
USES_CHILD_CASE(deadlock_positive_control);

TEST(ChildHarness, CapturesOutputExitStatusArgsAndEnvironment) {
  child_options o;
  o.args = {"one", "two"};
  o.env = {{"HARNESS_ECHO", "hello"}};
  ::setenv("PYATTACH_ON_MISUSE", "abort", 1);  // must not leak into children unless asked
  const auto r = run_child(uses_harness_echo, o);
  ::unsetenv("PYATTACH_ON_MISUSE");
  EXPECT_TRUE(r.started);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 7) << r.describe();
  EXPECT_EQ(r.term_signal, 0);
  EXPECT_FALSE(r.exited_cleanly());
  EXPECT_EQ(r.out, "out: one two\n") << r.describe();
  EXPECT_NE(r.err.find("err: hello\n"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("misuse policy: (unset)"), std::string::npos) << r.describe();
}

TEST(ChildHarness, ReportsDeathBySignal) {
  const auto r = run_child(uses_harness_abort);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.term_signal, SIGABRT) << r.describe();
  EXPECT_NE(r.out.find("before abort"), std::string::npos) << r.describe();
  EXPECT_NE(r.describe().find("signal"), std::string::npos);
}

TEST(ChildHarness, PositiveControlADeadlockedChildIsReportedAsTimedOut) {
  child_options o;
  o.timeout = std::chrono::milliseconds(2000);
  const auto start = std::chrono::steady_clock::now();
  const auto r = run_child(uses_deadlock_positive_control, o);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(r.started);
  EXPECT_TRUE(r.timed_out) << r.describe();
  EXPECT_EQ(r.term_signal, SIGKILL) << r.describe();
  EXPECT_FALSE(r.exited_cleanly());
  EXPECT_NE(r.out.find("about to deadlock"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("not deadlocked?"), std::string::npos) << r.describe();
  EXPECT_NE(r.describe().find("TIMED OUT"), std::string::npos);
  EXPECT_LT(took, std::chrono::seconds(20)) << "the harness did not enforce its deadline";
}

TEST(ChildHarness, EveryChildCaseIsUsedByATestAndEveryUseIsRegistered) {
  const auto& registered = registered_child_cases();
  const auto& used = used_child_cases();
  EXPECT_GE(registered.size(), 10u);
  for (const auto& [name, fn] : registered) {
    EXPECT_TRUE(used.count(name) == 1) << "child case '" << name << "' is registered but no test uses it";
  }
  for (const auto& name : used) {
    EXPECT_TRUE(registered.count(name) == 1) << "a test uses child case '" << name
                                             << "' that is not registered";
  }
}

// tests/cpp/child_process.hpp — run a named "child case" of this test binary in a child process.
//
// Why: anything that can hang, crash, abort or needs its own CPython lifetime (not initialized,
// finalized, several init/finalize cycles, misuse, finalization races) must not run inside the
// process that holds the shared test interpreter. A child case is a function registered with
// CHILD_CASE(name); the harness re-executes /proc/self/exe with `--pyattach-child=name`, captures
// stdout and stderr, and waits with a deadline, killing the child with SIGKILL when it expires.
//
// Completeness: every child case must be used by a test. A test names the cases it runs with
// USES_CHILD_CASE(name) at namespace scope, which defines `uses_<name>`: the only handle that
// run_child() accepts. ChildHarness.EveryChildCaseIsUsed compares the two registries.
//
// The convention: a case prints "done" as its last act (return child_done()), and the parent
// checks it with EXPECT_CHILD_CLEAN; a test that does only that is one CHILD_TEST line.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace testutil {

using child_case_fn = int (*)(const std::vector<std::string>& args);

// Registration (static initialization); both return true so they can initialize a static.
bool register_child_case(const char* name, child_case_fn fn);
struct child_case_use {
  const char* name;
};
child_case_use declare_child_case_use(const char* name);

const std::map<std::string, child_case_fn>& registered_child_cases();
const std::set<std::string>& used_child_cases();

struct child_options {
  std::chrono::milliseconds timeout{30000};
  std::vector<std::pair<std::string, std::string>> env;  // set (or override) in the child
  std::vector<std::string> args;                          // passed to the case function
};

struct child_result {
  bool started = false;
  bool timed_out = false;   // the deadline expired; the child was killed with SIGKILL
  int exit_code = -1;       // if it exited normally
  int term_signal = 0;      // if a signal ended it
  double seconds = 0;
  std::string out;
  std::string err;

  bool exited_cleanly() const { return started && !timed_out && term_signal == 0 && exit_code == 0; }
  // For assertion messages: how it ended, then its stdout and stderr.
  std::string describe() const;
};

child_result run_child(const child_case_use& use, const child_options& options = {});

// Options that only pass arguments to the case, for CHILD_TEST's last argument.
inline child_options child_args(std::vector<std::string> args) {
  child_options o;
  o.args = std::move(args);
  return o;
}

// Child side: if argv names a child case, runs it and returns true with its exit code in *rc.
bool dispatch_child_case(int argc, char** argv, int* rc);

// Checks inside a child case: print "CHILD-FAIL" lines on stdout and count them; the case
// returns child_exit_code() so that the parent sees a non-zero exit.
int& child_failures();
inline int child_exit_code() { return child_failures() == 0 ? 0 : 1; }
// The end of a case that ran to completion: prints the "done" line the parent looks for.
inline int child_done() {
  std::printf("done\n");
  std::fflush(stdout);
  return child_exit_code();
}

// How many times `needle` occurs in `haystack`.
std::size_t count_occurrences(const std::string& haystack, const std::string& needle);

}  // namespace testutil

#define CHILD_CASE(name)                                                              \
  static int child_case_##name(const std::vector<std::string>& args);                \
  static const bool child_case_registered_##name =                                    \
      ::testutil::register_child_case(#name, &child_case_##name);                     \
  static int child_case_##name([[maybe_unused]] const std::vector<std::string>& args)

#define USES_CHILD_CASE(name) \
  static const ::testutil::child_case_use uses_##name = ::testutil::declare_child_case_use(#name)

#define CHILD_CHECK(cond)                                                                 \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::printf("CHILD-FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                   \
      std::fflush(stdout);                                                                \
      ++::testutil::child_failures();                                                     \
    }                                                                                     \
  } while (0)

// Prints a marker line the parent parses: "SITE <tag>=<file>:<line>".
#define CHILD_SITE(tag, line) \
  (std::printf("SITE %s=%s:%d\n", tag, __FILE__, line), std::fflush(stdout))

// In the parent: the child exited with status 0, printed no CHILD-FAIL line and reached its end
// (the "done" line of child_done()).
#define EXPECT_CHILD_CLEAN(result)                                                          \
  do {                                                                                      \
    const ::testutil::child_result& child_result_ = (result);                               \
    EXPECT_TRUE(child_result_.exited_cleanly()) << child_result_.describe();                \
    EXPECT_EQ(child_result_.out.find("CHILD-FAIL"), std::string::npos)                      \
        << child_result_.describe();                                                        \
    EXPECT_NE(child_result_.out.find("done\n"), std::string::npos) << child_result_.describe(); \
  } while (0)

// A test that runs one child case (declared with USES_CHILD_CASE) and expects it clean; the
// optional last argument is a child_options expression (arguments, environment, deadline).
#define CHILD_TEST(suite, test_name, case_name, ...)                                   \
  TEST(suite, test_name) {                                                             \
    EXPECT_CHILD_CLEAN(::testutil::run_child(uses_##case_name, ##__VA_ARGS__));        \
  }

// tests/cpp/test_misuse.cpp — every misuse kind, each in a child process.
//
// For each kind, the child prints "SITE made=<file>:<line>" and "SITE misused=<file>:<line>"
// for the misuse it commits, then carries on and checks that nothing was damaged. The parent
// checks, with the default handler, that stderr names the kind and both sites and that the
// child exits 0; and with PYATTACH_ON_MISUSE=abort, that it dies by SIGABRT after printing.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;

namespace {
// Runs `fn` on a new native thread and joins it.
template <class F>
void on_new_thread(F&& fn) {
  std::thread(std::forward<F>(fn)).join();
}
}  // namespace

// ---- double release -------------------------------------------------------------------------

CHILD_CASE(misuse_double_release) {
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  on_new_thread([&] {
    const int made = __LINE__; auto s = pyattach::try_attach();
    CHILD_CHECK(s.is_valid());
    s.release();
    CHILD_CHECK(!pyattach::is_attached());
    CHILD_SITE("made", made);
    CHILD_SITE("misused", __LINE__); s.release();
    CHILD_CHECK(!pyattach::is_attached());
    // Nothing was unbalanced: the thread attaches and detaches normally afterwards.
    {
      pyattach::attach_scope again;
      CHILD_CHECK(again.made_current());
      CHILD_CHECK(PyRun_SimpleString("_after_double_release = 1\n") == 0);
    }
    CHILD_CHECK(other_thread_can_run_python());
    // The same for a detach scope.
    pyattach::attach_scope outer;
    {
      pyattach::detach_scope d;
      d.release();
      d.release();
      CHILD_CHECK(pyattach::is_attached());
    }
    CHILD_CHECK(pyattach::is_attached());
  });
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(pyattach::misuse_count() == 2);
  CHILD_CHECK(thread_states() == baseline);
  std::printf("done\n");
  return child_exit_code();
}

// ---- wrong thread ---------------------------------------------------------------------------

CHILD_CASE(misuse_wrong_thread) {
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  pyattach::attach_scope* scope = nullptr;
  latch made, ended, checked;
  int made_line = 0;
  // Phase 1: A's scope is ended by B; A's next pyattach call undoes it (A keeps the GIL until then).
  std::thread a([&] {
    made_line = __LINE__; scope = new pyattach::attach_scope();
    CHILD_CHECK(PyRun_SimpleString("import threading\ntl = threading.local()\ntl.v = 'A'\n") == 0);
    made.set();
    CHILD_CHECK(ended.wait());
    delete scope;  // already ended (misused) by B: nothing more happens
    {
      pyattach::attach_scope next;
      CHILD_CHECK(next.is_valid());
      CHILD_CHECK(PyRun_SimpleString("assert tl.v == 'A'\n") == 0);
    }
    CHILD_CHECK(!pyattach::is_attached());
    checked.set();
  });
  CHILD_CHECK(made.wait());
  std::thread b([&] {
    CHILD_SITE("made", made_line);
    CHILD_SITE("misused", __LINE__); scope->release();
    CHILD_CHECK(!pyattach::is_attached());
  });
  b.join();
  ended.set();
  CHILD_CHECK(checked.wait());
  a.join();
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(thread_states() == baseline);

  // Phase 2: the same, but A exits right after: its exit clean-up undoes the scope.
  latch made2, ended2;
  pyattach::attach_scope* scope2 = nullptr;
  std::thread a2([&] {
    scope2 = new pyattach::attach_scope();
    made2.set();
    CHILD_CHECK(ended2.wait());
    delete scope2;
  });
  CHILD_CHECK(made2.wait());
  on_new_thread([&] { scope2->release(); });
  ended2.set();
  a2.join();
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(thread_states() == baseline);
  CHILD_CHECK(pyattach::misuse_count() == 2);
  std::printf("done\n");
  return child_exit_code();
}

// ---- out of order ---------------------------------------------------------------------------

CHILD_CASE(misuse_out_of_order) {
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  latch inner_ended, main_checked;
  std::thread t([&] {
    const int made = __LINE__; pyattach::attach_scope outer;
    {
      pyattach::attach_scope inner;
      CHILD_SITE("made", made);
      CHILD_SITE("misused", __LINE__); outer.release();
      // Deferred: the inner scope is still open, so the thread stays attached.
      CHILD_CHECK(pyattach::is_attached());
      CHILD_CHECK(PyRun_SimpleString("_still_attached = 1\n") == 0);
    }
    // The inner scope ended: the deferred end of the outer one detached the thread.
    CHILD_CHECK(!pyattach::is_attached());
    inner_ended.set();
    CHILD_CHECK(main_checked.wait());
    // The thread still works normally.
    {
      pyattach::attach_scope again;
      CHILD_CHECK(again.made_current());
    }
  });  // `outer`'s destructor: already ended, nothing happens
  CHILD_CHECK(inner_ended.wait());
  // Another thread can take the GIL (within 5 s) while t is still alive.
  CHILD_CHECK(other_thread_can_run_python());
  main_checked.set();
  t.join();
  CHILD_CHECK(thread_states() == baseline);
  CHILD_CHECK(pyattach::misuse_count() == 1);
  std::printf("done\n");
  return child_exit_code();
}

// ---- detach without attach ------------------------------------------------------------------

CHILD_CASE(misuse_detach_without_attach) {
  pyattach::interpreter py;
  on_new_thread([&] {
    {
      CHILD_SITE("made", __LINE__ + 1);
      pyattach::detach_scope d;
      CHILD_SITE("misused", __LINE__ - 1);
      CHILD_CHECK(!d.is_valid());
      CHILD_CHECK(!pyattach::is_attached());
    }
    // Nothing was detached or unbalanced: attaching works.
    pyattach::attach_scope s;
    CHILD_CHECK(s.made_current());
    CHILD_CHECK(PyRun_SimpleString("_ok = 1\n") == 0);
  });
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(pyattach::misuse_count() == 1);
  std::printf("done\n");
  return child_exit_code();
}

// ---- release_thread_state inside a scope ----------------------------------------------------

CHILD_CASE(misuse_release_while_attached) {
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  on_new_thread([&] {
    {
      const int made = __LINE__; pyattach::attach_scope s;
      CHILD_CHECK(PyRun_SimpleString("import threading\ntl = threading.local()\ntl.v = 'kept'\n") == 0);
      CHILD_SITE("made", made);
      CHILD_SITE("misused", __LINE__); const bool released = pyattach::release_thread_state();
      CHILD_CHECK(!released);
      CHILD_CHECK(pyattach::is_attached());
      CHILD_CHECK(PyRun_SimpleString("assert tl.v == 'kept'\n") == 0);
    }
    {
      pyattach::attach_scope s;
      CHILD_CHECK(PyRun_SimpleString("assert tl.v == 'kept'\n") == 0);
    }
    CHILD_CHECK(pyattach::release_thread_state());  // outside a scope: fine
  });
  CHILD_CHECK(other_thread_can_run_python());
  CHILD_CHECK(thread_states() == baseline);
  CHILD_CHECK(pyattach::misuse_count() == 1);
  std::printf("done\n");
  return child_exit_code();
}

// ---- a custom handler -----------------------------------------------------------------------

namespace {
std::mutex g_reports_mutex;
std::vector<pyattach::misuse_report> g_reports;
void recording_handler(const pyattach::misuse_report& r) noexcept {
  std::lock_guard<std::mutex> lock(g_reports_mutex);
  g_reports.push_back(r);
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
std::string site(int line) { return std::string(__FILE__) + ":" + std::to_string(line); }
}  // namespace

CHILD_CASE(misuse_custom_handler) {
  pyattach::interpreter py;
  CHILD_CHECK(pyattach::set_misuse_handler(recording_handler) == nullptr);

  // 1. double release on this thread, both sites exact.
  int made1 = 0, misused1 = 0;
  std::uint64_t tid1 = 0;
  on_new_thread([&] {
    tid1 = os_tid();
    made1 = __LINE__; auto s = pyattach::try_attach();
    s.release();
    misused1 = __LINE__; s.release();
  });
  // 2. wrong thread: made on A, ended on B.
  int made2 = 0, misused2 = 0;
  std::uint64_t tid_a = 0, tid_b = 0;
  pyattach::attach_scope* scope = nullptr;
  latch made, ended;
  std::thread a([&] {
    tid_a = os_tid();
    made2 = __LINE__; scope = new pyattach::attach_scope();
    made.set();
    ended.wait();
    delete scope;
  });
  made.wait();
  on_new_thread([&] {
    tid_b = os_tid();
    misused2 = __LINE__; scope->release();
  });
  ended.set();
  a.join();
  // 3. out of order through a destructor: the misuse site is the code that ran it.
  int made3 = 0;
  on_new_thread([&] {
    std::optional<pyattach::attach_scope> outer;
    made3 = __LINE__; outer.emplace(pyattach::source_site::current());
    pyattach::attach_scope inner;
    outer.reset();
  });

  std::vector<pyattach::misuse_report> reports;
  {
    std::lock_guard<std::mutex> lock(g_reports_mutex);
    reports = g_reports;
  }
  CHILD_CHECK(reports.size() == 3);
  CHILD_CHECK(pyattach::misuse_count() == 3);
  if (reports.size() == 3) {
    const auto& r1 = reports[0];
    CHILD_CHECK(r1.kind == pyattach::misuse_kind::double_release);
    CHILD_CHECK(std::string(r1.made_at.file) == __FILE__);
    CHILD_CHECK(r1.made_at.line == made1);
    CHILD_CHECK(contains(r1.misused_at, site(misused1)));
    CHILD_CHECK(r1.made_on_thread == tid1);
    CHILD_CHECK(r1.misused_on_thread == tid1);
    CHILD_CHECK(contains(r1.message, "double_release"));
    CHILD_CHECK(contains(r1.message, site(made1)));
    CHILD_CHECK(contains(r1.message, site(misused1)));

    const auto& r2 = reports[1];
    CHILD_CHECK(r2.kind == pyattach::misuse_kind::wrong_thread);
    CHILD_CHECK(r2.made_at.line == made2);
    CHILD_CHECK(contains(r2.misused_at, site(misused2)));
    CHILD_CHECK(r2.made_on_thread == tid_a);
    CHILD_CHECK(r2.misused_on_thread == tid_b);
    CHILD_CHECK(tid_a != tid_b);
    CHILD_CHECK(contains(r2.message, "wrong_thread"));

    const auto& r3 = reports[2];
    CHILD_CHECK(r3.kind == pyattach::misuse_kind::out_of_order);
    CHILD_CHECK(r3.made_at.line == made3);
    CHILD_CHECK(!r3.misused_at.empty());
    CHILD_CHECK(contains(r3.misused_at, "code"));  // a code address, not a source line
    CHILD_CHECK(!r3.other.empty());
    CHILD_CHECK(contains(r3.message, "out_of_order"));
    for (const auto& r : reports) std::printf("REPORT %s\n", r.message.c_str());
  }
  // Restoring the default handler: the next report goes to stderr.
  CHILD_CHECK(pyattach::set_misuse_handler(nullptr) == recording_handler);
  on_new_thread([] {
    auto s = pyattach::try_attach();
    s.release();
    s.release();
  });
  CHILD_CHECK(pyattach::misuse_count() == 4);
  CHILD_CHECK(other_thread_can_run_python());
  std::printf("done\n");
  return child_exit_code();
}

// ---- the tests ------------------------------------------------------------------------------

USES_CHILD_CASE(misuse_double_release);
USES_CHILD_CASE(misuse_wrong_thread);
USES_CHILD_CASE(misuse_out_of_order);
USES_CHILD_CASE(misuse_detach_without_attach);
USES_CHILD_CASE(misuse_release_while_attached);
USES_CHILD_CASE(misuse_custom_handler);

namespace {

std::vector<std::string> sites_of(const std::string& out) {
  std::vector<std::string> sites;
  std::size_t p = 0;
  while ((p = out.find("SITE ", p)) != std::string::npos) {
    const std::size_t eq = out.find('=', p);
    const std::size_t nl = out.find('\n', p);
    if (eq == std::string::npos || nl == std::string::npos) break;
    sites.push_back(out.substr(eq + 1, nl - eq - 1));
    p = nl;
  }
  return sites;
}

void check_misuse_child(const child_case_use& use, const char* kind) {
  const std::string marker = std::string("pyattach: misuse: ") + kind;
  {
    SCOPED_TRACE("default handler");
    const auto r = run_child(use);
    EXPECT_TRUE(r.exited_cleanly()) << r.describe();
    EXPECT_EQ(r.out.find("CHILD-FAIL"), std::string::npos) << r.describe();
    EXPECT_NE(r.out.find("done\n"), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find(marker), std::string::npos) << r.describe();
    const auto sites = sites_of(r.out);
    ASSERT_EQ(sites.size(), 2u) << r.describe();
    // The first report line names both source locations.
    const std::size_t at = r.err.find(marker);
    const std::string line = at == std::string::npos ? "" : r.err.substr(at, r.err.find('\n', at) - at);
    for (const auto& s : sites) EXPECT_NE(line.find(s + " "), std::string::npos) << s << " not in: " << line;
  }
  {
    SCOPED_TRACE("PYATTACH_ON_MISUSE=abort");
    child_options o;
    o.env = {{"PYATTACH_ON_MISUSE", "abort"}};
    const auto r = run_child(use, o);
    EXPECT_FALSE(r.timed_out) << r.describe();
    EXPECT_EQ(r.term_signal, SIGABRT) << r.describe();
    EXPECT_NE(r.err.find(marker), std::string::npos) << "nothing printed before abort: " << r.describe();
    EXPECT_EQ(r.out.find("done\n"), std::string::npos) << r.describe();
  }
}

}  // namespace

TEST(Misuse, DoubleRelease) { check_misuse_child(uses_misuse_double_release, "double_release"); }

TEST(Misuse, WrongThread) { check_misuse_child(uses_misuse_wrong_thread, "wrong_thread"); }

TEST(Misuse, OutOfOrderAndItsDeferredUndo) { check_misuse_child(uses_misuse_out_of_order, "out_of_order"); }

TEST(Misuse, DetachWithoutAttach) {
  check_misuse_child(uses_misuse_detach_without_attach, "detach_without_attach");
}

TEST(Misuse, ReleaseThreadStateWhileAttached) {
  check_misuse_child(uses_misuse_release_while_attached, "release_while_attached");
}

TEST(Misuse, CustomHandlerReceivesTheReportFields) {
  const auto r = run_child(uses_misuse_custom_handler);
  EXPECT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_EQ(r.out.find("CHILD-FAIL"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("done\n"), std::string::npos) << r.describe();
  // The custom handler printed nothing; only the one report after restoring the default did.
  EXPECT_EQ(count_occurrences(r.err, "pyattach: misuse:"), 1u) << r.describe();
  EXPECT_NE(r.err.find("pyattach: misuse: double_release"), std::string::npos) << r.describe();
}

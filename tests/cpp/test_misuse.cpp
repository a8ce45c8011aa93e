// tests/cpp/test_misuse.cpp — every misuse kind, each in a child process.
//
// For each kind, the child prints "SITE made=<file>:<line>" and "SITE misused=<file>:<line>"
// for the misuse it commits, then carries on and checks that nothing was damaged. The parent
// checks, with the default handler, that stderr names the kind and both sites and that the
// child exits 0; and with PYATTACH_ON_MISUSE=abort, that it dies by SIGABRT after printing.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;

namespace {
PyThreadState* PyThreadState_GetUnchecked_compat() {
  return pyattach::detail::compat::current_state_unchecked();
}
// Runs `fn` on a new native thread and joins it.
template <class F>
void on_new_thread(F&& fn) {
  std::thread(std::forward<F>(fn)).join();
}

// A new native thread attaches and ends its scope twice: one double_release report.
void double_release_on_new_thread() {
  on_new_thread([] {
    auto s = pyattach::try_attach();
    s.release();
    s.release();
  });
}

// On the thread that committed a misuse: nothing was left unbalanced, so a new scope makes the
// thread's state current and runs `code`.
void attaches_normally_again(const char* code) {
  pyattach::attach_scope again;
  CHILD_CHECK(again.made_current());
  CHILD_CHECK(PyRun_SimpleString(code) == 0);
}

// The end of a misuse case: nothing was damaged (another thread can run Python, and the thread
// states are back at `baseline` when one is given) and exactly `misuses` reports were made.
int end_misuse_case(std::uint64_t misuses, std::optional<std::size_t> baseline = std::nullopt) {
  CHILD_CHECK(other_thread_can_run_python());
  if (baseline) CHILD_CHECK(thread_states() == *baseline);
  CHILD_CHECK(pyattach::misuse_count() == misuses);
  return child_done();
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
    attaches_normally_again("_after_double_release = 1\n");
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
  return end_misuse_case(2, baseline);
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
  return end_misuse_case(2, baseline);
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
  return child_done();
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
    attaches_normally_again("_ok = 1\n");
  });
  return end_misuse_case(1);
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
  return end_misuse_case(1, baseline);
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
  double_release_on_new_thread();
  CHILD_CHECK(pyattach::misuse_count() == 4);
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}

// ---- another interpreter attached on this thread --------------------------------------------

namespace {
// Makes the calling native thread attached to a fresh sub-interpreter without PyGILState knowing
// a main-interpreter state for it: a main-interpreter state made by another thread (so not
// registered for this one) is attached first, because Py_NewInterpreter needs the GIL.
// Returns {main_state, sub_state}; the sub-interpreter's state is current.
std::pair<PyThreadState*, PyThreadState*> enter_sub_interpreter(PyThreadState* made_elsewhere) {
  PyEval_RestoreThread(made_elsewhere);
  PyThreadState* sub = Py_NewInterpreter();  // legacy config: shares the main GIL
  return {made_elsewhere, sub};
}
// Ends the sub-interpreter, deletes the borrowed main-interpreter state, leaves nothing attached.
void leave_sub_interpreter(std::pair<PyThreadState*, PyThreadState*> states) {
  Py_EndInterpreter(states.second);  // current state is NULL afterwards, the GIL still held
  PyThreadState_Swap(states.first);
  PyThreadState_Clear(states.first);
  PyThreadState_DeleteCurrent();  // releases the GIL
}
PyThreadState* new_main_state_for_another_thread() {
  pyattach::attach_scope py;  // this thread already has a PyGILState state: the new one is not it
  return PyThreadState_New(PyInterpreterState_Main());
}
}  // namespace

CHILD_CASE(misuse_other_interpreter) {
  pyattach::interpreter py;
  PyThreadState* borrowed = new_main_state_for_another_thread();
  on_new_thread([&] {
    const auto states = enter_sub_interpreter(borrowed);
    CHILD_CHECK(PyRun_SimpleString("_in_sub = 1\n") == 0);
    {
      CHILD_SITE("made", __LINE__ + 1);
      auto s = pyattach::try_attach();
      CHILD_SITE("misused", __LINE__ - 1);
      CHILD_CHECK(s.status() == pyattach::attach_status::other_interpreter);
      CHILD_CHECK(!s.is_valid());
      // The sub-interpreter is still the attached one: nothing was swapped under it.
      CHILD_CHECK(PyThreadState_GetUnchecked_compat() == states.second);
    }
    try {
      pyattach::attach_scope thrown;
      CHILD_CHECK(!"the throwing constructor did not throw");
    } catch (const pyattach::attach_error& e) {
      CHILD_CHECK(e.status() == pyattach::attach_status::other_interpreter);
    }
    leave_sub_interpreter(states);
    // Back to normal: the thread attaches to the main interpreter with a state of its own.
    attaches_normally_again("assert '_in_sub' not in globals()\n");
  });
  return end_misuse_case(2);
}

// 3.12+ only: inside a pyattach scope the thread switches to a sub-interpreter; a nested attach
// must not swap the main state back in under it. (3.9-3.11 keep one global "current" state, so
// pyattach cannot tell this from another thread holding the GIL; see diagnostics.hpp.)
CHILD_CASE(misuse_other_interpreter_nested) {
  pyattach::interpreter py;
  on_new_thread([&] {
    const int made_outer = __LINE__; pyattach::attach_scope outer;
    PyThreadState* mine = PyThreadState_GetUnchecked_compat();
    PyThreadState* sub = Py_NewInterpreter();
    {
      CHILD_SITE("made", __LINE__ + 1);
      auto nested = pyattach::try_attach();
      CHILD_CHECK(nested.status() == pyattach::attach_status::other_interpreter);
      CHILD_CHECK(PyThreadState_GetUnchecked_compat() == sub);
    }
    CHILD_SITE("misused", made_outer);  // the report names where the thread was attached
    Py_EndInterpreter(sub);
    PyThreadState_Swap(mine);
    CHILD_CHECK(PyRun_SimpleString("_back = 1\n") == 0);
  });
  return end_misuse_case(1);
}

// ---- scopes that outlive their interpreter --------------------------------------------------

CHILD_CASE(misuse_scope_outlived_interpreter) {
  // An attach scope on the creating thread, still open when the interpreter object is destroyed.
  std::optional<pyattach::interpreter> py;
  py.emplace();
  const int made = __LINE__; std::optional<pyattach::attach_scope> s;
  s.emplace(pyattach::source_site::current(__FILE__, made, "misuse_scope_outlived_interpreter"));
  CHILD_CHECK(s->is_valid());
  py.reset();  // Py_FinalizeEx: the main thread state this scope attached is freed
  CHILD_CHECK(Py_IsInitialized() == 0);
  CHILD_SITE("made", made);
  CHILD_SITE("misused", __LINE__); s->release();  // must not call PyEval_SaveThread
  s.reset();
  CHILD_CHECK(pyattach::try_attach().status() == pyattach::attach_status::finalized);
  CHILD_CHECK(pyattach::misuse_count() == 1);
  return child_done();
}

CHILD_CASE(misuse_scope_outlived_thread) {
  // A thread exits with an attach scope still open (made in static storage and never destroyed,
  // as a scope leaked on the heap is): it held the GIL. Before threads exiting with scopes open released the GIL, the next attach anywhere
  // waited for that GIL for ever (3 hangs in 3). Now the exit releases it and the state.
  pyattach::interpreter py;
  const std::size_t base_states = thread_states();
  alignas(pyattach::attach_scope) static unsigned char storage[sizeof(pyattach::attach_scope)];
  int made = 0;
  std::thread t([&] {
    made = __LINE__; new (storage) pyattach::attach_scope();
    CHILD_CHECK(PyRun_SimpleString("import threading\n_tl = threading.local()\n_tl.v = 1\n") == 0);
  });
  t.join();
  CHILD_SITE("made", made);
  // The GIL was given back, and the state destroyed.
  return end_misuse_case(1, base_states);
}

CHILD_CASE(misuse_scopes_open_from_finalized_interpreter) {
  // The thread above, but it attaches again while its old scopes are still open, after a new
  // interpreter started: refused as other_interpreter (it is still "in" the old one).
  pyattach::interpreter::options o;
  o.close_timeout = std::chrono::milliseconds(100);
  std::optional<pyattach::interpreter> py;
  py.emplace(o);
  std::mutex m;
  std::condition_variable cv;
  int step = 0;
  pyattach::set_misuse_handler([](const pyattach::misuse_report& r) noexcept {
    if (r.kind == pyattach::misuse_kind::other_interpreter) pyattach::default_misuse_handler(r);
  });
  std::thread t([&] {
    const int made_outer = __LINE__; pyattach::attach_scope a;
    {
      pyattach::detach_scope d;
      std::unique_lock<std::mutex> lock(m);
      step = 1;
      cv.notify_all();
      cv.wait(lock, [&] { return step == 2; });
      CHILD_SITE("made", __LINE__ + 1);
      auto again = pyattach::try_attach();
      CHILD_SITE("misused", made_outer);
      CHILD_CHECK(again.status() == pyattach::attach_status::other_interpreter);
      // Its interpreter is gone: it cannot re-attach (the destructor would park the thread).
      CHILD_CHECK(!d.reattach());
    }
  });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return step == 1; });
  }
  py.reset();
  py.emplace(o);
  {
    std::lock_guard<std::mutex> lock(m);
    step = 2;
    cv.notify_all();
  }
  t.join();
  // Its old scopes have ended (each reported as scope_outlived_interpreter, filtered above):
  // the same kind of thread attaches to the new interpreter normally.
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}

// ---- Python without an attached state -------------------------------------------------------

CHILD_CASE(misuse_python_without_state) {
  pyattach::interpreter py;
  on_new_thread([&] {
    const int made = __LINE__; { pyattach::attach_scope s; }
    CHILD_SITE("made", made);
    CHILD_SITE("misused", __LINE__); const bool ok = pyattach::expect_attached();
    CHILD_CHECK(!ok);
    pyattach::attach_scope s;
    CHILD_CHECK(pyattach::expect_attached());  // attached: no report
  });
  CHILD_CHECK(pyattach::misuse_count() == 1);
  return child_done();
}

// ---- the abort option, set from code --------------------------------------------------------

CHILD_CASE(misuse_action_from_code) {
  // args[0]: "abort" or "report"; the API wins over PYATTACH_ON_MISUSE in either direction.
  pyattach::set_misuse_action(!args.empty() && args[0] == "abort" ? pyattach::misuse_action::abort
                                                                  : pyattach::misuse_action::report);
  pyattach::interpreter py;
  double_release_on_new_thread();
  return child_done();
}

// ---- the tests ------------------------------------------------------------------------------

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

// The first line of stderr that starts with `marker`, or "" if there is none.
std::string report_line(const std::string& err, const std::string& marker) {
  const std::size_t at = err.find(marker);
  return at == std::string::npos ? "" : err.substr(at, err.find('\n', at) - at);
}

// With PYATTACH_ON_MISUSE=abort the child dies by SIGABRT after printing the report.
child_result expect_abort_on_misuse(const child_case_use& use, const std::string& marker) {
  SCOPED_TRACE("PYATTACH_ON_MISUSE=abort");
  child_options o;
  o.env = {{"PYATTACH_ON_MISUSE", "abort"}};
  const auto r = run_child(use, o);
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.term_signal, SIGABRT) << r.describe();
  EXPECT_NE(r.err.find(marker), std::string::npos)
      << "nothing printed before abort: " << r.describe();
  return r;
}

// The misuse `kind`: with the default handler the child runs to its end, and the first report
// line names both sites it printed; with the abort option it dies at the misuse.
void check_misuse_child(const child_case_use& use, const char* kind) {
  const std::string marker = std::string("pyattach: misuse: ") + kind;
  {
    SCOPED_TRACE("default handler");
    const auto r = run_child(use);
    EXPECT_CHILD_CLEAN(r);
    EXPECT_NE(r.err.find(marker), std::string::npos) << r.describe();
    const auto sites = sites_of(r.out);
    ASSERT_EQ(sites.size(), 2u) << r.describe();
    // The first report line names both source locations.
    const std::string line = report_line(r.err, marker);
    for (const auto& s : sites) EXPECT_NE(line.find(s + " "), std::string::npos) << s << " not in: " << line;
  }
  const auto r = expect_abort_on_misuse(use, marker);
  EXPECT_EQ(r.out.find("done\n"), std::string::npos) << r.describe();
}
}  // namespace

// A test of one misuse kind with check_misuse_child: declares the use of the case and runs it.
#define MISUSE_TEST(test_name, case_name, kind) \
  USES_CHILD_CASE(case_name);                    \
  TEST(Misuse, test_name) { check_misuse_child(uses_##case_name, kind); }

MISUSE_TEST(DoubleRelease, misuse_double_release, "double_release");
MISUSE_TEST(WrongThread, misuse_wrong_thread, "wrong_thread");
MISUSE_TEST(OutOfOrderAndItsDeferredUndo, misuse_out_of_order, "out_of_order");
MISUSE_TEST(DetachWithoutAttach, misuse_detach_without_attach, "detach_without_attach");
MISUSE_TEST(ReleaseThreadStateWhileAttached, misuse_release_while_attached,
            "release_while_attached");
MISUSE_TEST(AttachWhileAnotherInterpreterIsAttached, misuse_other_interpreter, "other_interpreter");
MISUSE_TEST(AttachScopeOutlivesTheInterpreter, misuse_scope_outlived_interpreter,
            "scope_outlived_interpreter");
MISUSE_TEST(AttachWhileScopesOfAFinalizedInterpreterAreOpen,
            misuse_scopes_open_from_finalized_interpreter, "other_interpreter");
MISUSE_TEST(PythonWithoutAnAttachedState, misuse_python_without_state, "python_without_state");

USES_CHILD_CASE(misuse_other_interpreter_nested);
TEST(Misuse, NestedAttachUnderASubInterpreter) {
  if (!pyattach::detail::compat::current_state_is_per_thread) {
    GTEST_SKIP() << "CPython < 3.12 keeps one global current state: not detectable (documented)";
  }
  check_misuse_child(uses_misuse_other_interpreter_nested, "other_interpreter");
}

USES_CHILD_CASE(misuse_custom_handler);
TEST(Misuse, CustomHandlerReceivesTheReportFields) {
  const auto r = run_child(uses_misuse_custom_handler);
  EXPECT_CHILD_CLEAN(r);
  // The custom handler printed nothing; only the one report after restoring the default did.
  EXPECT_EQ(count_occurrences(r.err, "pyattach: misuse:"), 1u) << r.describe();
  EXPECT_NE(r.err.find("pyattach: misuse: double_release"), std::string::npos) << r.describe();
}

USES_CHILD_CASE(misuse_scope_outlived_thread);
// Rule 5 of docs/safety.md, "Exit". The misused site is the thread's exit, not a source line.
TEST(Misuse, ScopeOutlivesItsThread) {
  const std::string marker = "pyattach: misuse: scope_outlived_thread";
  {
    SCOPED_TRACE("default handler");
    const auto r = run_child(uses_misuse_scope_outlived_thread);
    EXPECT_CHILD_CLEAN(r);
    const auto sites = sites_of(r.out);
    ASSERT_EQ(sites.size(), 1u) << r.describe();
    ASSERT_NE(r.err.find(marker), std::string::npos) << r.describe();
    const std::string line = report_line(r.err, marker);
    EXPECT_NE(line.find(sites[0] + " "), std::string::npos) << sites[0] << " not in: " << line;
    EXPECT_NE(line.find("1 scope is still open"), std::string::npos) << line;
  }
  expect_abort_on_misuse(uses_misuse_scope_outlived_thread, marker);
}

USES_CHILD_CASE(misuse_action_from_code);
TEST(Misuse, AbortOptionSetFromCodeOverridesTheEnvironment) {
  auto r = run_child(uses_misuse_action_from_code, child_args({"abort"}));
  EXPECT_EQ(r.term_signal, SIGABRT) << r.describe();
  EXPECT_NE(r.err.find("pyattach: misuse: double_release"), std::string::npos) << r.describe();

  child_options report_opts = child_args({"report"});
  report_opts.env = {{"PYATTACH_ON_MISUSE", "abort"}};
  r = run_child(uses_misuse_action_from_code, report_opts);
  EXPECT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_NE(r.out.find("done\n"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("pyattach: misuse: double_release"), std::string::npos) << r.describe();
}

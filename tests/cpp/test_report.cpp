// tests/cpp/test_report.cpp — make_thread_report(): every thread state joined with pyattach's slots.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <thread>
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
    EXPECT_EQ(t->interpreter, 0) << "the main interpreter's state";
    EXPECT_NE(text.find("worker-" + std::to_string(i)), std::string::npos) << text;
    EXPECT_NE(text.find(std::to_string(t->os_tid)), std::string::npos) << text;
  }
  EXPECT_NE(text.find("made"), std::string::npos) << text;
  EXPECT_NE(text.find("detached"), std::string::npos) << text;
  EXPECT_NE(text.find(r.python_version), std::string::npos) << text;
  EXPECT_NE(text.find("  interp python name"), std::string::npos) << text;
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

// ---- sub-interpreters (CPython 3.12+): one row per thread state, naming its interpreter --------

namespace {
// The rows of thread `tid`, by interpreter id.
std::map<std::int64_t, pyattach::thread_info> rows_of(const pyattach::thread_report& r,
                                                      std::uint64_t tid) {
  std::map<std::int64_t, pyattach::thread_info> out;
  for (const auto& t : r.threads) {
    if (t.os_tid == tid && t.has_thread_state) out[t.interpreter] = t;
  }
  return out;
}

std::size_t rows_in(const pyattach::thread_report& r, std::int64_t interp) {
  std::size_t n = 0;
  for (const auto& t : r.threads) n += t.interpreter == interp ? 1 : 0;
  return n;
}
}  // namespace

#if PY_VERSION_HEX >= 0x030C0000
// An idle thread with states in the main interpreter and two sub-interpreters, a thread inside a
// scope of one of them, and the report made from inside a scope of the other.
CHILD_CASE(report_subinterpreter_states) {
  pyattach::interpreter py;
  pyattach::subinterpreter a = pyattach::subinterpreter::create();
  pyattach::subinterpreter b = pyattach::subinterpreter::create();
  const std::int64_t ia = a.id(), ib = b.id();
  CHILD_CHECK(ia > 0 && ib > 0 && ia != ib);
  worker idle("idle-in-three");
  idle.run([&] {
    { pyattach::attach_scope m; }
    { pyattach::attach_scope in(a); }
    { pyattach::attach_scope in(b); }
    { pyattach::attach_scope in(b); }
  });
  latch inside, leave;
  worker busy("busy-in-a");
  busy.post([&] {
    pyattach::attach_scope in(a);
    inside.set();
    pyattach::detach_scope out;  // a's GIL goes, the state stays: the report shows it detached
    leave.wait(20s);
  });
  CHILD_CHECK(inside.wait());
  latch busy_attached, busy_leave;
  worker holder("holder-in-b");
  holder.post([&] {
    pyattach::attach_scope m;     // its main slot reads attached throughout,
    pyattach::attach_scope in(b);  // but this swaps its main state out
    busy_attached.set();
    busy_leave.wait(20s);  // holds b's GIL: attached
  });
  CHILD_CHECK(busy_attached.wait());
  {
    // The caller is in a scope of a: the report swaps it out for the walk (not refused).
    std::thread caller([&] {
      pyattach::attach_scope in(a);
      const pyattach::thread_report r = pyattach::make_thread_report();
      const std::string text = pyattach::to_string(r);
      std::printf("%s", text.c_str());
      CHILD_CHECK(r.interpreter_available);
      CHILD_CHECK(r.subinterpreter_states == rows_in(r, ia) + rows_in(r, ib));
      CHILD_CHECK(rows_in(r, ia) == 3 && rows_in(r, ib) == 2);
      const auto i = rows_of(r, idle.tid());
      CHILD_CHECK(i.size() == 3 && i.count(0) && i.count(ia) && i.count(ib));
      for (const auto& [interp, t] : i) {
        CHILD_CHECK(t.made_by_pyattach && t.known_to_pyattach && !t.is_caller);
        CHILD_CHECK(t.state == pyattach::thread_attachment::detached);
        CHILD_CHECK(t.scopes == (interp == ib ? 2u : 1u));
      }
      const auto d = rows_of(r, busy.tid());
      CHILD_CHECK(d.count(ia) && d.at(ia).state == pyattach::thread_attachment::detached);
      const auto h = rows_of(r, holder.tid());
      CHILD_CHECK(h.count(ib) && h.at(ib).state == pyattach::thread_attachment::attached);
      // A thread runs one state at a time: its main-interpreter state is not attached.
      CHILD_CHECK(h.count(0) && h.at(0).state == pyattach::thread_attachment::detached);
      // The caller's states as they were when it called: in a scope of a.
      const auto c = rows_of(r, os_tid());
      CHILD_CHECK(c.count(0) && c.at(0).is_caller &&
                  c.at(0).state == pyattach::thread_attachment::detached);
      CHILD_CHECK(c.count(ia) && c.at(ia).is_caller &&
                  c.at(ia).state == pyattach::thread_attachment::attached);
      // The text names each row's interpreter: "  <id> <name> <tid> ..."
      char line[64];
      std::snprintf(line, sizeof line, "  %-6lld %-20s %-9llu detached", static_cast<long long>(ib),
                    "(none)", static_cast<unsigned long long>(idle.tid()));
      CHILD_CHECK(text.find(line) != std::string::npos);
      CHILD_CHECK(text.find("5 in sub-interpreters") != std::string::npos);
      CHILD_CHECK(PyThreadState_Get()->interp == a.state());  // restored after the report
    });
    caller.join();
  }
  busy_leave.set();
  holder.wait_idle();
  leave.set();
  busy.wait_idle();
  busy.join();  // its states are destroyed at its exit
  CHILD_CHECK(a.end());  // destroys the idle thread's state of a
  const pyattach::thread_report r = pyattach::make_thread_report();
  std::printf("%s", pyattach::to_string(r).c_str());
  CHILD_CHECK(rows_in(r, ia) == 0);
  CHILD_CHECK(rows_of(r, busy.tid()).empty());
  CHILD_CHECK(rows_of(r, idle.tid()).count(ib) == 1 && rows_of(r, idle.tid()).count(ia) == 0);
  idle.join();
  holder.join();
  CHILD_CHECK(b.end());
  CHILD_CHECK(pyattach::make_thread_report().subinterpreter_states == 0);
  return child_done();
}
USES_CHILD_CASE(report_subinterpreter_states);
CHILD_TEST(Report, NamesTheInterpreterOfEachSubinterpreterState, report_subinterpreter_states)

#else  // before 3.12 there are no sub-interpreters: every row is the main interpreter's

TEST(Report, EveryRowIsTheMainInterpretersBefore312) {
  worker w("report-main-only");
  w.run([] { pyattach::attach_scope s; });
  const pyattach::thread_report r = pyattach::make_thread_report();
  EXPECT_EQ(r.subinterpreter_states, 0u);
  EXPECT_EQ(rows_of(r, w.tid()).size(), 1u);
  EXPECT_EQ(rows_in(r, 0), r.threads.size()) << pyattach::to_string(r);
}
#endif

// tests/cpp/test_subinterpreter_end.cpp — the end of a sub-interpreter with native threads still
// inside a scope of it (pyattach/subinterpreter.hpp, "Ending"; docs/subinterpreters.md): the
// bounded wait, then the shutdown request (an asynchronous pyattach.InterpreterShutdown made in
// that interpreter), a grace, then parking; and an end that never hangs when a thread holds the
// interpreter's GIL in C++. CPython 3.12+; each case runs in a child process with a deadline.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "subinterpreter_helpers.hpp"

using namespace testutil;
using namespace std::chrono_literals;
using ms = std::chrono::milliseconds;

// A test in the SubinterpreterEnd suite that runs one child case and expects it clean; it skips
// before 3.12. The optional last argument is a child_options expression (child_process.hpp).
#define END_TEST(test_name, case_name, ...)                                                  \
  TEST(SubinterpreterEnd, test_name) {                                                       \
    if (!::testutil::k_has_subinterpreters) {                                                \
      GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+";                          \
    }                                                                                        \
    EXPECT_CHILD_CLEAN(::testutil::run_child(uses_##case_name, ##__VA_ARGS__));              \
  }

#if PY_VERSION_HEX >= 0x030C0000
namespace {

// What the upper bounds below add for a loaded machine (CI runs two tests at once on two cores):
// they tell a bounded end from a hang (the child's deadline) or from waiting out a thread that
// holds the GIL in C++ for longer than this, not fast from slow.
constexpr ms k_load_margin{4000};

ms since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<ms>(std::chrono::steady_clock::now() - t0);
}

// What ended a Python call: "" if it returned, else the exception's class (its repr), and
// whether it is an Exception (pyattach.InterpreterShutdown must be a BaseException only).
struct python_outcome {
  std::string raised;
  bool is_exception = false;
};

// Runs `code` in the current interpreter's __main__ and says how it ended. PRECONDITION: attached.
python_outcome run_outcome(const std::string& code) {
  PyObject* main = PyImport_AddModule("__main__");  // borrowed
  PyObject* g = PyModule_GetDict(main);
  PyObject* r = PyRun_String(code.c_str(), Py_file_input, g, g);
  python_outcome out;
  if (r != nullptr) {
    Py_DECREF(r);
    return out;
  }
  PyObject* exc = PyErr_GetRaisedException();  // 3.12+
  PyObject* repr = PyObject_Repr(reinterpret_cast<PyObject*>(Py_TYPE(exc)));
  out.raised = repr != nullptr ? PyUnicode_AsUTF8(repr) : "<repr failed>";
  out.is_exception = PyErr_GivenExceptionMatches(exc, PyExc_Exception) != 0;
  Py_XDECREF(repr);
  Py_DECREF(exc);
  PyErr_Clear();
  return out;
}

constexpr const char* k_shutdown = "<class 'pyattach.InterpreterShutdown'>";

// Python that catches every request and goes on: only parking stops it.
constexpr const char* k_swallowing_loop =
    "while True:\n"
    "    try:\n"
    "        while True:\n"
    "            pass\n"
    "    except BaseException:\n"
    "        pass\n";

// Whether the thread report shows the thread with OS id `tid` parked.
bool reported_parked(std::uint64_t tid) {
  for (const auto& row : pyattach::make_thread_report().threads) {
    if (row.os_tid == tid && row.state == pyattach::thread_attachment::parked) return true;
  }
  return false;
}

// Waits up to 2 s for parked_thread_count() to reach `n`.
bool parked_count_reaches(std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + 2s;
  while (pyattach::parked_thread_count() < n) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// What the thread of a round of sub_end_detach_scope_race and the test share.
struct race_round {
  std::atomic<bool> inside{false}, end_returned{false}, reattached{false}, ran_after{false},
      done{false};
  std::atomic<std::chrono::steady_clock::rep> start{0};  // when the end began
};

// The main interpreter and a new sub-interpreter still run Python on a fresh thread.
bool others_still_work() {
  bool ok = false;
  std::thread([&] {
    pyattach::subinterpreter other = pyattach::subinterpreter::create();
    {
      pyattach::attach_scope in(other);
      ok = in && run("z = 5\n") && eval_long("z") == 5;
    }
    {
      pyattach::attach_scope m;
      ok = ok && m && run("w = 6\n") && eval_long("w") == 6;
    }
    ok = ok && other.end();
  }).join();
  return ok;
}

}  // namespace

// Rule 4: a native thread in `while True: pass` inside a scope of the interpreter gets
// pyattach.InterpreterShutdown after the bound, leaves its scope normally, and the end succeeds
// within the bound and its graces.
CHILD_CASE(sub_end_requests_python_loop_to_leave) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  std::atomic<bool> inside{false}, scope_ended{false};
  python_outcome outcome;
  bool attached_after_call = false;
  std::thread t([&] {
    {
      pyattach::attach_scope in(sub);
      CHILD_CHECK(in);
      inside = true;
      outcome = run_outcome("while True:\n    pass\n");
      attached_after_call = pyattach::detail::compat::current_state_unchecked() != nullptr &&
                            current_interp() == sub.state();
    }
    scope_ended = pyattach::detail::compat::current_state_unchecked() == nullptr;
  });
  while (!inside) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);
  const auto t0 = std::chrono::steady_clock::now();
  const bool ended = sub.end(200ms);
  const ms took = since(t0);
  t.join();
  std::printf("end(200ms) returned %d after %lld ms; the loop ended with %s\n", ended,
              static_cast<long long>(took.count()), outcome.raised.c_str());
  CHILD_CHECK(ended && sub.ended());
  CHILD_CHECK(took >= 200ms);
  CHILD_CHECK(took < 200ms + 2 * 250ms + k_load_margin);  // the bound, two graces
  CHILD_CHECK(outcome.raised == k_shutdown);
  CHILD_CHECK(!outcome.is_exception);
  CHILD_CHECK(attached_after_call && scope_ended);
  const auto st = sub.stats();
  CHILD_CHECK(st.states_made == 1 && st.states_destroyed == st.states_made);
  CHILD_CHECK(pyattach::parked_thread_count() == 0);
  CHILD_CHECK(others_still_work());
  return child_done();
}
USES_CHILD_CASE(sub_end_requests_python_loop_to_leave);
END_TEST(PythonLoopIsAskedToLeave, sub_end_requests_python_loop_to_leave)

// Rule 4 then 3: a thread that catches the request and goes on running Python is parked at its
// next line (counted, reported as parked); the end succeeds and destroys its state; the main
// interpreter and other sub-interpreters keep working.
CHILD_CASE(sub_end_parks_python_ignoring_request) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  const std::uint64_t parked_before = pyattach::parked_thread_count();
  std::atomic<bool> inside{false};
  std::atomic<std::uint64_t> tid{0};
  std::thread([&] {
    tid = os_tid();
    pyattach::attach_scope in(sub);
    inside = true;
    run_outcome(k_swallowing_loop);
    std::printf("CHILD-FAIL: the swallowing loop returned\n");  // parked: never reached
    ++child_failures();
  }).detach();
  while (!inside) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);
  const auto t0 = std::chrono::steady_clock::now();
  const bool ended = sub.end(200ms);
  const ms took = since(t0);
  std::printf("end(200ms) returned %d after %lld ms; parked threads: %llu\n", ended,
              static_cast<long long>(took.count()),
              static_cast<unsigned long long>(pyattach::parked_thread_count() - parked_before));
  CHILD_CHECK(ended && sub.ended());
  CHILD_CHECK(took < 200ms + 4 * 250ms + k_load_margin);  // the bound, the graces
  CHILD_CHECK(pyattach::parked_thread_count() == parked_before + 1);
  const auto st = sub.stats();
  CHILD_CHECK(st.states_made == 1 && st.states_destroyed == 1);
  CHILD_CHECK(reported_parked(tid));
  CHILD_CHECK(others_still_work());
  return child_done();
}
USES_CHILD_CASE(sub_end_parks_python_ignoring_request);
TEST(SubinterpreterEnd, PythonIgnoringTheRequestIsParked) {
  if (!k_has_subinterpreters) GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+";
  const child_result r = run_child(uses_sub_end_parks_python_ignoring_request);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_NE(r.err.find("parked for good"), std::string::npos) << r.describe();
}

// A thread that holds the interpreter's GIL in C++ (a sleep inside a scope, no detach_scope):
// end() cannot take that GIL to ask anything, returns false within the bound and one grace, and
// never hangs; no request reaches the thread afterwards (it runs Python again normally); once it
// has left, end() succeeds.
CHILD_CASE(sub_end_gil_held_in_cpp) {
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  std::atomic<bool> inside{false};
  python_outcome after;
  std::thread t([&] {
    pyattach::attach_scope in(sub);
    CHILD_CHECK(run("x = 1\n"));
    inside = true;
    std::this_thread::sleep_for(k_load_margin + 2000ms);  // holds the GIL, past any bound below
    after = run_outcome("for i in range(100000):\n    x += 1\n");
  });
  while (!inside) std::this_thread::sleep_for(1ms);
  const auto t0 = std::chrono::steady_clock::now();
  const bool first = sub.end(200ms);
  const ms took = since(t0);
  std::printf("end(200ms) with the GIL held in C++ returned %d after %lld ms\n", first,
              static_cast<long long>(took.count()));
  CHILD_CHECK(!first && !sub.ended());
  CHILD_CHECK(took < 200ms + 250ms + k_load_margin);  // the bound, one grace: not the sleep
  {
    std::thread([&] {
      auto refused = pyattach::try_attach(sub);
      CHILD_CHECK(!refused && refused.status() == pyattach::attach_status::finalizing);
    }).join();
  }
  t.join();
  std::printf("after the sleep the thread's Python ended with '%s'\n", after.raised.c_str());
  CHILD_CHECK(after.raised.empty());  // no stale request
  const auto t1 = std::chrono::steady_clock::now();
  CHILD_CHECK(sub.end(2000ms) && sub.ended());
  CHILD_CHECK(since(t1) < 1000ms);
  const auto st = sub.stats();
  CHILD_CHECK(st.states_made == 1 && st.states_destroyed == 1);
  CHILD_CHECK(others_still_work());
  return child_done();
}
USES_CHILD_CASE(sub_end_gil_held_in_cpp);
END_TEST(GilHeldInCppGivesUpWithoutHanging, sub_end_gil_held_in_cpp)

// A thread inside a detach_scope inside a scope of the interpreter holds its pass but runs no
// Python: nothing is asked of it. After the bound and the graces the end abandons it (takes its
// pass over) and ends the interpreter, destroying its state; when its detach_scope ends, it
// parks (counted, a line on stderr, parked in the thread report) instead of making the destroyed
// state current. The main interpreter and other sub-interpreters keep working. "nested": inside
// its detach_scope the thread first opens and ends a scope of the same interpreter (which makes
// its state current and releases it again): it is abandoned all the same.
CHILD_CASE(sub_end_thread_in_a_detach_scope) {
  const bool nested = !args.empty() && args[0] == "nested";
  pyattach::interpreter py;
  pyattach::subinterpreter sub = pyattach::subinterpreter::create();
  const std::uint64_t parked_before = pyattach::parked_thread_count();
  std::atomic<bool> inside{false}, release{false}, ran_after{false};
  std::atomic<std::uint64_t> tid{0};
  std::thread([&] {
    tid = os_tid();
    pyattach::attach_scope in(sub);
    CHILD_CHECK(run("x = 1\n"));
    {
      pyattach::detach_scope out;
      if (nested) {
        pyattach::attach_scope again(sub);
        CHILD_CHECK(again && run("x += 1\n") && eval_long("x") == 2);
      }
      inside = true;
      while (!release) std::this_thread::sleep_for(1ms);
    }
    ran_after = true;  // parked: never reached
  }).detach();
  while (!inside) std::this_thread::sleep_for(1ms);
  const auto t0 = std::chrono::steady_clock::now();
  const bool ended = sub.end(200ms);
  const ms took = since(t0);
  std::printf("end(200ms) with a thread in a detach_scope returned %d after %lld ms\n", ended,
              static_cast<long long>(took.count()));
  CHILD_CHECK(ended && sub.ended());
  CHILD_CHECK(took < 200ms + 2 * 250ms + k_load_margin);  // the bound, the graces
  const auto st = sub.stats();
  CHILD_CHECK(st.states_made == 1 && st.states_destroyed == 1);
  CHILD_CHECK(pyattach::parked_thread_count() == parked_before);  // not before its scope ends
  release = true;
  CHILD_CHECK(parked_count_reaches(parked_before + 1));
  CHILD_CHECK(pyattach::parked_thread_count() == parked_before + 1);
  CHILD_CHECK(!ran_after);
  CHILD_CHECK(reported_parked(tid));
  CHILD_CHECK(others_still_work());
  return child_done();
}
USES_CHILD_CASE(sub_end_thread_in_a_detach_scope);
TEST(SubinterpreterEnd, ThreadInADetachScopeIsAbandonedAndParks) {
  if (!k_has_subinterpreters) GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+";
  for (const char* mode : {"plain", "nested"}) {
    const child_result r = run_child(uses_sub_end_thread_in_a_detach_scope, child_args({mode}));
    EXPECT_CHILD_CLEAN(r);
    EXPECT_NE(r.err.find("parked for good: its detach_scope"), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("abandoned it"), std::string::npos) << r.describe();
  }
}

// The race between the end abandoning a thread in a detach_scope and that thread's detach_scope
// ending, both ways, many times: the thread's detach_scope ends at a random moment in [-60, +20]
// ms around how long an end that abandons takes (measured in round 0; the abandon comes before
// the close, which that time includes). Each round either ends the interpreter with the thread
// parked, or gives up with the thread re-attached (it then runs Python; a later end() succeeds):
// it keeps its scope open until the end returned, so that nothing else decides the round. Never
// a crash; every state made is destroyed.
CHILD_CASE(sub_end_detach_scope_race) {
  pyattach::interpreter py;
  constexpr int rounds = 200;
  std::mt19937 rng(std::random_device{}());
  int parked = 0, reattached = 0;
  ms abandon_at{0};  // how long an end takes to abandon a thread that stays (round 0)
  for (int round = 0; round <= rounds; ++round) {
    pyattach::subinterpreter sub = pyattach::subinterpreter::create();
    const std::uint64_t parked_before = pyattach::parked_thread_count();
    const auto offset = std::chrono::microseconds(
        std::uniform_int_distribution<long>(-60000, 20000)(rng));
    auto state = std::make_shared<race_round>();
    std::thread([state, sub, round, offset, abandon_at] {
      pyattach::attach_scope in(sub);
      CHILD_CHECK(in && run("x = 1\n"));
      {
        pyattach::detach_scope out;
        state->inside = true;
        while (state->start.load() == 0) std::this_thread::yield();
        const auto t0 = std::chrono::steady_clock::time_point(
            std::chrono::steady_clock::duration(state->start.load()));
        if (round == 0) {
          while (!state->end_returned) std::this_thread::sleep_for(1ms);
        } else {
          std::this_thread::sleep_until(t0 + abandon_at + offset);
        }
      }
      state->reattached = true;
      // Holds its scope (and the GIL, in C++) until the end returned.
      while (!state->end_returned) std::this_thread::sleep_for(1ms);
      state->ran_after = run("x += 1\n") && eval_long("x") == 2;
      state->done = true;
    }).detach();
    while (!state->inside) std::this_thread::sleep_for(100us);
    const auto t0 = std::chrono::steady_clock::now();
    state->start = t0.time_since_epoch().count();
    const bool ended = sub.end(20ms);
    const ms took = since(t0);
    state->end_returned = true;
    if (round == 0) abandon_at = took;
    if (ended) {
      CHILD_CHECK(sub.ended());
      CHILD_CHECK(parked_count_reaches(parked_before + 1));
      CHILD_CHECK(!state->reattached);
      ++parked;
    } else {
      const auto until = std::chrono::steady_clock::now() + 5s;
      while (!state->done && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
      }
      CHILD_CHECK(state->reattached && state->done && state->ran_after);
      CHILD_CHECK(sub.end(2000ms) && sub.ended());
      CHILD_CHECK(pyattach::parked_thread_count() == parked_before);
      ++reattached;
    }
    const auto st = sub.stats();
    CHILD_CHECK(st.states_made == 1 && st.states_destroyed == 1);
    if (child_failures() != 0) break;
  }
  std::printf("%d rounds around %lld ms: %d ended with the thread parked, %d gave up with it "
              "re-attached\n", rounds + 1, static_cast<long long>(abandon_at.count()), parked,
              reattached);
  CHILD_CHECK(parked >= 1 && reattached >= 1);
  CHILD_CHECK(others_still_work());
  return child_done();
}
USES_CHILD_CASE(sub_end_detach_scope_race);
// About 200 x 0.3 s (a round that gives up waits a second grace); more under a sanitizer.
child_options race_deadline() {
  child_options o;
  o.timeout = 300s;
  return o;
}
END_TEST(DetachScopeEndingRacesTheAbandon, sub_end_detach_scope_race, race_deadline())

// The close hook's rules (an end that Python code began, here the low-level module's destroy()
// of an interpreter it made and pyattach adopted): the same request after its own 2 s wait, made
// on the ending thread; the loop leaves and the end goes on.
CHILD_CASE(sub_end_python_destroys_with_a_loop_inside) {
  pyattach::interpreter py;
  const std::string module = PY_VERSION_HEX >= 0x030D0000 ? "_interpreters" : "_xxsubinterpreters";
  PyInterpreterState* interp = nullptr;
  {
    pyattach::attach_scope m;
    CHILD_CHECK(run("import " + module + " as lowlevel\nsid = lowlevel.create()\n"));
    const long id = eval_long("int(sid)");
    for (PyInterpreterState* i = PyInterpreterState_Head(); i != nullptr;
         i = PyInterpreterState_Next(i)) {
      if (PyInterpreterState_GetID(i) == id) interp = i;
    }
  }
  CHILD_CHECK(interp != nullptr);
  if (interp == nullptr) return child_done();
  pyattach::subinterpreter h = pyattach::subinterpreter::adopt(interp);
  std::atomic<bool> inside{false};
  python_outcome outcome;
  std::thread t([&] {
    pyattach::attach_scope in(h);
    inside = true;
    outcome = run_outcome("while True:\n    pass\n");
  });
  while (!inside) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(50ms);
  const auto t0 = std::chrono::steady_clock::now();
  {
    pyattach::attach_scope m;
    CHILD_CHECK(run("lowlevel.destroy(sid)\n"));
  }
  const ms took = since(t0);
  t.join();
  std::printf("destroy() returned after %lld ms; the loop ended with %s\n",
              static_cast<long long>(took.count()), outcome.raised.c_str());
  CHILD_CHECK(outcome.raised == k_shutdown);
  CHILD_CHECK(took >= 2000ms && took < 2000ms + 500ms + k_load_margin);  // its wait, the grace
  CHILD_CHECK(h.ended());
  const auto st = h.stats();
  CHILD_CHECK(st.states_made >= 1 && st.states_destroyed == st.states_made);
  return child_done();
}
USES_CHILD_CASE(sub_end_python_destroys_with_a_loop_inside);
END_TEST(PythonEndingItAsksAPythonLoopToLeave, sub_end_python_destroys_with_a_loop_inside)

// The main interpreter's finalization ends the sub-interpreters pyattach made (its close hook):
// a thread running Python in one leaves at the request ("unwinds") or is parked ("swallows"), a
// thread in a detach_scope inside a scope of one is abandoned and parks when that detach_scope
// ends ("detached"), and Py_FinalizeEx finishes within the close bound and the graces.
CHILD_CASE(sub_end_at_main_finalization) {
  const std::string mode = args.empty() ? "" : args[0];
  const bool swallows = mode == "swallows", detached = mode == "detached";
  std::atomic<bool> inside{false}, left{false}, release{false};
  std::thread t;
  ms took{0};
  {
    std::optional<pyattach::interpreter> py;
    py.emplace();
    pyattach::set_close_timeout(500ms);
    pyattach::subinterpreter sub = pyattach::subinterpreter::create();
    t = std::thread([&, sub] {
      {
        pyattach::attach_scope in(sub);
        if (detached) {
          pyattach::detach_scope out;
          inside = true;
          while (!release) std::this_thread::sleep_for(1ms);
        } else {
          inside = true;
          const python_outcome o =
              run_outcome(swallows ? k_swallowing_loop : "while True: pass\n");
          CHILD_CHECK(!swallows && o.raised == k_shutdown);
        }
      }
      left = true;
    });
    while (!inside) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(50ms);
    const auto t0 = std::chrono::steady_clock::now();
    py.reset();  // Py_FinalizeEx
    took = since(t0);
  }
  release = true;
  const bool parked = (swallows || detached) && parked_count_reaches(1);
  std::printf("finalized in %lld ms; the thread %s\n", static_cast<long long>(took.count()),
              left ? "left" : parked ? "parked" : "did not leave");
  CHILD_CHECK(took < 500ms + 4 * 250ms + k_load_margin);
  if (swallows || detached) {
    CHILD_CHECK(parked && !left && pyattach::parked_thread_count() == 1);
    t.detach();
  } else {
    CHILD_CHECK(left);
    t.join();
  }
  return child_done();
}
USES_CHILD_CASE(sub_end_at_main_finalization);
END_TEST(MainFinalizationAsksAPythonLoopToLeave, sub_end_at_main_finalization,
         child_args({"unwinds"}))
END_TEST(MainFinalizationParksAThreadIgnoringTheRequest, sub_end_at_main_finalization,
         child_args({"swallows"}))
END_TEST(MainFinalizationAbandonsAThreadInADetachScope, sub_end_at_main_finalization,
         child_args({"detached"}))
#endif

// tests/cpp/test_observe.cpp — metrics and the timeline trace (pyattach/observe.hpp), checked
// against what the test did: counts equal the attaches made, durations bracket the sleeps, and
// every trace passes tools/trace_check.py (valid trace-event format, matching and nesting spans,
// monotonic per thread, and no two threads' held-GIL intervals overlapping).
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;

namespace {
const pyattach::thread_metrics* find_tid(const pyattach::metrics_snapshot& m, std::uint64_t tid) {
  for (const auto& t : m.threads) {
    if (t.alive && t.os_tid == tid) return &t;
  }
  return nullptr;
}

std::string temp_path(const std::string& stem) {
  return "/tmp/pyattach-test-" + std::to_string(::getpid()) + "-" + stem + ".json";
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs tools/trace_check.py on `path` in this interpreter. Returns its problems (empty: valid),
// or a description of why it could not run; fills `globals` with `r` (the check's result).
std::string check_trace(const std::string& path, PyObject* globals, bool gil_build = true) {
  const std::string code = std::string("import sys\nsys.path.insert(0, '") + PYATTACH_SOURCE_DIR +
                           "/tools')\nimport trace_check\nr = trace_check.check('" + path +
                           "', gil_build=" + (gil_build ? "True" : "False") +
                           ")\nproblems = '\\n'.join(r.problems)\n";
  if (!py_exec(code, globals)) return "trace_check did not run";
  return py_eval_str("problems", globals);
}

// Spans named `name` on thread `tid` in the checked trace held by `globals`.
long spans_of(PyObject* globals, std::uint64_t tid, const std::string& name) {
  return py_eval_long("r.spans.get(" + std::to_string(tid) + ", {}).get('" + name + "', 0)",
                      globals, -1);
}

struct metrics_on {
  metrics_on() {
    pyattach::reset_metrics();
    pyattach::set_metrics(true);
  }
  ~metrics_on() { pyattach::set_metrics(false); }
};
}  // namespace

TEST(Metrics, OffByDefaultAndNothingIsCounted) {
  EXPECT_FALSE(pyattach::metrics_enabled());
  worker w("metrics-off");
  for (int i = 0; i < 5; ++i) w.run([] { pyattach::attach_scope py; });
  const auto m = pyattach::metrics();
  EXPECT_FALSE(m.enabled);
  const auto* t = find_tid(m, w.tid());
  EXPECT_TRUE(t == nullptr || t->attaches == 0) << pyattach::to_string(m);
}

TEST(Metrics, CountsEveryAttachAndTimesHoldWaitAndDetached) {
  metrics_on on;
  worker w("metrics-count");
  constexpr int k_attaches = 40;
  for (int i = 0; i < k_attaches; ++i) {
    w.run([] {
      pyattach::attach_scope py;
      pyattach::attach_scope nested;  // nested scopes take no GIL: not counted
    });
  }
  // One attach that holds the GIL 30 ms, and a detach scope of 40 ms inside another.
  w.run([] {
    pyattach::attach_scope py;
    std::this_thread::sleep_for(30ms);
  });
  w.run([] {
    pyattach::attach_scope py;
    pyattach::detach_scope blocking;
    std::this_thread::sleep_for(40ms);
  });
  const auto m = pyattach::metrics();
  EXPECT_TRUE(m.enabled);
  const auto* t = find_tid(m, w.tid());
  ASSERT_NE(t, nullptr) << pyattach::to_string(m);
  EXPECT_EQ(t->attaches, static_cast<std::uint64_t>(k_attaches + 2));
  // Every GIL take waits once: the attaches, and the detach scope's re-attach.
  EXPECT_EQ(t->wait.count, static_cast<std::uint64_t>(k_attaches + 3));
  // Held: each attach's span, and the detach scope splits its scope's in two.
  EXPECT_EQ(t->attached.count, static_cast<std::uint64_t>(k_attaches + 3));
  EXPECT_EQ(t->detached.count, 1u);
  EXPECT_GE(t->attached.max, 30ms);
  EXPECT_LT(t->attached.max, 5s);
  EXPECT_GE(t->detached.max, 40ms);
  EXPECT_LT(t->detached.max, 5s);
  EXPECT_GE(t->attached.quantile(1.0), 30ms);
  EXPECT_LE(t->attached.quantile(0.5), t->attached.quantile(0.99));
  EXPECT_LT(t->attached.quantile(0.5), 30ms) << "most holds are empty scopes";
  EXPECT_GE(t->attached.total, 30ms);
  std::uint64_t in_buckets = 0;
  for (const auto& b : t->attached.buckets) in_buckets += b.second;
  EXPECT_EQ(in_buckets, t->attached.count);
  // Only the main interpreter: its row is the thread's totals.
  ASSERT_EQ(t->interpreters.size(), 1u);
  EXPECT_EQ(t->interpreters[0].interpreter, 0);
  EXPECT_EQ(t->interpreters[0].attaches, t->attaches);
  EXPECT_EQ(t->interpreters[0].wait, t->wait.total);
  EXPECT_EQ(t->interpreters[0].attached, t->attached.total);
  const std::string text = pyattach::to_string(m);
  EXPECT_NE(text.find("attaches 42"), std::string::npos) << text;
  EXPECT_EQ(text.find("in interpreter"), std::string::npos) << text;
}

TEST(Metrics, SwitchingOffStopsCountingAndResetZeroes) {
  metrics_on on;
  worker w("metrics-switch");
  for (int i = 0; i < 3; ++i) w.run([] { pyattach::attach_scope py; });
  pyattach::set_metrics(false);
  for (int i = 0; i < 5; ++i) w.run([] { pyattach::attach_scope py; });
  auto m = pyattach::metrics();
  ASSERT_NE(find_tid(m, w.tid()), nullptr);
  EXPECT_EQ(find_tid(m, w.tid())->attaches, 3u);
  pyattach::set_metrics(true);
  pyattach::reset_metrics();
  w.run([] { pyattach::attach_scope py; });
  m = pyattach::metrics();
  EXPECT_EQ(find_tid(m, w.tid())->attaches, 1u);
  EXPECT_EQ(find_tid(m, w.tid())->wait.count, 1u);
}

TEST(Metrics, ExitedThreadsAreKeptPerPool) {
  metrics_on on;
  {
    worker w("metrics-exit");
    for (int i = 0; i < 7; ++i) w.run([] { pyattach::attach_scope py; });
  }
  const auto m = pyattach::metrics();
  std::uint64_t exited = 0;
  for (const auto& t : m.threads) {
    if (!t.alive && t.pool.empty()) exited += t.attaches;
  }
  EXPECT_EQ(exited, 7u) << pyattach::to_string(m);
}

TEST(Metrics, PoolFiguresAreTheSumOfItsWorkers) {
  metrics_on on;
  pyattach::pool_options o;
  o.name = "metrics-pool";
  o.workers = 2;
  o.batch_python = false;  // one attach per task
  std::uint64_t attaches = 0;
  {
    pyattach::thread_pool pool(o);
    std::vector<std::future<void>> done;
    for (int i = 0; i < 50; ++i) {
      done.push_back(pool.submit_python([] { PyRun_SimpleString("x = 1\n"); }));
    }
    for (auto& f : done) f.get();
    for (const auto& w : pool.stats().workers) attaches += w.attaches;
    const auto m = pyattach::metrics();
    ASSERT_EQ(m.pools.size(), 1u) << pyattach::to_string(m);
    EXPECT_EQ(m.pools[0].name, "metrics-pool");
    EXPECT_EQ(m.pools[0].attaches, attaches);
    EXPECT_EQ(m.pools[0].wait.count, attaches);
    EXPECT_GE(attaches, 50u);
  }
  // After the pool is gone its workers' figures stay, summed.
  const auto after = pyattach::metrics();
  ASSERT_EQ(after.pools.size(), 1u) << pyattach::to_string(after);
  EXPECT_EQ(after.pools[0].attaches, attaches);
  EXPECT_EQ(after.pools[0].workers, 0u);
}

// CPython's eval loop hands the GIL to a thread that waited a whole switch interval, inside the
// holder's scope, where pyattach cannot see it (observe.hpp): on a loaded machine a holder that
// is descheduled for 5 ms would make its scope overlap another's. A long interval keeps these
// runs to the hand-overs pyattach makes.
struct long_switch_interval {
  long_switch_interval() {
    pyattach::attach_scope py;
    PyRun_SimpleString("import sys\n_saved_interval = sys.getswitchinterval()\n"
                       "sys.setswitchinterval(100.0)\n");
  }
  ~long_switch_interval() {
    pyattach::attach_scope py;
    PyRun_SimpleString("sys.setswitchinterval(_saved_interval)\n");
  }
};

TEST(Trace, RealRunPassesTheChecksAndCountsMatch) {
  long_switch_interval interval;
  ASSERT_TRUE(pyattach::start_trace());
  EXPECT_FALSE(pyattach::start_trace()) << "a second trace while one runs";
  constexpr int k_threads = 4, k_rounds = 150;
  std::vector<std::unique_ptr<worker>> workers;
  for (int i = 0; i < k_threads; ++i) {
    workers.push_back(std::make_unique<worker>("trace-" + std::to_string(i)));
  }
  // Short Python bodies (no GIL switch inside a scope), some with a detach scope inside, all
  // four threads at once: contended hand-overs.
  for (auto& w : workers) {
    w->post([] {
      for (int k = 0; k < k_rounds; ++k) {
        pyattach::attach_scope py;
        PyRun_SimpleString("_x = sum(range(20))\n");
        if (k % 3 == 0) {
          pyattach::detach_scope blocking;
          std::this_thread::sleep_for(50us);
        }
      }
    });
  }
  for (auto& w : workers) w->wait_idle(60s);
  const std::string path = temp_path("real");
  const pyattach::trace_result r = pyattach::stop_trace(path);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.dropped, 0u);
  EXPECT_FALSE(pyattach::trace_running());
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  EXPECT_EQ(check_trace(path, g), "");
  for (auto& w : workers) {
    EXPECT_EQ(spans_of(g, w->tid(), "attached"), k_rounds);
    EXPECT_EQ(spans_of(g, w->tid(), "detached (blocking C++)"), (k_rounds + 2) / 3);
    // One wait per attach and per re-attach after a detach scope.
    EXPECT_EQ(spans_of(g, w->tid(), "waiting for the GIL"), k_rounds + (k_rounds + 2) / 3);
  }
  const std::string text = read_file(path);
  for (auto& w : workers) {
    // Its thread_name metadata: "<OS name> (tid N)".
    EXPECT_NE(text.find("\"tid\":" + std::to_string(w->tid()) + ",\"args\":{\"name\":\""),
              std::string::npos);
  }
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

// A checker that finds nothing wrong in the file above is only worth something if the held
// intervals it compares are where the GIL really was: a trace whose "attached" begins before the
// GIL is taken must fail it. The same run, marked by hand around the wait instead of after it.
TEST(Trace, TheOverlapCheckCatchesSpansPlacedBeforeTheGilIsTaken) {
  ASSERT_TRUE(pyattach::start_trace());
  // One thread holds the GIL for 50 ms; another marks "attached" while it waits for it. The order
  // is forced (a latch), not left to contention, which a loaded machine may not produce.
  latch holding;
  worker holder("wrong-holder"), waiter("wrong-waiter");
  holder.post([&holding] {
    pyattach::trace_begin(pyattach::trace_span::attached);
    const PyGILState_STATE st = PyGILState_Ensure();
    holding.set();
    std::this_thread::sleep_for(50ms);  // holding the GIL
    PyGILState_Release(st);
    pyattach::trace_end(pyattach::trace_span::attached);
  });
  waiter.post([&holding] {
    holding.wait();
    pyattach::trace_begin(pyattach::trace_span::attached);  // wrong: before the GIL is taken
    const PyGILState_STATE st = PyGILState_Ensure();
    PyGILState_Release(st);
    pyattach::trace_end(pyattach::trace_span::attached);
  });
  holder.wait_idle(60s);
  waiter.wait_idle(60s);
  const std::string path = temp_path("wrong");
  ASSERT_TRUE(pyattach::stop_trace(path).ok);
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  const std::string problems = check_trace(path, g);
  EXPECT_NE(problems.find("overlap"), std::string::npos) << problems;
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

TEST(Trace, FullBufferDropsAndCountsNeverBlocks) {
  pyattach::trace_options o;
  o.events_per_thread = 64;
  ASSERT_TRUE(pyattach::start_trace(o));
  worker w("trace-full");
  const auto t0 = std::chrono::steady_clock::now();
  w.run([] {
    for (int k = 0; k < 2000; ++k) pyattach::attach_scope py;
  });
  const auto took = std::chrono::steady_clock::now() - t0;
  const std::string path = temp_path("full");
  const pyattach::trace_result r = pyattach::stop_trace(path);
  ASSERT_TRUE(r.ok) << r.error;
  // 2000 attaches x 4 events; 64 kept (begins only where their end fits).
  EXPECT_LE(r.events, 64u + 8u);
  EXPECT_GE(r.dropped, 2000u * 4 - 64);
  EXPECT_LT(took, 30s);
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  EXPECT_EQ(check_trace(path, g), "");
  const std::string text = read_file(path);
  EXPECT_NE(text.find("\"dropped\":" + std::to_string(r.dropped)), std::string::npos);
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

TEST(Trace, PoolTasksAndMisuseAppear) {
  ASSERT_TRUE(pyattach::start_trace());
  pyattach::pool_options o;
  o.name = "trace-pool";
  o.workers = 1;
  {
    pyattach::thread_pool pool(o);
    std::vector<std::future<void>> done;
    for (int i = 0; i < 10; ++i) done.push_back(pool.submit_python([] { PyRun_SimpleString("z = 1\n"); }));
    done.push_back(pool.submit([] {}));  // a C++ task: a task span outside any attached span
    for (auto& f : done) f.get();
  }
  worker w("trace-misuse");
  w.run([] {
    pyattach::attach_scope py;
    py.release();
    py.release();  // double_release: an instant event
  });
  // A later span on the same thread: the instant must be written between its spans, in time order.
  w.run([] { pyattach::attach_scope py; });
  const std::string path = temp_path("pool");
  ASSERT_TRUE(pyattach::stop_trace(path).ok);
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  EXPECT_EQ(check_trace(path, g), "");
  const std::string text = read_file(path);
  EXPECT_EQ(count_occurrences(text, "\"name\":\"task\",\"cat\":\"pool\",\"ph\":\"B\""), 11u);
  EXPECT_NE(text.find("\"pool\":\"trace-pool\",\"worker\":\"trace-pool"), std::string::npos) << text;
  EXPECT_NE(text.find("\"task\":11"), std::string::npos);
  EXPECT_NE(text.find("misuse: double_release"), std::string::npos);
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

// ---- the environment variables, in a child (they are read once per process) ---------------------

CHILD_CASE(observe_env) {
  const std::string path = args.at(0);
  {
    pyattach::interpreter py;
    CHILD_CHECK(pyattach::metrics_enabled());
    CHILD_CHECK(pyattach::trace_running());
    worker w("env-worker");
    for (int i = 0; i < 12; ++i) w.run([] { pyattach::attach_scope a; });
    const auto m = pyattach::metrics();
    const auto* t = find_tid(m, w.tid());
    CHILD_CHECK(t != nullptr && t->attaches == 12);
    std::printf("RESULT attaches=%llu\n",
                static_cast<unsigned long long>(t != nullptr ? t->attaches : 0));
  }  // ~interpreter closes the gate: the trace is written now
  CHILD_CHECK(!pyattach::trace_running());
  std::ifstream f(path);
  CHILD_CHECK(f.good());
  return child_exit_code();
}
USES_CHILD_CASE(observe_env);

TEST(Observe, EnvironmentSwitchesMetricsAndWritesTheTraceAtClose) {
  const std::string path = temp_path("env");
  child_options o;
  o.args = {path};
  o.env = {{"PYATTACH_METRICS", "1"}, {"PYATTACH_TRACE", path}};
  const child_result r = run_child(uses_observe_env, o);
  ASSERT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_EQ(result_field(r.out, "attaches"), 12);
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  EXPECT_EQ(check_trace(path, g), "");
  const std::string text = read_file(path);
  EXPECT_NE(text.find("gate closing"), std::string::npos);
  EXPECT_EQ(count_occurrences(text, "\"name\":\"attached\",\"cat\":\"gil\",\"ph\":\"B\""), 12u)
      << "the main thread's attaches are not pyattach's (it holds the GIL)";
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

// The fallback clock (another clocksource, another architecture): forced with PYATTACH_CLOCK.
CHILD_CASE(observe_monotonic_clock) {
  pyattach::interpreter py;
  pyattach::set_metrics(true);
  worker w("clock-worker");
  w.run([] {
    pyattach::attach_scope a;
    std::this_thread::sleep_for(20ms);
  });
  const auto m = pyattach::metrics();
  const auto* t = find_tid(m, w.tid());
  CHILD_CHECK(m.clock == "clock_gettime(CLOCK_MONOTONIC)");
  CHILD_CHECK(t != nullptr && t->attaches == 1);
  CHILD_CHECK(t != nullptr && t->attached.max >= 20ms && t->attached.max < 5s);
  std::printf("RESULT clock_ok=%d\n", m.clock == "clock_gettime(CLOCK_MONOTONIC)" ? 1 : 0);
  return child_exit_code();
}
USES_CHILD_CASE(observe_monotonic_clock);

TEST(Metrics, FallbackClockTimesTheSame) {
  child_options o;
  o.env = {{"PYATTACH_CLOCK", "monotonic"}};
  const child_result r = run_child(uses_observe_monotonic_clock, o);
  ASSERT_TRUE(r.exited_cleanly()) << r.describe();
  EXPECT_EQ(result_field(r.out, "clock_ok"), 1);
}

// ---- sub-interpreters (CPython 3.12+): spans and figures name their interpreter -----------------

#if PY_VERSION_HEX >= 0x030C0000
namespace {
const pyattach::interpreter_metrics* in_interp(const pyattach::thread_metrics* t, std::int64_t id) {
  if (t == nullptr) return nullptr;
  for (const auto& i : t->interpreters) {
    if (i.interpreter == id) return &i;
  }
  return nullptr;
}
}  // namespace

// Two threads in two own-GIL interpreters at once (their holds may overlap: the trace check
// compares each GIL's holders only), one in a shared-GIL interpreter, and one that swaps from the
// main interpreter into a sub-interpreter and back to the main one by its handle. Prints the
// threads' ids and writes the trace to args[0], which the parent checks.
CHILD_CASE(observe_subinterpreters) {
  constexpr int k_rounds = 60, k_swaps = 20;
  pyattach::interpreter py;
  pyattach::set_metrics(true);
  CHILD_CHECK(pyattach::start_trace());
  pyattach::subinterpreter a = pyattach::subinterpreter::create();
  pyattach::subinterpreter b = pyattach::subinterpreter::create();
  pyattach::subinterpreter shared =
      pyattach::subinterpreter::create(pyattach::interpreter_options::legacy());
  // A long switch interval in every GIL: CPython's eval loop must not hand a GIL over inside a
  // scope (docs/observability.md, "What pyattach can see"), which the trace would show as overlap.
  for (const auto* in : {&a, &b, &shared}) {
    std::thread([&] {
      pyattach::attach_scope s(*in);
      CHILD_CHECK(PyRun_SimpleString("import sys\nsys.setswitchinterval(100.0)\n") == 0);
    }).join();
  }
  {
    pyattach::attach_scope s;
    CHILD_CHECK(PyRun_SimpleString("import sys\nsys.setswitchinterval(100.0)\n") == 0);
  }
  const auto loop_in = [&](const pyattach::subinterpreter& in) {
    for (int k = 0; k < k_rounds; ++k) {
      pyattach::attach_scope s(in);
      CHILD_CHECK(PyRun_SimpleString("_x = sum(range(200))\n") == 0);
      if (k == 0) std::this_thread::sleep_for(20ms);  // held: counted in this interpreter
      if (k % 5 == 0) {
        pyattach::detach_scope out;  // a re-take, not an attach
        std::this_thread::sleep_for(100us);
      }
    }
  };
  worker wa("in-a"), wb("in-b"), wc("in-shared"), ws("swapper");
  wa.post([&] { loop_in(a); });
  wb.post([&] { loop_in(b); });
  wc.post([&] { loop_in(shared); });
  ws.post([&] {
    for (int k = 0; k < k_swaps; ++k) {
      pyattach::attach_scope m;
      pyattach::attach_scope in(a);  // swaps the main state out
      {
        pyattach::attach_scope back(pyattach::subinterpreter::main());  // swaps a's out
        CHILD_CHECK(PyThreadState_Get()->interp == PyInterpreterState_Main());
      }
      CHILD_CHECK(PyThreadState_Get()->interp == a.state());
    }
  });
  for (worker* w : {&wa, &wb, &wc, &ws}) w->wait_idle(60s);

  const pyattach::metrics_snapshot m = pyattach::metrics();
  const std::string text = pyattach::to_string(m);
  std::printf("%s", text.c_str());
  // The first sub-interpreter attach of a fresh thread gives it its main state first: one main
  // attach (subinterpreter.hpp, "PyGILState").
  const std::pair<worker*, pyattach::subinterpreter*> loops[] = {{&wa, &a}, {&wb, &b},
                                                                  {&wc, &shared}};
  for (const auto& [w, in] : loops) {
    const pyattach::thread_metrics* t = find_tid(m, w->tid());
    const auto* sub = in_interp(t, in->id());
    const auto* main = in_interp(t, 0);
    CHILD_CHECK(t != nullptr && t->attaches == k_rounds + 1);
    CHILD_CHECK(t != nullptr && t->interpreters.size() == 2);
    CHILD_CHECK(sub != nullptr && sub->attaches == k_rounds && sub->attached >= 20ms);
    CHILD_CHECK(main != nullptr && main->attaches == 1 && main->attached < 20ms);
    CHILD_CHECK(t != nullptr && sub != nullptr && main != nullptr &&
                sub->attached + main->attached <= t->attached.total + 1us);
    CHILD_CHECK(text.find("in interpreter " + std::to_string(in->id()) + ": attaches " +
                          std::to_string(k_rounds)) != std::string::npos);
  }
  // Per round: the main scope and the one on its handle attach, a's scope attaches, and the two
  // states swapped out are taken again (re-takes).
  const pyattach::thread_metrics* t = find_tid(m, ws.tid());
  CHILD_CHECK(t != nullptr && t->attaches == 3 * k_swaps && t->wait.count == 5 * k_swaps);
  CHILD_CHECK(in_interp(t, 0) != nullptr && in_interp(t, 0)->attaches == 2 * k_swaps);
  CHILD_CHECK(in_interp(t, a.id()) != nullptr && in_interp(t, a.id())->attaches == k_swaps);

  const pyattach::trace_result r = pyattach::stop_trace(args.at(0));
  CHILD_CHECK(r.ok && r.dropped == 0);
  std::printf("RESULT a=%lld b=%lld shared=%lld tid_a=%llu tid_b=%llu tid_shared=%llu "
              "tid_swapper=%llu\n",
              static_cast<long long>(a.id()), static_cast<long long>(b.id()),
              static_cast<long long>(shared.id()), static_cast<unsigned long long>(wa.tid()),
              static_cast<unsigned long long>(wb.tid()), static_cast<unsigned long long>(wc.tid()),
              static_cast<unsigned long long>(ws.tid()));
  CHILD_CHECK(a.end() && b.end() && shared.end());
  return child_done();
}
USES_CHILD_CASE(observe_subinterpreters);

TEST(Trace, SubinterpreterSpansNameTheirInterpreterAndPassTheChecks) {
  const std::string path = temp_path("subinterpreters");
  const child_result c = run_child(uses_observe_subinterpreters, child_args({path}));
  EXPECT_CHILD_CLEAN(c);
  const long a = result_field(c.out, "a"), b = result_field(c.out, "b");
  const long shared = result_field(c.out, "shared");
  ASSERT_GT(a, 0) << c.describe();
  pyattach::attach_scope py;
  PyObject* g = new_globals();
  EXPECT_EQ(check_trace(path, g), "");
  // Attached spans of (thread, interp): a sub-interpreter's begin carries args interp and gil.
  const auto spans_in = [g](long tid, long interp) {
    return py_eval_long("sum(1 for s in r.span_list.get(" + std::to_string(tid) +
                            ", []) if s.name == 'attached' and "
                            "(s.args or {}).get('interp', 0) == " + std::to_string(interp) +
                            ")",
                        g, -1);
  };
  constexpr long k_rounds = 60, k_swaps = 20;
  EXPECT_EQ(spans_in(result_field(c.out, "tid_a"), a), k_rounds);
  EXPECT_EQ(spans_in(result_field(c.out, "tid_b"), b), k_rounds);
  EXPECT_EQ(spans_in(result_field(c.out, "tid_shared"), shared), k_rounds);
  EXPECT_EQ(spans_in(result_field(c.out, "tid_a"), 0), 1) << "its first main state";
  // Swapping: the main scope's span ends at the swap and begins again after it; a's likewise
  // around the scope on the main interpreter's handle, which has a span of its own.
  EXPECT_EQ(spans_in(result_field(c.out, "tid_swapper"), 0), 3 * k_swaps);
  EXPECT_EQ(spans_in(result_field(c.out, "tid_swapper"), a), 2 * k_swaps);
  const std::string text = read_file(path);
  const auto args = [](long interp, long gil) {
    return "\"args\":{\"interp\":" + std::to_string(interp) + ",\"gil\":" + std::to_string(gil) +
           "}";
  };
  EXPECT_NE(text.find(args(a, a)), std::string::npos);
  EXPECT_NE(text.find(args(shared, 0)), std::string::npos) << "a shared GIL is the main one's";
  Py_DECREF(g);
  if (!HasFailure()) std::remove(path.c_str());
}

#else  // before 3.12 there are no sub-interpreters: nothing but the main interpreter is named

TEST(Trace, NoSpanNamesAnInterpreterBefore312) {
  ASSERT_TRUE(pyattach::start_trace());
  worker w("trace-main-only");
  for (int i = 0; i < 5; ++i) w.run([] { pyattach::attach_scope py; });
  const std::string path = temp_path("main-only");
  ASSERT_TRUE(pyattach::stop_trace(path).ok);
  EXPECT_EQ(read_file(path).find("\"interp\""), std::string::npos);
  if (!HasFailure()) std::remove(path.c_str());
}
#endif

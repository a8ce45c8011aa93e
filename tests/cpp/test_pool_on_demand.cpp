// tests/cpp/test_pool_on_demand.cpp — pyattach::thread_pool (pool.hpp): what a ThreadPoolExecutor
// on top needs: workers started on demand, the name separator, stop() without joining, and
// detach().
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== 15. on demand, the name separator, stop() and detach() ===================================
// pool.hpp, "On demand" and "Stopping without joining": what concurrent.futures.ThreadPoolExecutor
// needs (lazy workers named <prefix>_<M>, shutdown(wait=False), a collected executor).

namespace {
pool_options on_demand(const std::string& name, std::size_t workers) {
  pool_options o = named_options(name, workers);
  o.spawn_on_demand = true;
  return o;
}

std::vector<std::string> stats_names(const thread_pool& pool) {
  std::vector<std::string> v;
  for (const auto& w : pool.stats().workers) v.push_back(w.name);
  return v;
}
}  // namespace

TEST(Pool, OnDemandStartsNoWorkerAtConstruction) {
  std::atomic<int> starts{0};
  const std::size_t baseline = baseline_os_thread_count();
  pool_options o = on_demand("lazy", 4);
  o.on_start = counting_hook(starts);
  {
    thread_pool pool(o);
    EXPECT_EQ(pool.size(), 4u) << "size() is the most workers that may start";
    EXPECT_TRUE(pool.stats().workers.empty()) << join(stats_names(pool));
    EXPECT_EQ(settled_os_thread_count(), baseline) << "the constructor started a thread";
    EXPECT_EQ(starts.load(), 0);
    auto f = pool.submit([] { return os_tid(); });
    require_ready(f, "the first task");
    const std::uint64_t tid = f.get();
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 1u);
    EXPECT_EQ(st.workers[0].name, "lazy-0");
    EXPECT_EQ(st.workers[0].os_tid, tid);
    EXPECT_EQ(thread_comm(tid), "lazy-0");
    EXPECT_EQ(starts.load(), 1);
    EXPECT_EQ(os_thread_count(), baseline + 1);
  }
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "the started worker was not joined";
  // Never used: nothing to start, nothing to join.
  run_with_deadline("destroying an unused on-demand pool", [&] { thread_pool unused(o); });
  EXPECT_EQ(starts.load(), 1);
}

TEST(Pool, OnDemandOneQuickTaskAtATimeReusesWorkerZero) {
  const std::size_t baseline = baseline_os_thread_count();
  thread_pool pool(on_demand("reuse", 4));
  // The worker destroys a task's callable right after making its future ready (pool.hpp): this
  // one's destructor keeps it there for 2 ms, neither idle nor running a task. It counts as free
  // all the same: the next submit must not start another worker meanwhile.
  struct slow_to_destroy {
    bool armed = true;
    slow_to_destroy() = default;
    slow_to_destroy(slow_to_destroy&& o) noexcept : armed(o.armed) { o.armed = false; }
    ~slow_to_destroy() {
      if (armed) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  std::set<std::uint64_t> tids;
  for (int i = 0; i < 100; ++i) {
    auto f = i % 2 == 0 ? pool.submit([s = slow_to_destroy{}] { return os_tid(); })
                        : pool.submit_python([s = slow_to_destroy{}] { return os_tid(); });
    require_ready(f, "sequential task " + std::to_string(i));
    tids.insert(f.get());
  }
  EXPECT_EQ(tids.size(), 1u) << "100 sequential tasks ran on several threads";
  EXPECT_EQ(stats_names(pool), std::vector<std::string>{"reuse-0"});
  EXPECT_EQ(os_thread_count(), baseline + 1);
  EXPECT_EQ(pool.stats().started, 100u);
}

TEST(Pool, OnDemandConcurrentBlockingTasksStartMinOfTasksAndWorkers) {
  // Fewer tasks than workers: one worker per task (they meet, so each needs its own), no more.
  {
    thread_pool pool(on_demand("few", 4));
    const auto tids = [&] {
      auto meet = std::make_shared<rendezvous>(2);
      std::vector<std::future<std::pair<std::uint64_t, bool>>> fs;
      for (int i = 0; i < 2; ++i) {
        fs.push_back(pool.submit([meet] { return std::make_pair(os_tid(), meet->arrive_and_wait()); }));
      }
      std::set<std::uint64_t> s;
      for (auto& f : fs) {
        require_ready(f, "a meeting task");
        auto p = f.get();
        EXPECT_TRUE(p.second) << "two tasks could not run at once: a second worker was not started";
        s.insert(p.first);
      }
      return s;
    }();
    EXPECT_EQ(tids.size(), 2u);
    EXPECT_EQ(stats_names(pool), (std::vector<std::string>{"few-0", "few-1"}));
  }
  // More tasks than workers: every worker starts, the rest wait in the queue.
  {
    thread_pool pool(on_demand("many", 3));
    latch release;
    std::atomic<int> running{0};
    std::vector<std::future<std::uint64_t>> fs;
    for (int i = 0; i < 5; ++i) {
      fs.push_back(pool.submit([&] {
        ++running;
        release.wait(k_wait);
        return os_tid();
      }));
    }
    poll_until([&] { return running.load() >= 3; });
    EXPECT_EQ(running.load(), 3);
    const auto st = pool.stats();
    EXPECT_EQ(st.workers.size(), 3u);
    EXPECT_EQ(st.queued, 2u);
    release.set();
    std::set<std::uint64_t> tids;
    for (auto& f : fs) {
      require_ready(f, "a blocking task");
      tids.insert(f.get());
    }
    EXPECT_EQ(tids.size(), 3u);
    EXPECT_EQ(stats_names(pool), (std::vector<std::string>{"many-0", "many-1", "many-2"}));
  }
}

TEST(Pool, OnDemandPythonTasksAndHooksRunOnLazilyStartedWorkers) {
  const std::size_t baseline = thread_states();
  PyObject* g = make_globals();
  event_log log;
  pool_options o = on_demand("lazypy", 3);
  o.start_hook_python = true;
  o.stop_hook_python = true;
  o.on_start = [&](const pyattach::worker_context& c) { log.add(hook_record("start", c)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(hook_record("stop", c)); };
  {
    thread_pool pool(o);
    EXPECT_EQ(thread_states(), baseline) << "an on-demand pool made a thread state up front";
    const auto samples = python_on_each_worker(pool, [g] { return name_task(g); });
    EXPECT_EQ(thread_states(), baseline + 3) << "one thread state per started worker";
    std::set<std::string> seen;
    for (const auto& s : samples) {
      EXPECT_EQ(s.python_name, s.comm);
      seen.insert(s.python_name);
    }
    EXPECT_EQ(seen, (std::set<std::string>{"lazypy-0", "lazypy-1", "lazypy-2"}));
    expect_in_threading_enumerate(g, {seen.begin(), seen.end()});
    for (const auto& w : pool.stats().workers) EXPECT_TRUE(w.named_in_python) << w.name;
    // The start hooks ran attached on the workers the submits started.
    const auto starts = log.snapshot();
    ASSERT_EQ(starts.size(), 3u);
    for (const auto& e : starts) {
      EXPECT_EQ(e.kind, "start");
      EXPECT_EQ(e.python, pyattach::attach_status::attached) << e.name;
      EXPECT_TRUE(e.gil) << e.name;
      EXPECT_EQ(e.name, "lazypy-" + std::to_string(e.index));
    }
    run_with_deadline("shutdown", [&] { pool.shutdown(); });
    EXPECT_EQ(log.count("stop"), 3u);
    EXPECT_EQ(thread_states(), baseline) << "a lazily started worker's thread state survived it";
  }
  drop(g);
}

TEST(Pool, NameSeparatorUnderscoreGivesPoolUnderscoreIndex) {
  PyObject* g = make_globals();
  start_hook_names hook_names;
  pool_options o = named_options("X", 2);
  o.name_separator = "_";
  o.on_start = hook_names.hook();
  {
    thread_pool pool(o);
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 2u);
    for (std::size_t i = 0; i < 2; ++i) {
      const std::string expected = "X_" + std::to_string(i);
      EXPECT_EQ(st.workers[i].name, expected);
      EXPECT_EQ(thread_comm(st.workers[i].os_tid), expected);
      EXPECT_EQ(hook_names.of(i), expected);
    }
    std::set<std::string> py_names;
    for (const auto& s : python_on_each_worker(pool, [g] { return name_task(g); })) {
      py_names.insert(s.python_name);
    }
    EXPECT_EQ(py_names, (std::set<std::string>{"X_0", "X_1"}));
  }
  // The OS name keeps the whole suffix, separator included, when the pool name is shortened.
  o.name = "a_rather_long_pool_name";
  o.workers = 11;
  o.on_start = nullptr;
  thread_pool pool(o);
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), 11u);
  EXPECT_EQ(st.workers[10].name, "a_rather_long_pool_name_10");
  EXPECT_EQ(thread_comm(st.workers[10].os_tid), "a_rather_lon_10");
  EXPECT_EQ(thread_comm(st.workers[3].os_tid), "a_rather_long_3");
  drop(g);
}

TEST(Pool, StopReturnsBeforeTheRunningTaskFinishesAndALaterShutdownJoins) {
  const std::size_t baseline = baseline_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o = named_options("stopper", 1);
  o.on_stop = counting_hook(stops);
  thread_pool pool(o);
  held_worker held;
  ASSERT_TRUE(held.hold(pool));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool.submit([i] { return 10 + i; }));
  run_with_deadline("stop() with a task running", [&] { pool.stop(); }, k_prompt);
  EXPECT_FALSE(is_ready(held.blocker)) << "stop() waited for the running task";
  EXPECT_EQ(stops.load(), 0);
  EXPECT_EQ(call_outcome([&] { pool.submit([] { return 0; }); }), "pool_error:shut_down");
  EXPECT_EQ(call_outcome([&] { pool.post_python([] {}); }), "pool_error:shut_down");
  run_with_deadline("a second stop()", [&] { pool.stop(); }, k_prompt);
  // stop() on the pool's own worker never blocks: allowed, no misuse (the refused submit
  // above proves the pool is stopped; this one must simply return). Checked on another pool.
  {
    thread_pool self_stop("selfstop", 1);
    const std::size_t misuses = pyattach::misuse_count();
    auto f = self_stop.submit([&] { return call_outcome([&] { self_stop.stop(); }); });
    require_ready(f, "stop() on its own worker");
    EXPECT_EQ(f.get(), "returned");
    EXPECT_EQ(pyattach::misuse_count(), misuses);
    EXPECT_EQ(call_outcome([&] { self_stop.submit([] { return 0; }); }), "pool_error:shut_down");
  }
  EXPECT_TRUE(os_thread_count_becomes(baseline + 1)) << "the stopped worker left before its task ended";
  held.release.set();
  // The worker drains the queue on its own (drain) and leaves; shutdown() joins it.
  for (auto& f : queued) require_ready(f, "a task queued before stop()");
  run_with_deadline("shutdown after stop()", [&] { pool.shutdown(); });
  EXPECT_EQ(held.blocker.get(), 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(queued[i].get(), 10 + i);
  EXPECT_EQ(stops.load(), 1);
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "shutdown() did not join the stopped worker";
}

TEST_F(PoolWithHeldWorker, StopCancelCompletesQueuedTasksWithCancelledAndLetsTheRunningOneFinish) {
  ASSERT_NO_FATAL_FAILURE(start("stopcancel"));
  for (int i = 0; i < 3; ++i) fs.push_back(pool->submit([&] { return ++ran; }));
  for (int i = 0; i < 2; ++i) fs.push_back(pool->submit_python([&] { return ++ran; }));
  pool->post([&] { ++ran; });
  pool->post_python([&] { ++ran; });
  run_with_deadline("stop(cancel)", [&] { pool->stop(shutdown_mode::cancel); }, k_prompt);
  // Cancelled at once, while the running task still runs.
  for (auto& f : fs) {
    ASSERT_TRUE(is_ready(f)) << "a queued task was not completed by stop(cancel)";
    EXPECT_EQ(outcome(f), "pool_error:cancelled");
  }
  EXPECT_FALSE(is_ready(held.blocker));
  EXPECT_EQ(log.count("pool_error:cancelled"), 2u) << "the cancelled posts go to on_error";
  EXPECT_EQ(call_outcome([&] { pool->submit([] { return 0; }); }), "pool_error:shut_down");
  held.release.set();
  run_with_deadline("shutdown after stop(cancel)", [&] { pool->shutdown(); });
  EXPECT_EQ(held.blocker.get(), 1);
  EXPECT_EQ(ran.load(), 0);
  const auto st = pool->stats();
  EXPECT_EQ(st.cancelled, 7u);
  EXPECT_EQ(st.completed, 1u);
}

TEST(Pool, DetachedPoolIsDestroyedWithoutJoiningAndItsWorkersFinishTheQueueOnTheirOwn) {
  const std::size_t baseline = baseline_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o = named_options("letgo", 1);
  o.on_stop = counting_hook(stops);
  auto pool = std::make_unique<thread_pool>(o);
  // The worker runs Python once, so that the thread report knows it.
  python_on_each_worker(*pool, [] { return PyRun_SimpleString("_d = 1\n") == 0; });
  const std::uint64_t worker_tid = pool->stats().workers.at(0).os_tid;
  held_worker held;
  ASSERT_TRUE(held.hold(*pool));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 4; ++i) queued.push_back(pool->submit([i] { return 20 + i; }));
  run_with_deadline("detach()", [&] { pool->detach(); }, k_prompt);
  EXPECT_EQ(call_outcome([&] { pool->submit([] { return 0; }); }), "pool_error:shut_down");
  run_with_deadline("detach() again", [&] { pool->detach(); }, k_prompt);
  // The destructor does not wait for the running task: the threads were let go.
  run_with_deadline("destroying a detached pool with a task running", [&] { pool.reset(); },
                    k_prompt);
  EXPECT_FALSE(is_ready(held.blocker));
  // Still running, so still a pool worker in the thread report.
  const auto report = pyattach::make_thread_report();
  std::string pool_of_worker = "(not in the report)";
  for (const auto& t : report.threads) {
    if (t.os_tid == worker_tid) pool_of_worker = t.pool;
  }
  EXPECT_EQ(pool_of_worker, "letgo") << pyattach::to_string(report);
  held.release.set();
  require_ready(held.blocker, "the running task of a detached pool");
  EXPECT_EQ(held.blocker.get(), 1);
  for (int i = 0; i < 4; ++i) {
    require_ready(queued[i], "a task queued before detach()");
    EXPECT_EQ(queued[i].get(), 20 + i) << "detach() drains the queue";
  }
  // The worker runs its stop hook and exits on its own.
  poll_until([&] { return stops.load() >= 1; });
  EXPECT_EQ(stops.load(), 1);
  EXPECT_TRUE(os_thread_count_becomes(baseline)) << "a detached worker did not exit";
}

// A task destroys its own (on-demand, "_"-named: as an executor collected on its worker) pool
// after detach(): no misuse report, no crash, no hang; the worker then drains the queue, runs its
// stop hook and exits on its own. args[0]: "python" for a Python task, "cpp" for a C++ one.
CHILD_CASE(pool_detached_and_destroyed_on_own_worker) {
  const bool python = !args.empty() && args[0] == "python";
  pyattach::interpreter py;
  CHILD_CHECK(pyattach::set_misuse_handler(record_pool_report) == nullptr);
  const std::size_t baseline = baseline_os_thread_count();
  std::atomic<int> stops{0};
  pool_options o = on_demand("collected", 1);
  o.name_separator = "_";
  o.stop_hook_python = python;
  o.on_stop = counting_hook(stops);
  auto* pool = new thread_pool(o);
  latch go;
  auto self_destroy = [pool, &go, python] {
    CHILD_CHECK(go.wait(k_wait));
    pool->detach();
    delete pool;
    return python ? PyRun_SimpleString("_after = 1\n") == 0 : true;
  };
  std::future<bool> destroyer =
      python ? pool->submit_python(self_destroy) : pool->submit(self_destroy);
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(pool->submit([i] { return i; }));
  go.set();  // (the pool may be gone from here on: do not touch it)
  require_ready(destroyer, "the task that destroys its pool");
  CHILD_CHECK(destroyer.get());
  for (int i = 0; i < 3; ++i) {
    require_ready(queued[i], "a task queued behind the destroyer");
    CHILD_CHECK(queued[i].get() == i);
  }
  poll_until([&] { return stops.load() >= 1; });
  CHILD_CHECK(stops.load() == 1);
  CHILD_CHECK(os_thread_count_becomes(baseline));
  std::printf("misuse reports %zu\n", static_cast<std::size_t>(pyattach::misuse_count()));
  CHILD_CHECK(pyattach::misuse_count() == 0);
  pyattach::set_misuse_handler(nullptr);
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}
USES_CHILD_CASE(pool_detached_and_destroyed_on_own_worker);

namespace {
// The case with a "cpp" or "python" task: clean, and no misuse report on its stderr either.
void expect_destroyed_on_own_worker_without_misuse(const char* task) {
  const auto r = run_child(uses_pool_detached_and_destroyed_on_own_worker, child_args({task}));
  EXPECT_CHILD_CLEAN(r);
  EXPECT_EQ(r.err.find("pool_call_from_worker"), std::string::npos) << r.describe();
}
}  // namespace

TEST(Pool, DetachedPoolDestroyedByItsOwnCppTaskIsNoMisuse) {
  expect_destroyed_on_own_worker_without_misuse("cpp");
}
TEST(Pool, DetachedPoolDestroyedByItsOwnPythonTaskIsNoMisuse) {
  expect_destroyed_on_own_worker_without_misuse("python");
}

// The interpreter's end still stops a detached, destroyed pool whose worker runs: its queue
// completes with finalizing, and the closer waits for the running Python task and the stop hook
// (attached). It waits for started workers only: a second pool, on demand, with one of its four
// workers started, must not cost it the 2 s bound.
CHILD_CASE(pool_detached_pool_stopped_by_finalization) {
  std::optional<pyattach::interpreter> py;
  py.emplace();
  std::atomic<int> stops{0}, stop_status{-1};
  pool_options o = on_demand("orphan", 1);
  o.stop_hook_python = true;
  o.on_stop = [&](const pyattach::worker_context& c) {
    stop_status = static_cast<int>(c.python);
    ++stops;
  };
  auto pool = std::make_unique<thread_pool>(o);
  thread_pool lazy(on_demand("lazyfin", 4));
  auto one = lazy.submit([] { return 1; });
  require_ready(one, "a task on the on-demand pool");
  CHILD_CHECK(lazy.stats().workers.size() == 1);
  latch started;
  auto blocker = pool->submit_python([&] {
    started.set();
    return PyRun_SimpleString("import time\ntime.sleep(0.3)\n") == 0 ? 7 : -1;
  });
  CHILD_CHECK(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(pool->submit([&] { return ++ran; }));
  pool->detach();
  pool.reset();  // no join: the worker runs on, holding the pool
  const auto t0 = std::chrono::steady_clock::now();
  py.reset();  // Py_FinalizeEx: the gate stops every pool first, detached ones included
  const double destroy_ms = ms_since(t0);
  std::printf("interpreter destroyed in %.1f ms; stop hooks %d (status %d)\n", destroy_ms,
              stops.load(), stop_status.load());
  CHILD_CHECK(is_ready(blocker));  // the closer waited for it
  CHILD_CHECK(stops.load() == 1);
  CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  CHILD_CHECK(destroy_ms < 1500);  // the bound was not spent on workers never started
  require_ready(blocker, "the running Python task");
  CHILD_CHECK(blocker.get() == 7);
  std::size_t finalizing = 0;
  for (auto& f : fs) {
    require_ready(f, "a task queued in the detached pool");
    const std::string how = outcome(f);
    if (how != "pool_error:finalizing") std::printf("queued task ended as %s\n", how.c_str());
    finalizing += how == "pool_error:finalizing";
  }
  std::printf("finalizing %zu of %zu, ran %d\n", finalizing, fs.size(), ran.load());
  CHILD_CHECK(finalizing == fs.size());
  CHILD_CHECK(ran.load() == 0);
  return child_done();
}
USES_CHILD_CASE(pool_detached_pool_stopped_by_finalization);
CHILD_TEST(Pool, DetachedPoolIsStillStoppedAndWaitedForByFinalization,
           pool_detached_pool_stopped_by_finalization);

TEST(Pool, OnDemandThrowingStartHookBreaksThePoolLikeShutdownCancel) {
  error_log log;
  std::atomic<int> stops{0};
  pool_options o = on_demand("brittle", 3);
  o.on_error = log.handler();
  o.on_start = [](const pyattach::worker_context& c) {
    if (c.index == 1) throw std::runtime_error("start hook 1 failed");
  };
  o.on_stop = counting_hook(stops);
  std::optional<thread_pool> pool;
  ASSERT_NO_THROW(pool.emplace(o)) << "an on-demand pool runs no hook in its constructor";
  held_worker held;
  ASSERT_TRUE(held.hold(*pool));
  // Worker 0 is busy: this task starts worker 1, whose hook throws: the task never runs.
  std::atomic<int> ran{0};
  auto victim = pool->submit([&] { return ++ran; });
  require_ready(victim, "a task queued when the start hook threw");
  EXPECT_EQ(outcome(victim), "pool_error:start_hook_failed");
  std::string what;
  try {
    pool->submit([] { return 0; });
    what = "accepted";
  } catch (const pool_error& e) {
    what = std::string(pyattach::to_string(e.code())) + ": " + e.what();
  }
  EXPECT_TRUE(contains(what, "start_hook_failed: ")) << what;
  EXPECT_TRUE(contains(what, "start hook 1 failed")) << what;
  EXPECT_TRUE(contains(what, "brittle-1")) << what;
  // Worker 0 finishes its task, then its stop hook runs; worker 1 never started: no stop hook.
  EXPECT_FALSE(is_ready(held.blocker));
  held.release.set();
  run_with_deadline("shutdown of a broken pool", [&] { pool->shutdown(); });
  EXPECT_EQ(held.blocker.get(), 1);
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(stops.load(), 1);
  EXPECT_EQ(stats_names(*pool), (std::vector<std::string>{"brittle-0", "brittle-1"}));
  EXPECT_EQ(pool->stats().cancelled, 1u);
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].where, "start hook");
  EXPECT_EQ(entries[0].worker_index, 1u);
  EXPECT_EQ(entries[0].error, "exception:start hook 1 failed");
  pool.reset();
}


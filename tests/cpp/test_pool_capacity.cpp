// tests/cpp/test_pool_capacity.cpp — pyattach::thread_pool (pool.hpp): back-pressure (max_queued
// and its policies), stats, the thread report, and a 100,000-task stress run.
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== 11. back-pressure ========================================================================

namespace {
// A one-worker pool that queues at most `max_queued` tasks and then applies `when_full`.
pool_options bounded(const std::string& name, std::size_t max_queued, full_policy when_full) {
  pool_options o = named_options(name, 1);
  o.max_queued = max_queued;
  o.when_full = when_full;
  return o;
}
}  // namespace

CHILD_CASE(pool_queue_full_fail) {
  pyattach::interpreter py;
  thread_pool pool(bounded("bounded", 3, full_policy::fail));
  held_worker held;
  CHILD_CHECK(held.hold(pool));
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(pool.submit([i] { return i; }));
  CHILD_CHECK(pool.stats().queued == 3);
  int refused = 0;
  for (const auto& [call, how] : try_each_submit(pool)) {
    std::printf("%s with a full queue: %s\n", call.c_str(), how.c_str());
    refused += how == "pool_error:queue_full";
  }
  CHILD_CHECK(refused == 4);
  CHILD_CHECK(pool.stats().queued == 3);
  held.release.set();
  pool.wait();
  for (int i = 0; i < 3; ++i) CHILD_CHECK(fs[static_cast<size_t>(i)].get() == i);
  CHILD_CHECK(held.blocker.get());
  // Room again.
  auto again = pool.submit([] { return 9; });
  require_ready(again, "after the queue drained");
  CHILD_CHECK(again.get() == 9);
  return child_done();
}
USES_CHILD_CASE(pool_queue_full_fail);
CHILD_TEST(Pool, QueueFullWithFailPolicyThrowsQueueFull, pool_queue_full_fail);

CHILD_CASE(pool_queue_full_block) {
  pyattach::interpreter py;
  thread_pool pool(bounded("blocking", 2, full_policy::block));
  held_worker held;
  CHILD_CHECK(held.hold(pool));
  std::atomic<int> phase{0};
  std::atomic<bool> still_attached{false};
  std::vector<std::future<int>> fs;  // the submitter's
  std::thread submitter([&] {
    pyattach::attach_scope gil;  // submits while holding the GIL
    for (int i = 0; i < 3; ++i) {
      // Python tasks: they need the GIL that this thread holds, so it must be released while
      // the third submit blocks (and the worker runs the first two after release).
      fs.push_back(pool.submit_python([i] {
        PyObject* v = PyLong_FromLong(i);
        const int r = static_cast<int>(PyLong_AsLong(v));
        Py_DECREF(v);
        return r;
      }));
      phase = i + 1;
    }
    still_attached = pyattach::is_attached() && PyGILState_Check() == 1;
  });
  // Two fit; the third blocks.
  poll_until([&] { return phase.load() >= 2; });
  CHILD_CHECK(phase.load() == 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::printf("phase after 200 ms: %d, queued %zu\n", phase.load(), pool.stats().queued);
  CHILD_CHECK(phase.load() == 2);  // still blocked: the queue is full
  CHILD_CHECK(pool.stats().queued == 2);
  // The blocked submitter does not hold the GIL.
  CHILD_CHECK(other_thread_can_run_python(k_prompt));
  held.release.set();
  submitter.join();
  CHILD_CHECK(phase.load() == 3);
  CHILD_CHECK(still_attached.load());  // submit took the GIL back before returning
  pool.wait();
  for (int i = 0; i < 3; ++i) {
    CHILD_CHECK(is_ready(fs[static_cast<size_t>(i)]));
    CHILD_CHECK(fs[static_cast<size_t>(i)].get() == i);
  }
  CHILD_CHECK(held.blocker.get());
  return child_done();
}
USES_CHILD_CASE(pool_queue_full_block);

CHILD_CASE(pool_queue_full_submit_from_own_worker) {
  pyattach::interpreter py;
  // block: blocking on its own worker would wait for itself.
  thread_pool pool(bounded("selffull", 2, full_policy::block));
  std::vector<std::future<int>> inner;
  auto outer = pool.submit([&] {
    std::string how = "accepted";
    try {
      for (int i = 0; i < 3; ++i) inner.push_back(pool.submit([i] { return i; }));
    } catch (const pool_error& e) {
      how = pyattach::to_string(e.code());
    }
    return how;
  });
  require_ready(outer, "a task submitting to its own full pool");
  const std::string how = outer.get();
  std::printf("third submit from the worker: %s\n", how.c_str());
  CHILD_CHECK(how == "queue_full");
  CHILD_CHECK(inner.size() == 2);
  pool.wait();
  for (std::size_t i = 0; i < inner.size(); ++i) CHILD_CHECK(inner[i].get() == static_cast<int>(i));
  return child_done();
}
USES_CHILD_CASE(pool_queue_full_submit_from_own_worker);

CHILD_TEST(Pool, QueueFullWithBlockPolicyBlocksTheSubmitterWithoutHoldingTheGil, pool_queue_full_block);
CHILD_TEST(Pool, QueueFullWithBlockPolicyFailsInsteadOfBlockingOnItsOwnWorker,
           pool_queue_full_submit_from_own_worker);

// ==== 12. stats ================================================================================

TEST(Pool, StatsCountWhatWasDone) {
  error_log log;
  thread_pool pool(logged_options("counts", 2, log));
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(pool.submit([] { return 1; }));
  for (int i = 0; i < 4; ++i) fs.push_back(pool.submit([]() -> int { throw std::runtime_error("x"); }));
  for (int i = 0; i < 6; ++i) fs.push_back(pool.submit_python([] { return 1; }));
  for (int i = 0; i < 3; ++i) {
    fs.push_back(pool.submit_python([] {
      PyErr_SetString(PyExc_ValueError, "y");
      return 0;
    }));
  }
  // pool.hpp: the counters are updated before a future becomes ready, so once every future is
  // ready (no wait()), stats() already counts them.
  for (auto& f : fs) require_ready(f, "stats task");
  {
    const auto early = pool.stats();
    EXPECT_EQ(early.submitted, 23u);
    EXPECT_EQ(early.started, 23u);
    EXPECT_EQ(early.completed, 16u);
    EXPECT_EQ(early.failed, 7u);
  }
  for (int i = 0; i < 5; ++i) pool.post([] {});
  for (int i = 0; i < 2; ++i) pool.post([] { throw std::runtime_error("z"); });
  pool.post_python([] { PyErr_SetString(PyExc_ValueError, "w"); });
  pool.wait();
  for (auto& f : fs) ASSERT_TRUE(is_ready(f)) << "wait() returned before a future was ready";
  const auto st = pool.stats();
  EXPECT_EQ(st.name, "counts");
  EXPECT_EQ(st.submitted, 31u);
  EXPECT_EQ(st.started, 31u);
  EXPECT_EQ(st.completed, 21u);  // 10 + 6 + 5
  EXPECT_EQ(st.failed, 10u);     // 4 + 3 + 2 + 1
  EXPECT_EQ(st.cancelled, 0u);
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(log.snapshot().size(), 3u);
  ASSERT_EQ(st.workers.size(), 2u);
  std::uint64_t tasks = 0;
  for (const auto& w : st.workers) tasks += w.tasks;
  EXPECT_EQ(tasks, st.started) << "per-worker task counts must sum to started";

  // A blocked worker: queued and started as they are.
  thread_pool one("counts1", 1);
  held_worker held;
  ASSERT_TRUE(held.hold(one));
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(one.submit([] { return 2; }));
  auto mid = one.stats();
  EXPECT_EQ(mid.submitted, 6u);
  EXPECT_EQ(mid.started, 1u);
  EXPECT_EQ(mid.queued, 5u);
  EXPECT_EQ(mid.completed, 0u);
  EXPECT_EQ(mid.workers.at(0).tasks, 1u);
  held.release.set();
  one.wait();
  auto end = one.stats();
  EXPECT_EQ(end.started, 6u);
  EXPECT_EQ(end.completed, 6u);
  EXPECT_EQ(end.queued, 0u);
  EXPECT_EQ(end.workers.at(0).tasks, 6u);
}

TEST(Pool, StatsMeasureBusyTimeAndAttachedTimeOnlyWhenAsked) {
  pool_options o = named_options("timed", 1);
  o.measure_python_time = true;
  thread_pool timed(o);
  o.name = "untimed";
  o.measure_python_time = false;
  thread_pool untimed(o);
  for (thread_pool* p : {&timed, &untimed}) {
    auto f = p->submit([] { std::this_thread::sleep_for(std::chrono::milliseconds(10)); });
    require_ready(f, "sleeping C++ task");
    p->wait();
    const auto w = p->stats().workers.at(0);
    EXPECT_GE(w.busy, std::chrono::milliseconds(10)) << p->name() << ": busy " << w.busy.count() << " ns";
    EXPECT_EQ(w.attached.count(), 0) << p->name() << ": a C++ task is not attached time";
  }
  for (thread_pool* p : {&timed, &untimed}) {
    auto f = p->submit_python([] { std::this_thread::sleep_for(std::chrono::milliseconds(10)); });
    require_ready(f, "sleeping Python task");
    p->wait();
  }
  const auto t = timed.stats().workers.at(0);
  const auto u = untimed.stats().workers.at(0);
  EXPECT_GE(t.busy, std::chrono::milliseconds(20)) << t.busy.count();
  EXPECT_GE(u.busy, std::chrono::milliseconds(20)) << u.busy.count();
  EXPECT_GE(t.attached, std::chrono::milliseconds(10))
      << "measure_python_time: a task that slept 10 ms attached, attached " << t.attached.count() << " ns";
  EXPECT_GE(t.attach_wait.count(), 0);
  EXPECT_EQ(u.attached.count(), 0) << "attached time measured without measure_python_time";
  EXPECT_EQ(u.attach_wait.count(), 0) << "attach wait measured without measure_python_time";
}

// ==== 13. the thread report ====================================================================

TEST(Pool, ThreadReportListsEachWorkerWithItsPool) {
  thread_pool a("rpool", 3);
  thread_pool b("rpool2", 2);
  for (thread_pool* p : {&a, &b}) {
    python_on_each_worker(*p, [] { return PyRun_SimpleString("_r = 1\n") == 0; });
    p->wait();
  }
  const auto report = pyattach::make_thread_report();
  ASSERT_TRUE(report.interpreter_available);
  for (thread_pool* p : {&a, &b}) {
    for (const auto& w : p->stats().workers) {
      const pyattach::thread_info* info = nullptr;
      for (const auto& t : report.threads) {
        if (t.os_tid == w.os_tid) info = &t;
      }
      ASSERT_NE(info, nullptr) << w.name << " missing from the report:\n" << pyattach::to_string(report);
      EXPECT_EQ(info->pool, p->name()) << w.name;
      EXPECT_EQ(info->python_name, w.name);
      EXPECT_TRUE(info->has_thread_state) << w.name;
      EXPECT_TRUE(info->known_to_pyattach) << w.name;
      EXPECT_TRUE(info->made_by_pyattach) << w.name;
      EXPECT_GE(info->scopes, 1u) << w.name;
    }
  }
  for (const auto& t : report.threads) {
    if (t.is_caller) {
      EXPECT_EQ(t.pool, "") << "the caller is no pool's worker";
    }
  }
  EXPECT_TRUE(contains(pyattach::to_string(report), "rpool2")) << pyattach::to_string(report);
}

// ==== 14. stress ===============================================================================

namespace {
enum stress_kind : int { k_cpp_value, k_cpp_throw, k_cpp_custom, k_py_value, k_py_left_set, k_py_thrown, k_kinds };
const char* const k_kind_names[k_kinds] = {"C++ value",      "C++ runtime_error", "C++ custom",
                                           "Python value",   "Python error set",  "python_error thrown"};
// The outcome as a kind, checking that it carries the task's own index (no cross-delivery).
int classify(std::future<long>& f, long i, std::string* bad) {
  try {
    const long v = f.get();
    if (v == i) return k_cpp_value;
    if (v == -i - 1) return k_py_value;
    *bad = "value " + std::to_string(v);
  } catch (const custom_failure& e) {
    if (e.code == static_cast<int>(i)) return k_cpp_custom;
    *bad = "custom " + std::to_string(e.code);
  } catch (const python_error& e) {
    if (e.type_name() == "ValueError" && e.message() == std::to_string(i)) return k_py_left_set;
    if (e.type_name() == "IndexError" && e.message() == std::to_string(i)) return k_py_thrown;
    *bad = "python_error " + e.type_name() + ": " + e.message();
  } catch (const pool_error& e) {
    *bad = std::string("pool_error ") + pyattach::to_string(e.code());
  } catch (const std::runtime_error& e) {
    if (e.what() == std::to_string(i)) return k_cpp_throw;
    *bad = std::string("runtime_error ") + e.what();
  } catch (...) {
    *bad = "unknown";
  }
  return -1;
}
}  // namespace

TEST(Pool, StressRandomCppAndPythonExceptionsEveryFutureResolvedExactlyOnce) {
  // 100,000 tasks on 8 workers from two submitting threads, with a third reading stats().
  // Under ASan/TSan everything runs several times slower: 10,000 tasks there.
  const long n = k_sanitized ? 10000 : 100000;
  constexpr int k_submitters = 2;
  thread_pool pool("stress", 8);
  const auto t0 = std::chrono::steady_clock::now();
  struct item {
    long i;
    int kind;
    std::future<long> f;
  };
  std::vector<std::vector<item>> items(k_submitters);
  std::vector<std::array<long, k_kinds>> expected(k_submitters);
  std::vector<std::thread> submitters;
  for (int s = 0; s < k_submitters; ++s) {
    submitters.emplace_back([&, s] {
      std::mt19937 rng(20240601u + static_cast<unsigned>(s));
      // Weights: mostly successes, some of every failure.
      std::discrete_distribution<int> pick({40, 10, 5, 30, 10, 5});
      expected[static_cast<size_t>(s)].fill(0);
      for (long i = s; i < n; i += k_submitters) {
        const int kind = pick(rng);
        ++expected[static_cast<size_t>(s)][static_cast<size_t>(kind)];
        std::future<long> f;
        switch (kind) {
          case k_cpp_value: f = pool.submit([i] { return i; }); break;
          case k_cpp_throw:
            f = pool.submit([i]() -> long { throw std::runtime_error(std::to_string(i)); });
            break;
          case k_cpp_custom:
            f = pool.submit([i]() -> long { throw custom_failure{static_cast<int>(i)}; });
            break;
          case k_py_value:
            f = pool.submit_python([i] {
              PyObject* v = PyLong_FromLong(-i - 1);
              const long r = PyLong_AsLong(v);
              Py_DECREF(v);
              return r;
            });
            break;
          case k_py_left_set:
            f = pool.submit_python([i] {
              PyErr_Format(PyExc_ValueError, "%ld", i);
              return 0L;
            });
            break;
          default:
            f = pool.submit_python([i]() -> long {
              PyErr_Format(PyExc_IndexError, "%ld", i);
              throw python_error::fetch();
            });
            break;
        }
        items[static_cast<size_t>(s)].push_back(item{i, kind, std::move(f)});
      }
    });
  }
  std::atomic<bool> stop_reader{false};
  std::atomic<long> snapshots{0};
  std::string reader_problem;
  std::thread reader([&] {
    pyattach::pool_stats last;
    while (!stop_reader.load()) {
      const auto st = pool.stats();
      if (st.submitted < last.submitted || st.started < last.started || st.completed < last.completed ||
          st.failed < last.failed || st.cancelled != 0) {
        if (reader_problem.empty()) reader_problem = "counters went backwards or cancelled != 0";
      }
      last = st;
      ++snapshots;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& t : submitters) t.join();
  const double submit_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::array<long, k_kinds> got{}, want{};
  long bad = 0, total = 0;
  std::string first_bad;
  const auto deadline = std::chrono::steady_clock::now() + (k_sanitized ? 300s : 120s);
  for (int s = 0; s < k_submitters; ++s) {
    for (int k = 0; k < k_kinds; ++k) want[static_cast<size_t>(k)] += expected[static_cast<size_t>(s)][static_cast<size_t>(k)];
    for (auto& it : items[static_cast<size_t>(s)]) {
      if (it.f.wait_until(deadline) != std::future_status::ready) {
        fatal_stuck("stress: task " + std::to_string(it.i) + " never resolved");
      }
    }
  }
  settle(pool);
  for (int s = 0; s < k_submitters; ++s) {
    for (auto& it : items[static_cast<size_t>(s)]) {
      std::string why;
      const int kind = classify(it.f, it.i, &why);  // get() exactly once per future
      ++total;
      if (kind != it.kind) {
        if (bad++ == 0) {
          first_bad = "task " + std::to_string(it.i) + " (" + k_kind_names[it.kind] + ") ended as " +
                      (kind >= 0 ? k_kind_names[kind] : why);
        }
      } else {
        ++got[static_cast<size_t>(kind)];
      }
    }
  }
  pool.wait();
  stop_reader = true;
  reader.join();
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(total, n);
  EXPECT_EQ(bad, 0) << first_bad;
  for (int k = 0; k < k_kinds; ++k) {
    EXPECT_EQ(got[static_cast<size_t>(k)], want[static_cast<size_t>(k)]) << k_kind_names[k];
    EXPECT_GT(want[static_cast<size_t>(k)], 0) << "the mix must contain every kind";
  }
  const auto st = pool.stats();
  const long values = want[k_cpp_value] + want[k_py_value];
  EXPECT_EQ(st.submitted, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.started, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.completed, static_cast<std::uint64_t>(values));
  EXPECT_EQ(st.failed, static_cast<std::uint64_t>(n - values));
  EXPECT_EQ(st.completed + st.failed, static_cast<std::uint64_t>(n));
  EXPECT_EQ(st.cancelled, 0u);
  std::uint64_t per_worker = 0;
  std::size_t busy_workers = 0;
  for (const auto& w : st.workers) {
    per_worker += w.tasks;
    busy_workers += w.tasks > 0;
  }
  EXPECT_EQ(per_worker, static_cast<std::uint64_t>(n));
  EXPECT_TRUE(reader_problem.empty()) << reader_problem;
  std::printf("stress: %ld tasks (%ld values, %ld failures) on %zu busy workers; submitted in %.2f s, "
              "all resolved in %.2f s; %ld stats snapshots\n",
              n, values, n - values, busy_workers, submit_s, total_s, snapshots.load());
}


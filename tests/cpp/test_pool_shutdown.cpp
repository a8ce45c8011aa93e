// tests/cpp/test_pool_shutdown.cpp — pyattach::thread_pool (pool.hpp): shutdown (drain, cancel,
// wait, refusal, from a thread holding the GIL, from the pool's own worker) and finalization with
// tasks queued or running.
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

namespace {
// "file:line" of a call in this file, as a misuse report names it.
std::string site_of(int line) { return std::string(__FILE__) + ":" + std::to_string(line); }
}  // namespace

// ==== 9. shutdown ==============================================================================

namespace {
// What probing a shutdown found: the probes the pool accepted before the shutdown began (drained
// or cancelled with the rest of the queue), and the error that refused the first probe after.
struct probed_shutdown {
  std::vector<std::future<int>> probes;
  std::optional<pool_errc> refusal;
};

// Shuts `pool` down in `mode` (with a deadline) while another thread submits probes until the
// pool refuses one (shutdown began), then releases `held`'s running task.
probed_shutdown shut_down_while_probing(thread_pool& pool, held_worker& held, shutdown_mode mode,
                                        const std::string& what) {
  probed_shutdown r;
  std::thread releaser([&] {
    const auto end = std::chrono::steady_clock::now() + k_wait;
    while (std::chrono::steady_clock::now() < end) {
      try {
        r.probes.push_back(pool.submit([] { return -1; }));
      } catch (const pool_error& e) {
        r.refusal = e.code();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    held.release.set();
  });
  run_with_deadline(what, [&] { pool.shutdown(mode); });
  releaser.join();
  return r;
}
}  // namespace

TEST_F(PoolWithHeldWorker, ShutdownDrainRunsEveryQueuedTask) {
  ASSERT_NO_FATAL_FAILURE(start("drain"));
  for (int i = 0; i < 50; ++i) {
    fs.push_back(pool->submit([&, i] {
      ++ran;
      return i;
    }));
    fs.push_back(pool->submit_python([&, i] {
      ++ran;
      return PyRun_SimpleString("_drained = 1\n") == 0 ? i : -2;
    }));
    pool->post([&] { ++ran; });
    pool->post_python([&] { ++ran; });
  }
  EXPECT_EQ(pool->stats().queued, 200u);
  auto [probes, refusal] = shut_down_while_probing(*pool, held, shutdown_mode::drain, "shutdown(drain)");
  ASSERT_TRUE(refusal.has_value()) << "submit was never refused while shutdown ran";
  EXPECT_STREQ(pyattach::to_string(*refusal), "shut_down");
  EXPECT_EQ(ran.load(), 200) << "shutdown(drain) did not run every queued task";
  ASSERT_TRUE(is_ready(held.blocker));
  EXPECT_EQ(held.blocker.get(), 1);
  for (std::size_t i = 0; i < fs.size(); ++i) {
    ASSERT_TRUE(is_ready(fs[i])) << "future " << i << " not ready after shutdown(drain)";
    EXPECT_EQ(fs[i].get(), static_cast<int>(i / 2)) << "future " << i;
  }
  for (auto& p : probes) {
    ASSERT_TRUE(is_ready(p));
    EXPECT_EQ(outcome(p), "value") << "a probe queued before shutdown was not drained";
  }
  EXPECT_TRUE(log.snapshot().empty());
  const auto st = pool->stats();
  EXPECT_EQ(st.completed, 201u + probes.size());
  EXPECT_EQ(st.cancelled, 0u);
  EXPECT_EQ(st.queued, 0u);
}

TEST_F(PoolWithHeldWorker, ShutdownCancelCompletesQueuedTasksWithCancelledAndReportsCancelledPosts) {
  ASSERT_NO_FATAL_FAILURE(start("cancel"));
  for (int i = 0; i < 30; ++i) {
    fs.push_back(pool->submit([&] { return ++ran; }));
    fs.push_back(pool->submit_python([&] { return ++ran; }));
  }
  for (int i = 0; i < 5; ++i) {
    pool->post([&] { ++ran; });
    pool->post_python([&] { ++ran; });
  }
  auto [probes, refusal] = shut_down_while_probing(*pool, held, shutdown_mode::cancel, "shutdown(cancel)");
  ASSERT_TRUE(refusal.has_value());
  EXPECT_STREQ(pyattach::to_string(*refusal), "shut_down");
  ASSERT_TRUE(is_ready(held.blocker));
  EXPECT_EQ(held.blocker.get(), 1) << "the running task must finish";
  EXPECT_EQ(ran.load(), 0) << "shutdown(cancel) ran a queued task";
  std::size_t cancelled = 0;
  for (auto* v : {&fs, &probes}) {
    for (auto& f : *v) {
      ASSERT_TRUE(is_ready(f)) << "a cancelled task's future was left unresolved";
      const std::string how = outcome(f);
      EXPECT_EQ(how, "pool_error:cancelled");
      cancelled += how == "pool_error:cancelled";
    }
  }
  EXPECT_EQ(cancelled, 60u + probes.size());
  // The 10 cancelled post tasks have no future: they are reported to on_error.
  const auto entries = log.snapshot();
  EXPECT_EQ(entries.size(), 10u);
  for (const auto& e : entries) {
    EXPECT_EQ(e.where, "task");
    EXPECT_EQ(e.error, "pool_error:cancelled");
    EXPECT_EQ(e.pool_name, "cancel");
    EXPECT_EQ(e.what, e.expected_what);
    EXPECT_EQ(e.worker_index, static_cast<std::size_t>(-1)) << "a cancelled post never reached a worker";
  }
  const auto st = pool->stats();
  EXPECT_EQ(st.cancelled, 70u + probes.size());
  EXPECT_EQ(st.started, 1u);
  EXPECT_EQ(st.completed, 1u);
  EXPECT_EQ(st.failed, 0u);
  EXPECT_EQ(st.queued, 0u);
  EXPECT_EQ(st.submitted, 71u + probes.size());
}

TEST(Pool, WaitBlocksUntilTheQueueIsEmptyAndNoTaskIsRunning) {
  thread_pool pool("waiter", 2);
  // Two running tasks (blocked) and queued ones behind them; wait() must not return meanwhile.
  latch release;
  std::atomic<int> running{0}, finished{0};
  for (int i = 0; i < 2; ++i) {
    pool.post([&] {
      ++running;
      release.wait(k_wait);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ++finished;  // the task's last action: wait() must see it
    });
  }
  for (int i = 0; i < 10; ++i) pool.post([&] { ++finished; });
  poll_until([&] { return running.load() >= 2; });
  ASSERT_EQ(running.load(), 2);
  latch returned;
  std::thread waiter([&] {
    pool.wait();
    returned.set();
  });
  EXPECT_FALSE(returned.wait(std::chrono::milliseconds(100))) << "wait() returned while tasks were running";
  release.set();
  const bool ok = returned.wait(k_wait);
  if (!ok) {
    waiter.detach();
    fatal_stuck("wait() did not return after the tasks finished");
  }
  waiter.join();
  EXPECT_EQ(finished.load(), 12) << "wait() returned before every task had finished";
  // Once more with only running tasks and an empty queue.
  latch release2;
  std::atomic<bool> done{false};
  pool.post([&] {
    release2.wait(k_wait);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    done = true;
  });
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    release2.set();
  });
  run_with_deadline("wait() for one running task", [&] { pool.wait(); });
  releaser.join();
  EXPECT_TRUE(done.load()) << "wait() returned while a task was running (queue empty)";
}

TEST(Pool, SubmitAfterShutdownThrowsShutDownAndShutdownIsIdempotent) {
  event_log hooks;
  pool_options o = named_options("closed", 2);
  o.on_stop = [&](const pyattach::worker_context& c) { hooks.add(hook_record("stop", c)); };
  thread_pool pool(o);
  auto f = pool.submit([] { return 3; });
  require_ready(f, "task");
  EXPECT_EQ(f.get(), 3);
  run_with_deadline("shutdown", [&] { pool.shutdown(); });
  for (const auto& [call, how] : try_each_submit(pool)) EXPECT_EQ(how, "pool_error:shut_down") << call;
  // A second shutdown (either mode) and wait() return at once; stop hooks do not run again.
  run_with_deadline("second shutdown", [&] { pool.shutdown(shutdown_mode::cancel); });
  run_with_deadline("wait after shutdown", [&] { pool.wait(); });
  EXPECT_EQ(hooks.count("stop"), 2u);
  const auto st = pool.stats();
  EXPECT_EQ(st.completed, 1u);
  EXPECT_EQ(st.submitted, st.completed + st.failed + st.cancelled)
      << "every submitted task ends exactly one way (refused ones were never submitted)";
}

TEST(Pool, ConcurrentShutdownsBothWaitForTheFirst) {
  pool_options o = named_options("twice", 2);
  std::atomic<int> stops{0};
  o.on_stop = [&](const pyattach::worker_context&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ++stops;
  };
  thread_pool pool(o);
  held_worker held;
  ASSERT_TRUE(held.hold(pool));
  std::atomic<int> stops_seen_by_second{-1};
  std::thread first([&] { pool.shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::thread second([&] {
    pool.shutdown();
    stops_seen_by_second = stops.load();  // "a second call waits for the first to finish"
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  held.release.set();
  run_with_deadline("joining two shutdown callers", [&] {
    first.join();
    second.join();
  });
  EXPECT_EQ(stops.load(), 2);
  EXPECT_EQ(stops_seen_by_second.load(), 2) << "the second shutdown returned before the first finished";
  EXPECT_TRUE(held.blocker.get());
}

// ---- from a thread that holds the GIL (child processes: a deadlock would hang) ---------------
// args[0]: "shutdown", "destructor", "wait" or "cancel".
CHILD_CASE(pool_blocking_calls_holding_the_gil) {
  const std::string how = args.empty() ? "shutdown" : args[0];
  pyattach::interpreter py;
  const std::size_t baseline = thread_states();
  auto pool = std::make_unique<thread_pool>("gilholder", 2);
  std::atomic<int> ran{0};
  std::vector<std::future<long>> fs;
  std::thread holder([&] {
    pyattach::attach_scope gil;
    CHILD_CHECK(PyGILState_Check() == 1);
    PyThreadState* mine = PyThreadState_Get();
    // Submitted while this thread holds the GIL: the workers cannot even attach yet, so every
    // task is still queued (or waiting for the GIL) when the blocking call below starts.
    for (int i = 0; i < 40; ++i) {
      fs.push_back(pool->submit_python([&, i]() -> long {
        ++ran;
        PyObject* v = PyLong_FromLong(i);
        const long r = PyLong_AsLong(v);
        Py_DECREF(v);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return r;
      }));
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (how == "shutdown") {
      pool->shutdown(shutdown_mode::drain);
    } else if (how == "cancel") {
      pool->shutdown(shutdown_mode::cancel);
    } else if (how == "destructor") {
      pool.reset();
    } else {
      pool->wait();
    }
    std::printf("%s took %.1f ms\n", how.c_str(), ms_since(t0));
    // It took the GIL back before returning, on the same thread state.
    CHILD_CHECK(pyattach::is_attached());
    CHILD_CHECK(PyGILState_Check() == 1);
    CHILD_CHECK(PyThreadState_Get() == mine);
    CHILD_CHECK(PyRun_SimpleString("_after = 1\n") == 0);
  });
  holder.join();
  long values = 0, cancelled = 0, other = 0;
  for (std::size_t i = 0; i < fs.size(); ++i) {
    if (!is_ready(fs[i])) {
      ++other;
      continue;
    }
    try {
      values += fs[i].get() == static_cast<long>(i);
    } catch (const pool_error& e) {
      cancelled += e.code() == pool_errc::cancelled;
    } catch (...) {
      ++other;
    }
  }
  std::printf("values %ld cancelled %ld other %ld ran %d\n", values, cancelled, other, ran.load());
  CHILD_CHECK(other == 0);
  if (how == "cancel") {
    // Every task either ran (it had started) or was cancelled; nothing vanished.
    CHILD_CHECK(values + cancelled == 40);
    CHILD_CHECK(values == ran.load());
    // While this thread held the GIL, at most one task per worker could have been taken (each
    // then waits to attach): the rest were still queued when shutdown(cancel) began.
    CHILD_CHECK(cancelled >= 40 - 2);
  } else {
    CHILD_CHECK(values == 40);
    CHILD_CHECK(ran.load() == 40);
  }
  pool.reset();
  CHILD_CHECK(thread_states() == baseline);
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}
USES_CHILD_CASE(pool_blocking_calls_holding_the_gil);

// One test per blocking call: the parameter is {the test's name, the case's args[0]}.
class BlockingCallFromAThreadHoldingTheGil
    : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(BlockingCallFromAThreadHoldingTheGil, WithQueuedPythonTasksDoesNotDeadlock) {
  EXPECT_CHILD_CLEAN(run_child(uses_pool_blocking_calls_holding_the_gil, child_args({GetParam().second})));
}
INSTANTIATE_TEST_SUITE_P(Pool, BlockingCallFromAThreadHoldingTheGil,
                         ::testing::Values(std::make_pair("Shutdown", "shutdown"),
                                           std::make_pair("ShutdownCancel", "cancel"),
                                           std::make_pair("Destructor", "destructor"),
                                           std::make_pair("Wait", "wait")),
                         [](const auto& info) { return std::string(info.param.first); });

// ---- wait() / shutdown() from the pool's own worker: misuse, refused -------------------------

CHILD_CASE(pool_wait_or_shutdown_from_own_worker) {
  pyattach::interpreter py;
  CHILD_CHECK(pyattach::set_misuse_handler(record_pool_report) == nullptr);
  const int made = __LINE__; thread_pool pool("selfcall", 1);
  thread_pool other("othercall", 1);
  int wait_line = 0, shutdown_line = 0, pywait_line = 0;
  auto w = pool.submit([&] {
    wait_line = __LINE__; return call_outcome([&] { pool.wait(); });
  });
  auto s = pool.submit([&] {
    shutdown_line = __LINE__; return call_outcome([&] { pool.shutdown(); });
  });
  auto pw = pool.submit_python([&] {  // attached: refused all the same, GIL kept
    pywait_line = __LINE__; std::string r = call_outcome([&] { pool.wait(); });
    if (!pyattach::is_attached()) r += " (no longer attached)";
    return r;
  });
  // On another pool's worker, this pool's wait() is legitimate; and the reverse.
  auto cross = other.submit([&] {
    const bool mine = pool.on_worker();
    return call_outcome([&] { pool.wait(); }) + (mine ? " (on_worker true)" : "");
  });
  auto self_check = pool.submit([&] { return pool.on_worker() && !other.on_worker(); });
  auto after = pool.submit([] { return std::string("survived"); });
  for (auto* f : {&w, &s, &pw, &cross, &after}) require_ready(*f, "a task calling wait()/shutdown()");
  require_ready(self_check, "on_worker");
  const std::string rw = w.get(), rs = s.get(), rpw = pw.get(), rc = cross.get();
  std::printf("wait: %s\nshutdown: %s\npython wait: %s\ncross: %s\n", rw.c_str(), rs.c_str(),
              rpw.c_str(), rc.c_str());
  CHILD_CHECK(rw == "pool_error:called_from_worker");
  CHILD_CHECK(rs == "pool_error:called_from_worker");
  CHILD_CHECK(rpw == "pool_error:called_from_worker");
  CHILD_CHECK(rc == "returned");
  CHILD_CHECK(self_check.get());
  CHILD_CHECK(!pool.on_worker());
  CHILD_CHECK(after.get() == "survived");
  // The refused shutdown() did not shut the pool down.
  auto still = pool.submit([] { return 5; });
  require_ready(still, "a task after the refused shutdown");
  CHILD_CHECK(still.get() == 5);

  const std::uint64_t worker_tid = pool.stats().workers.at(0).os_tid;
  const std::vector<pyattach::misuse_report> reports = g_pool_reports.snapshot();
  CHILD_CHECK(reports.size() == 3);
  CHILD_CHECK(pyattach::misuse_count() == 3);
  const int lines[3] = {wait_line, shutdown_line, pywait_line};
  const char* calls[3] = {"wait", "shutdown", "wait"};
  for (std::size_t i = 0; i < reports.size() && i < 3; ++i) {
    const auto& r = reports[i];
    std::printf("REPORT %s\n  other: %s\n  misused_at: %s\n", r.message.c_str(), r.other.c_str(),
                r.misused_at.c_str());
    CHILD_CHECK(r.kind == pyattach::misuse_kind::pool_call_from_worker);
    CHILD_CHECK(contains(r.message, "pool_call_from_worker"));
    CHILD_CHECK(std::string(r.made_at.file) == __FILE__);
    CHILD_CHECK(r.made_at.line == made);  // where the pool was made
    CHILD_CHECK(contains(r.misused_at, site_of(lines[i])));  // the wait()/shutdown() call
    CHILD_CHECK(contains(r.message, std::string(calls[i]) + "()"));  // which call
    CHILD_CHECK(contains(r.message, "selfcall"));                     // which pool
    CHILD_CHECK(r.misused_on_thread == worker_tid);
  }
  pyattach::set_misuse_handler(nullptr);
  pool.shutdown();
  other.shutdown();
  CHILD_CHECK(pyattach::misuse_count() == 3);
  return child_done();
}
USES_CHILD_CASE(pool_wait_or_shutdown_from_own_worker);
CHILD_TEST(Pool, WaitOrShutdownFromItsOwnWorkerThrowsCalledFromWorkerAndReportsMisuse,
           pool_wait_or_shutdown_from_own_worker);

CHILD_CASE(pool_destroyed_from_own_worker) {
  pyattach::interpreter py;
  auto* pool = new thread_pool("selfdelete", 2);
  latch deleted;
  auto warm = pool->submit_python([] { return PyRun_SimpleString("_w = 1\n") == 0; });
  require_ready(warm, "warm-up");
  CHILD_CHECK(warm.get());
  // The task destroys the pool from one of its own workers (misuse, reported, must not crash
  // or hang), then carries on: the pool's state it still uses must be alive.
  pool->post([pool, &deleted] {
    delete pool;
    std::printf("deleted from worker\n");
    deleted.set();
  });
  CHILD_CHECK(deleted.wait(k_wait));
  CHILD_CHECK(pyattach::misuse_count() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}
USES_CHILD_CASE(pool_destroyed_from_own_worker);

TEST(Pool, DestroyedFromItsOwnWorkerIsReportedAndDoesNotCrashOrHang) {
  const auto r = run_child(uses_pool_destroyed_from_own_worker);
  EXPECT_CHILD_CLEAN(r);
  EXPECT_NE(r.err.find("pool_call_from_worker"), std::string::npos) << r.describe();
}

// ==== 10. finalization =========================================================================
// pool.hpp: the gate stops every pool before it closes, while Python can still be attached;
// queued tasks complete with pool_error(finalizing) without running; the closer waits (within its
// close timeout) for each worker to finish its running task and run its stop hook; a worker still
// busy when the bound expires runs its stop hook later, with python == finalizing.
// args[0]: "python": the running task is a Python task sleeping 0.3 s in time.sleep (within the
//          default 2 s bound): it finishes, and the stop hook runs attached, before the
//          interpreter's destructor returns;
//          "cpp": the running task is a C++ task blocked on a latch past the bound (300 ms here):
//          the destructor returns without it, and its stop hook runs later, refused Python.
CHILD_CASE(pool_interpreter_destroyed_with_queued_tasks) {
  const bool python_blocker = !args.empty() && args[0] == "python";
  pyattach::interpreter::options io;
  if (!python_blocker) io.close_timeout = std::chrono::milliseconds(300);
  auto py = std::make_unique<pyattach::interpreter>(io);
  error_log log;
  std::atomic<int> stops{0};
  std::atomic<int> stop_status{-1};
  pool_options o = logged_options("finpool", 1, log);
  o.stop_hook_python = true;
  o.on_stop = [&](const pyattach::worker_context& c) {
    ++stops;
    stop_status = static_cast<int>(c.python);
    if (c.python == pyattach::attach_status::attached) PyRun_SimpleString("_stop = 1\n");
  };
  auto pool = std::make_unique<thread_pool>(o);
  // The worker has a thread state before finalization.
  auto warm = pool->submit_python([] { return PyRun_SimpleString("import time\n_warm = 1\n") == 0; });
  require_ready(warm, "warm-up");
  CHILD_CHECK(warm.get());
  latch started, release;
  std::future<int> blocker;
  if (python_blocker) {
    blocker = pool->submit_python([&] {
      started.set();
      return PyRun_SimpleString("time.sleep(0.3)\n") == 0 ? 7 : -1;
    });
  } else {
    blocker = pool->submit([&] {
      started.set();
      return release.wait(k_wait) ? 7 : -1;
    });
  }
  CHILD_CHECK(started.wait(k_wait));
  std::atomic<int> ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(pool->submit_python([&] { return ++ran; }));
  for (int i = 0; i < 5; ++i) fs.push_back(pool->submit([&] { return ++ran; }));
  for (int i = 0; i < 3; ++i) pool->post_python([&] { ++ran; });
  CHILD_CHECK(pool->stats().queued == 28);

  const auto t0 = std::chrono::steady_clock::now();
  py.reset();  // Py_FinalizeEx: the gate stops the pool first
  const double destroy_ms = ms_since(t0);
  std::printf("interpreter destroyed in %.1f ms; stop hooks so far %d (status %d)\n", destroy_ms,
              stops.load(), stop_status.load());
  if (python_blocker) {
    // The closer waited for the running task and the stop hook, which ran attached.
    CHILD_CHECK(stops.load() == 1);
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  } else {
    // The bound expired with the worker still busy: no stop hook yet, and no hang.
    CHILD_CHECK(stops.load() == 0);
    CHILD_CHECK(destroy_ms >= 250);
    CHILD_CHECK(destroy_ms < (k_sanitized ? 20000 : 5000));
  }
  // None vanished: every queued task completed, with finalizing, without running.
  std::size_t ready = 0, finalizing = 0;
  for (auto& f : fs) {
    if (!is_ready(f)) continue;
    ++ready;
    const std::string how = outcome(f);
    if (how == "pool_error:finalizing") {
      ++finalizing;
    } else {
      std::printf("queued task ended as %s\n", how.c_str());
    }
  }
  std::printf("ready %zu finalizing %zu ran %d of %zu\n", ready, finalizing, ran.load(), fs.size());
  CHILD_CHECK(ready == fs.size());
  CHILD_CHECK(finalizing == fs.size());
  CHILD_CHECK(ran.load() == 0);
  CHILD_CHECK(log.count("pool_error:finalizing") == 3);  // the posts: no future, reported
  for (const auto& e : log.snapshot()) {
    CHILD_CHECK(e.where == "task");
    CHILD_CHECK(e.worker_index == static_cast<std::size_t>(-1));  // never reached the worker
  }
  // Submissions are refused now.
  for (const auto& [call, how] : try_each_submit(*pool)) {
    std::printf("%s after finalization: %s\n", call.c_str(), how.c_str());
    CHILD_CHECK(how == "pool_error:finalizing");
  }
  // The running task finished (Python: the closer waited for its pass) or finishes now (C++).
  if (python_blocker) {
    CHILD_CHECK(is_ready(blocker));
  } else {
    CHILD_CHECK(!is_ready(blocker));
    release.set();
  }
  require_ready(blocker, "the running task");
  const std::string how = blocker.valid() ? std::to_string(blocker.get()) : "invalid";
  std::printf("running task: %s\n", how.c_str());
  CHILD_CHECK(how == "7");
  const auto st = pool->stats();
  std::printf("stats: submitted %llu started %llu completed %llu failed %llu cancelled %llu queued %zu\n",
              (unsigned long long)st.submitted, (unsigned long long)st.started,
              (unsigned long long)st.completed, (unsigned long long)st.failed,
              (unsigned long long)st.cancelled, st.queued);
  CHILD_CHECK(st.cancelled == 28);
  CHILD_CHECK(st.queued == 0);
  CHILD_CHECK(st.submitted == 30);  // warm-up, running task, 28 queued
  CHILD_CHECK(st.completed == 2);
  // The worker left its loop (stopped, queue empty): its stop hook has run, or runs now.
  poll_until([&] { return stops.load() != 0; });
  CHILD_CHECK(stops.load() == 1);
  // "A pool does not outlive the interpreter it ran under": a new interpreter does not revive it.
  {
    pyattach::interpreter again;
    const std::string how2 = call_outcome([&] { pool->submit_python([] { return 0; }); }, "accepted");
    std::printf("submit under a new interpreter: %s\n", how2.c_str());
    CHILD_CHECK(how2 == "pool_error:finalizing");
    CHILD_CHECK(other_thread_can_run_python());
  }
  // The destructor after the interpreter is gone: returns, runs the stop hook (refused Python).
  pool.reset();
  std::printf("stop hooks %d, status %d\n", stops.load(), stop_status.load());
  CHILD_CHECK(stops.load() == 1);
  if (python_blocker) {
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::attached));
  } else {
    // Refused: pool.hpp says "finalizing"; a hook that runs after Py_FinalizeEx returned gets
    // "finalized" (worker_context: "anything else if the attach was refused"). Either, never
    // attached and never not_initialized.
    CHILD_CHECK(stop_status.load() == static_cast<int>(pyattach::attach_status::finalizing) ||
                stop_status.load() == static_cast<int>(pyattach::attach_status::finalized));
  }
  return child_done();
}
USES_CHILD_CASE(pool_interpreter_destroyed_with_queued_tasks);
CHILD_TEST(Pool, InterpreterDestroyedWithQueuedTasksCompletesThemWithFinalizing,
           pool_interpreter_destroyed_with_queued_tasks, child_args({"cpp"}));
CHILD_TEST(Pool, RunningPythonTaskFinishesWhenTheInterpreterFinalizesAndTheQueuedOnesDoNotRun,
           pool_interpreter_destroyed_with_queued_tasks, child_args({"python"}));


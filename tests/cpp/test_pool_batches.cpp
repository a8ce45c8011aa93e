// tests/cpp/test_pool_batches.cpp — pyattach::thread_pool (pool.hpp): Python tasks queued behind
// each other run under one attach (a batch), and a batch lets a thread waiting for the GIL in
// within the switch interval.
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== batches: Python tasks queued behind each other run under one attach ======================

namespace {

// Makes `pool`'s only worker busy with a C++ task until the returned latch is set, so that what
// is submitted meanwhile queues up behind it.
std::shared_ptr<latch> block_the_worker(thread_pool& pool) {
  auto started = std::make_shared<latch>();
  auto release = std::make_shared<latch>();
  pool.post([started, release] {
    started->set();
    release->wait(k_wait);
  });
  if (!started->wait(k_wait)) fatal_stuck("the blocking C++ task did not start");
  return release;
}

std::uint64_t attaches_of(const thread_pool& pool) {
  std::uint64_t n = 0;
  for (const auto& w : pool.stats().workers) n += w.attaches;
  return n;
}

}  // namespace

TEST(Pool, PythonTasksQueuedBehindEachOtherRunUnderFewAttachesEachWithItsOwnResult) {
  thread_pool pool("batch", 1);
  auto release = block_the_worker(pool);
  constexpr int n = 200;
  std::atomic<int> attached_inside{0};
  std::vector<std::future<long>> fs;
  for (int i = 0; i < n; ++i) {
    fs.push_back(pool.submit_python([i, &attached_inside]() -> long {
      if (pyattach::is_attached() && PyGILState_Check() == 1) ++attached_inside;
      if (i % 10 == 3) {  // every tenth fails: its own future gets the error, the batch goes on
        PyErr_SetString(PyExc_ValueError, "task failed");
        return -1;
      }
      PyObject* v = PyLong_FromLong(i);
      const long r = PyLong_AsLong(v);
      Py_DECREF(v);
      return r;
    }));
  }
  EXPECT_EQ(pool.stats().queued, static_cast<std::size_t>(n));
  release->set();
  for (int i = 0; i < n; ++i) {
    require_ready(fs[i], "batched Python task " + std::to_string(i));
    if (i % 10 == 3) {
      EXPECT_EQ(outcome(fs[i]), "python_error:ValueError:task failed") << i;
    } else {
      EXPECT_EQ(fs[i].get(), i);
    }
  }
  pool.wait();
  EXPECT_EQ(attached_inside.load(), n);
  const auto st = pool.stats();
  EXPECT_EQ(st.completed, static_cast<std::uint64_t>(n - n / 10 + 1));  // + the blocker
  EXPECT_EQ(st.failed, static_cast<std::uint64_t>(n / 10));
  ASSERT_EQ(st.workers.size(), 1u);
  EXPECT_EQ(st.workers[0].tasks, static_cast<std::uint64_t>(n + 1));
  // All 200 were queued when the first ran: one batch would do. The switch interval (5 ms) may
  // split it on a slow (sanitized, loaded) machine; without batching it would be 200.
  EXPECT_GE(st.workers[0].attaches, 1u);
  EXPECT_LE(st.workers[0].attaches, static_cast<std::uint64_t>(n / 10))
      << "queued Python tasks were not batched under one attach";
  // The worker holds no GIL once idle.
  require_other_thread_can_run_python("after a batch of Python tasks", k_prompt);
}

TEST(Pool, WithoutBatchPythonEachPythonTaskAttachesOnItsOwn) {
  pool_options o;
  o.name = "unbatched";
  o.batch_python = false;
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i) {
    pool.post_python([&] {
      if (pyattach::is_attached()) ++ran;
    });
  }
  release->set();
  pool.wait();
  EXPECT_EQ(ran.load(), 20);
  EXPECT_EQ(attaches_of(pool), 20u);
}

TEST(Pool, CppTaskBetweenPythonTasksRunsDetachedAndEndsTheBatch) {
  error_log log;
  pool_options o = named_options("split", 1);
  std::atomic<int> on_error_attached{0};
  auto forward = log.handler();
  o.on_error = [&, forward](const pyattach::task_failure& f) {
    if (pyattach::is_attached() || PyGILState_Check() == 1) ++on_error_attached;
    forward(f);
  };
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  std::atomic<int> python_ran{0};
  auto python_task = [&] {
    if (pyattach::is_attached()) ++python_ran;
  };
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  std::atomic<bool> cpp_attached{true}, cpp_gil{true};
  auto cpp = pool.submit([&] {
    cpp_attached = pyattach::is_attached();
    cpp_gil = PyGILState_Check() == 1;
  });
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  // A failing post ends its batch too: on_error runs detached, then the next batch starts.
  pool.post_python([] { PyErr_SetString(PyExc_RuntimeError, "posted failure"); });
  for (int i = 0; i < 5; ++i) pool.post_python(python_task);
  release->set();
  require_ready(cpp, "the C++ task between Python tasks");
  pool.wait();
  EXPECT_FALSE(cpp_attached.load()) << "a C++ task ran inside a batch of Python tasks";
  EXPECT_FALSE(cpp_gil.load()) << "a C++ task ran holding the GIL";
  EXPECT_EQ(python_ran.load(), 15);
  EXPECT_EQ(on_error_attached.load(), 0) << "on_error called attached, inside a batch";
  ASSERT_EQ(log.snapshot().size(), 1u);
  EXPECT_EQ(log.snapshot()[0].error, "python_error:RuntimeError:posted failure");
  // 5 | C++ | 5 + the failing post | 5: at least 3 attaches (more if the switch interval split
  // one), at most one per Python task.
  const std::uint64_t attaches = attaches_of(pool);
  EXPECT_GE(attaches, 3u);
  EXPECT_LE(attaches, 16u);
}

// A thread waiting for the GIL while the worker has a long queue of Python tasks that never run
// bytecode (so CPython's own drop request is never honoured inside them): the batch's bound (the
// switch interval) must hand it the GIL. Without the bound it would wait for the whole queue.
CHILD_CASE(pool_batch_lets_a_waiting_thread_in) {
  pyattach::interpreter py;
  double interval_s = 0;
  {
    pyattach::attach_scope gil;
    PyObject* sys = PyImport_ImportModule("sys");
    PyObject* v = sys ? PyObject_CallMethod(sys, "getswitchinterval", nullptr) : nullptr;
    interval_s = v ? PyFloat_AsDouble(v) : 0;
    Py_XDECREF(v);
    Py_XDECREF(sys);
  }
  CHILD_CHECK(interval_s > 0);
  pool_options o;
  o.name = "greedy";
  o.on_error = [](const pyattach::task_failure&) {};  // the cancelled rest of the queue
  thread_pool pool(o);
  auto release = block_the_worker(pool);
  // 12,000 tasks of 250 us each, attached, no bytecode: 3 s of GIL if nobody lets go.
  constexpr int n = 12000;
  const auto task_time = std::chrono::microseconds(250);
  std::atomic<int> ran{0};
  for (int i = 0; i < n; ++i) {
    pool.post_python([&ran, task_time] {
      const auto end = std::chrono::steady_clock::now() + task_time;
      while (std::chrono::steady_clock::now() < end) {
      }
      ran.fetch_add(1, std::memory_order_relaxed);
    });
  }
  release->set();
  while (ran.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::vector<double> waits_ms;
  for (int i = 0; i < 10; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    {
      pyattach::attach_scope gil;
      waits_ms.push_back(ms_since(t0));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int ran_by_then = ran.load();
  pool.shutdown(shutdown_mode::cancel);
  double worst = 0;
  std::printf("switch interval %.3f ms; waits (ms):", interval_s * 1e3);
  for (double w : waits_ms) {
    std::printf(" %.2f", w);
    worst = std::max(worst, w);
  }
  std::printf("; tasks run meanwhile %d of %d\n", ran_by_then, n);
  // Within a few switch intervals when it works (5 ms + one 250 us task); the queue's 3 s when
  // the batch ignores the bound. 500 ms: 100 intervals, for a loaded or sanitized machine.
  CHILD_CHECK(worst < 500.0);
  CHILD_CHECK(ran_by_then < n);  // the waits overlapped the queue (else they prove nothing)
  return child_done();
}
USES_CHILD_CASE(pool_batch_lets_a_waiting_thread_in);

TEST(Pool, BatchOfPythonTasksLetsAThreadWaitingForTheGilInWithinTheSwitchInterval) {
  const auto r = run_child(uses_pool_batch_lets_a_waiting_thread_in);
  EXPECT_CHILD_CLEAN(r);
  std::printf("%s", r.out.c_str());
}

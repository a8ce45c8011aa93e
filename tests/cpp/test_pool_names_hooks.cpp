// tests/cpp/test_pool_names_hooks.cpp — pyattach::thread_pool (pool.hpp): worker names (OS and
// Python), start and stop hooks, and two pools side by side.
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== 6. names =================================================================================

TEST(Pool, WorkerOsAndPythonNamesArePoolDashIndex) {
  PyObject* g = make_globals();
  start_hook_names hook_names;
  pool_options o = named_options("pnames", 3);
  o.on_start = hook_names.hook();
  thread_pool pool(o);
  EXPECT_EQ(pool.name(), "pnames");
  EXPECT_EQ(pool.size(), 3u);
  const auto st = pool.stats();
  EXPECT_EQ(st.name, "pnames");
  ASSERT_EQ(st.workers.size(), 3u);
  std::map<std::uint64_t, std::string> name_of_tid;
  for (std::size_t i = 0; i < 3; ++i) {
    const std::string expected = "pnames-" + std::to_string(i);
    EXPECT_EQ(st.workers[i].name, expected);
    EXPECT_NE(st.workers[i].os_tid, 0u);
    EXPECT_EQ(thread_comm(st.workers[i].os_tid), expected) << "OS name of worker " << i;
    EXPECT_EQ(hook_names.of(i), expected) << "worker_context::name of worker " << i;
    name_of_tid[st.workers[i].os_tid] = expected;
  }
  const auto samples = python_on_each_worker(pool, [g] { return name_task(g); });
  std::set<std::string> seen;
  for (const auto& s : samples) {
    ASSERT_EQ(name_of_tid.count(s.tid), 1u) << "task on an unknown thread " << s.tid;
    EXPECT_EQ(s.comm, name_of_tid[s.tid]) << "OS name read on the worker";
    EXPECT_EQ(s.python_name, s.comm) << "threading.current_thread().name must equal the OS name";
    seen.insert(s.python_name);
  }
  EXPECT_EQ(seen.size(), 3u);
  expect_in_threading_enumerate(g, {"pnames-0", "pnames-1", "pnames-2"});
  for (const auto& w : pool.stats().workers) EXPECT_TRUE(w.named_in_python) << w.name;
  drop(g);
}

TEST(Pool, LongPoolNameShortensOnlyTheOsNameTo15CharactersKeepingTheIndex) {
  // pool.hpp: workers are named "<name>-<index>" in Python, in stats and in worker_context; the
  // OS name (the kernel keeps 15 characters) shortens <name> so that "-<index>" stays visible.
  const std::string long_name = "a_rather_long_pool_name";  // 23 characters
  constexpr std::size_t k_workers = 11;                      // indices up to two digits
  PyObject* g = make_globals();
  start_hook_names hook_names;
  pool_options o = named_options(long_name, k_workers);
  o.on_start = hook_names.hook();
  thread_pool pool(o);
  EXPECT_EQ(pool.name(), long_name);
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), k_workers);
  std::map<std::uint64_t, std::string> full_of_tid;
  std::set<std::string> distinct;
  for (std::size_t i = 0; i < k_workers; ++i) {
    const std::string full = long_name + "-" + std::to_string(i);
    const std::string comm = thread_comm(st.workers[i].os_tid);
    const std::string tail = "-" + std::to_string(i);
    EXPECT_LE(comm.size(), 15u) << comm;
    EXPECT_TRUE(ends_with(comm, tail)) << "worker " << i << " OS name '" << comm << "' lost its index";
    const std::string prefix = comm.substr(0, comm.size() >= tail.size() ? comm.size() - tail.size() : 0);
    EXPECT_FALSE(prefix.empty()) << comm;
    EXPECT_EQ(long_name.compare(0, prefix.size(), prefix), 0)
        << "'" << comm << "' does not start with a prefix of the pool name";
    EXPECT_EQ(st.workers[i].name, full) << "worker_stats::name";
    EXPECT_EQ(hook_names.of(i), full) << "worker_context::name";
    full_of_tid[st.workers[i].os_tid] = full;
    distinct.insert(comm);
  }
  EXPECT_EQ(distinct.size(), k_workers) << "two workers share an OS name";
  for (const auto& s : python_on_each_worker(pool, [g] { return name_task(g); })) {
    EXPECT_EQ(s.python_name, full_of_tid[s.tid]) << "the Python name is the full <pool>-<index>";
  }
  drop(g);
}

TEST(Pool, WorkersLeaveThreadingActiveAndEnumerateAfterShutdown) {
#if PY_VERSION_HEX >= 0x030D0000
  GTEST_SKIP() << "pool.hpp promises the threading._active clean-up on <= 3.12 only";
#else
  PyObject* g = make_globals();
  std::vector<name_sample> samples;
  {
    thread_pool pool("gone", 3);
    samples = python_on_each_worker(pool, [g] { return name_task(g); });
    const auto names = enumerate_names(g);
    for (const auto& s : samples) {
      ASSERT_NE(std::find(names.begin(), names.end(), s.python_name), names.end())
          << "precondition: " << s.python_name << " in threading.enumerate(): " << join(names);
    }
    pool.shutdown();
    const auto after = enumerate_names(g);
    pyattach::attach_scope py;
    for (const auto& s : samples) {
      PyObject* key = PyLong_FromUnsignedLong(s.ident);
      PyDict_SetItemString(g, "_key", key);
      Py_DECREF(key);
      EXPECT_FALSE(py_eval_bool("_key in threading._active", g))
          << s.python_name << " (ident " << s.ident << ") still in threading._active";
      EXPECT_EQ(std::find(after.begin(), after.end(), s.python_name), after.end())
          << s.python_name << " still in threading.enumerate(): " << join(after);
    }
  }
  drop(g);
#endif
}

// ==== 7. hooks =================================================================================

TEST(Pool, StartAndStopHooksRunOncePerWorkerOnTheWorkerAroundItsTasks) {
  constexpr std::size_t k_workers = 3;
  event_log log;
  pool_options o = named_options("hooks", k_workers);
  o.on_start = [&](const pyattach::worker_context& c) { log.add(hook_record("start", c)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(hook_record("stop", c)); };
  std::optional<thread_pool> pool;
  pool.emplace(o);
  // The constructor returns once every start hook has run.
  EXPECT_EQ(log.count("start"), k_workers);
  EXPECT_EQ(log.count("stop"), 0u);
  const auto tids = workers_by_tid(*pool);
  cpp_on_each_worker(*pool, [&] {  // every worker runs at least one task
    log.add(task_event());
    return 0;
  });
  for (int i = 0; i < 60; ++i) {
    if (i % 2 == 0) {
      pool->post([&] { log.add(task_event()); });
    } else {
      pool->post_python([&] { log.add(task_event()); });
    }
  }
  pool->wait();
  EXPECT_EQ(log.count("stop"), 0u) << "a stop hook ran before shutdown";
  pool->shutdown();
  EXPECT_EQ(log.count("stop"), k_workers) << "shutdown() returned before every stop hook ran";
  pool.reset();
  const auto events = log.snapshot();
  EXPECT_EQ(log.count("start"), k_workers);
  EXPECT_EQ(log.count("stop"), k_workers) << "a stop hook ran twice (shutdown, then destructor)";
  const auto by_tid = events_by_tid(events);
  EXPECT_EQ(by_tid.size(), k_workers) << "hooks or tasks ran on a thread that is not a worker";
  std::set<std::size_t> indices;
  for (const auto& [tid, v] : by_tid) {
    ASSERT_EQ(tids.count(tid), 1u) << "thread " << tid << " is not a worker";
    ASSERT_GE(v.size(), 3u) << "worker " << tid << ": start, >= 1 task, stop";
    EXPECT_EQ(v.front().kind, "start") << "worker " << tid << ": first event";
    EXPECT_EQ(v.back().kind, "stop") << "worker " << tid << ": last event";
    EXPECT_EQ(std::count_if(v.begin(), v.end(), [](const hook_event& e) { return e.kind == "start"; }), 1);
    EXPECT_EQ(std::count_if(v.begin(), v.end(), [](const hook_event& e) { return e.kind == "stop"; }), 1);
    const hook_event& s = v.front();
    EXPECT_EQ(s.name, tids.at(tid).name);
    EXPECT_EQ(s.name, "hooks-" + std::to_string(s.index));
    EXPECT_EQ(s.pool_name, "hooks");
    EXPECT_EQ(v.back().index, s.index) << "stop hook's context names another worker";
    for (const hook_event* h : {&v.front(), &v.back()}) {
      EXPECT_EQ(h->python, pyattach::attach_status::not_initialized)
          << h->kind << " hook did not ask for Python: worker_context::python must be not_initialized";
      EXPECT_FALSE(h->attached) << h->kind << " hook ran attached without asking";
      EXPECT_FALSE(h->gil) << h->kind << " hook: PyGILState_Check()";
    }
    indices.insert(s.index);
  }
  EXPECT_EQ(indices, (std::set<std::size_t>{0, 1, 2}));
}

TEST(Pool, PythonHooksRunAttachedAndShareTheWorkersThreadState) {
  constexpr std::size_t k_workers = 2;
  const std::size_t baseline = thread_states();
  PyObject* g = make_globals("tl = threading.local()\n");
  event_log log;
  auto python_record = [g](const char* kind, const pyattach::worker_context& c, bool set) {
    hook_event e = hook_record(kind, c);
    if (e.attached) {
      e.tstate = PyThreadState_Get();
      if (set) py_exec("tl.mark = 'w" + std::to_string(c.index) + "'\n", g);
      e.tl_mark = py_eval_str("getattr(tl, 'mark', 'unset')", g);
    }
    return e;
  };
  pool_options o = named_options("pyhooks", k_workers);
  o.start_hook_python = true;
  o.stop_hook_python = true;
  o.on_start = [&](const pyattach::worker_context& c) { log.add(python_record("start", c, true)); };
  o.on_stop = [&](const pyattach::worker_context& c) { log.add(python_record("stop", c, false)); };
  {
    thread_pool pool(o);
    EXPECT_EQ(thread_states(), baseline + k_workers) << "Python start hooks made the workers' states";
    const auto tasks = python_on_each_worker(pool, [g] {
      hook_event e = task_event();
      e.tstate = PyThreadState_Get();
      e.tl_mark = py_eval_str("getattr(tl, 'mark', 'unset')", g);
      return e;
    });
    for (const auto& t : tasks) log.add(t);
    EXPECT_EQ(thread_states(), baseline + k_workers);
  }
  EXPECT_EQ(thread_states(), baseline);
  const auto by_tid = events_by_tid(log.snapshot());
  ASSERT_EQ(by_tid.size(), k_workers);
  for (const auto& [tid, v] : by_tid) {
    ASSERT_EQ(v.size(), 3u) << "worker " << tid << ": start, task, stop";
    const hook_event &start = v[0], &task = v[1], &stop = v[2];
    EXPECT_EQ(start.kind, "start");
    EXPECT_EQ(task.kind, "task");
    EXPECT_EQ(stop.kind, "stop");
    const std::string mark = "w" + std::to_string(start.index);
    for (const hook_event* h : {&start, &stop}) {
      EXPECT_EQ(h->python, pyattach::attach_status::attached) << h->kind << " hook";
      EXPECT_TRUE(h->attached) << h->kind << " hook asked for Python but is not attached";
      EXPECT_TRUE(h->gil) << h->kind << " hook: PyGILState_Check() != 1";
      EXPECT_EQ(h->tl_mark, mark) << h->kind << " hook";
      EXPECT_EQ(h->tstate, task.tstate) << h->kind << " hook ran on another thread state";
    }
    EXPECT_EQ(task.tl_mark, mark) << "threading.local set in the start hook is lost in tasks";
  }
  drop(g);
}

CHILD_CASE(pool_start_hook_failure) {
  // args[0]: "python" to run the hooks attached.
  const bool python = !args.empty() && args[0] == "python";
  pyattach::interpreter py;
  const std::size_t baseline_threads = baseline_os_thread_count();
  const std::size_t baseline_states = thread_states();
  constexpr std::size_t k_workers = 4;
  std::mutex m;
  std::map<std::size_t, int> started, stopped;
  std::map<std::size_t, std::uint64_t> start_tid, stop_tid;
  pool_options o = named_options("badstart", k_workers);
  o.start_hook_python = python;
  o.stop_hook_python = python;
  o.on_start = [&](const pyattach::worker_context& c) {
    if (python && PyRun_SimpleString("_start = 1\n") != 0) std::printf("python failed in hook\n");
    if (c.index == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));  // let the others start first
      throw std::runtime_error("start hook 2 failed");
    }
    std::lock_guard<std::mutex> g(m);
    ++started[c.index];
    start_tid[c.index] = os_tid();
  };
  o.on_stop = [&](const pyattach::worker_context& c) {
    std::lock_guard<std::mutex> g(m);
    ++stopped[c.index];
    stop_tid[c.index] = os_tid();
  };
  bool threw = false;
  try {
    thread_pool pool(o);
    std::printf("constructor returned\n");
  } catch (const pool_error& e) {
    threw = true;
    std::printf("pool_error %s: %s\n", pyattach::to_string(e.code()), e.what());
    CHILD_CHECK(e.code() == pool_errc::start_hook_failed);
    CHILD_CHECK(contains(e.what(), "start hook 2 failed"));
  } catch (const std::exception& e) {
    std::printf("wrong exception: %s\n", e.what());
  }
  CHILD_CHECK(threw);
  {
    std::lock_guard<std::mutex> g(m);
    CHILD_CHECK(started.count(2) == 0);
    for (const auto& [index, n] : started) {
      std::printf("worker %zu: start %d, stop %d\n", index, n, stopped[index]);
      CHILD_CHECK(n == 1);
      CHILD_CHECK(stopped[index] == 1);  // its start hook succeeded: its stop hook ran, once
      CHILD_CHECK(stop_tid[index] == start_tid[index]);
    }
    std::printf("failed worker: stop %d\n", stopped.count(2) ? stopped[2] : 0);
    CHILD_CHECK((stopped.count(2) ? stopped[2] : 0) <= 1);
    std::printf("started %zu of %zu\n", started.size(), k_workers);
  }
  // Never half-started: every worker thread is gone, and their thread states with them.
  CHILD_CHECK(os_thread_count_becomes(baseline_threads));
  std::printf("threads %zu (baseline %zu)\n", os_thread_count(), baseline_threads);
  CHILD_CHECK(thread_states() == baseline_states);
  CHILD_CHECK(other_thread_can_run_python());
  return child_done();
}
USES_CHILD_CASE(pool_start_hook_failure);
CHILD_TEST(Pool, ThrowingStartHookFailsTheConstructorAndStopsEveryWorker, pool_start_hook_failure);
CHILD_TEST(Pool, ThrowingPythonStartHookFailsTheConstructorAndStopsEveryWorker,
           pool_start_hook_failure, child_args({"python"}));

TEST(Pool, ThrowingStopHookGoesToOnErrorWithWhereStopHook) {
  error_log log;
  pool_options o = logged_options("badstop", 2, log);
  o.on_stop = [](const pyattach::worker_context& c) {
    throw std::runtime_error("stop hook " + std::to_string(c.index) + " failed");
  };
  std::map<std::uint64_t, pyattach::worker_stats> tids;
  {
    thread_pool pool(o);
    tids = workers_by_tid(pool);
    auto f = pool.submit([] { return 1; });
    require_ready(f, "task");
    EXPECT_EQ(f.get(), 1);
    EXPECT_TRUE(log.snapshot().empty());
    run_with_deadline("shutdown with throwing stop hooks", [&] { pool.shutdown(); });
  }
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 2u) << "one on_error call per worker's stop hook";
  std::set<std::size_t> indices;
  for (const auto& e : entries) {
    EXPECT_EQ(e.where, "stop hook");
    EXPECT_EQ(e.pool_name, "badstop");
    EXPECT_EQ(e.error, "exception:stop hook " + std::to_string(e.worker_index) + " failed");
    EXPECT_EQ(e.what, "stop hook " + std::to_string(e.worker_index) + " failed");
    ASSERT_EQ(tids.count(e.tid), 1u) << "on_error for a stop hook not called on the worker";
    EXPECT_EQ(tids.at(e.tid).name, "badstop-" + std::to_string(e.worker_index));
    indices.insert(e.worker_index);
  }
  EXPECT_EQ(indices, (std::set<std::size_t>{0, 1}));
}

// ==== 8. several pools side by side ============================================================

TEST(Pool, TwoPoolsSideBySideNeitherBlocksTheOther) {
  // Like Ray's concurrency groups: a default pool and a custom one, one worker each.
  thread_pool default_pool("default_pool", 1);
  thread_pool custom_pool("custom_pool", 1);
  EXPECT_EQ(default_pool.name(), "default_pool");
  EXPECT_EQ(custom_pool.size(), 1u);
  auto py_task = [](thread_pool& p) {
    return p.submit_python([] {
      return PyRun_SimpleString("import threading\n_side = threading.current_thread().name\n") == 0;
    });
  };
  auto prompt = [&](thread_pool& p, const std::string& while_what) {
    const auto t0 = std::chrono::steady_clock::now();
    auto f = py_task(p);
    if (f.wait_for(k_prompt) != std::future_status::ready) {
      fatal_stuck("a Python task on " + p.name() + " did not complete " + while_what);
    }
    EXPECT_TRUE(f.get());
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    EXPECT_LT(ms, k_prompt) << p.name() << " " << while_what;
    return ms;
  };
  prompt(default_pool, "first");
  prompt(custom_pool, "first");
  default_pool.wait();
  custom_pool.wait();
  // Both idle, each with a thread state: neither holds the GIL for the other.
  for (int i = 0; i < 20; ++i) prompt(custom_pool, "while default_pool is idle");
  for (int i = 0; i < 20; ++i) prompt(default_pool, "while custom_pool is idle");
  // default_pool busy in a long C++ task.
  {
    latch started, release;
    auto long_task = default_pool.submit([&] {
      started.set();
      return release.wait(k_wait);
    });
    ASSERT_TRUE(started.wait(k_wait));
    for (int i = 0; i < 20; ++i) prompt(custom_pool, "while default_pool runs a long C++ task");
    EXPECT_FALSE(is_ready(long_task)) << "precondition: the long task was still running";
    release.set();
    require_ready(long_task, "long C++ task");
    EXPECT_TRUE(long_task.get());
  }
  // custom_pool busy in a long Python task that blocks detached (detach_scope), and the reverse.
  {
    latch started, release;
    auto long_task = custom_pool.submit_python([&] {
      PyRun_SimpleString("_long = 1\n");
      started.set();
      pyattach::detach_scope nogil;
      return release.wait(k_wait);
    });
    ASSERT_TRUE(started.wait(k_wait));
    for (int i = 0; i < 20; ++i) prompt(default_pool, "while custom_pool blocks detached in a Python task");
    EXPECT_FALSE(is_ready(long_task));
    release.set();
    require_ready(long_task, "long Python task");
    EXPECT_TRUE(long_task.get());
  }
}


// tests/cpp/test_pool_identity.cpp — pyattach::thread_pool (pool.hpp): a worker keeps one thread
// state across tasks; C++ tasks never attach; idle workers hold no GIL.
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== 1. a worker keeps ONE thread state =======================================================

namespace {
// What a Python task saw of its thread's identity.
struct identity_sample {
  std::uint64_t tid = 0;
  const void* tstate = nullptr;
  unsigned long ident = 0;
  long tl_id = -1;  // threading.local: the id this thread's local got on its first task
  long tl_n = -1;   // threading.local: how many tasks this thread's local has counted
  bool gil = false;
};

constexpr const char* k_identity_setup =
    "import itertools\n"
    "tl = threading.local()\n"
    "ids = itertools.count()\n"
    "def bump():\n"
    "    if not hasattr(tl, 'id'):\n"
    "        tl.id = next(ids)\n"
    "        tl.n = 0\n"
    "    tl.n += 1\n"
    "    return (tl.id, tl.n, threading.get_ident())\n";

// A Python task body: calls bump() (in globals) and records what it saw.
identity_sample identity_task(PyObject* code, PyObject* globals) {
  identity_sample s;
  s.tid = os_tid();
  s.tstate = PyThreadState_Get();
  s.gil = PyGILState_Check() == 1;
  PyObject* r = PyEval_EvalCode(code, globals, globals);
  if (r == nullptr) return s;  // the error arrives in the future as python_error
  s.tl_id = PyLong_AsLong(PyTuple_GetItem(r, 0));
  s.tl_n = PyLong_AsLong(PyTuple_GetItem(r, 1));
  s.ident = PyLong_AsUnsignedLong(PyTuple_GetItem(r, 2));
  Py_DECREF(r);
  return s;
}

PyObject* compile_eval(const char* expr) {
  pyattach::attach_scope py;
  PyObject* c = Py_CompileString(expr, "<pool-test>", Py_eval_input);
  if (c == nullptr) PyErr_Print();
  return c;
}

// The globals with bump() and its compiled call, for identity tasks; dropped at the end.
struct identity_python {
  PyObject* globals = make_globals(k_identity_setup);
  PyObject* code = compile_eval("bump()");
  identity_python() = default;
  identity_python(const identity_python&) = delete;
  identity_python& operator=(const identity_python&) = delete;
  ~identity_python() {
    drop(code);
    drop(globals);
  }
  // An identity task's callable.
  auto task() const {
    return [code = code, globals = globals] { return identity_task(code, globals); };
  }
};

// Submits n identity tasks to `pool`; what each saw, in submission order.
std::vector<identity_sample> run_identity_tasks(thread_pool& pool, const identity_python& py, int n,
                                                const std::string& what) {
  std::vector<std::future<identity_sample>> fs;
  fs.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) fs.push_back(pool.submit_python(py.task()));
  std::vector<identity_sample> s;
  for (auto& f : fs) {
    require_ready(f, what);
    s.push_back(f.get());
  }
  return s;
}

// The threading.local counts (tl_n) that one thread's tasks saw: 1, 2, ..., n, each once.
void expect_counted_one_to_n(std::vector<long> ns, long n, const std::string& who) {
  std::sort(ns.begin(), ns.end());
  EXPECT_EQ(ns.front(), 1) << who;
  EXPECT_EQ(ns.back(), n) << who << ": threading.local's counter did not reach its task count";
  EXPECT_EQ(std::adjacent_find(ns.begin(), ns.end()), ns.end()) << who << ": a tl.n value repeats";
}
}  // namespace

TEST(Pool, OneWorkerKeepsOneThreadStateAcross10000PythonTasks) {
  constexpr int k_tasks = 10000;
  const std::size_t baseline = thread_states();
  identity_python py;
  ASSERT_NE(py.code, nullptr);
  {
    thread_pool pool("persist", 1);
    EXPECT_EQ(thread_states(), baseline) << "a worker made a thread state before any Python task";
    const std::vector<identity_sample> s = run_identity_tasks(pool, py, k_tasks, "a persistence task");
    ASSERT_EQ(s.size(), static_cast<std::size_t>(k_tasks));
    const identity_sample& first = s.front();
    int diff_tid = 0, diff_state = 0, diff_ident = 0, diff_local = 0, no_gil = 0;
    std::vector<long> ns;
    for (const auto& x : s) {
      diff_tid += x.tid != first.tid;
      diff_state += x.tstate != first.tstate;
      diff_ident += x.ident != first.ident;
      diff_local += x.tl_id != first.tl_id;
      no_gil += !x.gil;
      ns.push_back(x.tl_n);
    }
    EXPECT_EQ(diff_tid, 0) << "a one-worker pool ran tasks on several threads";
    EXPECT_EQ(diff_state, 0) << "tasks ran on different PyThreadStates";
    EXPECT_EQ(diff_ident, 0) << "threading.get_ident() changed between tasks";
    EXPECT_EQ(diff_local, 0) << "threading.local was reset: its id changed";
    EXPECT_EQ(no_gil, 0) << "PyGILState_Check() was not 1 inside a Python task";
    expect_counted_one_to_n(ns, k_tasks, "the worker");
    EXPECT_EQ(thread_states(), baseline + 1) << "10,000 tasks on one worker: one thread state";
    const auto st = pool.stats();
    ASSERT_EQ(st.workers.size(), 1u);
    EXPECT_EQ(st.workers[0].os_tid, first.tid);
    EXPECT_TRUE(st.workers[0].named_in_python);
    pool.shutdown();
    EXPECT_EQ(thread_states(), baseline) << "the worker's thread state survived its thread";
  }
  EXPECT_EQ(thread_states(), baseline);
}

TEST(Pool, EachWorkerHasItsOwnThreadStateAndTheCountGrowsByTheWorkerCountOnly) {
  constexpr std::size_t k_workers = 4;
  constexpr int k_tasks = 10000;
  const std::size_t baseline = thread_states();
  identity_python py;
  ASSERT_NE(py.code, nullptr);
  {
    thread_pool pool("states", k_workers);
    EXPECT_EQ(thread_states(), baseline) << "workers made thread states before any Python task";
    // One Python task on each worker: every worker now has its state.
    std::vector<identity_sample> s = python_on_each_worker(pool, py.task());
    EXPECT_EQ(thread_states(), baseline + k_workers);
    for (auto& x : run_identity_tasks(pool, py, k_tasks, "an identity task")) s.push_back(x);
    EXPECT_EQ(thread_states(), baseline + k_workers)
        << "the thread-state count must grow by the worker count, never the task count";

    std::map<std::uint64_t, std::vector<identity_sample>> by_tid;
    for (const auto& x : s) by_tid[x.tid].push_back(x);
    const auto workers = workers_by_tid(pool);
    ASSERT_EQ(by_tid.size(), k_workers) << "tasks ran on a thread that is not one of the 4 workers";
    std::set<long> local_ids;
    std::set<const void*> states;
    std::set<unsigned long> idents;
    std::size_t total = 0;
    for (const auto& [tid, v] : by_tid) {
      EXPECT_EQ(workers.count(tid), 1u) << "tid " << tid << " is not in stats().workers";
      std::vector<long> ns;
      int diff = 0;
      for (const auto& x : v) {
        diff += x.tstate != v[0].tstate || x.ident != v[0].ident || x.tl_id != v[0].tl_id;
        ns.push_back(x.tl_n);
      }
      EXPECT_EQ(diff, 0) << "worker " << tid << " changed PyThreadState, ident or threading.local";
      // This worker's threading.local counted exactly the tasks it ran: 1, 2, ..., v.size().
      expect_counted_one_to_n(ns, static_cast<long>(v.size()), "worker " + std::to_string(tid));
      local_ids.insert(v[0].tl_id);
      states.insert(v[0].tstate);
      idents.insert(v[0].ident);
      total += v.size();
    }
    EXPECT_EQ(total, k_tasks + k_workers);
    EXPECT_EQ(local_ids.size(), k_workers) << "two workers shared a threading.local";
    EXPECT_EQ(states.size(), k_workers) << "two workers shared a PyThreadState";
    EXPECT_EQ(idents.size(), k_workers);
    pool.shutdown();
    EXPECT_EQ(thread_states(), baseline) << "worker thread states were not destroyed at exit";
  }
}

// ==== 2. C++ tasks never attach ================================================================

TEST(Pool, CppTaskNeverAttachesAnotherThreadRunsPythonWhileItBlocks) {
  const std::size_t baseline = thread_states();
  thread_pool pool("cxxonly", 1);
  latch started, release;
  std::atomic<bool> attached_inside{true}, gil_inside{true};
  auto f = pool.submit([&] {
    attached_inside = pyattach::is_attached();
    gil_inside = PyGILState_Check() == 1;
    started.set();
    return release.wait(k_wait);
  });
  ASSERT_TRUE(started.wait(k_wait));
  // The C++ task is blocked: if the worker had attached for it, it would hold the GIL now.
  const bool ran = other_thread_can_run_python(k_prompt);
  if (!ran) {
    release.set();
    fatal_stuck("another thread could not run Python while a C++ pool task blocked");
  }
  EXPECT_TRUE(ran);
  EXPECT_EQ(thread_states(), baseline) << "the C++ task's worker has a thread state";
  release.set();
  require_ready(f, "the blocked C++ task");
  EXPECT_TRUE(f.get());
  EXPECT_FALSE(attached_inside.load()) << "is_attached() inside a C++ task";
  EXPECT_FALSE(gil_inside.load()) << "PyGILState_Check() inside a C++ task";
}

TEST(Pool, PoolThatRanOnlyCppTasksAddsNoThreadState) {
  const std::size_t baseline = thread_states();
  thread_pool pool("cxxonly2", 3);
  std::atomic<int> attached{0}, ran{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 1000; ++i) {
    fs.push_back(pool.submit([&, i] {
      attached += pyattach::is_attached();
      ++ran;
      return i;
    }));
    pool.post([&] {
      attached += pyattach::is_attached();
      ++ran;
    });
  }
  for (int i = 0; i < 1000; ++i) {
    require_ready(fs[static_cast<size_t>(i)], "C++ task");
    EXPECT_EQ(fs[static_cast<size_t>(i)].get(), i);
  }
  pool.wait();
  EXPECT_EQ(ran.load(), 2000);
  EXPECT_EQ(attached.load(), 0);
  EXPECT_EQ(thread_states(), baseline) << "a pool that ran only C++ tasks made thread states";
  const auto st = pool.stats();
  std::set<std::uint64_t> tids;
  for (const auto& w : st.workers) {
    EXPECT_FALSE(w.named_in_python) << w.name;
    tids.insert(w.os_tid);
  }
  const auto report = pyattach::make_thread_report();
  for (const auto& t : report.threads) {
    if (tids.count(t.os_tid)) {
      EXPECT_FALSE(t.has_thread_state) << "worker " << t.os_tid << " has a state";
    }
  }
}

// ==== 3. idle workers hold no GIL ==============================================================

TEST(Pool, IdleWorkersHoldNoGilAfterRunningPythonTasks) {
  thread_pool pool("idle", 4);
  python_on_each_worker(pool, [] { return PyRun_SimpleString("_idle_x = sum(range(100))\n") == 0; });
  // A burst more, so the workers go idle right after Python work.
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 200; ++i) {
    fs.push_back(pool.submit_python([] { return PyRun_SimpleString("_idle_y = 1\n"); }));
  }
  for (auto& f : fs) {
    require_ready(f, "idle burst");
    EXPECT_EQ(f.get(), 0);
  }
  pool.wait();
  for (int k = 0; k < 5; ++k) {
    // A brand-new native thread attaches at once: no idle worker holds the GIL.
    if (!other_thread_can_run_python(k_sanitized ? 3000ms : 1000ms)) {
      fatal_stuck("an idle pool's worker holds the GIL (attempt " + std::to_string(k) + ")");
    }
  }
  // The thread report agrees: every worker is detached.
  const auto tids = workers_by_tid(pool);
  const auto report = pyattach::make_thread_report();
  std::size_t seen = 0;
  for (const auto& t : report.threads) {
    if (!tids.count(t.os_tid)) continue;
    ++seen;
    EXPECT_EQ(t.state, pyattach::thread_attachment::detached)
        << "idle worker " << t.os_tid << " is " << pyattach::to_string(t.state);
  }
  EXPECT_EQ(seen, 4u) << pyattach::to_string(report);
}


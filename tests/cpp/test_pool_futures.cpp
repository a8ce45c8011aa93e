// tests/cpp/test_pool_futures.cpp — pyattach::thread_pool (pool.hpp): futures receive values, C++
// exceptions and Python errors; post() failures go to on_error; the rest of the contract (task
// callables, Python references, on_worker, options).
// Shared helpers: pool_helpers.hpp. Cases that can hang, misuse, or need their own interpreter
// lifetime run in child processes (child_process.hpp).
#include "pool_helpers.hpp"

using namespace pool_test;

// ==== 4. futures ===============================================================================

namespace {
// f.get() must throw an E, which check(e) then examines; no exception (`if_none`) or an exception
// of another type fails the test.
template <class E, class T, class Check>
void expect_get_throws(std::future<T>& f, Check check, const char* if_none = "no exception") {
  try {
    if constexpr (std::is_void_v<T>) {
      f.get();
      ADD_FAILURE() << if_none;
    } else {
      const auto v = f.get();
      ADD_FAILURE() << if_none << ", value " << ::testing::PrintToString(v);
    }
  } catch (const E& e) {
    check(e);
  } catch (...) {
    ADD_FAILURE() << "wrong type: " << describe_error(std::current_exception());
  }
}

// f.get() must throw a python_error of `type` with `message` (unless nullptr) and a traceback that
// contains each of `in_traceback`.
template <class T>
void expect_python_error(std::future<T>& f, const char* type, const char* message,
                         std::vector<std::string> in_traceback, const char* if_none = "no exception") {
  expect_get_throws<python_error>(f, [&](const python_error& e) {
    EXPECT_EQ(e.type_name(), type);
    if (message != nullptr) {
      EXPECT_EQ(e.message(), message) << type;
    }
    for (const auto& part : in_traceback) {
      EXPECT_TRUE(contains(e.traceback(), part)) << type << ": '" << part << "' not in " << e.traceback();
    }
  }, if_none);
}
}  // namespace

TEST(Pool, FuturesReceiveValuesOfEveryKind) {
  thread_pool pool("values", 2);
  auto a = pool.submit([] { return 42; });
  auto b = pool.submit([] { return std::string("forty-two"); });
  std::atomic<int> side{0};
  auto c = pool.submit([&] { side = 7; });  // void
  auto d = pool.submit_python([] {
    PyObject* n = PyLong_FromLong(6);
    PyObject* m = PyNumber_Multiply(n, n);
    const long v = PyLong_AsLong(m) + 6;
    Py_DECREF(m);
    Py_DECREF(n);
    return v;
  });
  auto e = pool.submit([] { return std::make_unique<int>(5); });  // move-only result
  require_ready(a, "int");
  require_ready(b, "string");
  require_ready(c, "void");
  require_ready(d, "python value");
  require_ready(e, "unique_ptr");
  EXPECT_EQ(a.get(), 42);
  EXPECT_EQ(b.get(), "forty-two");
  c.get();
  EXPECT_EQ(side.load(), 7);
  EXPECT_EQ(d.get(), 42);
  auto p = e.get();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

TEST(Pool, FuturesReceiveCppExceptionsWithTheirTypeAndTheWorkerSurvives) {
  thread_pool pool("cxxerr", 1);
  auto tid_of = [&] { return pool.submit([] { return os_tid(); }); };
  auto t0 = tid_of();
  auto a = pool.submit([]() -> int { throw std::out_of_range("index 9 out of range"); });
  auto b = pool.submit([]() -> int { throw custom_failure{17}; });
  auto c = pool.submit_python([]() -> int { throw std::invalid_argument("from a python task"); });
  auto t1 = tid_of();
  auto after = pool.submit([] { return 1; });
  for (auto* f : {&a, &b, &c}) require_ready(*f, "throwing task");
  settle(pool);
  expect_get_throws<std::out_of_range>(a, [](const auto& x) {
    EXPECT_STREQ(x.what(), "index 9 out of range");
  });
  expect_get_throws<custom_failure>(b, [](const auto& x) { EXPECT_EQ(x.code, 17); });
  expect_get_throws<std::invalid_argument>(c, [](const auto& x) {
    EXPECT_STREQ(x.what(), "from a python task");
  });
  require_ready(after, "task after the failures");
  EXPECT_EQ(after.get(), 1);
  require_ready(t1, "tid");
  EXPECT_EQ(t0.get(), t1.get()) << "the worker was replaced after the exceptions";
}

TEST(Pool, PythonErrorLeftSetArrivesAsPythonErrorAndTheWorkerSurvives) {
  thread_pool pool("pyerr", 1);
  PyObject* g = make_globals();
  // PyRun_String leaves the error set (PyRun_SimpleString would print and clear it).
  auto raise = pool.submit_python([g] {
    PyObject* r = PyRun_String("raise ValueError('boom')\n", Py_file_input, g, g);
    const bool ok = r != nullptr;
    Py_XDECREF(r);
    return ok;
  });
  auto set = pool.submit_python([] {
    PyErr_SetString(PyExc_KeyError, "k");
    return false;
  });
  // The next task on the same (only) worker finds no error set and runs normally.
  auto next = pool.submit_python([g] {
    const bool clean = PyErr_Occurred() == nullptr;
    PyObject* r = PyRun_String("1 + 1", Py_eval_input, g, g);
    const long v = r ? PyLong_AsLong(r) : -1;
    Py_XDECREF(r);
    return std::make_pair(clean, v);
  });
  for (auto* f : {&raise, &set}) require_ready(*f, "a task that left a Python error set");
  require_ready(next, "task after the errors");
  settle(pool);
  expect_python_error(raise, "ValueError", "boom", {"ValueError", "boom"},
                      "a Python error left set did not reach the future");
  // The message is str(exception): a KeyError's is quoted.
  expect_python_error(set, "KeyError", "'k'", {"KeyError"}, "PyErr_SetString did not reach the future");
  const auto n = next.get();
  EXPECT_TRUE(n.first) << "a Python error leaked into the next task";
  EXPECT_EQ(n.second, 2);
  drop(g);
}

TEST(Pool, ThrownPythonErrorFetchArrivesAndClearsTheError) {
  thread_pool pool("pyfetch", 1);
  PyObject* g = make_globals();
  auto thrown = pool.submit_python([g]() -> int {
    PyObject* r = PyRun_String("def f():\n    raise ValueError('boom')\nf()\n", Py_file_input, g, g);
    if (r == nullptr) {
      pyattach::python_error e = python_error::fetch();
      // fetch() took (and cleared) the error: nothing is left set for the pool to find.
      if (PyErr_Occurred() != nullptr) return -2;
      throw e;
    }
    Py_DECREF(r);
    return 0;
  });
  auto none = pool.submit_python([]() -> int { throw python_error::fetch(); });  // nothing set
  auto next = pool.submit_python([] { return PyErr_Occurred() == nullptr; });
  for (auto* f : {&thrown, &none}) require_ready(*f, "a task that threw python_error::fetch()");
  require_ready(next, "next");
  settle(pool);
  // The traceback names the frame ("in f").
  expect_python_error(thrown, "ValueError", "boom", {"ValueError", "in f"});
  // fetch() with no error set: a SystemError (whatever its message).
  expect_python_error(none, "SystemError", nullptr, {});
  EXPECT_TRUE(next.get()) << "an error leaked into the next task";
  drop(g);
}

TEST(Pool, CppThrowFromPythonTaskWinsAndItsPythonErrorDoesNotLeak) {
  thread_pool pool("pymixed", 1);
  auto f = pool.submit_python([]() -> int {
    PyErr_SetString(PyExc_RuntimeError, "left behind");
    throw std::logic_error("thrown");
  });
  auto next = pool.submit_python([] { return PyErr_Occurred() == nullptr; });
  require_ready(f, "throwing python task");
  require_ready(next, "next");
  settle(pool);
  EXPECT_EQ(outcome(f), "exception:thrown");
  EXPECT_TRUE(next.get()) << "the Python error of a task that threw leaked into the next task";
}

TEST(Pool, PythonErrorAccessors) {
  const python_error e("ValueError", "boom", "Traceback...\nValueError: boom\n");
  EXPECT_EQ(e.type_name(), "ValueError");
  EXPECT_EQ(e.message(), "boom");
  EXPECT_EQ(e.traceback(), "Traceback...\nValueError: boom\n");
  const pool_error p(pool_errc::queue_full, "full");
  EXPECT_EQ(p.code(), pool_errc::queue_full);
  EXPECT_TRUE(contains(p.what(), "full")) << p.what();
  std::set<std::string> names;
  for (auto c : {pool_errc::shut_down, pool_errc::cancelled, pool_errc::finalizing,
                 pool_errc::queue_full, pool_errc::start_hook_failed, pool_errc::called_from_worker}) {
    names.insert(pyattach::to_string(c));
  }
  EXPECT_EQ(names.size(), 6u) << "to_string(pool_errc) names must be distinct";
  EXPECT_STREQ(pyattach::to_string(pool_errc::called_from_worker), "called_from_worker");
}

// ==== 5. post() failures go to on_error ========================================================

TEST(Pool, PostFailuresGoToOnErrorWithWhereTaskAndTheWorkerSurvives) {
  error_log log;
  thread_pool pool(logged_options("posterr", 2, log));
  PyObject* g = make_globals();
  std::atomic<int> ok{0};
  pool.post([] { throw std::runtime_error("posted boom"); });
  pool.post_python([g] {
    PyObject* r = PyRun_String("raise ValueError('pyboom')\n", Py_file_input, g, g);
    Py_XDECREF(r);
  });
  pool.post_python([] {
    PyErr_SetString(PyExc_TypeError, "typed");
    throw python_error::fetch();
  });
  pool.post([] { throw 7; });
  for (int i = 0; i < 10; ++i) pool.post([&] { ++ok; });
  pool.post_python([&] { ok += PyRun_SimpleString("_posted = 1\n") == 0; });
  pool.wait();
  EXPECT_EQ(ok.load(), 11) << "the workers did not survive the failures";
  const auto entries = log.snapshot();
  ASSERT_EQ(entries.size(), 4u);
  const auto tids = workers_by_tid(pool);
  std::multiset<std::string> errors;
  for (const auto& e : entries) {
    errors.insert(e.error);
    EXPECT_EQ(e.where, "task");
    EXPECT_EQ(e.pool_name, "posterr");
    EXPECT_LT(e.worker_index, 2u);
    EXPECT_EQ(e.what, e.expected_what) << "task_failure::what must be error's what()";
    ASSERT_EQ(tids.count(e.tid), 1u) << "on_error was not called on a worker";
    EXPECT_EQ(tids.at(e.tid).name, "posterr-" + std::to_string(e.worker_index))
        << "worker_index does not name the worker that ran the task";
  }
  for (const char* error : {"exception:posted boom", "python_error:ValueError:pyboom",
                            "python_error:TypeError:typed", "unknown"}) {
    EXPECT_EQ(errors.count(error), 1u) << error << " in " << join({errors.begin(), errors.end()});
  }
  for (const auto& e : entries) {
    if (e.error == "unknown") {
      EXPECT_EQ(e.what, "unknown exception");
    }
  }
  drop(g);
}

// ==== the rest of the contract =================================================================

namespace {
// A callable that records where and how its last live copy was destroyed.
struct destruction_probe {
  struct record {
    std::atomic<int> destroyed{0};
    std::atomic<std::uint64_t> tid{0};
    std::atomic<bool> attached{false};
    std::atomic<bool> gil{false};
  };
  std::shared_ptr<record> r;
  bool live = true;
  explicit destruction_probe(std::shared_ptr<record> rec) : r(std::move(rec)) {}
  destruction_probe(destruction_probe&& o) noexcept : r(o.r), live(o.live) { o.live = false; }
  destruction_probe(const destruction_probe&) = delete;
  destruction_probe& operator=(const destruction_probe&) = delete;
  destruction_probe& operator=(destruction_probe&&) = delete;
  ~destruction_probe() {
    if (!live) return;
    r->tid = os_tid();
    r->attached = pyattach::is_attached();
    r->gil = PyGILState_Check() == 1;
    ++r->destroyed;
  }
  std::uint64_t operator()() const { return os_tid(); }
};
}  // namespace

TEST(Pool, TaskCallableIsDestroyedOnTheWorkerRightAfterItRanAttachedForPythonTasks) {
  thread_pool pool("dtor", 1);
  auto py_rec = std::make_shared<destruction_probe::record>();
  auto cpp_rec = std::make_shared<destruction_probe::record>();
  auto py_ran = pool.submit_python(destruction_probe(py_rec));
  // The next task sees the previous callable already destroyed ("right after it ran").
  auto py_next = pool.submit([py_rec] { return py_rec->destroyed.load(); });
  auto cpp_ran = pool.submit(destruction_probe(cpp_rec));
  auto cpp_next = pool.submit([cpp_rec] { return cpp_rec->destroyed.load(); });
  for (auto* f : {&py_ran, &cpp_ran}) require_ready(*f, "probe");
  require_ready(py_next, "next");
  require_ready(cpp_next, "next");
  const std::uint64_t worker = py_ran.get();
  EXPECT_EQ(cpp_ran.get(), worker);
  EXPECT_EQ(py_next.get(), 1) << "a Python task's callable was not destroyed before the next task";
  EXPECT_EQ(cpp_next.get(), 1) << "a C++ task's callable was not destroyed before the next task";
  EXPECT_EQ(py_rec->destroyed.load(), 1);
  EXPECT_EQ(py_rec->tid.load(), worker) << "a Python task's callable was destroyed off the worker";
  EXPECT_TRUE(py_rec->attached.load()) << "a Python task's callable must be destroyed attached";
  EXPECT_TRUE(py_rec->gil.load());
  EXPECT_EQ(cpp_rec->destroyed.load(), 1);
  EXPECT_EQ(cpp_rec->tid.load(), worker);
  EXPECT_FALSE(cpp_rec->attached.load()) << "a C++ task's callable was destroyed attached";
}

TEST(Pool, PythonTaskMayOwnPythonReferencesInItsCallable) {
  // The documented pattern: a Python task captures an owned reference and drops it in its
  // destructor, which runs attached on the worker.
  thread_pool pool("owned", 2);
  PyObject* g = make_globals("class Obj:\n    pass\nalive = []\n");
  struct owner {
    PyObject* obj;
    explicit owner(PyObject* o) : obj(o) {}
    owner(owner&& o) noexcept : obj(o.obj) { o.obj = nullptr; }
    owner(const owner&) = delete;
    ~owner() {
      if (obj != nullptr) Py_DECREF(obj);  // attached: pool.hpp
    }
    long operator()() const { return static_cast<long>(Py_REFCNT(obj)); }
  };
  std::vector<std::future<long>> fs;
  for (int i = 0; i < 200; ++i) {
    PyObject* o;
    {
      pyattach::attach_scope py;
      o = py_eval("Obj()", g);
    }
    fs.push_back(pool.submit_python(owner(o)));
  }
  for (auto& f : fs) {
    require_ready(f, "owning task");
    EXPECT_EQ(f.get(), 1);
  }
  pool.wait();
  drop(g);
}

TEST(Pool, OnWorkerIsTrueOnlyOnThisPoolsWorkers) {
  thread_pool a("onw_a", 2);
  thread_pool b("onw_b", 1);
  EXPECT_FALSE(a.on_worker());
  auto on_a = a.submit([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  auto on_a_py = a.submit_python([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  auto on_b = b.submit([&] { return std::make_pair(a.on_worker(), b.on_worker()); });
  for (auto* f : {&on_a, &on_a_py, &on_b}) require_ready(*f, "on_worker");
  EXPECT_EQ(on_a.get(), std::make_pair(true, false));
  EXPECT_EQ(on_a_py.get(), std::make_pair(true, false));
  EXPECT_EQ(on_b.get(), std::make_pair(false, true));
}

TEST(Pool, ZeroWorkersIsInvalidArgument) {
  pool_options o;
  o.workers = 0;
  EXPECT_THROW(thread_pool p(o), std::invalid_argument);
  EXPECT_THROW(thread_pool p("zero", 0), std::invalid_argument);
}

TEST(Pool, DefaultOptionsMakeOneWorkerNamedPool0) {
  thread_pool pool{pool_options{}};
  EXPECT_EQ(pool.size(), 1u);
  EXPECT_EQ(pool.name(), "pool");
  const auto st = pool.stats();
  ASSERT_EQ(st.workers.size(), 1u);
  EXPECT_EQ(st.workers[0].name, "pool-0");
  EXPECT_EQ(thread_comm(st.workers[0].os_tid), "pool-0");
}


// tests/cpp/test_pool_interpreters.cpp — thread_pool bound to an interpreter (pool.hpp,
// "Interpreter"): workers attach to the pool's sub-interpreter with one state each, pools on
// interpreters with their own GIL run Python at the same time, and the interpreter's end and the
// main interpreter's finalization stop their Python tasks cleanly. CPython 3.12+; before, the
// tests skip (subinterpreter::create throws: test_subinterpreters.cpp checks that).
// Each case runs in a child process with its own CPython lifetime (child_process.hpp).
#include "pool_helpers.hpp"
#include "subinterpreter_helpers.hpp"

#include <pyattach/subinterpreter.hpp>

using namespace pool_test;
using pyattach::subinterpreter;

#define POOL_SUB_TEST(test_name, case_name)                                                   \
  USES_CHILD_CASE(case_name);                                                                 \
  TEST(PoolOnSubinterpreter, test_name) {                                                     \
    if (!k_has_subinterpreters) GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+"; \
    EXPECT_CHILD_CLEAN(::testutil::run_child(uses_##case_name));                              \
  }

#if PY_VERSION_HEX >= 0x030C0000
namespace {

pool_options sub_pool(const std::string& name, const subinterpreter& in, std::size_t workers) {
  pool_options o;
  o.name = name;
  o.workers = workers;
  o.interpreter = in;
  return o;
}

// A ready future's value, or the process ends (fatal_stuck) if it is not ready in `timeout`.
template <class T>
T value_within(std::future<T>&& f, std::chrono::milliseconds timeout = k_wait) {
  require_ready(f, "a task on a sub-interpreter pool", timeout);
  return f.get();
}

template <class T>
std::string outcome_within(std::future<T>& f) {
  require_ready(f, "a task on a sub-interpreter pool");
  return outcome(f);
}

// How many of the tasks ran and how many were refused with pool_error(finalizing); any other
// outcome fails the case.
std::pair<std::size_t, std::size_t> ran_or_refused(std::vector<std::future<bool>>& tasks) {
  std::size_t ran = 0, refused = 0;
  for (auto& f : tasks) {
    const std::string how = outcome_within(f);
    if (how == "value") {
      ++ran;
    } else {
      if (how != "pool_error:finalizing") std::printf("unexpected outcome: %s\n", how.c_str());
      CHILD_CHECK(how == "pool_error:finalizing");
      ++refused;
    }
  }
  return {ran, refused};
}

std::string current_thread_name() {
  PyObject* main = PyImport_AddModule("__main__");
  return main == nullptr ? "" : py_eval_str("__import__('threading').current_thread().name",
                                            PyModule_GetDict(main));
}

}  // namespace

// Every Python task runs in the pool's interpreter, on a state that worker keeps: 200 tasks on 2
// workers make 2 states there, and the workers carry their pool names in that interpreter.
CHILD_CASE(pool_sub_tasks_run_in_its_interpreter) {
  pyattach::interpreter py;
  subinterpreter sub = subinterpreter::create();
  {
    thread_pool pool(sub_pool("subpool", sub, 2));
    CHILD_CHECK(pool.interpreter() == sub);
    std::vector<std::future<std::string>> names;
    for (int i = 0; i < 200; ++i) {
      names.push_back(pool.submit_python([&sub, i] {
        if (PyThreadState_Get()->interp != sub.state()) return std::string("wrong interpreter");
        if (!run("n = globals().get('n', 0) + " + std::to_string(i))) return std::string("error");
        return current_thread_name();
      }));
    }
    for (auto& f : names) {
      const std::string name = value_within(std::move(f));
      if (name != "subpool-0" && name != "subpool-1") std::printf("task saw: %s\n", name.c_str());
      CHILD_CHECK(name == "subpool-0" || name == "subpool-1");
    }
    CHILD_CHECK(sub.stats().states_made == 2);
    CHILD_CHECK(sub.stats().threads == 2);
    // The tasks' objects stayed in that interpreter: the sum is there, not in the main one.
    long total = value_within(pool.submit_python([] { return eval_long("n"); }));
    CHILD_CHECK(total == 199 * 200 / 2);
    pyattach::attach_scope main_scope;
    CHILD_CHECK(eval_long("globals().get('n', -7)") == -7);
  }
  // The pool's threads exited: their states in the interpreter went with them, on each thread.
  CHILD_CHECK(sub.stats().states_destroyed == 2);
  CHILD_CHECK(sub.end());
  return child_done();
}
POOL_SUB_TEST(TasksRunInThePoolsInterpreterOnOneStatePerWorker, pool_sub_tasks_run_in_its_interpreter)

// Two pools on two interpreters with their own GIL hold those GILs at the same time: each task
// attaches, runs some Python, arrives, and spins in C++ (attached, never releasing its GIL)
// until the other task has arrived too. With one shared GIL the second task could not attach
// while the first spins, and the first would time out (checked by hand with
// interpreter_options::legacy() for both: the test then fails). The deadline is generous: only
// that control ever waits for it.
CHILD_CASE(pool_sub_two_pools_run_at_once) {
  pyattach::interpreter py;
  subinterpreter a = subinterpreter::create();
  subinterpreter b = subinterpreter::create();
  std::atomic<int> arrived{0};
  {
    thread_pool pa(sub_pool("pa", a, 1)), pb(sub_pool("pb", b, 1));
    auto meet = [&arrived] {
      if (!run("s = sum(range(1000))")) return false;
      arrived.fetch_add(1);
      const auto deadline = std::chrono::steady_clock::now() + k_wait;
      while (arrived.load() < 2) {  // no bytecode runs here: this GIL is never handed over
        if (std::chrono::steady_clock::now() > deadline) return false;
      }
      return true;
    };
    auto fa = pa.submit_python(meet);
    auto fb = pb.submit_python(meet);
    CHILD_CHECK(value_within(std::move(fa), 2 * k_wait));
    CHILD_CHECK(value_within(std::move(fb), 2 * k_wait));
  }
  CHILD_CHECK(a.end());
  CHILD_CHECK(b.end());
  return child_done();
}
POOL_SUB_TEST(TwoPoolsOnTwoOwnGilInterpretersRunPythonAtOnce, pool_sub_two_pools_run_at_once)

// The interpreter ends under a live pool: end() succeeds while the pool keeps submitting batches,
// later Python tasks complete with pool_error(finalizing) without running, C++ tasks still run,
// and the pool shuts down normally.
CHILD_CASE(pool_sub_interpreter_ends_under_it) {
  pyattach::interpreter py;
  subinterpreter sub = subinterpreter::create();
  thread_pool pool(sub_pool("ending", sub, 2));
  std::vector<std::future<bool>> before;
  for (int i = 0; i < 2000; ++i) {
    before.push_back(pool.submit_python([] { return run("x = sum(range(50))"); }));
  }
  CHILD_CHECK(sub.end(std::chrono::duration_cast<std::chrono::milliseconds>(k_wait)));
  CHILD_CHECK(sub.ended());
  const auto [ran, refused] = ran_or_refused(before);
  auto after = pool.submit_python([] { return true; });
  CHILD_CHECK(outcome_within(after) == "pool_error:finalizing");
  CHILD_CHECK(value_within(pool.submit([] { return 5; })) == 5);
  pool.shutdown();
  CHILD_CHECK(sub.stats().states_destroyed == sub.stats().states_made);
  std::printf("ran %zu, refused %zu\n", ran, refused);
  return child_done();
}
POOL_SUB_TEST(InterpreterEndedUnderALivePoolRefusesLaterPythonTasks,
              pool_sub_interpreter_ends_under_it)

// The main interpreter finalizes with a pool on a sub-interpreter still running tasks: the pool is
// stopped first (queued tasks: pool_error(finalizing)), the sub-interpreter ended, and the
// process exits cleanly.
CHILD_CASE(pool_sub_main_finalizes_under_it) {
  std::optional<thread_pool> pool;
  std::vector<std::future<bool>> tasks;
  {
    pyattach::interpreter py;
    subinterpreter sub = subinterpreter::create();
    pool.emplace(sub_pool("late", sub, 2));
    for (int i = 0; i < 500; ++i) {
      tasks.push_back(pool->submit_python([] { return run("y = sum(range(500))"); }));
    }
  }  // Py_FinalizeEx: the gate stops the pool, then ends the sub-interpreter
  const auto [ran, refused] = ran_or_refused(tasks);
  std::printf("ran %zu, refused %zu\n", ran, refused);
  pool->shutdown();
  return child_done();
}
POOL_SUB_TEST(MainFinalizationStopsAPoolOnASubinterpreter, pool_sub_main_finalizes_under_it)

// An interpreter that Python's own module made (3.13+: _interpreters; 3.12: _xxsubinterpreters),
// adopted by its id (subinterpreter::adopt_id), runs a pool's tasks; Python then destroys it,
// and the pool's later Python tasks are refused. adopt_id of an unknown id throws; 0 is main().
CHILD_CASE(pool_sub_adopted_by_id) {
  pyattach::interpreter py;
  const char* module = PY_VERSION_HEX >= 0x030D0000 ? "_interpreters" : "_xxsubinterpreters";
  long id = -1;
  {
    pyattach::attach_scope main_scope;
    CHILD_CHECK(run(std::string("import ") + module + " as low\nsub_id = low.create()"));
    id = eval_long("sub_id");
  }
  CHILD_CHECK(id > 0);
  CHILD_CHECK(subinterpreter::adopt_id(0).is_main());
  bool threw = false;
  try {
    subinterpreter::adopt_id(id + 1000);
  } catch (const pyattach::interpreter_error&) {
    threw = true;
  }
  CHILD_CHECK(threw);
  subinterpreter sub = subinterpreter::adopt_id(id);
  CHILD_CHECK(sub.id() == id && subinterpreter::adopt_id(id) == sub);
  {
    thread_pool pool(sub_pool("adopted", sub, 2));
    std::vector<std::future<bool>> tasks;
    for (int i = 0; i < 50; ++i) {
      tasks.push_back(pool.submit_python([&sub] {
        return PyThreadState_Get()->interp == sub.state() && run("z = 1");
      }));
    }
    for (auto& f : tasks) CHILD_CHECK(value_within(std::move(f)));
    // Python ends it; pyattach's atexit callback in it closes the gate first, and destroys the
    // workers' states there (they are idle: outside any scope). On 3.12 the workers name
    // themselves through `threading`, which adopt_id imported first (docs/subinterpreters.md).
    {
      pyattach::attach_scope main_scope;
      CHILD_CHECK(run("low.destroy(sub_id)"));
    }
    CHILD_CHECK(sub.ended());
    auto after = pool.submit_python([] { return true; });
    CHILD_CHECK(outcome_within(after) == "pool_error:finalizing");
  }
  CHILD_CHECK(sub.stats().states_destroyed == sub.stats().states_made);
  return child_done();
}
POOL_SUB_TEST(PoolOnAnInterpreterThatPythonMadeAdoptedByItsId, pool_sub_adopted_by_id)

#endif

// A pool's default interpreter is the main one, on every version.
TEST(PoolOnSubinterpreter, DefaultIsTheMainInterpreter) {
  pool_options o;
  EXPECT_TRUE(o.interpreter.is_main());
}

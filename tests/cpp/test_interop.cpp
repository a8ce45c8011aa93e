// tests/cpp/test_interop.cpp — PyGILState_* and pybind11 on the same thread as pyattach
// (docs/design.md, invariant 2 "PyGILState knows it": one state per thread, which third-party
// code finds and reuses), and
// pyattach scopes on a Python-created thread.
#include <gtest/gtest.h>
#include <pybind11/pybind11.h>

#include <atomic>

#include "helpers.hpp"

namespace py = pybind11;
using namespace testutil;

namespace {

// A threading.local shared by all threads of a test, kept in its own globals dict.
struct shared_local {
  PyObject* g = nullptr;
  shared_local() {
    pyattach::attach_scope s;
    g = new_globals();
    py_exec("import threading\ntl = threading.local()\n", g);
  }
  ~shared_local() {
    pyattach::attach_scope s;
    Py_DECREF(g);
  }
};

void ensure_pybind11_internals() {
  pyattach::attach_scope s;
  (void)py::detail::get_internals();
}

// Each test: a native worker (named after the test) that PyGILState or pybind11 code runs on,
// next to pyattach scopes, sharing L's threading.local `tl`. At the end the worker exits and its
// state goes with it: the thread-state count is back at its baseline.
class Interop : public ::testing::Test {
 protected:
  shared_local L;
  const std::size_t baseline = thread_states();
  worker w{::testing::UnitTest::GetInstance()->current_test_info()->name()};
  PyThreadState* mine = nullptr;  // the worker's state, once `attach_before` made it

  // The worker attaches once before the test, keeping its state, and sets tl.v = 'before'.
  void attach_before() {
    w.run([&] {
      pyattach::attach_scope s;
      mine = PyThreadState_Get();
      ASSERT_TRUE(py_exec("tl.v = 'before'\n", L.g));
    });
  }

  // A later scope on the worker makes its state current again (the same state, when `mine` is
  // known) and still sees tl.v == `value`.
  void expect_state_kept(const std::string& value, const char* why = "") {
    w.run([&] {
      pyattach::attach_scope s;
      EXPECT_TRUE(s.made_current());
      if (mine != nullptr) {
        EXPECT_EQ(PyThreadState_Get(), mine);
      }
      EXPECT_EQ(py_eval_str("tl.v", L.g), value) << why;
    });
  }

  void TearDown() override {
    w.join();
    EXPECT_EQ(thread_states(), baseline);
  }
};

}  // namespace

TEST_F(Interop, PyGILStateInsideAScopeSeesTheSameState) {
  w.run([&] {
    pyattach::attach_scope s;
    ASSERT_TRUE(py_exec("tl.v = 'set in scope'\n", L.g));
    PyThreadState* const inside = PyThreadState_Get();
    EXPECT_EQ(PyGILState_GetThisThreadState(), inside);
    EXPECT_EQ(PyGILState_Check(), 1);
    const PyGILState_STATE st = PyGILState_Ensure();
    EXPECT_EQ(st, PyGILState_LOCKED) << "Ensure inside a scope must find the thread attached";
    EXPECT_EQ(PyThreadState_Get(), inside);
    EXPECT_EQ(py_eval_str("tl.v", L.g), "set in scope");
    {
      pyattach::attach_scope nested;  // a pyattach scope inside Ensure: counts only
      EXPECT_FALSE(nested.made_current());
      EXPECT_EQ(PyThreadState_Get(), inside);
    }
    PyGILState_Release(st);
    EXPECT_TRUE(pyattach::is_attached());
    EXPECT_EQ(PyThreadState_Get(), inside);
    EXPECT_EQ(py_eval_str("tl.v", L.g), "set in scope");
  });
  EXPECT_EQ(thread_states(), baseline + 1) << "PyGILState_Ensure made a second state";
  require_other_thread_can_run_python("after PyGILState inside a scope");
  expect_state_kept("set in scope", "PyGILState_Release destroyed the state");
}

TEST_F(Interop, PyGILStateOutsideAScopeOnAnAttachedBeforeThread) {
  attach_before();
  w.run([&] {
    EXPECT_FALSE(pyattach::is_attached());
    // Without the GIL: PyGILState knows the state pyattach made.
    EXPECT_EQ(PyGILState_GetThisThreadState(), mine);
    const PyGILState_STATE st = PyGILState_Ensure();
    EXPECT_EQ(st, PyGILState_UNLOCKED);
    EXPECT_EQ(PyThreadState_Get(), mine) << "PyGILState_Ensure made a second state";
    EXPECT_EQ(py_eval_str("tl.v", L.g), "before");
    EXPECT_EQ(thread_states(), baseline + 1);
    {
      pyattach::attach_scope nested;  // attached by Ensure: reuse, count only
      EXPECT_TRUE(nested.is_valid());
      EXPECT_FALSE(nested.made_current());
      EXPECT_EQ(PyThreadState_Get(), mine);
    }
    EXPECT_EQ(PyThreadState_Get(), mine) << "the nested scope detached a state it did not attach";
    ASSERT_TRUE(py_exec("tl.v = 'set under Ensure'\n", L.g));
    PyGILState_Release(st);
    EXPECT_FALSE(pyattach::is_attached());
    EXPECT_EQ(PyGILState_GetThisThreadState(), mine) << "PyGILState_Release destroyed the state";
  });
  EXPECT_EQ(thread_states(), baseline + 1);
  expect_state_kept("set under Ensure");
  require_other_thread_can_run_python("after PyGILState outside a scope");
}

TEST_F(Interop, Pybind11GilScopedAcquireInsideAScope) {
  ensure_pybind11_internals();
  w.run([&] {
    pyattach::attach_scope s;
    ASSERT_TRUE(py_exec("tl.v = 'pyattach'\n", L.g));
    PyThreadState* const inside = PyThreadState_Get();
    {
      py::gil_scoped_acquire gil;
      EXPECT_EQ(PyThreadState_Get(), inside);
      EXPECT_EQ(py_eval_str("tl.v", L.g), "pyattach");
      EXPECT_EQ(thread_states(), baseline + 1);
    }
    EXPECT_TRUE(pyattach::is_attached());
    EXPECT_EQ(PyThreadState_Get(), inside);
    EXPECT_EQ(py_eval_str("tl.v", L.g), "pyattach");
    {
      py::gil_scoped_release nogil;
      EXPECT_FALSE(pyattach::is_attached());
      EXPECT_TRUE(other_thread_can_run_python()) << "gil_scoped_release did not release the GIL";
    }
    EXPECT_TRUE(pyattach::is_attached());
    EXPECT_EQ(PyThreadState_Get(), inside);
    EXPECT_EQ(py_eval_str("tl.v", L.g), "pyattach");
  });
  require_other_thread_can_run_python("after pybind11 inside a scope");
  expect_state_kept("pyattach");
  EXPECT_EQ(thread_states(), baseline + 1);
}

TEST_F(Interop, Pybind11GilScopedAcquireOutsideAScopeOnAnAttachedBeforeThread) {
  ensure_pybind11_internals();
  attach_before();
  w.run([&] {
    {
      py::gil_scoped_acquire gil;
      EXPECT_EQ(PyThreadState_Get(), mine) << "pybind11 made a second state";
      EXPECT_EQ(py_eval_str("tl.v", L.g), "before");
      EXPECT_EQ(thread_states(), baseline + 1);
      {
        pyattach::attach_scope nested;
        EXPECT_FALSE(nested.made_current());
      }
      EXPECT_EQ(PyThreadState_Get(), mine);
      // py::object use under pybind11's GIL
      py::object mod = py::module_::import("threading");
      EXPECT_TRUE(py::hasattr(mod, "local"));
      ASSERT_TRUE(py_exec("tl.v = 'set under pybind11'\n", L.g));
    }
    EXPECT_FALSE(pyattach::is_attached());
    EXPECT_EQ(PyGILState_GetThisThreadState(), mine) << "pybind11 destroyed the state";
  });
  EXPECT_EQ(thread_states(), baseline + 1);
  expect_state_kept("set under pybind11");
  require_other_thread_can_run_python("after pybind11 outside a scope");
}

// ---- a Python-created thread calling into C++ -----------------------------------------------

namespace {
struct python_thread_observations {
  PyThreadState* before = nullptr;
  PyThreadState* inside = nullptr;
  PyThreadState* after_detach = nullptr;
  std::size_t count_before = 0;
  std::size_t count_inside = 0;
  bool valid = false;
  bool made_current = true;
  bool nested_made_current = true;
  bool detach_valid = false;
  bool detached_inside = false;
  bool other_ran_python = false;
  bool attached_after = false;
  bool gil_after = false;
  PyThreadState* after = nullptr;
};
python_thread_observations g_obs;

PyObject* called_from_python_thread(PyObject*, PyObject*) {
  python_thread_observations& o = g_obs;
  o.before = PyThreadState_Get();
  o.count_before = thread_states();
  {
    pyattach::attach_scope s;
    o.valid = s.is_valid();
    o.made_current = s.made_current();
    o.inside = PyThreadState_Get();
    o.count_inside = thread_states();
    {
      pyattach::attach_scope nested;
      o.nested_made_current = nested.made_current();
    }
    {
      pyattach::detach_scope nogil;
      o.detach_valid = nogil.is_valid();
      o.detached_inside = !pyattach::is_attached();
      o.other_ran_python = other_thread_can_run_python();
    }
    o.after_detach = PyThreadState_Get();
  }
  // The scope did not make the state current, so its end must not detach it.
  o.attached_after = pyattach::is_attached();
  o.gil_after = PyGILState_Check() == 1;
  o.after = o.gil_after ? PyThreadState_Get() : nullptr;
  Py_RETURN_NONE;
}
PyMethodDef g_def = {"called_from_python_thread", called_from_python_thread, METH_NOARGS, nullptr};
}  // namespace

// (The worker and L of the fixture stay unused here: the thread is a threading.Thread.)
TEST_F(Interop, ScopeOnAPythonCreatedThreadReusesItsStateAndDoesNotDetach) {
  g_obs = python_thread_observations{};
  {
    pyattach::attach_scope s;
    PyObject* g = new_globals();
    PyObject* fn = PyCFunction_New(&g_def, nullptr);
    ASSERT_NE(fn, nullptr);
    PyDict_SetItemString(g, "fn", fn);
    Py_DECREF(fn);
    ASSERT_TRUE(py_exec(
        "import threading\n"
        "tl = threading.local()\n"
        "result = []\n"
        "def target():\n"
        "    tl.v = 'python thread'\n"
        "    fn()\n"
        "    result.append(getattr(tl, 'v', None))\n"
        "    result.append(threading.current_thread().name)\n"
        "t = threading.Thread(target=target, name='py-made')\n"
        "t.start()\n"
        "t.join()\n",
        g));
    EXPECT_EQ(py_eval_str("result", g), "['python thread', 'py-made']");
    Py_DECREF(g);
  }
  const auto& o = g_obs;
  EXPECT_TRUE(o.valid);
  EXPECT_FALSE(o.made_current);
  EXPECT_FALSE(o.nested_made_current);
  EXPECT_EQ(o.inside, o.before) << "pyattach gave a Python thread a second state";
  EXPECT_EQ(o.count_inside, o.count_before);
  EXPECT_EQ(o.count_before, baseline + 1);
  EXPECT_TRUE(o.detach_valid);
  EXPECT_TRUE(o.detached_inside);
  EXPECT_TRUE(o.other_ran_python) << "detach_scope on a Python thread did not release the GIL";
  EXPECT_EQ(o.after_detach, o.before);
  EXPECT_TRUE(o.attached_after) << "the scope detached a Python thread";
  EXPECT_TRUE(o.gil_after);
  EXPECT_EQ(o.after, o.before);
  EXPECT_EQ(thread_states(), baseline);
  EXPECT_EQ(pyattach::misuse_count(), 0u);
}

// tests/cpp/test_scopes.cpp — attach_scope nesting, detach_scope, made_current(), is_attached(),
// release_thread_state(), on the shared interpreter. (Error statuses that need their own
// interpreter lifetime are in test_lifecycle.cpp.)
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <type_traits>

#include "helpers.hpp"

using namespace testutil;

// "Using a moved-from scope" cannot happen: scopes can be neither moved nor copied, so such code
// does not compile (diagnostics.hpp explains why there is no misuse kind for it).
static_assert(!std::is_move_constructible_v<pyattach::attach_scope> &&
                  !std::is_move_assignable_v<pyattach::attach_scope> &&
                  !std::is_copy_constructible_v<pyattach::attach_scope> &&
                  !std::is_copy_assignable_v<pyattach::attach_scope>,
              "attach_scope must be neither movable nor copyable");
static_assert(!std::is_move_constructible_v<pyattach::detach_scope> &&
                  !std::is_move_assignable_v<pyattach::detach_scope> &&
                  !std::is_copy_constructible_v<pyattach::detach_scope> &&
                  !std::is_copy_assignable_v<pyattach::detach_scope>,
              "detach_scope must be neither movable nor copyable");

TEST(Scopes, NestedScopesOnlyTheOutermostDetaches) {
  const std::size_t baseline = thread_states();
  worker w("nested");
  w.run([&] {
    EXPECT_FALSE(pyattach::is_attached());
    pyattach::attach_scope outer;
    EXPECT_TRUE(outer.is_valid());
    EXPECT_TRUE(static_cast<bool>(outer));
    EXPECT_EQ(outer.status(), pyattach::attach_status::attached);
    EXPECT_TRUE(outer.made_current());
    EXPECT_TRUE(pyattach::is_attached());
    PyThreadState* const mine = PyThreadState_Get();
    {
      pyattach::attach_scope inner;
      EXPECT_TRUE(inner.is_valid());
      EXPECT_FALSE(inner.made_current());
      EXPECT_EQ(PyThreadState_Get(), mine);
      {
        auto innermost = pyattach::try_attach();
        EXPECT_TRUE(innermost);
        EXPECT_FALSE(innermost.made_current());
      }
      // The innermost ended: still attached, same state, Python still runs.
      EXPECT_TRUE(pyattach::is_attached());
      EXPECT_EQ(PyThreadState_Get(), mine);
      EXPECT_EQ(PyRun_SimpleString("_nested_probe = 1\n"), 0);
    }
    EXPECT_TRUE(pyattach::is_attached());
    EXPECT_EQ(PyThreadState_Get(), mine);
    EXPECT_EQ(PyGILState_Check(), 1);
  });
  // The outermost ended when the task returned: the worker is detached and another thread can
  // take the GIL.
  w.run([&] { EXPECT_FALSE(pyattach::is_attached()); });
  require_other_thread_can_run_python("after the outermost scope ended");
  EXPECT_EQ(thread_states(), baseline + 1) << "the worker keeps exactly one state while idle";
  w.join();
  EXPECT_EQ(thread_states(), baseline);
}

TEST(Scopes, ExplicitReleaseEndsTheScopeOnce) {
  worker w("release");
  w.run([&] {
    pyattach::attach_scope py;
    EXPECT_TRUE(pyattach::is_attached());
    py.release();
    EXPECT_FALSE(pyattach::is_attached());
  });  // the destructor after release() must not detach again (it would crash in CPython)
  require_other_thread_can_run_python("after release()");
  EXPECT_EQ(pyattach::misuse_count(), 0u);
}

TEST(Scopes, DetachScopeReleasesTheGilAndKeepsTheState) {
  worker w("detach");
  w.run([&] {
    pyattach::attach_scope py;
    PyObject* g = new_globals();
    ASSERT_TRUE(py_exec("import threading\ntl = threading.local()\ntl.v = 'kept'\n", g));
    PyThreadState* const mine = PyThreadState_Get();
    {
      pyattach::detach_scope nogil;
      EXPECT_TRUE(nogil.is_valid());
      EXPECT_FALSE(pyattach::is_attached());
      // While this thread waits in C++, another native thread can attach and run Python.
      EXPECT_TRUE(other_thread_can_run_python()) << "the GIL was not released by detach_scope";
      // The state is kept: PyGILState still knows it.
      EXPECT_EQ(PyGILState_GetThisThreadState(), mine);
    }
    EXPECT_TRUE(pyattach::is_attached());
    EXPECT_EQ(PyThreadState_Get(), mine);
    EXPECT_EQ(py_eval_str("tl.v", g), "kept");
    {
      // release() re-attaches early; the destructor then does nothing.
      pyattach::detach_scope nogil;
      EXPECT_FALSE(pyattach::is_attached());
      nogil.release();
      EXPECT_TRUE(pyattach::is_attached());
      EXPECT_EQ(py_eval_str("tl.v", g), "kept");
    }
    EXPECT_TRUE(pyattach::is_attached());
    {
      // A detach scope inside nested attach scopes, and an attach scope inside the detach scope.
      pyattach::attach_scope inner;
      pyattach::detach_scope nogil;
      EXPECT_FALSE(pyattach::is_attached());
      {
        pyattach::attach_scope again;
        EXPECT_TRUE(again.made_current());
        EXPECT_EQ(PyThreadState_Get(), mine);
        EXPECT_EQ(py_eval_str("tl.v", g), "kept");
      }
      EXPECT_FALSE(pyattach::is_attached());
    }
    EXPECT_TRUE(pyattach::is_attached());
    Py_DECREF(g);
  });
  EXPECT_EQ(pyattach::misuse_count(), 0u);
  require_other_thread_can_run_python("after the detach test");
}

TEST(Scopes, DetachScopeOnTheMainThreadInsideAScope) {
  // The main thread's state was made by Py_Initialize (the embedding helper detached it):
  // pyattach reuses it rather than making another.
  const std::size_t baseline = thread_states();
  pyattach::attach_scope py;
  EXPECT_TRUE(py.made_current());
  EXPECT_EQ(thread_states(), baseline);
  {
    pyattach::detach_scope nogil;
    EXPECT_TRUE(other_thread_can_run_python());
  }
  EXPECT_TRUE(pyattach::is_attached());
}

TEST(Scopes, ReleaseThreadStateDestroysTheStateAndTheNextAttachMakesANewOne) {
  const std::size_t baseline = thread_states();
  PyObject* g = nullptr;
  {
    pyattach::attach_scope py;
    g = new_globals();
    ASSERT_TRUE(py_exec("import threading\ntl = threading.local()\n", g));
  }
  worker w("release-state");
  unsigned long ident = 0;
  w.run([&] {
    EXPECT_FALSE(pyattach::release_thread_state()) << "nothing to release before the first attach";
    pyattach::attach_scope py;
    EXPECT_TRUE(py.made_current());
    ASSERT_TRUE(py_exec("tl.v = 'first state'\nt = threading.current_thread()\nt.name = 'releaser'\n", g));
    ident = PyThread_get_thread_ident();
  });
  EXPECT_EQ(thread_states(), baseline + 1);
  w.run([&] {
    {
      pyattach::attach_scope py;
      EXPECT_EQ(py_eval_str("tl.v", g), "first state") << "persistent between scopes";
    }
    EXPECT_TRUE(pyattach::release_thread_state());
    EXPECT_FALSE(pyattach::is_attached());
    EXPECT_FALSE(pyattach::release_thread_state()) << "already released";
  });
  EXPECT_EQ(thread_states(), baseline) << "release_thread_state() did not destroy the state";
  w.run([&] {
    pyattach::attach_scope py;
    EXPECT_TRUE(py.made_current());
    EXPECT_EQ(PyThread_get_thread_ident(), ident);
    EXPECT_FALSE(py_eval_bool("hasattr(tl, 'v')", g)) << "threading.local data survived release";
    EXPECT_EQ(PyGILState_GetThisThreadState(), PyThreadState_Get());
  });
  EXPECT_EQ(thread_states(), baseline + 1) << "the next attach makes a new state";
  w.join();
  EXPECT_EQ(thread_states(), baseline);
  pyattach::attach_scope py;
  Py_DECREF(g);
}

TEST(Scopes, IsAttachedOnThreadsThatNeverUsedPython) {
  std::atomic<int> attached{-1};
  std::thread([&] { attached = pyattach::is_attached() ? 1 : 0; }).join();
  EXPECT_EQ(attached.load(), 0);
  EXPECT_FALSE(pyattach::is_attached()) << "the test thread is detached between tests";
}

TEST(Scopes, ASecondInterpreterWhileOneIsAliveThrows) {
  EXPECT_THROW({ pyattach::interpreter second; }, pyattach::interpreter_error);
  // The shared interpreter is unaffected.
  pyattach::attach_scope py;
  EXPECT_EQ(PyRun_SimpleString("_still_fine = 1\n"), 0);
}

TEST(Scopes, StatusNamesAndAttachError) {
  using pyattach::attach_status;
  EXPECT_STREQ(pyattach::to_string(attach_status::attached), "attached");
  EXPECT_STREQ(pyattach::to_string(attach_status::not_initialized), "not_initialized");
  EXPECT_STREQ(pyattach::to_string(attach_status::finalizing), "finalizing");
  EXPECT_STREQ(pyattach::to_string(attach_status::finalized), "finalized");
  const pyattach::attach_error e(attach_status::finalizing);
  EXPECT_EQ(e.status(), attach_status::finalizing);
  EXPECT_NE(std::string(e.what()).find("finalizing"), std::string::npos) << e.what();
  EXPECT_EQ(pyattach::current_gate_phase(), pyattach::gate_phase::open);
  EXPECT_GE(pyattach::current_generation(), 1u);
}

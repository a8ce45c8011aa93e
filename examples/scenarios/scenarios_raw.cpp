// scenarios_raw.cpp — the seven seed scenarios (and scenario 8) written with the raw C API, as
// the seed wrote them
// (PyGILState_Ensure/Release, PyEval_SaveThread/RestoreThread, pthreads, one-thread pools).
// Each one only observes and prints what happened (OBS lines); the parent judges.
// pyattach is used for one thing only: with --trace, its timeline trace, in which the raw GIL
// calls are marked by hand (traced_ensure() and its siblings below).
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>

#include <pyattach/observe.hpp>

#include "demo.hpp"

namespace demo {

namespace {
// ---- --trace -----------------------------------------------------------------------------------
// The driver passes PYATTACH_TRACE=<file>. pyattach reads that variable itself only at its first
// bind or first thread record, which a raw run never makes before run_raw starts the trace (and
// were it read first, its trace would simply be the one running): so this file starts the trace,
// writes it with stop_trace() before Py_FinalizeEx and before every _Exit (a child that crashes
// earlier leaves no file, which the driver reports), and marks the GIL calls. pyattach sees only
// its own attaches; these wrappers add the same spans around the raw calls: "waiting for the GIL"
// across the call that takes it, "attached" until the call that gives it back (so a span is never
// longer than the hold). Without a trace the marks return at once.
const char* trace_path() {
  const char* p = std::getenv("PYATTACH_TRACE");
  return p != nullptr && *p != '\0' ? p : nullptr;
}

void write_trace() {
  const char* path = trace_path();
  if (path == nullptr) return;
  const pyattach::trace_result r = pyattach::stop_trace(path);
  if (!r.ok) std::fprintf(stderr, "pyattach-demo: trace %s: %s\n", path, r.error.c_str());
}

void mark_taken() {
  pyattach::trace_end(pyattach::trace_span::waiting);
  pyattach::trace_begin(pyattach::trace_span::attached);
}

PyGILState_STATE traced_ensure() {
  pyattach::trace_begin(pyattach::trace_span::waiting);
  const PyGILState_STATE g = PyGILState_Ensure();
  mark_taken();
  return g;
}

void traced_release(PyGILState_STATE g) {
  pyattach::trace_end(pyattach::trace_span::attached);
  PyGILState_Release(g);
}

void traced_restore_thread(PyThreadState* state) {
  pyattach::trace_begin(pyattach::trace_span::waiting);
  PyEval_RestoreThread(state);
  mark_taken();
}

PyThreadState* traced_save_thread() {
  pyattach::trace_end(pyattach::trace_span::attached);
  return PyEval_SaveThread();
}

// ---- the scenarios -----------------------------------------------------------------------------
bool wait_for(std::future<void>& f, int bound_ms) {
  return f.wait_for(std::chrono::milliseconds(bound_ms)) == std::future_status::ready;
}

PyThreadState* raw_init() {
  Py_Initialize();
  pyattach::trace_begin(pyattach::trace_span::attached);  // Py_Initialize returns holding the GIL
  py_define_helpers();
  return traced_save_thread();  // the seed's pattern: let other threads take the GIL
}

// Another thread asks for the GIL now (PyGILState_Ensure may block forever: never waited on
// without a bound).
std::shared_ptr<probe> start_probe() {
  auto p = std::make_shared<probe>();
  p->asked = now_ms();
  std::thread([p] {
    name_thread("probe");
    const PyGILState_STATE g = traced_ensure();
    p->got = now_ms();
    traced_release(g);
  }).detach();
  return p;
}

// Thread idents in the interpreter's list, seen by a helper thread holding the GIL (its own
// state excluded), or nullopt if the GIL did not come within bound_ms.
std::optional<std::vector<unsigned long>> thread_states(int bound_ms) {
  auto ids = std::make_shared<std::vector<unsigned long>>();
  const bool done = run_bounded(
      [ids] {
        name_thread("state lister");
        const PyGILState_STATE g = traced_ensure();
        *ids = py_thread_state_idents();
        const unsigned long self = this_thread_ident();
        ids->erase(std::remove(ids->begin(), ids->end(), self), ids->end());
        traced_release(g);
      },
      bound_ms);
  if (!done) return std::nullopt;
  return *ids;
}

void obs_states(const std::string& phase, int bound_ms, unsigned long worker = 0) {
  const auto ids = thread_states(bound_ms);
  if (!ids) {
    obs("states_" + phase, "blocked: GIL held by another thread");
    return;
  }
  obs("states_" + phase, std::to_string(ids->size()));
  if (worker != 0) {
    const bool listed = std::find(ids->begin(), ids->end(), worker) != ids->end();
    obs("worker_listed_" + phase, listed ? "yes" : "no");
  }
}

// Correct raw shutdown for the scenarios whose pitfall is elsewhere: re-attach, finalize.
int raw_finalize(PyThreadState* main_state) {
  write_trace();
  set_phase("PyEval_RestoreThread before Py_FinalizeEx");
  PyEval_RestoreThread(main_state);
  set_phase("Py_FinalizeEx");
  const int rc = Py_FinalizeEx();
  obs("finalize", rc == 0 ? "ok" : "error");
  return 0;
}

// 1: a pthread runs Python holding the GIL forever (sleeps holding it); another only prints.
int scenario1() {
  raw_init();  // main's saved state is never restored below: the seed's shutdown mistake
  printing_thread cpp_thread;
  std::atomic<unsigned long> py_ident{0};
  std::atomic<int> iterations{0};
  std::thread py_thread([&] {
    name_thread("python thread");
    const PyGILState_STATE g = traced_ensure();  // once, never released while looping
    py_ident = this_thread_ident();
    while (!cpp_thread.stopping()) {
      py_print("Hello from the long running python thread!");
      ++iterations;
      sleep_ms(kWindowMs);  // holding the GIL
    }
    traced_release(g);  // the seed never stops; we stop it to try shutting down
  });
  while (iterations == 0) sleep_ms(1);
  sleep_ms(5);  // well inside the Python thread's sleep
  set_phase("another thread asks for Python");
  auto p = start_probe();
  const auto wait = wait_probe(*p, kBoundMs);
  obs("sleep_ms", kWindowMs);
  obs("other_thread_wait_ms", wait_text(wait, kBoundMs));
  const auto ids = thread_states(kBoundMs);
  if (ids) {
    auto has = [&](unsigned long id) {
      return std::find(ids->begin(), ids->end(), id) != ids->end();
    };
    obs("states", std::to_string(ids->size()));
    obs("cpp_thread_listed", has(cpp_thread.ident()) ? "yes" : "no");
    obs("py_thread_listed", has(py_ident) ? "yes" : "no");
  } else {
    obs("states", "blocked: GIL held by another thread");
  }
  cpp_thread.stop();
  py_thread.join();
  write_trace();
  set_phase("Py_FinalizeEx without PyEval_RestoreThread");
  obs("finalize", "calling Py_FinalizeEx without PyEval_RestoreThread");
  const int rc = Py_FinalizeEx();  // crashes on 3.9-3.12: no thread state is current
  obs("finalize", "returned " + std::to_string(rc));
  return 0;
}

// 2: a task ensures and returns without releasing; a later task on the same thread releases.
int scenario2() {
  PyThreadState* main_state = raw_init();
  pool default_pool("default_pool");
  PyGILState_STATE gstate{};
  unsigned long worker = 0;
  auto init = post_task(default_pool, [&] {
    gstate = traced_ensure();
    worker = this_thread_ident();
    py_set_name("default_pool");
    py_print("Hello from the default_pool in init_python_thread");
    obs("states_after_init_seen_by_worker", std::to_string(py_thread_state_idents().size()));
  });  // returns holding the GIL
  init.wait();
  const double idle_start = now_ms();
  auto p = start_probe();
  obs_states("between_tasks", kWindowMs / 2, worker);
  sleep_ms(static_cast<int>(std::max(0.0, kWindowMs - (now_ms() - idle_start))));
  auto release = post_task(default_pool, [&] {
    obs("name_in_release_task", py_get_name());
    traced_release(gstate);
  });
  release.wait();
  obs("idle_window_ms", now_ms() - idle_start);
  obs("other_thread_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  obs_states("after_release", kBoundMs, worker);
  default_pool.join();
  return raw_finalize(main_state);
}

// 3, 4 and 5: two pools, an init task and a later release task on each.
enum class handover { hold_gil, save_thread, hold_gil_blocked };

int two_pools(handover how) {
  PyThreadState* main_state = raw_init();
  pool default_pool("default_pool"), custom_pool("custom_pool");
  struct worker_state {
    PyGILState_STATE gstate{};
    PyThreadState* saved = nullptr;
    unsigned long ident = 0;
    std::atomic<double> ran_at{-1};  // when its init task got to run Python
  };
  worker_state def, cus;
  auto init = [how](worker_state& w, const char* name) {
    w.gstate = traced_ensure();
    w.ran_at = now_ms();
    w.ident = this_thread_ident();
    py_set_name(name);
    py_print(std::string("Hello from ") + name + " in init_python_thread");
    if (how == handover::save_thread) {
      py_issue130394_init(name);
      w.saved = traced_save_thread();
    }
    if (how == handover::hold_gil_blocked) sleep_ms(kWindowMs);  // blocked in C++, GIL held
  };  // 3 and 5: returns holding the GIL
  auto release = [how](worker_state& w, const char* name) {
    if (how == handover::save_thread) {
      traced_restore_thread(w.saved);
      obs(std::string("name_in_release_") + name, py_get_name());
      obs(std::string("issue_local_in_release_") + name, py_issue130394_get());
    }
    traced_release(w.gstate);  // the outermost Release destroys the thread state
    const PyGILState_STATE again = traced_ensure();
    obs(std::string("name_after_release_") + name, py_get_name());
    traced_release(again);
  };

  auto def_init = post_task(default_pool, [&] { init(def, "default_pool"); });
  if (how == handover::hold_gil_blocked) {
    while (def.ran_at < 0) sleep_ms(1);  // default_pool is now blocked in C++, holding the GIL
  } else {
    def_init.wait();
  }
  const double asked = now_ms();
  auto cus_init = post_task(custom_pool, [&] { init(cus, "custom_pool"); });
  if (how == handover::save_thread) {
    // Other native threads call PyGILState_Ensure while both workers keep their states: when
    // python/cpython#130394 reported the first thread's threading.local data vanishing.
    for (int i = 0; i < 3; ++i) wait_probe(*start_probe(), kBoundMs);
  }
  obs_states("while_idle", how == handover::save_thread ? kBoundMs : kWindowMs / 3, def.ident);
  def_init.wait();
  const double left = kWindowMs - (now_ms() - asked);
  if (left > 0) sleep_ms(static_cast<int>(left));
  std::atomic<double> released_at{-1};
  auto def_rel = post_task(default_pool, [&] {
    released_at = now_ms();
    release(def, "default_pool");
  });
  while (released_at < 0) sleep_ms(1);  // default_pool is idle: the task starts at once
  const bool cus_ran = wait_for(cus_init, kBoundMs);
  obs("idle_window_ms", released_at - asked);
  if (!cus_ran) {
    obs("custom_init_wait_ms", "blocked (>" + std::to_string(kBoundMs) + " ms)");
    write_trace();
    std::fflush(stdout);
    std::_Exit(0);  // custom_pool is stuck: nothing more can be observed
  }
  obs("custom_init_wait_ms", cus.ran_at - asked);
  auto cus_rel = post_task(custom_pool, [&] { release(cus, "custom_pool"); });
  if (!wait_for(def_rel, kBoundMs) || !wait_for(cus_rel, kBoundMs)) {
    obs("release_tasks", "blocked: a pool kept the GIL");
    write_trace();
    std::fflush(stdout);
    std::_Exit(0);
  }
  obs_states("after_release", kBoundMs, def.ident);
  default_pool.join();
  custom_pool.join();
  return raw_finalize(main_state);
}

// 6: the init task returns a releaser capturing the PyGILState_STATE.
int scenario6() {
  raw_init();
  pool default_pool("default_pool"), custom_pool("custom_pool");
  std::function<void()> releaser;
  auto make_releaser = [&] {
    const PyGILState_STATE g = traced_ensure();
    py_set_name("default_pool");
    releaser = [g] { traced_release(g); };
  };
  post_task(default_pool, make_releaser).wait();
  post_task(default_pool, [&] {
    obs("name_before_releaser_same_thread", py_get_name());
    releaser();
    obs("releaser_same_thread", "returned");
  }).wait();
  post_task(default_pool, make_releaser).wait();
  auto wrong = post_task(custom_pool, [&] {
    obs("releaser_wrong_thread", "calling from custom_pool");
    releaser();  // PyGILState_Release on a thread that did not Ensure: a fatal error or worse
    obs("releaser_wrong_thread", "returned");
  });
  if (!wait_for(wrong, kBoundMs)) obs("releaser_wrong_thread", "did not return");
  write_trace();
  std::fflush(stdout);
  std::_Exit(0);  // default_pool may still hold the GIL: nothing clean is left to do
}

// 7: PyGILState_Release twice with the same state.
int scenario7() {
  raw_init();
  pool default_pool("default_pool");
  auto task = post_task(default_pool, [] {
    const PyGILState_STATE g = traced_ensure();
    py_print("Hello from default_pool");
    traced_release(g);
    obs("second_release", "calling");
    traced_release(g);  // the same state again: the thread state is already destroyed
    obs("second_release", "returned");
  });
  if (!wait_for(task, kBoundMs)) obs("second_release", "did not return");
  write_trace();
  std::fflush(stdout);
  std::_Exit(0);
}

// 8: two pools run a CPU-bound Python task each. PyGILState knows the main interpreter only, so
// by hand both threads attach there and share its GIL: they take turns.
int scenario8() {
  PyThreadState* main_state = raw_init();
  pool pool_a("pool_a"), pool_b("pool_b");
  run_parallel_program([&](int i, std::function<void()> fn) {
    return post_task(i == 0 ? pool_a : pool_b, [fn] {
      const PyGILState_STATE g = traced_ensure();
      fn();
      traced_release(g);
    });
  });
  return raw_finalize(main_state);
}

}  // namespace

int run_raw(int n) {
  if (trace_path() != nullptr) pyattach::start_trace();
  switch (n) {
    case 1: return scenario1();
    case 2: return scenario2();
    case 3: return two_pools(handover::hold_gil);
    case 4: return two_pools(handover::save_thread);
    case 5: return two_pools(handover::hold_gil_blocked);
    case 6: return scenario6();
    case 7: return scenario7();
    case 8: return scenario8();
  }
  return 2;
}

}  // namespace demo

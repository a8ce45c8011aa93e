// scenarios_pyattach.cpp — the same programs (and scenario 8) written with pyattach: pyattach::interpreter,
// attach_scope around the Python work, detach_scope around blocking C++ work.
// Each one only observes and prints what happened (OBS lines); the parent judges.
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <future>
#include <memory>
#include <optional>

#include <pyattach/pyattach.hpp>

#include "demo.hpp"

namespace demo {

namespace {
// Another thread asks for Python now: a task on the Boost.Asio pool `other`.
std::shared_ptr<probe> start_pool_probe(pool& other) {
  auto p = new_probe();
  boost::asio::post(other, [p] {
    pyattach::attach_scope py;
    p->got = probe_python();
  });
  return p;
}

// 1: a thread runs Python in a scope per iteration and sleeps outside it; another only prints.
void scenario1() {
  printing_thread cpp_thread;
  std::atomic<unsigned long> py_ident{0};
  std::atomic<int> iterations{0};
  std::thread py_thread([&] {
    name_thread("python thread");
    py_ident = this_thread_ident();
    while (!cpp_thread.stopping()) {
      {
        pyattach::attach_scope py;
        py_print("Hello from the long running python thread!");
      }
      ++iterations;
      sleep_ms(kWindowMs);  // not attached: the GIL is free
    }
  });
  while (iterations == 0) sleep_ms(1);
  sleep_ms(5);
  set_phase("another thread asks for Python");
  auto p = start_thread_probe();
  obs("sleep_ms", kWindowMs);
  obs("other_thread_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  const pyattach::thread_report r = pyattach::make_thread_report();
  bool cpp_listed = false, py_listed = false;
  for (const auto& t : r.threads) {
    cpp_listed |= t.has_thread_state && t.ident == cpp_thread.ident();
    py_listed |= t.has_thread_state && t.ident == py_ident;
  }
  obs("states", std::to_string(r.thread_states));
  obs("cpp_thread_listed", cpp_listed ? "yes" : "no");
  obs("py_thread_listed", py_listed ? "yes" : "no");
  cpp_thread.stop();
  py_thread.join();
}

// 2: the worker keeps its thread state between tasks without holding the GIL.
void scenario2() {
  pool default_pool("default_pool");
  obs_state_count("before");
  unsigned long worker = 0;
  post_task(default_pool, [&] {
    pyattach::attach_scope py;
    worker = this_thread_ident();
    py_set_name("default_pool");
    py_print("Hello from the default_pool in init_python_thread");
  }).wait();
  const double idle_start = now_ms();
  auto p = start_thread_probe();
  const auto wait = wait_probe(*p, kBoundMs);
  obs_report("between_tasks", worker);
  sleep_until_ms(idle_start + kWindowMs);
  post_task(default_pool, [&] {
    pyattach::attach_scope py;
    obs("name_in_release_task", py_get_name());
  }).wait();
  obs("idle_window_ms", now_ms() - idle_start);
  obs("other_thread_wait_ms", wait_text(wait, kBoundMs));
  default_pool.join();
}

// 3 and 4 (the same program: the pattern packaged), and 5 (blocking C++ in a detach_scope).
// issue_script: also run python/cpython#130394's Python code (a threading.local per init).
void two_pools(bool blocking, bool issue_script) {
  pool default_pool("default_pool"), custom_pool("custom_pool");
  obs_state_count("before");
  std::atomic<double> def_ran{-1}, cus_ran{-1};
  std::atomic<unsigned long> def_ident{0};
  auto def_init = post_task(default_pool, [&] {
    pyattach::attach_scope py;
    def_ran = now_ms();
    def_ident = this_thread_ident();
    py_init_pool_thread("default_pool", issue_script);
    if (blocking) {
      pyattach::detach_scope wait;  // blocking C++ work: the GIL is free, the state kept
      sleep_ms(kWindowMs);
    }
  });
  if (blocking) {
    while (def_ran < 0) sleep_ms(1);
  } else {
    def_init.wait();
  }
  const double asked = now_ms();
  auto cus_init = post_task(custom_pool, [&] {
    pyattach::attach_scope py;
    cus_ran = now_ms();
    py_init_pool_thread("custom_pool", issue_script);
  });
  cus_init.wait_for(std::chrono::milliseconds(kBoundMs));
  obs_report("while_idle", def_ident);
  def_init.wait();
  sleep_until_ms(asked + kWindowMs);
  const double window = now_ms() - asked;
  auto read_names = [issue_script](const std::string& key, const char* pool_name) {
    pyattach::attach_scope py;
    obs_names(key, pool_name, issue_script);
  };
  post_task(default_pool, [&] { read_names("name_in_release_default_pool", "default_pool"); })
      .wait();
  obs("idle_window_ms", window);
  obs("custom_init_wait_ms", wait_text_since(cus_ran, asked, kBoundMs));
  post_task(custom_pool, [&] { read_names("name_in_release_custom_pool", "custom_pool"); })
      .wait();
  post_task(default_pool, [] {
    pyattach::attach_scope py;
    obs("name_after_release_default_pool", py_get_name());
  }).wait();
  obs_report("after_release", def_ident);
  default_pool.join();
  custom_pool.join();
  obs_state_count("after_join");
}

// 6: no releaser needed; then a heap-held scope ended on the wrong thread.
void scenario6() {
  pool default_pool("default_pool"), custom_pool("custom_pool");
  set_name_in_python(default_pool, "default_pool");
  auto p = start_pool_probe(custom_pool);
  obs("other_pool_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  post_task(default_pool, [] {
    pyattach::attach_scope py;
    obs("name_in_later_task", py_get_name());
  }).wait();

  // The releaser pattern ported as-is: a scope held on the heap, ended by whoever runs last.
  // (emplace() would record the site inside <optional>: pass ours.)
  auto held = std::make_shared<std::optional<pyattach::attach_scope>>();
  post_task(default_pool, [held] { held->emplace(pyattach::source_site::current()); }).wait();
  set_phase("ending the scope on the wrong thread");
  post_task(custom_pool, [held] { held->reset(); }).wait();
  obs("wrong_thread_end", "returned");
  set_phase("the owner's next task");
  post_task(default_pool, [] {
    {
      pyattach::attach_scope py;
      obs("name_after_misuse", py_get_name());
    }
    obs("owner_attached_after_next_task", pyattach::is_attached() ? "yes" : "no");
  }).wait();
  set_phase("another thread asks for Python after the misuse");
  auto after = start_thread_probe();
  const auto wait = wait_probe(*after, kBoundMs);
  obs("python_after_misuse_wait_ms", wait_text(wait, kBoundMs));
  set_phase("shutdown after the misuse");
  if (!wait) arm_watchdog(kBoundMs);  // a thread keeps the GIL: shutting down may hang
  default_pool.join();
  custom_pool.join();
}

// 7: release() twice on the same scope.
void scenario7() {
  pool default_pool("default_pool"), custom_pool("custom_pool");
  post_task(default_pool, [] {
    pyattach::attach_scope py;
    py_set_name("default_pool");
    py_print("Hello from default_pool");
    py.release();
    obs("second_release", "calling");
    py.release();
    obs("second_release", "returned");
  }).wait();
  auto p = start_pool_probe(custom_pool);
  obs("other_pool_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  post_task(default_pool, [] {
    pyattach::attach_scope py;
    obs("name_in_later_task", py_get_name());
  }).wait();
  default_pool.join();
  custom_pool.join();
}

// 8: two pools run a CPU-bound Python task each, each pool's thread on an interpreter of its own
// with its own GIL (CPython 3.12+): they run at once. Each thread keeps one state per interpreter.
void scenario8() {
#if PY_VERSION_HEX >= 0x030C0000
  pyattach::subinterpreter in_a = pyattach::subinterpreter::create();
  pyattach::subinterpreter in_b = pyattach::subinterpreter::create();
  {
    pool pool_a("pool_a"), pool_b("pool_b");
    run_parallel_program([&](int i, std::function<void()> fn) {
      const pyattach::subinterpreter& in = i == 0 ? in_a : in_b;
      return post_task(i == 0 ? pool_a : pool_b, [&in, fn] {
        pyattach::attach_scope py(in);
        fn();
      });
    });
    pool_a.join();
    pool_b.join();
  }
  obs("states_made", std::to_string(in_a.stats().states_made + in_b.stats().states_made));
  obs("ended", in_a.end() && in_b.end() ? "yes" : "no");
#else
  obs("unavailable", "needs CPython 3.12+ (a GIL per interpreter)");
#endif
}
}  // namespace

int run_pyattach(int n) {
  if (n < 1 || n > 8) return 2;
  // Every scenario runs between these two: the scenario joins what it started, and its objects
  // are gone before the interpreter ends.
  std::optional<pyattach::interpreter> interp(std::in_place);
  pyattach_setup();
  switch (n) {
    case 1: scenario1(); break;
    case 2: scenario2(); break;
    case 3: two_pools(false, false); break;
    case 4: two_pools(false, true); break;
    case 5: two_pools(true, false); break;
    case 6: scenario6(); break;
    case 7: scenario7(); break;
    case 8: scenario8(); break;
  }
  return pyattach_finish(interp);
}

}  // namespace demo

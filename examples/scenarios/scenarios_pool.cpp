// scenarios_pool.cpp — scenarios 2–6 written with pyattach::thread_pool instead of Boost.Asio
// pools and scopes: the pool attaches around submit_python() tasks, never around submit() ones,
// names its workers "<pool>-<index>" in Python, and runs per-worker start/stop hooks.
// Each one only observes and prints what happened (OBS lines); the parent judges.
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <pyattach/pyattach.hpp>

#include "demo.hpp"

namespace demo {

namespace {
using pyattach::thread_pool;

// 2: the worker keeps its thread state (and its Python name) between tasks, not the GIL.
int scenario2() {
  std::optional<pyattach::interpreter> interp(std::in_place);
  pyattach_setup();
  thread_pool default_pool("default_pool", 1);
  obs_state_count("before");
  const unsigned long worker = default_pool.submit_python([] {
    py_set_name("default_pool");
    py_print("Hello from the default_pool in init_python_thread");
    return this_thread_ident();
  }).get();
  const double idle_start = now_ms();
  auto p = start_thread_probe();
  obs("other_thread_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  obs_report("between_tasks", worker);
  sleep_until_ms(idle_start + kWindowMs);
  default_pool.submit_python([] {
    obs("name_in_release_task", py_get_name());
    obs("thread_name_in_release_task", py_thread_name());
  }).get();
  obs("idle_window_ms", now_ms() - idle_start);
  default_pool.shutdown();
  return pyattach_finish(interp);
}

// 3 and 4 (the same program; 4 also runs #130394's script), and 5: default_pool blocks in a
// C++-only submit() task, which the pool never attaches (the seed's blocked GIL holder, with no
// scope to forget).
int two_pools(int scenario) {
  const bool blocking = scenario == 5, issue_script = scenario == 4;
  std::optional<pyattach::interpreter> interp(std::in_place);
  pyattach_setup();
  thread_pool default_pool("default_pool", 1), custom_pool("custom_pool", 1);
  obs_state_count("before");
  const unsigned long def_ident = default_pool.submit_python([issue_script] {
    py_init_pool_thread("default_pool", issue_script);
    return this_thread_ident();
  }).get();
  std::atomic<bool> blocked{false};
  std::future<void> def_block;
  if (blocking) {
    def_block = default_pool.submit([&blocked] {
      obs("attached_in_cpp_task", pyattach::is_attached() ? "yes" : "no");
      blocked = true;
      sleep_ms(kWindowMs);  // blocking C++ work
      blocked = false;
    });
    while (!blocked) sleep_ms(1);
  }
  std::atomic<double> cus_ran{-1};
  const double asked = now_ms();
  auto cus_init = custom_pool.submit_python([&] {
    cus_ran = now_ms();
    if (blocking) obs("custom_ran_while_blocked", blocked ? "yes" : "no");
    py_init_pool_thread("custom_pool", issue_script);
  });
  cus_init.wait_for(std::chrono::milliseconds(kBoundMs));
  obs_report("while_idle", def_ident);
  if (blocking) def_block.get();
  sleep_until_ms(asked + kWindowMs);
  const double window = now_ms() - asked;
  default_pool.submit_python([issue_script] {
    obs_names("name_in_release_default_pool", "default_pool", issue_script);
  }).get();
  obs("idle_window_ms", window);
  obs("custom_init_wait_ms", wait_text_since(cus_ran, asked, kBoundMs));
  custom_pool.submit_python([issue_script] {
    obs_names("name_in_release_custom_pool", "custom_pool", issue_script);
    obs("thread_name_custom_pool", py_thread_name());
  }).get();
  default_pool.submit_python([] { obs("name_after_release_default_pool", py_get_name()); }).get();
  obs_report("after_release", def_ident);
  default_pool.shutdown();
  custom_pool.shutdown();
  obs_state_count("after_shutdown");
  return pyattach_finish(interp);
}

// What ran on a pool's worker, in order, and on which thread.
class event_log {
 public:
  void add(const char* what) {
    std::lock_guard<std::mutex> lock(m_);
    events_.emplace_back(what, this_thread_ident());
  }
  // "start,task,stop"
  std::string order() const {
    std::lock_guard<std::mutex> lock(m_);
    std::string out;
    for (const auto& e : events_) out += (out.empty() ? "" : ",") + e.first;
    return out;
  }
  // Every event on the same thread, and not on `other`.
  bool one_thread_other_than(unsigned long other) const {
    std::lock_guard<std::mutex> lock(m_);
    for (const auto& e : events_) {
      if (e.second == other || e.second != events_.front().second) return false;
    }
    return !events_.empty();
  }

 private:
  mutable std::mutex m_;
  std::vector<std::pair<std::string, unsigned long>> events_;
};

// 6: the seed's releaser replaced by per-worker hooks: the start hook (attached) sets a
// threading.local value, a later task reads it, the stop hook (attached) reads it back.
int scenario6() {
  std::optional<pyattach::interpreter> interp(std::in_place);
  pyattach_setup();
  event_log log;
  pyattach::pool_options o;
  o.name = "default_pool";
  o.start_hook_python = true;
  o.on_start = [&log](const pyattach::worker_context& w) {
    log.add("start");
    obs("start_hook_attach", pyattach::to_string(w.python));
    if (w.python != pyattach::attach_status::attached) return;
    py_set_name(w.pool_name);
    obs("thread_name_in_start_hook", py_thread_name());
  };
  o.stop_hook_python = true;
  o.on_stop = [&log](const pyattach::worker_context& w) {
    log.add("stop");
    obs("stop_hook_attach", pyattach::to_string(w.python));
    if (w.python == pyattach::attach_status::attached) obs("name_in_stop_hook", py_get_name());
  };
  std::optional<thread_pool> default_pool(std::in_place, o);
  thread_pool custom_pool("custom_pool", 1);
  auto p = new_probe();
  custom_pool.post_python([p] { p->got = probe_python(); });
  obs("other_pool_wait_ms", wait_text(wait_probe(*p, kBoundMs), kBoundMs));
  default_pool->submit_python([&log] {
    log.add("task");
    obs("name_in_later_task", py_get_name());
  }).get();
  set_phase("shutting default_pool down twice, then destroying it");
  default_pool->shutdown();
  default_pool->shutdown();  // idempotent: no second stop hook
  default_pool.reset();      // ~thread_pool: nor a third
  obs("hook_order", log.order());
  obs("hooks_on_worker", log.one_thread_other_than(this_thread_ident()) ? "yes" : "no");
  custom_pool.shutdown();
  return pyattach_finish(interp);
}

// 8: two thread_pools, each bound to an interpreter of its own with its own GIL (CPython 3.12+),
// run a CPU-bound Python task each at once.
int scenario8() {
  std::optional<pyattach::interpreter> interp(std::in_place);
  pyattach_setup();
#if PY_VERSION_HEX >= 0x030C0000
  pyattach::subinterpreter in_a = pyattach::subinterpreter::create();
  pyattach::subinterpreter in_b = pyattach::subinterpreter::create();
  {
    pyattach::pool_options o;
    o.name = "pool_a";
    o.interpreter = in_a;
    thread_pool pool_a(o);
    o.name = "pool_b";
    o.interpreter = in_b;
    thread_pool pool_b(o);
    run_parallel_program([&](int i, std::function<void()> fn) {
      return (i == 0 ? pool_a : pool_b).submit_python(std::move(fn));
    });
    obs("thread_names", pool_a.submit_python([] { return py_thread_name(); }).get() + "," +
                            pool_b.submit_python([] { return py_thread_name(); }).get());
  }
  obs("states_made", std::to_string(in_a.stats().states_made + in_b.stats().states_made));
  obs("ended", in_a.end() && in_b.end() ? "yes" : "no");
#else
  obs("unavailable", "needs CPython 3.12+ (a GIL per interpreter)");
#endif
  return pyattach_finish(interp);
}
}  // namespace

int run_pool(int n) {
  switch (n) {
    case 2: return scenario2();
    case 3:
    case 4:
    case 5: return two_pools(n);
    case 6: return scenario6();
    case 8: return scenario8();
  }
  return 2;
}

}  // namespace demo

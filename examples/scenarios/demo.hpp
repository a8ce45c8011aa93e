// demo.hpp — what the scenario demo's files share: observation lines, timing, the scenario
// entry points, the Python snippets both variants run, and the child-process runner.
#pragma once

#include <Python.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace demo {

// The seed's one-thread Boost.Asio pools, and a task whose completion the caller can wait for.
using pool = boost::asio::thread_pool;

template <class F>
std::future<void> post_task(pool& p, F fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> f = done->get_future();
  boost::asio::post(p, [done, fn = std::move(fn)]() mutable {
    fn();
    done->set_value();
  });
  return f;
}

// ---- child side -------------------------------------------------------------------------------

// Prints "OBS key=value" to stdout with one write(2), so it survives a crash right after.
void obs(const std::string& key, const std::string& value);
void obs(const std::string& key, double value);

// Milliseconds since the child started (steady clock).
double now_ms();
void sleep_ms(int ms);
std::string fmt_ms(double ms);

// Ends the child with `code` after `ms` unless disarmed: prints "OBS watchdog=<phase>" first.
// The raw variants may leave a thread holding the GIL forever; this keeps the child bounded.
void arm_watchdog(int ms);
void set_phase(const char* phase);  // what the child is doing now (printed by the watchdog)

// Runs `fn` on a fresh detached thread and waits at most `bound_ms` for it. Returns false if it
// did not finish in time (the thread is left behind; the child must then end with _exit).
bool run_bounded(std::function<void()> fn, int bound_ms);

// Idle window between tasks (the seed's `sleep(10)`, scaled down) and the bound for any wait.
constexpr int kWindowMs = 300;
constexpr int kBoundMs = 1500;

// Python snippets. PRECONDITION for all: the calling thread holds the GIL.
void py_define_helpers();                   // thread_local = threading.local(), tl_set, tl_get
void py_set_name(const std::string& name);  // thread_local.name = name
std::string py_get_name();                  // thread_local.name, or the AttributeError text
void py_print(const std::string& text);     // print() from Python, flushed
// What CPython issue 130394's script does in each init: issue_local = threading.local() (a new
// object, rebinding the module-level name), then issue_local.name = name; and read it back.
void py_issue130394_init(const std::string& name);
std::string py_issue130394_get();
// Thread idents of every thread state of the main interpreter (the list py-spy walks).
std::vector<unsigned long> py_thread_state_idents();

unsigned long this_thread_ident();

// One attempt by another thread to run Python: when it asked, and when it got to run.
struct probe {
  double asked = 0;
  std::atomic<double> got{-1};
};
// Waits until p.got is set or bound_ms passed; returns the wait (got - asked) or nullopt.
std::optional<double> wait_probe(const probe& p, int bound_ms);
// "12.3" or "blocked (>1500 ms)".
std::string wait_text(const std::optional<double>& wait, int bound_ms);  // what CPython records as thread_id for this thread

// Entry points: run scenario n (1..7) in this process. Return the exit status.
int run_raw(int n);
int run_pyattach(int n);

// ---- parent side ------------------------------------------------------------------------------

struct child_result {
  std::string out;
  std::string err;
  bool timed_out = false;
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  double elapsed_ms = 0;
  bool spawn_failed = false;
};

// Runs this executable with `args`, capturing stdout and stderr; SIGKILL after timeout_ms.
child_result run_child(const std::vector<std::string>& args, int timeout_ms);

// "OBS key=value" lines of a child's stdout, in order.
std::vector<std::pair<std::string, std::string>> parse_observations(const std::string& out);

}  // namespace demo

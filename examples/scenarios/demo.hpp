// demo.hpp — what the scenario demo's files share: observation lines, timing, the scenario
// entry points, the Python snippets every variant runs, what the two pyattach variants (scopes
// on Boost.Asio pools, and pyattach::thread_pool) share, and the child-process runner.
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

namespace pyattach {
class interpreter;
}

namespace demo {

// Names the calling thread (at most 15 characters): what the trace's lanes, top -H and gdb show.
void name_thread(const char* name);

// The seed's one-thread Boost.Asio pools, their thread named after the pool; and a task whose
// completion the caller can wait for.
class pool : public boost::asio::thread_pool {
 public:
  explicit pool(const char* name) : boost::asio::thread_pool(1) {
    boost::asio::post(*this, [name] { name_thread(name); });  // the first task: before any other
  }
};

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
void sleep_until_ms(double t);  // until now_ms() >= t (returns at once if it already is)
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
std::string py_thread_name();               // threading.current_thread().name
// What python/cpython#130394's script does in each init: issue_local = threading.local() (a new
// object, rebinding the module-level name), then issue_local.name = name; and read it back.
void py_issue130394_init(const std::string& name);
std::string py_issue130394_get();
// The seed's init_python_thread on a pool's worker: thread_local.name = pool_name (and, with
// issue_script, #130394's init), then a print. The later task reads them back:
// OBS <key>=thread_local.name and, with issue_script, issue_local_in_release_<pool_name>=...
void py_init_pool_thread(const std::string& pool_name, bool issue_script);
void obs_names(const std::string& key, const std::string& pool_name, bool issue_script);
// Thread idents of every thread state of the main interpreter (the list py-spy walks).
std::vector<unsigned long> py_thread_state_idents();

unsigned long this_thread_ident();  // what CPython records as thread_id for this thread

// Scenario 1's "cpp thread": from construction until stop(), prints a line every third of the
// window; it never runs Python. stopping() also ends the scenario's Python loop.
class printing_thread {
 public:
  printing_thread();
  ~printing_thread() { stop(); }
  void stop();  // and joins
  bool stopping() const { return stop_; }
  unsigned long ident() const { return ident_; }  // 0 until the thread runs
 private:
  std::atomic<bool> stop_{false};
  std::atomic<unsigned long> ident_{0};
  std::thread thread_;
};

// One attempt by another thread to run Python: when it asked, and when it got to run.
struct probe {
  double asked = 0;
  std::atomic<double> got{-1};
};
// Waits until p.got is set or bound_ms passed; returns the wait (got - asked) or nullopt.
std::optional<double> wait_probe(const probe& p, int bound_ms);
// "12.3" or "blocked (>1500 ms)".
std::string wait_text(const std::optional<double>& wait, int bound_ms);
// wait_text for a moment `ran` (< 0: not yet) that was asked for at `asked`.
std::string wait_text_since(double ran, double asked, int bound_ms);

// Scenario 8's program, the same in every variant: CPU-bound pure Python (cpu_work(), about
// 100-200 ms, defined in each interpreter's __main__) once on each thread to warm up, once alone on
// thread 0, then on threads 0 and 1 at once; then both threads meet: each arrives and spins holding its GIL (no bytecode runs, so
// it is not handed over) until the other has arrived too, at most kBoundMs, which one GIL shared
// by the two threads makes impossible. OBS solo_ms, together_ms (the two runs, first start to
// last end), speedup (2 x solo / together) and met (yes: both held a GIL at once).
// run_attached(i, fn): runs fn on thread i (0 or 1) holding the GIL of that thread's interpreter;
// the future is ready when it ran.
using attached_runner = std::function<std::future<void>(int, std::function<void()>)>;
void run_parallel_program(const attached_runner& run_attached);

// ---- child side, the pyattach and pool variants (they link pyattach; the raw ones do not use it)

// Runs a task on p that attaches and sets thread_local.name = name; waits for it.
void set_name_in_python(pool& p, const char* name);
// Misuse reports become OBS lines (misuse, misuse_message); then the Python helpers are defined.
void pyattach_setup();
// Ends the interpreter (~interpreter), then OBS finalize=ok and misuse_count. Returns 0.
int pyattach_finish(std::optional<pyattach::interpreter>& interp);
// A probe asked for now: the thread it is handed to sets got = probe_python() once attached.
std::shared_ptr<probe> new_probe();
double probe_python();  // PRECONDITION: attached. Returns now_ms(), then prints from Python.
// A fresh std::thread asks for Python now (an attach_scope); it destroys its thread state
// before it sets got, so a thread report made after wait_probe() no longer lists it.
std::shared_ptr<probe> start_thread_probe();
// From pyattach's thread report: OBS states_<phase> (how many thread states) and, for a worker
// ident, worker_listed_<phase> (has a thread state), worker_state_<phase> (attached, waiting,
// detached) and, when threading/pyattach know them, worker_name_<phase> (threading's name, what
// py-spy shows) and worker_pool_<phase> (the thread_pool it works for).
void obs_report(const std::string& phase, unsigned long worker = 0);
void obs_state_count(const std::string& phase);  // OBS states_<phase>: count_thread_states()

// Entry points: run scenario n in this process (1..8; the pool variant: 2..6 and 8). Return the
// exit status.
int run_raw(int n);
int run_pyattach(int n);
int run_pool(int n);

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

// Runs the program at the path argv[0] with argv, capturing stdout and stderr; SIGKILL after
// timeout_ms. env: "NAME=value" entries that replace or add to this process's environment.
child_result run_program(const std::vector<std::string>& argv, int timeout_ms,
                         const std::vector<std::string>& env = {});
// run_program on this executable, with `args` after its path.
child_result run_child(const std::vector<std::string>& args, int timeout_ms,
                       const std::vector<std::string>& env = {});

// "OBS key=value" lines of a child's stdout, in order.
std::vector<std::pair<std::string, std::string>> parse_observations(const std::string& out);

}  // namespace demo

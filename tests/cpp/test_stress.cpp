// tests/cpp/test_stress.cpp — stress and fault tests: native threads racing Py_FinalizeEx, many
// short-lived threads, threads that outlive the interpreter (detached, or inside a detach scope),
// and repeated embed/finalize cycles with threads still attaching.
//
// Every case runs in a child process (child_process.hpp): it needs its own CPython lifetime, and
// the failures it looks for are hangs (the harness's deadline kills the child), crashes (a signal)
// and threads ended by pthread_exit (counted in the child). The parent only spawns and tallies.
//
// Sizes come from the environment so that a "long mode" can run more without editing the test:
//   PYATTACH_STRESS_RUNS     finalize-race children per test (default 100; long mode: 1000)
//   PYATTACH_STRESS_THREADS  short-lived threads in the churn case (default 10000)
//   PYATTACH_STRESS_CYCLES   embed/finalize cycles in one child (default 50)
//   PYATTACH_STRESS_SEED     added to every run's seed (default 0), to vary the delays
// With more than the defaults, run the binary directly (the CTest TIMEOUT is 120 s per test):
//   PYATTACH_STRESS_RUNS=1000 ./pyattach_tests --gtest_filter='Stress.*'
// Under AddressSanitizer or ThreadSanitizer every child starts and runs several times slower, so
// the defaults shrink (30 runs, 2,000 threads, 20 cycles; the variables still override them), and
// the RSS bound is not checked (ASan's quarantine keeps freed memory resident by design: measured
// +200 MiB over 9,000 threads; TSan keeps per-thread metadata). The figures are still printed.
#include <gtest/gtest.h>

#include <cxxabi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"

using namespace testutil;
using pyattach::attach_status;

namespace {

long arg_long(const std::vector<std::string>& args, std::size_t i, long fallback) {
  return i < args.size() ? std::atol(args[i].c_str()) : fallback;
}

std::string one_decimal(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::size_t rss_bytes() {
  // /proc/self/statm: size resident shared text lib data dt, in pages.
  long size = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// What the threads of one child saw. Atomics: the threads update them concurrently.
struct thread_tally {
  std::atomic<long> scopes{0};            // attach scopes that ran Python
  std::atomic<long> python_errors{0};     // PyRun_SimpleString failed inside an open gate
  std::atomic<long> refused_finalizing{0};
  std::atomic<long> refused_finalized{0};
  std::atomic<long> bad_status{0};        // refused with anything else (not_initialized, ...)
  std::atomic<long> forced_unwind{0};     // abi::__forced_unwind caught: pthread_exit/cancel
  std::atomic<long> reached_end{0};       // the thread function returned normally
  std::atomic<long> completed{0};         // finished its iterations without being refused
  std::atomic<long> lost_reattach{0};     // a detach_scope ended without re-attaching

  void add(const thread_tally& o) {
    scopes += o.scopes.load();
    python_errors += o.python_errors.load();
    refused_finalizing += o.refused_finalizing.load();
    refused_finalized += o.refused_finalized.load();
    bad_status += o.bad_status.load();
    forced_unwind += o.forced_unwind.load();
    reached_end += o.reached_end.load();
    completed += o.completed.load();
    lost_reattach += o.lost_reattach.load();
  }

  // The child's RESULT line (read by the parent with result_field): `fields`, then the tally.
  void print_result(const std::string& fields) const {
    std::printf("RESULT %s attached_ok=%ld refused_finalizing=%ld refused_finalized=%ld "
                "completed_threads=%ld bad_status=%ld pthread_exit=%ld reached_end=%ld "
                "python_errors=%ld lost_reattach=%ld\n",
                fields.c_str(), scopes.load(), refused_finalizing.load(), refused_finalized.load(),
                completed.load(), bad_status.load(), forced_unwind.load(), reached_end.load(),
                python_errors.load(), lost_reattach.load());
  }

  void record_refusal(attach_status st) {
    switch (st) {
      case attach_status::finalizing: refused_finalizing.fetch_add(1); break;
      case attach_status::finalized: refused_finalized.fetch_add(1); break;
      default:
        bad_status.fetch_add(1);
        std::printf("unexpected refusal status: %s\n", pyattach::to_string(st));
        break;
    }
  }
};

// A loop of attach / run Python / detach until refused (or `max_iterations`), as a thread body;
// with_detach: every 4th scope also runs a detach_scope (blocking work) and Python after it.
// Catches abi::__forced_unwind only to count it and rethrows (swallowing it aborts the process):
// a thread that CPython ends with pthread_exit while finalizing unwinds through exactly this frame.
void attach_until_refused(thread_tally& t, long max_iterations, const char* code,
                          bool with_detach) {
  try {
    for (long i = 0; max_iterations <= 0 || i < max_iterations; ++i) {
      auto py = pyattach::try_attach();
      if (!py) {
        t.record_refusal(py.status());
        t.reached_end.fetch_add(1);
        return;
      }
      // The gate admitted us, so the interpreter is fully alive: Python must work.
      if (PyRun_SimpleString(code) != 0) t.python_errors.fetch_add(1);
      if (with_detach && i % 4 == 3) {
        // Blocking C++ work inside the scope: the pass is kept without the GIL, so a closer that
        // starts meanwhile waits for it (bounded by close_timeout, 2 s, far above the yield),
        // and the re-attach below must succeed and Python still work.
        {
          pyattach::detach_scope nogil;
          std::this_thread::yield();
        }
        if (!pyattach::is_attached()) {
          t.lost_reattach.fetch_add(1);
        } else if (PyRun_SimpleString("_y = 1\n") != 0) {
          t.python_errors.fetch_add(1);
        }
      }
      t.scopes.fetch_add(1);
    }
    t.completed.fetch_add(1);
  } catch (abi::__forced_unwind&) {
    t.forced_unwind.fetch_add(1);
    throw;
  }
  t.reached_end.fetch_add(1);
}

// Starts `n` threads running `body` and returns once each of them has begun.
template <class F>
std::vector<std::thread> start_threads(int n, F body) {
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&started, body] {
      started.fetch_add(1);
      body();
    });
  }
  while (started.load() < n) std::this_thread::yield();
  return threads;
}

// Some real work that also touches this thread's state (threading.local lives in it).
constexpr const char* k_race_code =
    "import threading\n"
    "if '_tl' not in globals(): _tl = threading.local()\n"
    "_tl.n = getattr(_tl, 'n', 0) + 1\n"
    "_x = sum(i * i for i in range(200))\n";

}  // namespace

// ---- 1. native threads racing Py_FinalizeEx -------------------------------------------------
// args: run index (the seed of the delay before finalizing), then optionally
//   shape:   "helper"    pyattach::interpreter starts and finalizes CPython (the default)
//            "embed"     the program calls Py_InitializeEx, pyattach::bind(), PyEval_SaveThread,
//                        and later PyEval_RestoreThread + Py_FinalizeEx itself
//            "embed_gil" the same, but the main thread keeps the GIL from Py_InitializeEx until
//                        Py_FinalizeEx (the threads only get it while main runs bytecode)
//   variant: "plain"     the attach loop as is (the default)
//            "catch_all" the loop inside try { } catch (...) { }: a pthread_exit through it aborts
//            "noexcept"  the loop behind a noexcept function: a pthread_exit through it aborts

namespace {
enum class race_shape { helper, embed, embed_gil };
enum class race_variant { plain, catch_all, noexcept_fn };

void loop_noexcept(thread_tally& t) noexcept {
  attach_until_refused(t, 0, k_race_code, /*with_detach=*/true);
}

void race_thread_body(thread_tally& t, race_variant v) {
  switch (v) {
    case race_variant::plain: attach_until_refused(t, 0, k_race_code, true); break;
    case race_variant::catch_all:
      try {
        attach_until_refused(t, 0, k_race_code, true);
      } catch (...) {  // swallows abi::__forced_unwind too: the process aborts if one comes
        t.python_errors.fetch_add(1);
      }
      break;
    case race_variant::noexcept_fn: loop_noexcept(t); break;
  }
}
}  // namespace

CHILD_CASE(stress_finalize_race) {
  constexpr int k_threads = 8;
  const unsigned seed = static_cast<unsigned>(arg_long(args, 0, 0));
  const std::string shape_name = args.size() > 1 ? args[1] : "helper";
  const std::string variant_name = args.size() > 2 ? args[2] : "plain";
  const race_shape shape = shape_name == "embed"       ? race_shape::embed
                           : shape_name == "embed_gil" ? race_shape::embed_gil
                                                       : race_shape::helper;
  const race_variant variant = variant_name == "catch_all" ? race_variant::catch_all
                               : variant_name == "noexcept" ? race_variant::noexcept_fn
                                                            : race_variant::plain;
  std::mt19937 rng(seed);
  const int delay_us = std::uniform_int_distribution<int>(0, 20000)(rng);

  std::unique_ptr<pyattach::interpreter> py;
  PyThreadState* main_state = nullptr;
  if (shape == race_shape::helper) {
    py = std::make_unique<pyattach::interpreter>();
  } else {
    Py_InitializeEx(0);
    CHILD_CHECK(pyattach::bind() == pyattach::gate_phase::open);
    if (shape == race_shape::embed) main_state = PyEval_SaveThread();
  }
  thread_tally t;
  std::vector<std::thread> threads =
      start_threads(k_threads, [&] { race_thread_body(t, variant); });
  if (shape == race_shape::embed_gil) {
    // Main keeps the GIL and runs bytecode: the threads get it only at switch intervals.
    const std::string busy = "import time\n_end = time.monotonic() + " +
                             std::to_string(delay_us / 1e6) +
                             "\nwhile time.monotonic() < _end: pass\n";
    CHILD_CHECK(PyRun_SimpleString(busy.c_str()) == 0);
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  }
  const auto fin_start = std::chrono::steady_clock::now();
  if (shape == race_shape::helper) {
    py.reset();  // Py_FinalizeEx while the threads keep attaching
  } else {
    if (main_state != nullptr) PyEval_RestoreThread(main_state);
    CHILD_CHECK(Py_FinalizeEx() == 0);
  }
  const double fin_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - fin_start).count();
  for (auto& th : threads) th.join();

  // Each thread loops until refused, so each must end with exactly one refusal, normally.
  CHILD_CHECK(t.forced_unwind.load() == 0);
  CHILD_CHECK(t.reached_end.load() == k_threads);
  CHILD_CHECK(t.bad_status.load() == 0);
  CHILD_CHECK(t.refused_finalizing.load() + t.refused_finalized.load() == k_threads);
  CHILD_CHECK(t.python_errors.load() == 0);
  CHILD_CHECK(t.lost_reattach.load() == 0);
  CHILD_CHECK(pyattach::try_attach().status() == attach_status::finalized);
  t.print_result("delay_us=" + std::to_string(delay_us) + " finalize_ms=" + one_decimal(fin_ms));
  return child_exit_code();
}

// ---- 1b. the same race through the raw C API: the positive control of the checks above -------
// args: run index (the delay seed). The classic per-call PyGILState_Ensure/Release loop, with no
// gate, racing a hand-written Py_FinalizeEx. What CPython does to a thread that attaches while it
// finalizes is exactly what test 1 must never see: pthread_exit (3.9–3.12, 3.13.0: counted here
// through abi::__forced_unwind), a hang (3.13.1+, 3.14: the harness's deadline), or a crash. The
// parent requires that some run shows one of them, so the counting in test 1 is known to work.

CHILD_CASE(stress_finalize_race_raw) {
  constexpr int k_threads = 8;
  std::mt19937 rng(static_cast<unsigned>(arg_long(args, 0, 0)));
  const int delay_us = std::uniform_int_distribution<int>(0, 20000)(rng);

  Py_InitializeEx(0);
  PyThreadState* main_state = PyEval_SaveThread();  // let the threads take the GIL
  std::atomic<bool> stop{false};
  thread_tally t;
  std::vector<std::thread> threads = start_threads(k_threads, [&] {
    try {
      while (!stop.load()) {
        // The raw pattern: nothing tells this thread that the interpreter is going away.
        const PyGILState_STATE g = PyGILState_Ensure();
        if (PyRun_SimpleString(k_race_code) != 0) t.python_errors.fetch_add(1);
        PyGILState_Release(g);
        t.scopes.fetch_add(1);
      }
    } catch (abi::__forced_unwind&) {
      t.forced_unwind.fetch_add(1);  // CPython ended this thread inside PyGILState_Ensure
      throw;
    }
    t.reached_end.fetch_add(1);
  });
  std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
  PyEval_RestoreThread(main_state);
  const int fin = Py_FinalizeEx();
  stop.store(true);
  for (auto& th : threads) th.join();
  t.print_result("delay_us=" + std::to_string(delay_us) + " finalize_rc=" + std::to_string(fin));
  return 0;
}

// ---- 2. many short-lived threads --------------------------------------------------------------
// args: number of threads. Each attaches once (a new state), runs Python, exits (state destroyed).

CHILD_CASE(stress_short_lived_threads) {
  const long total = arg_long(args, 0, 10000);
  constexpr long k_batch = 16;
  const long checkpoint = std::min<long>(1000, total);

  pyattach::interpreter py;
  std::size_t base_states = 0;
  long base_active = -1;
  {
    pyattach::attach_scope s;
    CHILD_CHECK(PyRun_SimpleString("import threading\n_tl = threading.local()\n") == 0);
    PyObject* g = new_globals();
    base_active = py_eval_long("len(__import__('threading')._active)", g);
    Py_DECREF(g);
  }
  base_states = thread_states();
  CHILD_CHECK(base_states != static_cast<std::size_t>(-1));

  std::atomic<long> ok{0}, refused{0}, python_errors{0};
  auto one_thread = [&] {
    auto s = pyattach::try_attach();
    if (!s) {
      refused.fetch_add(1);
      return;
    }
    // current_thread() makes a _DummyThread entry (<= 3.12 keeps it unless pyattach drops it);
    // the threading.local attribute lives in this thread's state: both must go at thread exit.
    if (PyRun_SimpleString("threading.current_thread()\n_tl.v = [0] * 16\n") != 0) {
      python_errors.fetch_add(1);
    }
    ok.fetch_add(1);
  };

  const auto start = std::chrono::steady_clock::now();
  std::size_t rss_checkpoint = 0;
  std::size_t states_checkpoint = 0;
  for (long done = 0; done < total;) {
    const long n = std::min(k_batch, total - done);
    std::vector<std::thread> batch;
    batch.reserve(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) batch.emplace_back(one_thread);
    for (auto& th : batch) th.join();  // join returns after the thread's exit clean-up ran
    done += n;
    if (rss_checkpoint == 0 && done >= checkpoint) {
      rss_checkpoint = rss_bytes();
      states_checkpoint = thread_states();
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::size_t rss_end = rss_bytes();
  const std::size_t end_states = thread_states();
  long end_active = -2;
  {
    pyattach::attach_scope s;
    PyObject* g = new_globals();
    end_active = py_eval_long("len(__import__('threading')._active)", g);
    Py_DECREF(g);
  }
  const long growth_kib =
      (static_cast<long>(rss_end) - static_cast<long>(rss_checkpoint)) / 1024;

  CHILD_CHECK(ok.load() == total);
  CHILD_CHECK(refused.load() == 0);
  CHILD_CHECK(python_errors.load() == 0);
  // Each thread's state is destroyed when it exits: nothing accumulates in the interpreter.
  CHILD_CHECK(states_checkpoint == base_states);
  CHILD_CHECK(end_states == base_states);
  // No stale threading._DummyThread entries (docs: <= 3.12 would keep one per ident forever).
  CHILD_CHECK(end_active == base_active);
  // Memory: per-thread leaks of even ~1 KiB would show as ~9 MiB over the last 9,000 threads.
  if (!k_sanitized) CHILD_CHECK(growth_kib < 8 * 1024);
  std::printf("RESULT threads=%ld seconds=%.2f rss_after_%ld_kib=%zu rss_after_all_kib=%zu "
              "growth_kib=%ld thread_states_base=%zu thread_states_end=%zu "
              "threading_active_base=%ld threading_active_end=%ld rss_checked=%d\n",
              total, secs, checkpoint, rss_checkpoint / 1024, rss_end / 1024, growth_kib,
              base_states, end_states, base_active, end_active, k_sanitized ? 0 : 1);
  return child_exit_code();
}

// ---- 3. threads that outlive the interpreter ------------------------------------------------
// args[0]:
//   detached        threads attach, run Python, leave their scope (state kept), wait; the main
//                   thread finalizes; they try to attach (finalized) and exit.
//   detached_reinit as detached, but a second interpreter is running when they try and exit:
//                   their first-generation states must be forgotten, not destroyed in it.
//   inside_detach   threads are inside a detach_scope nested in an attach_scope when the main
//                   thread finalizes (the gate's close times out waiting for them); then they
//                   leave both scopes, try to attach (finalized) and exit.
//   inside_detach_racing  as inside_detach, but the threads leave as soon as the gate reads
//                   closed: while Py_FinalizeEx is still tearing the runtime down, or just after.
// The parent runs these with PYTHONMALLOC=malloc_debug: CPython's debug hooks fill freed memory
// (thread states included) with 0xDD, so touching a freed state crashes on every build, not only
// where a sanitizer sees it (AddressSanitizer does not check accesses made inside libpython).

CHILD_CASE(stress_threads_outlive_interpreter) {
  const std::string mode = args.empty() ? "detached" : args[0];
  const bool racing = mode == "inside_detach_racing";
  const bool inside_detach = mode == "inside_detach" || racing;
  const bool reinit = mode == "detached_reinit";
  if (!inside_detach && !reinit && mode != "detached") {
    std::printf("unknown mode %s\n", mode.c_str());
    return 2;
  }
  constexpr int k_threads = 6;
  constexpr auto k_close_timeout = std::chrono::milliseconds(200);

  pyattach::interpreter::options opts;
  opts.close_timeout = k_close_timeout;  // inside_detach: the close gives up on the threads
  auto py = std::make_unique<pyattach::interpreter>(opts);
  const std::size_t base_states = thread_states();

  std::atomic<int> ready{0};
  latch interpreter_gone;  // set once the interpreter is destroyed (and, with reinit, replaced)
  std::atomic<long> python_ok{0}, forced_unwind{0}, reached_end{0}, bad_after{0};
  std::atomic<long> attached_after{0}, release_destroyed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < k_threads; ++i) {
    threads.emplace_back([&, i] {
      try {
        {
          pyattach::attach_scope s;
          // Give the state content that lives in it: a name, threading.local data, a frame.
          const std::string code = "import threading\n"
                                   "threading.current_thread().name = 'outliver-" +
                                   std::to_string(i) +
                                   "'\n"
                                   "if '_tl' not in globals(): _tl = threading.local()\n"
                                   "_tl.data = list(range(100))\n";
          if (PyRun_SimpleString(code.c_str()) == 0) python_ok.fetch_add(1);
          if (inside_detach) {
            pyattach::detach_scope nogil;  // holds the gate pass, not the GIL
            ready.fetch_add(1);
            if (racing) {
              // Leave as soon as the closer gave up on us: finalization is (about to be) under way.
              const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(30);
              // (After Py_FinalizeEx the gate reads unbound: stop waiting then too.)
              for (;;) {
                const pyattach::gate_phase ph = pyattach::current_gate_phase();
                if (ph != pyattach::gate_phase::open && ph != pyattach::gate_phase::closing) break;
                if (std::chrono::steady_clock::now() >= limit) break;
                std::this_thread::sleep_for(std::chrono::microseconds(50));
              }
            } else {
              interpreter_gone.wait(std::chrono::seconds(30));
            }
            // Leaving: the state this scope would re-attach is being or was freed by
            // Py_FinalizeEx: the re-attach must be skipped (taking the GIL now would end the
            // thread with pthread_exit, hang it, or use freed memory). reattach() says so
            // (the destructor would park the thread: tests/cpp/test_exit.cpp).
            if (nogil.reattach() || pyattach::is_attached()) attached_after.fetch_add(1);
          }
        }
        if (!inside_detach) {
          ready.fetch_add(1);
          interpreter_gone.wait(std::chrono::seconds(30));
        }
        // The old interpreter is gone: every attach is refused (with reinit, a new interpreter
        // is alive, so a fresh state would be made: only check the old one is not reused).
        // Racing threads may still see the finalization in progress (finalizing).
        const auto acceptable = [&](attach_status st) {
          return st == attach_status::finalized || (racing && st == attach_status::finalizing);
        };
        if (!reinit) {
          auto again = pyattach::try_attach();
          if (!acceptable(again.status())) {
            std::printf("attach after finalize: %s\n", pyattach::to_string(again.status()));
            bad_after.fetch_add(1);
          }
          try {
            pyattach::attach_scope thrown;
            bad_after.fetch_add(1);
          } catch (const pyattach::attach_error& e) {
            if (!acceptable(e.status())) bad_after.fetch_add(1);
          }
          if (pyattach::release_thread_state()) release_destroyed.fetch_add(1);
        }
      } catch (abi::__forced_unwind&) {
        forced_unwind.fetch_add(1);
        throw;
      }
      reached_end.fetch_add(1);
      // Thread exit: the clean-up must only forget the freed state.
    });
  }
  while (ready.load() < k_threads) std::this_thread::yield();
  CHILD_CHECK(thread_states() == base_states + k_threads);

  const auto fin_start = std::chrono::steady_clock::now();
  py.reset();
  const auto fin_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - fin_start)
                          .count();
  CHILD_CHECK(pyattach::try_attach().status() == attach_status::finalized);
  if (inside_detach) {
    // The closer waited for the passes the detached threads hold, then gave up (by design).
    CHILD_CHECK(fin_ms >= k_close_timeout.count());
  }

  std::size_t reinit_states = 0;
  if (reinit) {
    py = std::make_unique<pyattach::interpreter>(opts);
    reinit_states = thread_states();
  }
  interpreter_gone.set();
  for (auto& th : threads) th.join();
  const double exit_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - fin_start).count();

  if (reinit) {
    // The exited threads never attached in the new interpreter: its thread states are untouched.
    CHILD_CHECK(thread_states() == reinit_states);
    CHILD_CHECK(other_thread_can_run_python());
    py.reset();
  }
  CHILD_CHECK(python_ok.load() == k_threads);
  CHILD_CHECK(forced_unwind.load() == 0);
  CHILD_CHECK(reached_end.load() == k_threads);
  CHILD_CHECK(bad_after.load() == 0);
  CHILD_CHECK(attached_after.load() == 0);
  CHILD_CHECK(release_destroyed.load() == 0);  // the old state is only forgotten
  std::printf("RESULT mode=%s finalize_ms=%lld all_exited_ms=%.1f python_ok=%ld pthread_exit=%ld "
              "reached_end=%ld bad_after=%ld\n",
              mode.c_str(), static_cast<long long>(fin_ms), exit_ms, python_ok.load(),
              forced_unwind.load(), reached_end.load(), bad_after.load());
  return child_exit_code();
}

// ---- 4. embed/finalize cycles with threads racing every finalize ----------------------------
// args: number of cycles. Like CPython's test_concurrent_finalization_stress: 4 threads each do
// up to 1,000 attach / tiny Python / detach cycles; the interpreter is destroyed while they run.

CHILD_CASE(stress_embed_finalize_cycles) {
  const long cycles = arg_long(args, 0, 50);
  const unsigned seed = static_cast<unsigned>(arg_long(args, 1, 0));
  constexpr int k_threads = 4;
  constexpr long k_iterations = 1000;
  std::mt19937 rng(seed);

  thread_tally total;
  long raced_cycles = 0;  // cycles in which at least one thread was refused
  std::uint64_t last_gen = pyattach::current_generation();
  for (long c = 0; c < cycles; ++c) {
    const int delay_us = std::uniform_int_distribution<int>(0, 3000)(rng);
    auto py = std::make_unique<pyattach::interpreter>();
    // A new Py_Initialize is a new gate generation: old slots are known to be stale.
    CHILD_CHECK(pyattach::current_generation() > last_gen);
    last_gen = pyattach::current_generation();
    thread_tally t;
    std::vector<std::thread> threads = start_threads(k_threads, [&] {
      attach_until_refused(t, k_iterations, "_n = 1 + 1\n", /*with_detach=*/false);
    });
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    py.reset();
    for (auto& th : threads) th.join();

    const long refused = t.refused_finalizing.load() + t.refused_finalized.load();
    if (refused > 0) ++raced_cycles;
    // Every thread either finished its iterations or was refused once, and ended normally.
    CHILD_CHECK(t.forced_unwind.load() == 0);
    CHILD_CHECK(t.reached_end.load() == k_threads);
    CHILD_CHECK(t.bad_status.load() == 0);
    CHILD_CHECK(refused + t.completed.load() == k_threads);
    CHILD_CHECK(t.python_errors.load() == 0);
    total.add(t);
    if (child_failures() != 0) {
      std::printf("cycle %ld failed (delay %d us)\n", c, delay_us);
      break;
    }
  }
  CHILD_CHECK(pyattach::try_attach().status() == attach_status::finalized);
  total.print_result("cycles=" + std::to_string(cycles) + " raced_cycles=" +
                     std::to_string(raced_cycles));
  return child_exit_code();
}

// ---- the tests ------------------------------------------------------------------------------

USES_CHILD_CASE(stress_finalize_race);
USES_CHILD_CASE(stress_finalize_race_raw);
USES_CHILD_CASE(stress_short_lived_threads);
USES_CHILD_CASE(stress_threads_outlive_interpreter);
USES_CHILD_CASE(stress_embed_finalize_cycles);

namespace {
constexpr auto k_child_deadline = std::chrono::seconds(60);

// A stress child's options: the stress deadline, `args`, and CPython's debug allocator hooks.
child_options stress_options(std::vector<std::string> args) {
  child_options o = child_args(std::move(args));
  o.timeout = k_child_deadline;
  o.env = k_debug_allocator;
  return o;
}
}  // namespace

// Runs the finalize race `runs` times in one shape and variant, 3 children at a time, and fails
// on any hang, crash, abort, pthread_exit or refusal status other than finalizing/finalized.
namespace {
void finalize_race_many_runs(long runs, const std::string& shape, const std::string& variant,
                             bool fenced = false) {
  const long seed_base = env_long("PYATTACH_STRESS_SEED", 0);
  constexpr int k_parallel = 3;

  std::mutex m;
  long next = 0, done = 0, hangs = 0, crashes = 0, failed_checks = 0;
  long pthread_exits = 0, refused_finalizing = 0, refused_finalized = 0, attached_ok = 0,
       bad_status = 0, python_errors = 0, lost_reattach = 0;
  double slowest = 0;
  std::vector<std::string> failures;  // the first few, in full
  bool stop = false;

  const auto start = std::chrono::steady_clock::now();
  auto worker_fn = [&] {
    for (;;) {
      long index;
      {
        std::lock_guard<std::mutex> g(m);
        if (stop || next >= runs) return;
        index = next++;
      }
      child_options o = stress_options({std::to_string(index + seed_base), shape, variant});
      // The gate's other ordering mode: no membarrier, a fence in every attach (detail/slot.hpp).
      if (fenced) o.env.emplace_back("PYATTACH_MEMBARRIER", "off");
      const child_result r = run_child(uses_stress_finalize_race, o);
      std::lock_guard<std::mutex> g(m);
      ++done;
      slowest = std::max(slowest, r.seconds);
      const bool hang = r.timed_out;
      const bool crash = !hang && (r.term_signal != 0 || !r.started);
      const bool check = r.out.find("CHILD-FAIL") != std::string::npos ||
                         (!hang && !crash && r.exit_code != 0) ||
                         r.out.find("RESULT ") == std::string::npos;
      hangs += hang;
      crashes += crash;
      failed_checks += (!hang && !crash && check);
      // Counts from the child's own tally (absent fields: -1, which fails the sums below).
      const long pe = result_field(r.out, "pthread_exit");
      pthread_exits += std::max(0L, pe);
      refused_finalizing += std::max(0L, result_field(r.out, "refused_finalizing"));
      refused_finalized += std::max(0L, result_field(r.out, "refused_finalized"));
      attached_ok += std::max(0L, result_field(r.out, "attached_ok"));
      bad_status += std::max(0L, result_field(r.out, "bad_status"));
      python_errors += std::max(0L, result_field(r.out, "python_errors"));
      lost_reattach += std::max(0L, result_field(r.out, "lost_reattach"));
      if ((hang || crash || check || pe != 0) && failures.size() < 3) {
        failures.push_back("run " + std::to_string(index) + ": " + r.describe());
      }
      // A hang costs a whole deadline: stop scheduling so the test ends within its CTest TIMEOUT.
      if (hang) stop = true;
    }
  };
  std::vector<std::thread> workers;
  for (int i = 0; i < k_parallel; ++i) workers.emplace_back(worker_fn);
  for (auto& w : workers) w.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::printf("STRESS finalize_race shape=%s variant=%s runs=%ld requested=%ld hangs=%ld crashes=%ld failed_checks=%ld "
              "pthread_exit=%ld bad_status=%ld python_errors=%ld lost_reattach=%ld "
              "refused_finalizing=%ld refused_finalized=%ld attached_ok=%ld seconds=%s "
              "slowest_child=%s\n",
              shape.c_str(), variant.c_str(), done, runs, hangs, crashes, failed_checks, pthread_exits, bad_status, python_errors,
              lost_reattach, refused_finalizing, refused_finalized, attached_ok,
              one_decimal(secs).c_str(), one_decimal(slowest).c_str());
  std::fflush(stdout);
  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_EQ(done, runs);
  EXPECT_EQ(hangs, 0);
  EXPECT_EQ(crashes, 0);
  EXPECT_EQ(failed_checks, 0);
  EXPECT_EQ(pthread_exits, 0);
  EXPECT_EQ(bad_status, 0);
  EXPECT_EQ(python_errors, 0);
  EXPECT_EQ(lost_reattach, 0);
  // 8 threads per run, each refused exactly once.
  EXPECT_EQ(refused_finalizing + refused_finalized, 8 * done);
}
}  // namespace

TEST(Stress, FinalizeRaceManyRuns) {
  finalize_race_many_runs(env_long("PYATTACH_STRESS_RUNS", size_default(100, 30)), "helper",
                          "plain");
}

// The same race with the inline attach off (PYATTACH_MEMBARRIER=off: what a kernel without
// membarrier gets), so that both orderings of "take a pass, then read the gate" are raced.
// A fifth of PYATTACH_STRESS_RUNS.
TEST(Stress, FinalizeRaceFencedRuns) {
  finalize_race_many_runs(std::max(1L, env_long("PYATTACH_STRESS_RUNS", size_default(100, 30)) / 5),
                          "helper", "plain", /*fenced=*/true);
}

// The same race when the program initializes and finalizes CPython itself and binds pyattach
// with pyattach::bind() (before binding was required: 5 aborts in 2,330 runs, and 80 of 80
// aborted when the main thread kept the GIL), and with loops whose frames turn a
// pthread_exit into an abort. A fifth of PYATTACH_STRESS_RUNS per shape and variant.
class FinalizeRaceShapes
    : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

TEST_P(FinalizeRaceShapes, RefusedNeverKilled) {
  const long runs = std::max(1L, env_long("PYATTACH_STRESS_RUNS", size_default(100, 30)) / 5);
  finalize_race_many_runs(runs, std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(
    Stress, FinalizeRaceShapes,
    ::testing::Combine(::testing::Values("helper", "embed", "embed_gil"),
                       ::testing::Values("plain", "catch_all", "noexcept")),
    [](const ::testing::TestParamInfo<FinalizeRaceShapes::ParamType>& info) {
      return std::string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
    });

// The positive control of FinalizeRaceManyRuns: the same race through the raw API must show, in
// at least one of a few runs, what that test counts as failure (when the gate was prototyped
// here, 96% of such threads were ended by pthread_exit on 3.9–3.13, and 41 of 700 runs
// crashed). If this ever passes with
// no failure seen, the race no longer races, and FinalizeRaceManyRuns proves nothing.
TEST(Stress, RawApiFailsTheSameRace) {
  constexpr long k_max_runs = 6;
  long runs = 0, failing = 0, pthread_exits = 0, hangs = 0, crashes = 0;
  std::string first;
  // Stops after two failing runs: each hang costs a whole deadline.
  for (long i = 0; i < k_max_runs && failing < 2; ++i, ++runs) {
    child_options o = stress_options({std::to_string(i)});
    // Hangs are expected here (3.13.1+ and 3.14 by design; seen on Debian 3.11.2 too, a thread
    // ended while holding an interpreter lock): keep the deadline short.
    o.timeout = std::chrono::seconds(5);
    const child_result r = run_child(uses_stress_finalize_race_raw, o);
    const long pe = result_field(r.out, "pthread_exit");
    const bool crash = !r.timed_out && (r.term_signal != 0 || r.exit_code != 0);
    hangs += r.timed_out;
    crashes += crash;
    pthread_exits += std::max(0L, pe);
    if (r.timed_out || crash || pe > 0) {
      ++failing;
      if (first.empty()) first = r.describe().substr(0, 600);
    }
  }
  std::printf("STRESS finalize_race_raw runs=%ld failing_runs=%ld pthread_exit=%ld hangs=%ld "
              "crashes=%ld\n",
              runs, failing, pthread_exits, hangs, crashes);
  std::fflush(stdout);
  EXPECT_GT(failing, 0) << "the raw API survived every race: the stress race does not race";
}

TEST(Stress, TenThousandShortLivedThreads) {
  const long threads = env_long("PYATTACH_STRESS_THREADS", size_default(10000, 2000));
  child_options o = child_args({std::to_string(threads)});
  o.timeout = k_child_deadline;
  const child_result r = run_child(uses_stress_short_lived_threads, o);
  std::printf("STRESS short_lived_threads threads=%ld rss_after_first_kib=%ld rss_after_all_kib=%ld "
              "growth_kib=%ld thread_states_base=%ld thread_states_end=%ld "
              "threading_active_base=%ld threading_active_end=%ld rss_checked=%ld seconds=%s\n",
              threads,
              result_field(r.out, "rss_after_" + std::to_string(std::min(1000L, threads)) + "_kib"),
              result_field(r.out, "rss_after_all_kib"), result_field(r.out, "growth_kib"),
              result_field(r.out, "thread_states_base"), result_field(r.out, "thread_states_end"),
              result_field(r.out, "threading_active_base"),
              result_field(r.out, "threading_active_end"), result_field(r.out, "rss_checked"),
              one_decimal(r.seconds).c_str());
  std::fflush(stdout);
  expect_clean(r);
}

namespace {
child_result run_outlive(const char* mode) {
  const child_result r = run_child(uses_stress_threads_outlive_interpreter, stress_options({mode}));
  std::printf("STRESS outlive_%s finalize_ms=%ld pthread_exit=%ld reached_end=%ld seconds=%s\n", mode,
              result_field(r.out, "finalize_ms"), result_field(r.out, "pthread_exit"),
              result_field(r.out, "reached_end"), one_decimal(r.seconds).c_str());
  std::fflush(stdout);
  return r;
}
}  // namespace

TEST(Stress, DetachedThreadsOutliveTheInterpreter) {
  const child_result r = run_outlive("detached");
  expect_clean(r);
}

TEST(Stress, DetachedThreadsExitWhileASecondInterpreterRuns) {
  const child_result r = run_outlive("detached_reinit");
  expect_clean(r);
}

TEST(Stress, ThreadsInsideDetachScopeWhenTheInterpreterFinalizes) {
  const child_result r = run_outlive("inside_detach");
  expect_clean(r);
  // The closer gave up on the threads holding passes and said so (the documented bounded wait).
  EXPECT_NE(r.err.find("gate closed after"), std::string::npos) << r.describe();
}

TEST(Stress, ThreadsLeaveDetachScopeWhileTheInterpreterFinalizes) {
  const child_result r = run_outlive("inside_detach_racing");
  expect_clean(r);
  EXPECT_NE(r.err.find("gate closed after"), std::string::npos) << r.describe();
}

TEST(Stress, EmbedFinalizeCyclesWithThreadsRacing) {
  const long cycles = env_long("PYATTACH_STRESS_CYCLES", size_default(50, 20));
  const long seed_base = env_long("PYATTACH_STRESS_SEED", 0);
  const child_result r =
      run_child(uses_stress_embed_finalize_cycles,
                stress_options({std::to_string(cycles), std::to_string(seed_base)}));
  std::printf("STRESS embed_finalize_cycles cycles=%ld raced_cycles=%ld pthread_exit=%ld "
              "refused_finalizing=%ld refused_finalized=%ld attached_ok=%ld seconds=%s\n",
              cycles, result_field(r.out, "raced_cycles"), result_field(r.out, "pthread_exit"),
              result_field(r.out, "refused_finalizing"), result_field(r.out, "refused_finalized"),
              result_field(r.out, "attached_ok"), one_decimal(r.seconds).c_str());
  std::fflush(stdout);
  expect_clean(r);
  EXPECT_EQ(result_field(r.out, "pthread_exit"), 0) << r.describe();
  EXPECT_EQ(result_field(r.out, "reached_end"), 4 * cycles) << r.describe();
}

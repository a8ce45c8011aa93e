// bench/attach_alternatives.cpp — pyattach against every other way a native thread runs Python,
// the same workloads over each, in one binary (pyattach_bench).
//
// What it compares and why
//   The alternatives (alternatives.hpp: per-call PyGILState, pinned PyGILState, the floor,
//   pybind11 per call and with inc_ref(), pyattach's scope, nested scope and detach scope) times
//   the workloads (workloads.hpp: empty body, one Python call, a threading.local read+write).
//   Users switch for speed and for state that persists; both are measured here, on the same
//   machine, in the same run, so every ratio is against the floor measured next to it.
//   Per iteration each run also counts the thread states CPython created after warm-up, and the
//   threading.local workload checks that the value set on the previous iteration is still there.
//
// How a measurement runs (why not on Google Benchmark's own thread)
//   Google Benchmark calls each benchmark function on the main thread, which embeds CPython
//   (pyattach::interpreter) and which PyGILState already knows. The cases users have are native
//   threads that Python never saw, so every run gets a fresh std::thread: the benchmark function
//   starts it and hands it the benchmark::State; the thread sets its alternative up, warms up,
//   waits while the main thread reads CPython's thread-state id counter, then runs the State loop
//   itself (Google Benchmark's timer reads real time and the calling thread's CPU clock, so both
//   belong to the native thread), tears down and exits; the main thread joins it and reads the
//   counter again. A fresh thread per run means no alternative inherits another's thread state
//   (a pinned or pyattach state would turn the next per-call PyGILState run into a counter
//   increment). Thread start, warm-up and join are outside the timed loop.
//
// Modes
//   pyattach_bench [Google Benchmark flags]     wall time: attach/<alternative>/<workload>,
//                                               handoff/<alternative> and contend/<alternative>,
//                                               with min and max aggregates
//   pyattach_bench --callgrind N [LABEL...]     N iterations of each attach/<alt>/<workload>
//                                               (default: every alternative on empty and call),
//                                               instrumented only around the loop: run under
//                                               valgrind --tool=callgrind --instr-atstart=no; one
//                                               dump per label (CALLGRIND_DUMP_STATS_AT)
//   pyattach_bench --smoke                      CI: every benchmark for a few iterations and the
//                                               counted mode for 10; exits 1 if any run failed
//                                               (never on timings)
#include <valgrind/callgrind.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define PYATTACH_BENCH_HAS_TSC 1
#else
#define PYATTACH_BENCH_HAS_TSC 0
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "alternatives.hpp"
#include "harness.hpp"
#include "workloads.hpp"

namespace bench {
namespace {

struct options {
  bool smoke = false;
  bool counted = false;            // --callgrind
  std::uint64_t counted_iterations = 20000;
  std::vector<std::string> labels;  // --callgrind's selection; empty: the default set
  int warmup = 200;                 // iterations (or hand-off rounds) before measuring
};

options g_options;
python_objects g_py;

// What one run on a native thread observed.
struct run_outcome {
  std::string error;               // empty: the run is valid
  std::uint64_t states_created = 0;  // thread states created after warm-up, any thread
  double kept = -1;                // local workload: share of iterations that found the value
};

// Checks a keeps_state alternative's claims; returns the error text or "".
template <class Alt>
std::string check_claims(const run_outcome& out, std::uint64_t lost) {
  if (!Alt::keeps_state) return {};
  if (lost > 0) {
    return std::string(Alt::name) + ": threading.local value lost in " + std::to_string(lost) +
           " iterations, but this alternative keeps one thread state";
  }
  if (out.states_created > 0) {
    return std::string(Alt::name) + ": " + std::to_string(out.states_created) +
           " thread states created after warm-up, but this alternative keeps one";
  }
  return {};
}

// The benchmark's thread's part of a run on native threads, once they are warm and detached: the
// thread-state probe, the start signal, the joins (in this order). Returns the thread states
// created in between (the second probe's own not counted).
template <class... Threads>
std::uint64_t start_and_join(latch& go, Threads&... threads) {
  const std::uint64_t before = probe_state_id();
  go.count_down();
  (threads.join(), ...);
  return probe_state_id() - before - 1;
}

void count_states(benchmark::State& state, std::uint64_t created) {
  state.counters["states_per_iter"] =
      benchmark::Counter(static_cast<double>(created), benchmark::Counter::kAvgIterations);
}

// Runs `measured(alt, body)` on a fresh native thread, after thread_begin, a warm-up batch and
// the thread-state probe (see the header comment for why), and returns what it observed.
template <class Alt, class Workload, class Measured>
run_outcome run_on_native_thread(Measured&& measured) {
  run_outcome out;
  std::uint64_t lost = 0;
  latch warm;
  latch go;
  std::thread worker([&] {
    try {
      Alt alt;
      Workload body(g_py);
      alt.thread_begin();
      alt.batch_begin();
      for (int i = 0; i < g_options.warmup; ++i) alt.iteration(body);
      alt.batch_end();
      body.reset_counts();
      warm.count_down();  // detached now: the main thread can take the GIL for its probe
      go.wait();
      alt.batch_begin();
      measured(alt, body);
      alt.batch_end();
      alt.thread_end();
      out.error = body.failure();
      out.kept = body.kept_fraction();
      if constexpr (std::is_same_v<Workload, local_body>) lost = body.lost();
    } catch (const std::exception& e) {
      out.error = std::string(Alt::name) + ": " + e.what();
      warm.count_down();
    }
  });
  warm.wait();
  out.states_created = start_and_join(go, worker);
  if (out.error.empty()) out.error = check_claims<Alt>(out, lost);
  return out;
}

template <class T>
struct tag {
  using type = T;
};
template <class... T>
struct type_list {};
template <class... T, class F>
void for_each(type_list<T...>, F&& f) {
  (f(tag<T>{}), ...);
}

#if PYATTACH_HAS_PEP788_API
using all_alternatives =
    type_list<gilstate_per_call, gilstate_pinned, floor_state, floor_pep788, pybind11_per_call,
              pybind11_inc_ref, pyattach_scope, pyattach_metrics, pyattach_traced,
              pyattach_nested, pyattach_detach, body_only>;
#else
using all_alternatives =
    type_list<gilstate_per_call, gilstate_pinned, floor_state, pybind11_per_call,
              pybind11_inc_ref, pyattach_scope, pyattach_metrics, pyattach_traced,
              pyattach_nested, pyattach_detach, body_only>;
#endif
using all_workloads = type_list<empty_body, call_body, local_body>;
using counted_workloads = type_list<empty_body, call_body>;  // the callgrind default
// The hand-off runs attach per call on two threads; nested, detach and body_only hold the GIL
// across calls by design, and the pinned/pybind11 variants add nothing the floor does not show.
using handoff_alternatives = type_list<gilstate_per_call, floor_state, pyattach_scope>;
// The contention case: pyattach against the floor, both threads attaching at once.
using contend_alternatives = type_list<floor_state, pyattach_scope>;

template <class Alt, class Workload>
std::string label_of() {
  return std::string("attach/") + Alt::name + "/" + Workload::name;
}

// ---- wall time -------------------------------------------------------------------------------

template <class Alt, class Workload>
void bm_attach(benchmark::State& state) {
  const run_outcome out = run_on_native_thread<Alt, Workload>([&](Alt& alt, Workload& body) {
    for (auto _ : state) alt.iteration(body);
  });
  count_states(state, out.states_created);
  if (out.kept >= 0) state.counters["kept"] = out.kept;
  if (!out.error.empty()) {
    fail(label_of<Alt, Workload>() + ": " + out.error);
    state.SkipWithError(out.error.c_str());
  }
}

// Thread A of a two-thread run (the State loop's) threw: keeps why, tells thread B to stop, and
// counts `warmed` down if A had not yet (so that the benchmark's thread does not wait for ever).
void measured_failed(const std::exception& e, std::string& error, std::atomic<bool>& broken,
                     std::atomic<bool>& stop, latch* warmed) {
  error = e.what();
  broken.store(true);
  stop.store(true);
  if (warmed != nullptr) warmed->count_down();
}

// The end of a two-thread run, on the benchmark's thread once both have been joined: the states
// counter, then the first error (A's, B's, or the claim of one kept state that `created` broke)
// fails the benchmark.
template <class Alt>
void report_pair(benchmark::State& state, const char* kind, std::uint64_t created,
                 const std::string& error_a, const std::string& error_b) {
  count_states(state, created);
  run_outcome out;
  out.states_created = created;
  std::string error = !error_a.empty() ? error_a : !error_b.empty() ? error_b
                                                                     : check_claims<Alt>(out, 0);
  if (!error.empty()) {
    fail(kind + std::string(Alt::name) + ": " + error);
    if (!state.error_occurred()) state.SkipWithError(error.c_str());
  }
}

// Runs `work(alt, body)` on the calling thread with a new alternative (thread_begin before,
// thread_end after) and body; returns the body's failure text ("" if none).
template <class Alt, class Body, class Work>
std::string on_this_thread(Work&& work) {
  Alt alt;
  Body body(g_py);
  alt.thread_begin();
  work(alt, body);
  alt.thread_end();
  return body.failure();
}

// Two native threads take turns: each waits (detached) for its turn, attaches, calls Python,
// passes the turn while still attached and then detaches, so the other thread's attach usually
// waits for this thread's GIL release: the GIL changes hands twice per iteration. The State
// loop runs on thread A (one iteration = one round: A's call, then B's).
template <class Alt>
void bm_handoff(benchmark::State& state) {
  std::atomic<int> turn{0};  // 0: A's turn, 1: B's
  std::atomic<bool> stop{false};
  std::atomic<bool> broken{false};  // a thread failed: the other stops waiting
  std::string error_a, error_b;
  latch warm, go;
  auto wait_turn = [&](int me) {
    while (turn.load(std::memory_order_acquire) != me) {
      if (broken.load(std::memory_order_relaxed) || (me == 1 && stop.load())) return false;
      std::this_thread::yield();
    }
    return true;
  };
  std::thread partner([&] {
    try {
      error_b = on_this_thread<Alt, call_body>([&](Alt& alt, call_body& body) {
        auto play = [&] {
          body();
          turn.store(0, std::memory_order_release);
        };
        while (wait_turn(1)) alt.iteration(play);
      });
    } catch (const std::exception& e) {
      error_b = e.what();
      broken.store(true);
    }
  });
  std::thread measured([&] {
    bool started = false;
    try {
      error_a = on_this_thread<Alt, call_body>([&](Alt& alt, call_body& body) {
        auto play = [&] {
          body();
          turn.store(1, std::memory_order_release);
        };
        for (int i = 0; i < g_options.warmup && wait_turn(0); ++i) alt.iteration(play);
        wait_turn(0);  // B answered the last warm-up round: both threads are detached
        warm.count_down();
        go.wait();
        started = true;
        for (auto _ : state) {
          if (!wait_turn(0)) {
            state.SkipWithError("hand-off partner failed");
            break;
          }
          alt.iteration(play);
        }
        wait_turn(0);
        stop.store(true);
      });
    } catch (const std::exception& e) {
      measured_failed(e, error_a, broken, stop, started ? nullptr : &warm);
    }
  });
  warm.wait();
  report_pair<Alt>(state, "handoff/", start_and_join(go, measured, partner), error_a, error_b);
}

// The time-stamp counter: reference cycles at the TSC's fixed nominal rate (constant_tsc), not
// the core's actual clock; 0 where there is none (the report then shows only nanoseconds).
inline std::uint64_t tsc() {
#if PYATTACH_BENCH_HAS_TSC
  return __rdtsc();
#else
  return 0;
#endif
}

// Contention: two native threads attach and detach in a loop at the same
// time, the body empty, so every attach of one competes with the other's (the GIL, and whatever
// shared memory the attach path writes: pyattach's gate counter today). Thread A runs the State
// loop; thread B runs the same alternative's iteration until A is done and counts its pairs in
// a word only it writes (a relaxed store, no read-modify-write: the counting adds no contention).
// A measures a window from after B's first pair to its own last one: steady_clock and the TSC
// (__rdtsc) at both ends, B's count at both ends. Per pair = the window ÷ the pairs both threads
// completed in it: the system's cost of one attach+detach while the other thread also attaches.
// Counters (medians over repetitions in the report): ns_per_pair, tsc_per_pair, b_share (B's
// share of the pairs: how unevenly the GIL was shared), tsc_ghz (ticks per ns over the window).
// Each contending thread: make its state, warm it up, say so, then wait for the start.
template <class Alt>
void warm_then_wait(Alt& alt, empty_body& body, latch& warmed, latch& go) {
  alt.thread_begin();
  alt.batch_begin();
  for (int i = 0; i < g_options.warmup; ++i) alt.iteration(body);
  alt.batch_end();
  warmed.count_down();
  go.wait();
}

template <class Alt>
void bm_contend(benchmark::State& state) {
  struct alignas(64) padded_count {
    std::atomic<std::uint64_t> n{0};
  };
  padded_count b_pairs;
  std::atomic<bool> b_running{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> broken{false};
  std::string error_a, error_b;
  latch warm_a, warm_b, go;
  std::thread partner([&] {
    try {
      Alt alt;
      empty_body body(g_py);
      warm_then_wait(alt, body, warm_b, go);
      alt.batch_begin();
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        alt.iteration(body);
        b_pairs.n.store(++n, std::memory_order_relaxed);
        if (n == 1) b_running.store(true, std::memory_order_release);
      }
      alt.batch_end();
      alt.thread_end();
      error_b = body.failure();
    } catch (const std::exception& e) {
      error_b = e.what();
      broken.store(true);
      warm_b.count_down();
    }
  });
  std::uint64_t pairs = 0, ticks = 0;
  double ns = 0;
  std::thread measured([&] {
    bool started = false;
    try {
      Alt alt;
      empty_body body(g_py);
      warm_then_wait(alt, body, warm_a, go);
      started = true;
      while (!b_running.load(std::memory_order_acquire) && !broken.load()) std::this_thread::yield();
      alt.batch_begin();
      const std::uint64_t b0 = b_pairs.n.load(std::memory_order_relaxed);
      const auto t0 = std::chrono::steady_clock::now();
      const std::uint64_t c0 = tsc();
      std::uint64_t a = 0;
      for (auto _ : state) {
        alt.iteration(body);
        ++a;
      }
      const std::uint64_t c1 = tsc();
      const auto t1 = std::chrono::steady_clock::now();
      const std::uint64_t b1 = b_pairs.n.load(std::memory_order_relaxed);
      stop.store(true);
      alt.batch_end();
      alt.thread_end();
      pairs = a + (b1 - b0);
      ticks = c1 - c0;
      ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
      state.counters["b_share"] = pairs ? static_cast<double>(b1 - b0) / pairs : 0;
      error_a = body.failure();
    } catch (const std::exception& e) {
      measured_failed(e, error_a, broken, stop, started ? nullptr : &warm_a);
    }
  });
  warm_a.wait();
  warm_b.wait();
  const std::uint64_t created = start_and_join(go, measured, partner);  // both are detached here
  if (pairs > 0) {
    state.counters["pairs"] = static_cast<double>(pairs);
    state.counters["ns_per_pair"] = ns / static_cast<double>(pairs);
    if (ticks > 0) {
      state.counters["tsc_per_pair"] = static_cast<double>(ticks) / static_cast<double>(pairs);
      state.counters["tsc_ghz"] = ns > 0 ? static_cast<double>(ticks) / ns : 0;
    }
  }
  report_pair<Alt>(state, "contend/", created, error_a, error_b);
}

void configure(benchmark::internal::Benchmark* b) {
  with_min_max(b->UseRealTime()->Unit(benchmark::kNanosecond));
  if (g_options.smoke) b->Iterations(20);
}

void register_benchmarks() {
  for_each(all_workloads{}, [](auto w) {
    using W = typename decltype(w)::type;
    for_each(all_alternatives{}, [](auto a) {
      using A = typename decltype(a)::type;
      configure(benchmark::RegisterBenchmark(label_of<A, W>().c_str(), bm_attach<A, W>));
    });
  });
  for_each(handoff_alternatives{}, [](auto a) {
    using A = typename decltype(a)::type;
    configure(benchmark::RegisterBenchmark((std::string("handoff/") + A::name).c_str(),
                                           bm_handoff<A>));
  });
  for_each(contend_alternatives{}, [](auto a) {
    using A = typename decltype(a)::type;
    auto* b = benchmark::RegisterBenchmark((std::string("contend/") + A::name).c_str(),
                                           bm_contend<A>);
    configure(b);
    // A window of at least 0.2 s per repetition: CPython hands the GIL to a waiting thread only
    // every switch interval (5 ms), so a shorter window holds too few hand-overs to compare.
    if (!g_options.smoke) b->MinTime(0.2);
  });
}

// ---- instruction counts (callgrind) ----------------------------------------------------------

template <class Alt, class Workload>
void run_counted(std::uint64_t n) {
  const std::string label = label_of<Alt, Workload>();
  const run_outcome out = run_on_native_thread<Alt, Workload>([&](Alt& alt, Workload& body) {
    // Collect only around the loop: instrumentation on, counters zeroed, the loop, off, one dump
    // named after the label. Nothing in here is divided out later: the loop's own increment and
    // branch are part of every figure (body_only/empty shows how much that is).
    CALLGRIND_START_INSTRUMENTATION;
    CALLGRIND_ZERO_STATS;
    for (std::uint64_t i = 0; i < n; ++i) alt.iteration(body);
    CALLGRIND_STOP_INSTRUMENTATION;
    CALLGRIND_DUMP_STATS_AT(label.c_str());
  });
  std::printf("counted\t%s\t%llu\t%llu\t%s\t%s\n", label.c_str(),
              static_cast<unsigned long long>(n),
              static_cast<unsigned long long>(out.states_created),
              out.kept < 0 ? "-" : std::to_string(out.kept).c_str(),
              out.error.empty() ? "ok" : out.error.c_str());
  std::fflush(stdout);
  if (!out.error.empty()) fail(label + ": " + out.error);
}

bool selected(const std::string& label) {
  if (g_options.labels.empty()) return true;
  for (const std::string& l : g_options.labels) {
    if (l == label) return true;
  }
  return false;
}

void run_counted_all(std::uint64_t n) {
  if (!RUNNING_ON_VALGRIND) {
    std::fprintf(stderr, "pyattach_bench: not running under valgrind: loops run, nothing is "
                         "counted (valgrind --tool=callgrind --instr-atstart=no ...)\n");
  }
  std::printf("counted\tlabel\titerations\tstates_created\tkept\tstatus\n");
  const auto each = [n](auto workloads) {
    for_each(workloads, [n](auto w) {
      using W = typename decltype(w)::type;
      for_each(all_alternatives{}, [n](auto a) {
        using A = typename decltype(a)::type;
        if (selected(label_of<A, W>())) run_counted<A, W>(n);
      });
    });
  };
  if (g_options.labels.empty()) {
    each(counted_workloads{});
  } else {
    each(all_workloads{});
  }
}

// ---- set-up ----------------------------------------------------------------------------------

// PRECONDITION: attached (the main thread, inside PyGILState_Ensure).
bool make_python_objects() {
  g_py.globals = run_in_namespace(
      "import threading\n"
      "def noop():\n"
      "    return None\n"
      "local = threading.local()\n"
      "tokens = (object(), object())\n");
  if (g_py.globals == nullptr) return false;
  // Borrowed from globals, which lives until the end: every benchmark thread is joined by then.
  g_py.noop = PyDict_GetItemString(g_py.globals, "noop");
  g_py.local = PyDict_GetItemString(g_py.globals, "local");
  PyObject* tokens = PyDict_GetItemString(g_py.globals, "tokens");
  g_py.attr = PyUnicode_InternFromString("value");
  if (g_py.noop == nullptr || g_py.local == nullptr || tokens == nullptr || g_py.attr == nullptr) {
    return false;
  }
  g_py.tokens[0] = PyTuple_GET_ITEM(tokens, 0);
  g_py.tokens[1] = PyTuple_GET_ITEM(tokens, 1);
  // pybind11's internals (its TLS key for thread states) are made once, attached, here: the
  // benchmark threads then only look them up.
  (void)pybind11::detail::get_internals();
  return true;
}

// Removes this binary's own flags from argv (Google Benchmark rejects unknown ones).
bool parse_options(int& argc, char** argv) {
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      g_options.smoke = true;
      g_options.warmup = 5;
    } else if (a == "--callgrind") {
      if (i + 1 >= argc) return false;
      g_options.counted = true;
      g_options.counted_iterations = std::strtoull(argv[++i], nullptr, 10);
      if (g_options.counted_iterations == 0) return false;
      while (i + 1 < argc && std::strncmp(argv[i + 1], "attach/", 7) == 0) {
        g_options.labels.emplace_back(argv[++i]);
      }
    } else if (a.rfind("--warmup=", 0) == 0) {
      g_options.warmup = std::atoi(a.c_str() + 9);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[argc] = nullptr;
  return true;
}

// The counted mode, or Google Benchmark's run (and, for --smoke, the counted mode after it).
bool run(int argc, char** argv) {
  if (g_options.counted) {
    run_counted_all(g_options.counted_iterations);
    return true;
  }
  const bool flags_ok = run_benchmarks(argc, argv, [] {
    benchmark::AddCustomContext("pybind11_version",
                                std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                                    std::to_string(PYBIND11_VERSION_MINOR) + "." +
                                    std::to_string(PYBIND11_VERSION_PATCH));
    register_benchmarks();
  });
  if (flags_ok && g_options.smoke) run_counted_all(10);
  return flags_ok;
}

void clear_python_objects() {
  Py_CLEAR(g_py.attr);
  Py_CLEAR(g_py.globals);
}

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
  using namespace bench;
  return run_main({"pyattach_bench", "[--smoke] [--warmup=N] [--callgrind N [LABEL...]] "
                                     "[Google Benchmark flags]",
                   parse_options, make_python_objects, run, clear_python_objects},
                  argc, argv);
}

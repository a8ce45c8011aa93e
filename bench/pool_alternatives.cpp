// bench/pool_alternatives.cpp — pyattach::thread_pool against boost::asio::thread_pool, the same
// workloads over each pool, in one binary (pyattach_pool_bench).
//
// What it compares and why
//   Ray-style services run their C++ and Python tasks on boost::asio pools; pyattach's pool must
//   not cost more than the pool it replaces, and its Python tasks must cost about what its C++
//   tasks cost (a persistent thread state per worker, attached only around the task). So, on 2
//   workers each, in the same run:
//     noop     1,000,000 C++ tasks that only count themselves
//                asio_post            boost::asio::thread_pool(2) + boost::asio::post
//                pyattach_post        pyattach::thread_pool (2 workers) + post
//                pyattach_submit      the same pool + submit, every future kept and then get()
//     python   200,000 tasks that each call a Python function returning None
//                asio_gilstate        asio + PyGILState_Ensure/Release per task (the usual code:
//                                     a thread state made and destroyed per task)
//                asio_floor           asio + one PyThreadState per asio thread (thread_local,
//                                     made on its first task), PyEval_RestoreThread/SaveThread
//                                     per task: the least any correct attach can do
//                pyattach_post_python / pyattach_submit_python
//                pyattach_post_python_unbatched: pool_options::batch_python = false (one attach
//                                     per task, as before batching)
//     latency  submit→start of one task on an idle pool (the submitter sleeps 1 ms between
//              probes): asio_post, pyattach_post (C++ tasks), asio_floor and
//              pyattach_post_python (Python tasks; the start is after the attach)
//     gilwait  another thread's wait for the GIL while the pool runs a stream of
//              Python tasks: a prober thread sleeps 1 ms detached, then times its attach, 300
//              times; asio_floor and pyattach_post_python, with tasks calling the Python function
//              (gilwait) and with tasks using the C API only (gilwait_capi: no bytecode, so
//              CPython's drop request is never honoured inside them; only the pool's own bound,
//              a batch ends after sys.getswitchinterval(), lets the prober in)
//   --callgrind N: instructions per Python task, every thread counted, for asio_floor,
//   pyattach_post_python and pyattach_submit_python (run under valgrind --tool=callgrind
//   --instr-atstart=no; one dump per row, named pool/python/<alt>)
//   Every task counts itself in a per-thread counter (its own cache line: no shared atomic to
//   bounce between the workers), so a lost or duplicated task fails the run, and the no-op is a
//   store the compiler cannot drop (the counters are read afterwards). Thread states are counted
//   with CPython's creation counter (PyThreadState_GetID of a probe state: harness.hpp's
//   probe_state_id, as in attach_alternatives.cpp): before the pool is made, after its warm-up,
//   after the measured run.
//
// How a measurement runs
//   Google Benchmark calls each benchmark on the main thread, which embeds CPython
//   (pyattach::interpreter: detached) and is the submitter. Each repetition makes a fresh pool
//   (threads started), warms it up (one task on each worker, held at a barrier until both run,
//   detached while waiting; a Python pool's workers make their thread states here), then the
//   timed loop (one iteration: submit every task, then wait for all: asio join(), pool wait(),
//   or every future's get()), then checks the counts; making and destroying the pool are outside
//   the timing. Throughput is items_per_second (tasks per wall second) per repetition.
//
// Modes
//   pyattach_pool_bench [Google Benchmark flags]  pool/noop/<alt>, pool/python/<alt>
//                                                 (repetitions: --benchmark_repetitions), and
//                                                 pool/latency/<alt> (one run of 2,000 probes)
//   pyattach_pool_bench --smoke                   CI: a few tasks and probes each; exits 1 if a
//                                                 run failed (never on timings)
//   pyattach_pool_bench --callgrind N             under callgrind: N Python tasks per row counted
//   --noop-tasks=N --python-tasks=N --probes=N    override the sizes
//   --gil-probes=N
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "pool_alternatives.hpp"

namespace bench {
namespace {

// ---- the harness -----------------------------------------------------------------------------

// One task of this alternative's kind on each worker, running the workload once: each is held at
// a latch (GIL released) until all have started, so every worker gets exactly one. Returns once
// every warm-up task has finished its workload (the pool is idle again soon after). The latches
// are shared with the tasks: a task may still be leaving one after this function returned.
template <class Alt, class Work>
void warm_up(Alt& alt) {
  auto all_started = std::make_shared<latch>(kWorkers);
  auto all_done = std::make_shared<latch>(kWorkers + 1);  // + the main thread
  for (std::size_t i = 0; i < kWorkers; ++i) {
    alt.submit([all_started, all_done] {
      Work{}();
      Alt::blocking([&] {
        all_started->arrive_and_wait();
        all_done->arrive_and_wait();
      });
    });
  }
  all_done->arrive_and_wait();
}

std::string pool_claims(const pyattach::pool_stats& before, const pyattach::pool_stats& after,
                        std::uint64_t n) {
  const std::uint64_t completed = after.completed - before.completed;
  const std::uint64_t started = after.started - before.started;
  if (completed != n || started != n || after.failed != before.failed ||
      after.cancelled != before.cancelled || after.queued != 0) {
    return "pool stats: " + std::to_string(started) + " started, " + std::to_string(completed) +
           " completed of " + std::to_string(n) + " submitted, " +
           std::to_string(after.failed - before.failed) + " failed, " +
           std::to_string(after.cancelled - before.cancelled) + " cancelled, " +
           std::to_string(after.queued) + " still queued";
  }
  return {};
}

std::string name_of(const char* group, const char* alt) {
  return std::string("pool/") + group + "/" + alt;
}

// pool/noop/<alt> and pool/python/<alt>: one iteration = n tasks submitted, then all awaited.
template <class Alt>
void bm_throughput(benchmark::State& state) {
  using Work = std::conditional_t<Alt::python, python_task, noop_task>;
  const std::uint64_t n = Alt::python ? g_options.python_tasks : g_options.noop_tasks;
  const char* group = Alt::python ? "python" : "noop";
  std::string error;

  const std::uint64_t s0 = probe_state_id();
  std::optional<Alt> alt;
  alt.emplace();
  warm_up<Alt, Work>(*alt);
  if (alt->pool() != nullptr) alt->pool()->wait();
  const std::uint64_t s1 = probe_state_id();
  std::optional<pyattach::pool_stats> stats_before;
  if (alt->pool() != nullptr) stats_before = alt->pool()->stats();
  const totals t0 = count_all();

  std::uint64_t submitted = 0;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < n; ++i) alt->submit(Work{});
    alt->finish();
    submitted += n;
  }

  const totals t1 = count_all();
  if (alt->pool() != nullptr) {
    error = pool_claims(*stats_before, alt->pool()->stats(), submitted);
  }
  const std::uint64_t s2 = probe_state_id();
  alt.reset();  // joins the pool's threads (outside the timing)

  const std::uint64_t warm_states = s1 - s0 - 1;
  const std::uint64_t measured_states = s2 - s1 - 1;
  const std::uint64_t ran = t1.tasks - t0.tasks;
  if (error.empty() && ran != submitted) {
    error = std::to_string(ran) + " tasks ran of " + std::to_string(submitted) + " submitted";
  }
  if (error.empty() && t1.failures != t0.failures) {
    error = std::to_string(t1.failures - t0.failures) + " Python calls raised";
  }
  if (error.empty() && !Alt::per_task_states) {
    if (warm_states != static_cast<std::uint64_t>(Alt::warm_states)) {
      error = std::to_string(warm_states) + " thread states created by the pool and its warm-up, "
              "expected " + std::to_string(Alt::warm_states);
    } else if (measured_states != 0) {
      error = std::to_string(measured_states) + " thread states created during the measured run, "
              "expected 0";
    }
  }

  state.SetItemsProcessed(static_cast<std::int64_t>(submitted));
  state.counters["tasks"] = static_cast<double>(submitted);
  state.counters["states_warmup"] = static_cast<double>(warm_states);
  state.counters["states_measured"] = static_cast<double>(measured_states);
  if (!error.empty()) {
    fail(name_of(group, Alt::name) + ": " + error);
    state.SkipWithError(error.c_str());
  }
}

// pool/latency/<alt>: one iteration = one probe on an idle pool.
template <class Alt>
void bm_latency(benchmark::State& state) {
  using clock = std::chrono::steady_clock;
  std::optional<Alt> alt;
  alt.emplace();
  using Work = std::conditional_t<Alt::python, python_task, noop_task>;
  warm_up<Alt, Work>(*alt);
  std::atomic<std::int64_t> started{0};  // the task's clock reading at its start; 0: not yet
  std::vector<std::int64_t> latencies;
  latencies.reserve(static_cast<std::size_t>(g_options.probes));
  const totals t0 = count_all();
  for (auto _ : state) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the pool goes idle
    const clock::time_point submit = clock::now();
    alt->submit([&started] {
      started.store(clock::now().time_since_epoch().count(), std::memory_order_release);
      Work{}();  // the Python one calls noop: a real Python task
    });
    std::int64_t s;
    while ((s = started.load(std::memory_order_acquire)) == 0) std::this_thread::yield();
    started.store(0, std::memory_order_relaxed);
    latencies.push_back(s - submit.time_since_epoch().count());
  }
  alt->finish();
  const totals t1 = count_all();
  alt.reset();
  std::string error;
  if (t1.tasks - t0.tasks != latencies.size()) {
    error = std::to_string(t1.tasks - t0.tasks) + " tasks ran of " +
            std::to_string(latencies.size()) + " probes";
  } else if (t1.failures != t0.failures) {
    error = std::to_string(t1.failures - t0.failures) + " Python calls raised";
  }
  std::sort(latencies.begin(), latencies.end());
  const auto at = [&](double q) {
    if (latencies.empty()) return 0.0;
    const std::size_t i = std::min(latencies.size() - 1,
                                   static_cast<std::size_t>(q * static_cast<double>(latencies.size())));
    return static_cast<double>(latencies[i]);
  };
  state.counters["probes"] = static_cast<double>(latencies.size());
  state.counters["latency_min_ns"] = at(0.0);
  state.counters["latency_median_ns"] = at(0.5);
  state.counters["latency_p90_ns"] = at(0.9);
  state.counters["latency_p99_ns"] = at(0.99);
  state.counters["latency_max_ns"] = latencies.empty() ? 0.0 : static_cast<double>(latencies.back());
  if (!error.empty()) {
    fail(name_of("latency", Alt::name) + ": " + error);
    state.SkipWithError(error.c_str());
  }
}

// pool/gilwait/<alt> (tasks calling a Python function) and pool/gilwait_capi/<alt> (tasks using
// the C API only, no bytecode): one iteration = while the submitter keeps the pool busy with a
// stream of such tasks (a backlog of up to 4,096 queued), a prober thread (its own persistent
// state, made before the measurement) sleeps 1 ms detached, then attaches, g_options.gil_probes
// times; each attach is timed: how long a thread that wants the GIL waits for it while the pool
// runs Python. Read against sys.getswitchinterval(): a waiter asks the holder to drop the GIL
// after one interval; a batch of pyattach's pool ends after one.
template <class Alt, class Work>
void bm_gilwait(benchmark::State& state) {
  using clock = std::chrono::steady_clock;
  const char* group = std::is_same_v<Work, capi_task> ? "gilwait_capi" : "gilwait";
  std::optional<Alt> alt;
  alt.emplace();
  warm_up<Alt, Work>(*alt);
  if (alt->pool() != nullptr) alt->pool()->wait();
  std::vector<std::int64_t> waits;
  waits.reserve(static_cast<std::size_t>(g_options.gil_probes));
  const totals t0 = count_all();
  std::uint64_t submitted = 0;
  std::string error;
  for (auto _ : state) {
    std::atomic<bool> done{false};
    std::thread prober([&] {
      {
        pyattach::attach_scope first(pyattach::nothrow);  // its state, made outside the timing
      }
      for (int i = 0; i < g_options.gil_probes; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        const clock::time_point asked = clock::now();
        pyattach::attach_scope py(pyattach::nothrow);
        const clock::time_point got = clock::now();
        if (!py) {
          error = "the prober's attach was refused";
          break;
        }
        waits.push_back((got - asked).count());
      }
      done.store(true);
    });
    constexpr std::uint64_t kChunk = 256, kBacklog = 4096;
    while (!done.load()) {
      for (std::uint64_t i = 0; i < kChunk; ++i) alt->submit(Work{});
      submitted += kChunk;
      while (!done.load() && submitted - (count_all().tasks - t0.tasks) > kBacklog) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    prober.join();
    alt->finish();
  }
  const totals t1 = count_all();
  alt.reset();
  if (error.empty() && t1.tasks - t0.tasks != submitted) {
    error = std::to_string(t1.tasks - t0.tasks) + " tasks ran of " + std::to_string(submitted);
  } else if (error.empty() && t1.failures != t0.failures) {
    error = std::to_string(t1.failures - t0.failures) + " Python calls raised";
  }
  std::sort(waits.begin(), waits.end());
  const auto at = [&](double q) {
    if (waits.empty()) return 0.0;
    const std::size_t i =
        std::min(waits.size() - 1, static_cast<std::size_t>(q * static_cast<double>(waits.size())));
    return static_cast<double>(waits[i]);
  };
  state.counters["probes"] = static_cast<double>(waits.size());
  state.counters["tasks"] = static_cast<double>(submitted);
  state.counters["switch_interval_ns"] = g_switch_interval_s * 1e9;
  state.counters["wait_median_ns"] = at(0.5);
  state.counters["wait_p90_ns"] = at(0.9);
  state.counters["wait_p99_ns"] = at(0.99);
  state.counters["wait_max_ns"] = waits.empty() ? 0.0 : static_cast<double>(waits.back());
  if (!error.empty()) {
    fail(name_of(group, Alt::name) + ": " + error);
    state.SkipWithError(error.c_str());
  }
}

// ---- instruction counts (callgrind) ----------------------------------------------------------

// --callgrind N: for each Python alternative, a fresh pool, its warm-up, then N tasks submitted
// and awaited with callgrind collecting (every thread: the submitter's and the workers'), one dump
// named pool/python/<alt>; a line "pool-counted <label> <N> <status>" on stdout. Run under
// valgrind --tool=callgrind --instr-atstart=no.
template <class Alt>
void run_counted(std::uint64_t n) {
  using Work = std::conditional_t<Alt::python, python_task, noop_task>;
  const std::string label = name_of(Alt::python ? "python" : "noop", Alt::name);
  std::optional<Alt> alt;
  alt.emplace();
  warm_up<Alt, Work>(*alt);
  if (alt->pool() != nullptr) alt->pool()->wait();
  const totals t0 = count_all();
  CALLGRIND_START_INSTRUMENTATION;
  CALLGRIND_ZERO_STATS;
  for (std::uint64_t i = 0; i < n; ++i) alt->submit(Work{});
  alt->finish();
  CALLGRIND_STOP_INSTRUMENTATION;
  CALLGRIND_DUMP_STATS_AT(label.c_str());
  const totals t1 = count_all();
  alt.reset();
  std::string status = "ok";
  if (t1.tasks - t0.tasks != n) {
    status = std::to_string(t1.tasks - t0.tasks) + " tasks ran of " + std::to_string(n);
  } else if (t1.failures != t0.failures) {
    status = std::to_string(t1.failures - t0.failures) + " Python calls raised";
  }
  std::printf("pool-counted\t%s\t%llu\t%s\n", label.c_str(), static_cast<unsigned long long>(n),
              status.c_str());
  std::fflush(stdout);
  if (status != "ok") fail(label + ": " + status);
}

void run_counted_all(std::uint64_t n) {
  if (!RUNNING_ON_VALGRIND) {
    std::fprintf(stderr, "pyattach_pool_bench: not running under valgrind: nothing is counted "
                         "(valgrind --tool=callgrind --instr-atstart=no ...)\n");
  }
  std::printf("pool-counted\tlabel\ttasks\tstatus\n");
  run_counted<asio_floor>(n);
  run_counted<pyattach_post_python>(n);
  run_counted<pyattach_submit_python>(n);
  run_counted<pyattach_post_python_unbatched>(n);
}

template <class Alt>
void add_throughput() {
  auto* b = benchmark::RegisterBenchmark(name_of(Alt::python ? "python" : "noop", Alt::name).c_str(),
                                         bm_throughput<Alt>);
  // One iteration per repetition: each repetition is one fresh pool and one batch of n tasks.
  with_min_max(b->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1));
}

template <class Alt>
void add_latency() {
  auto* b = benchmark::RegisterBenchmark(name_of("latency", Alt::name).c_str(), bm_latency<Alt>);
  // One run of all the probes: the percentiles are over every probe, not per repetition.
  b->UseRealTime()->Unit(benchmark::kMicrosecond)->Iterations(g_options.probes)->Repetitions(1);
}

template <class Alt, class Work>
void add_gilwait() {
  const char* group = std::is_same_v<Work, capi_task> ? "gilwait_capi" : "gilwait";
  auto* b = benchmark::RegisterBenchmark(name_of(group, Alt::name).c_str(), bm_gilwait<Alt, Work>);
  // One run of all the probes, as the latency rows.
  b->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(1);
}

void register_benchmarks() {
  add_throughput<asio_post>();
  add_throughput<pyattach_post>();
  add_throughput<pyattach_submit>();
  add_throughput<asio_gilstate>();
  add_throughput<asio_floor>();
  add_throughput<pyattach_post_python>();
  add_throughput<pyattach_submit_python>();
  add_throughput<pyattach_post_python_unbatched>();
  add_latency<asio_post>();
  add_latency<pyattach_post>();
  add_latency<asio_floor>();
  add_latency<pyattach_post_python>();
  add_gilwait<asio_floor, python_task>();
  add_gilwait<pyattach_post_python_unbatched, python_task>();
  add_gilwait<pyattach_post_python, python_task>();
  add_gilwait<asio_floor, capi_task>();
  add_gilwait<pyattach_post_python_unbatched, capi_task>();
  add_gilwait<pyattach_post_python, capi_task>();
}

// PRECONDITION: attached (the main thread, inside PyGILState_Ensure).
bool make_python_objects() {
  g_globals = run_in_namespace("def noop():\n    return None\n");
  if (g_globals == nullptr) return false;
  g_noop = PyDict_GetItemString(g_globals, "noop");  // borrowed: g_globals lives until the end
  PyObject* sys = PyImport_ImportModule("sys");
  PyObject* interval = sys ? PyObject_CallMethod(sys, "getswitchinterval", nullptr) : nullptr;
  g_switch_interval_s = interval ? PyFloat_AsDouble(interval) : 0.0;
  Py_XDECREF(interval);
  Py_XDECREF(sys);
  return g_noop != nullptr && g_switch_interval_s > 0;
}

bool parse_size(const std::string& a, const char* flag, std::uint64_t& out) {
  const std::string f = flag;
  if (a.rfind(f, 0) != 0) return false;
  out = std::strtoull(a.c_str() + f.size(), nullptr, 10);
  return true;
}

// Removes this binary's own flags from argv (Google Benchmark rejects unknown ones).
bool parse_options(int& argc, char** argv) {
  int out = 1;
  std::uint64_t probes = 0;
  bool sized_noop = false, sized_python = false, sized_probes = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--smoke") {
      g_options.smoke = true;
    } else if (parse_size(a, "--noop-tasks=", g_options.noop_tasks)) {
      sized_noop = true;
    } else if (parse_size(a, "--python-tasks=", g_options.python_tasks)) {
      sized_python = true;
    } else if (a == "--callgrind" && i + 1 < argc) {
      g_options.counted = std::strtoull(argv[++i], nullptr, 10);
      if (g_options.counted == 0) return false;
    } else if (parse_size(a, "--gil-probes=", probes)) {
      g_options.gil_probes = static_cast<int>(probes);
    } else if (parse_size(a, "--probes=", probes)) {
      sized_probes = true;
      g_options.probes = static_cast<int>(probes);
    } else {
      argv[out++] = argv[i];
    }
  }
  if (g_options.smoke) {
    if (!sized_noop) g_options.noop_tasks = 2000;
    if (!sized_python) g_options.python_tasks = 500;
    if (!sized_probes) g_options.probes = 20;
    g_options.gil_probes = std::min(g_options.gil_probes, 10);
  }
  argc = out;
  argv[argc] = nullptr;
  return g_options.noop_tasks > 0 && g_options.python_tasks > 0 && g_options.probes > 0;
}

// The counted mode, or Google Benchmark's run.
bool run(int argc, char** argv) {
  if (g_options.counted > 0) {
    run_counted_all(g_options.counted);
    return true;
  }
  return run_benchmarks(argc, argv, [] {
    benchmark::AddCustomContext("boost_version", BOOST_LIB_VERSION);
    benchmark::AddCustomContext("workers", std::to_string(kWorkers));
    benchmark::AddCustomContext("noop_tasks", std::to_string(g_options.noop_tasks));
    benchmark::AddCustomContext("python_tasks", std::to_string(g_options.python_tasks));
    benchmark::AddCustomContext("probes", std::to_string(g_options.probes));
    benchmark::AddCustomContext("gil_probes", std::to_string(g_options.gil_probes));
    benchmark::AddCustomContext("switch_interval_s", std::to_string(g_switch_interval_s));
    register_benchmarks();
  });
}

void clear_python_objects() { Py_CLEAR(g_globals); }

}  // namespace
}  // namespace bench

int main(int argc, char** argv) {
  using namespace bench;
  return run_main({"pyattach_pool_bench", "[--smoke] [--noop-tasks=N] [--python-tasks=N] "
                                          "[--probes=N] [--gil-probes=N] [--callgrind N] "
                                          "[Google Benchmark flags]",
                   parse_options, make_python_objects, run, clear_python_objects},
                  argc, argv);
}

// pyattach/observe.hpp — who holds the GIL, who waits for it, and for how long: per-thread
// metrics, and a timeline trace in Chrome trace-event JSON (Perfetto, chrome://tracing).
//
// What is observed
//   Every time pyattach takes the GIL for a thread (the outermost attach_scope of a thread that
//   was not attached, the end of a detach_scope, a pool worker's attach for its Python tasks, a
//   sub-interpreter scope that makes its state current, and the state it swapped out made current
//   again at its end) and every time it gives it back. pyattach sees only its own calls: a thread that other code
//   attached (a Python thread, a raw PyGILState_Ensure) is not observed, nor is the GIL that
//   CPython's eval loop hands over inside a scope (the switch interval, time.sleep, blocking I/O
//   in Python, Py_BEGIN_ALLOW_THREADS in an extension): "attached" is the time from the attach to
//   the release, the GIL held by this thread at its start and at its end.
//   Code that attaches by hand can add its own spans to the trace (trace_begin/trace_end).
//
// Metrics (off by default: set_metrics(true), or PYATTACH_METRICS=1 in the environment, read at
// the first pyattach call)
//   Per thread, and per pool (the sum of its workers): attaches, and three log-scale histograms
//   of durations: waiting to attach (asked -> attached), attached (attached -> released, or ->
//   the start of a detach_scope), and detached inside detach_scope. metrics() is a snapshot.
//   Off, the attach path pays one predictable branch; on, each attach reads a clock three times
//   and updates the thread's own counters (no lock, no atomic read-modify-write).
//   Sub-interpreter scopes (subinterpreter.hpp) are observed too: per thread, `interpreters`
//   splits attaches and the total wait and attached times by interpreter.
//
// Trace (off by default: start_trace(), or PYATTACH_TRACE=<file>, which starts it at the first
//   pyattach call and writes the file when pyattach's gate closes for the interpreter's end)
//   Each thread records into its own bounded buffer (trace_options::events_per_thread): no lock,
//   no allocation after the thread's first event; when it is full, further events are dropped and
//   counted, never waited for. flush_trace() writes what was recorded so far; stop_trace() writes
//   and ends. Spans: "waiting for the GIL", "attached", "detached (blocking C++)", and pool
//   "task" spans (args: pool, worker, task = the worker's task number); instants: "gate
//   closing", "misuse: <kind>". A sub-interpreter's GIL spans have args interp (its id) and gil
//   (the interpreter whose GIL it is: its own id, or 0 for one that shares the main GIL); spans
//   without them are the main interpreter's. A thread's attached spans never nest: a scope that
//   swaps in another interpreter's state ends the outer state's span, and a new one begins when
//   that state is current again. Thread names (OS, and threading's where the writer can attach)
//   are written as thread_name metadata. Format and viewing: docs/observability.md.
//
// Clock: the x86 TSC when the kernel uses it as its own clocksource (it is then invariant and
//   synchronized across CPUs), read with lfence+rdtsc; otherwise clock_gettime(CLOCK_MONOTONIC).
//   Ticks become nanoseconds when read, against CLOCK_MONOTONIC (docs/observability.md, "Clock").
//
// Thread-safety: every function may be called from any thread, at any time, with or without the
//   GIL (flush/stop attach briefly to read threading's names, when they can; never required).
// Scope: one copy of pyattach per binary. An extension module that links pyattach statically has
//   its own records: its threads are seen by its own copy's metrics() and trace.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pyattach {

// ---- metrics -----------------------------------------------------------------------------------

// Switches metrics on or off for every thread (off: the counters stop, and keep their values).
void set_metrics(bool on) noexcept;
bool metrics_enabled() noexcept;
// Zeroes every counter and histogram, and forgets the threads that have exited.
void reset_metrics() noexcept;

// Durations in log-scale buckets: 4 per power of two of clock ticks, so a bucket's bounds are
// within 19% of each other. Quantiles are the upper bound of the bucket the rank falls in
// (never above max).
struct duration_histogram {
  std::uint64_t count = 0;
  std::chrono::nanoseconds total{0};
  std::chrono::nanoseconds max{0};
  // (upper bound, how many) for every non-empty bucket, in increasing order.
  std::vector<std::pair<std::chrono::nanoseconds, std::uint64_t>> buckets;

  std::chrono::nanoseconds quantile(double q) const noexcept;  // q in [0, 1]; 0 if empty
  std::chrono::nanoseconds mean() const noexcept;
  duration_histogram& operator+=(const duration_histogram& other);
};

// A thread's figures in one interpreter (sub-interpreters: subinterpreter.hpp, CPython 3.12+).
struct interpreter_metrics {
  std::int64_t interpreter = 0;  // its id (PyInterpreterState_GetID): 0 is the main interpreter;
                                 // -1 sums the sub-interpreters past the first seven it used
  std::uint64_t attaches = 0;            // of thread_metrics::attaches
  std::chrono::nanoseconds wait{0};      // of thread_metrics::wait's total: taking its GIL
  std::chrono::nanoseconds attached{0};  // of thread_metrics::attached's total: holding it
};

struct thread_metrics {
  std::uint64_t os_tid = 0;   // the kernel's thread id (0: the record of exited threads)
  unsigned long ident = 0;    // threading.get_ident()
  std::string name;           // the OS thread name ("<exited threads>" for that record)
  std::string pool;           // the thread_pool it works for ("" if none)
  bool alive = true;
  std::uint64_t attaches = 0;        // times pyattach took the GIL at an outermost attach
  duration_histogram wait;           // asked -> attached, for every GIL take (re-attaches too)
  duration_histogram attached;       // attached -> released or detached
  duration_histogram detached;       // inside detach_scope
  // Where attaches, wait and attached went: the main interpreter first, then each sub-interpreter
  // the thread took the GIL of, in the order it first did (empty: nothing counted). The main
  // interpreter's row is the thread's totals minus the others'.
  std::vector<interpreter_metrics> interpreters;
};

struct pool_metrics {
  std::string name;
  std::uint64_t workers = 0;  // live workers with records (exited ones are summed in)
  std::uint64_t attaches = 0;
  duration_histogram wait, attached, detached;
};

struct metrics_snapshot {
  bool enabled = false;
  std::string clock;                   // "tsc" or "clock_gettime(CLOCK_MONOTONIC)"
  std::vector<thread_metrics> threads; // every live thread with records, then exited threads
  std::vector<pool_metrics> pools;     // one per pool name seen among them
};

// A copy of every thread's figures now (each figure is exact; figures of a thread that is busy
// meanwhile may be a few events apart). Callable from any thread at any time.
metrics_snapshot metrics();

// A readable table: one line per thread and per pool (count, p50/p90/p99/max of each histogram).
std::string to_string(const metrics_snapshot& snapshot);

// ---- trace -------------------------------------------------------------------------------------

struct trace_options {
  // Events each thread can hold before it drops (24 bytes each: 65536 = 1.5 MiB per thread).
  std::uint32_t events_per_thread = 65536;
};

struct trace_result {
  bool ok = false;          // the file was written
  std::string error;        // why not
  std::uint64_t events = 0; // events written (spans count their begin and end)
  std::uint64_t dropped = 0;// events dropped because a thread's buffer was full
};

// Starts a trace (discarding an earlier one's events). False if one is running already.
bool start_trace(trace_options options = {}) noexcept;
bool trace_running() noexcept;
// Writes every event recorded since start_trace() to `path`; the trace goes on.
trace_result flush_trace(const std::string& path) noexcept;
// Writes like flush_trace() and ends the trace (its buffers are freed when their threads next
// record, or exit).
trace_result stop_trace(const std::string& path) noexcept;

// Spans for code that attaches by hand (the raw C API), so that it shows in the same timeline.
// Recorded only while a trace runs; begin and end on the same thread, properly nested.
enum class trace_span : std::uint8_t { waiting, attached, detached };
void trace_begin(trace_span span) noexcept;
void trace_end(trace_span span) noexcept;

}  // namespace pyattach

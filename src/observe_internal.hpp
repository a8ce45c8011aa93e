// src/observe_internal.hpp — what the out-of-line half of observation shares: the clock's
// calibration, the trace's records, buffers and sessions, and the threads that exited. The inline
// half is include/pyattach/detail/observe_hooks.hpp; the public API is pyattach/observe.hpp.
//
// Ownership: a thread's `observer` is written only by that thread (plain loads and stores of
// relaxed atomics: no read-modify-write, no lock), and read by metrics() and the trace writer
// under registry().mutex, which also covers the observer's creation, a trace buffer's
// (re)allocation and the observer's retirement at thread exit; so whatever is found through
// slot::obs under that mutex stays alive while it is held.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "internal.hpp"
#include "pyattach/observe.hpp"

namespace pyattach::detail {

// ---- the clock (clock.cpp) ----
// Calibrates once: whether ticks are the TSC, and a (tick, CLOCK_MONOTONIC ns) pair read together.
void clock_init();
extern std::uint64_t g_tick0, g_ns0;  // that pair (set once by clock_init)
// Nanoseconds per tick, from the interval since clock_init (waits until it is 5 ms long).
double ns_per_tick() noexcept;
inline std::uint64_t ticks() noexcept { return obs_ticks(); }

// ---- histograms (metrics.cpp) ----
// The first value above bucket b of obs_bucket, as a double (the last bucket's end is 2^64).
double bucket_end(unsigned b) noexcept;

// ---- switches (metrics.cpp) ----
extern std::atomic<std::uint8_t> g_bits;  // what every slot records (observe_metrics|trace)
// Sets or clears one bit of g_bits and publishes it to every registered slot.
void set_bit(std::uint8_t bit, bool on) noexcept;

// ---- trace records (trace_recording.cpp) ----
enum class ev : std::uint8_t {
  wait_begin, wait_end, attached_begin, attached_end, detached_begin, detached_end,
  task_begin, task_end
};

struct trace_event {
  std::uint64_t tick;
  std::uint64_t arg;   // task: the worker's task number
  std::uint32_t aux;   // task: the worker's label (g_labels)
  ev kind;
};

// One thread's events of one trace session. Appended by the owner only; `count` is published
// with release after the event is written, so the writer reads complete events below it.
struct trace_buffer {
  explicit trace_buffer(std::uint32_t cap) : capacity(cap), events(new trace_event[cap]) {}
  std::atomic<std::uint64_t> session{0};
  const std::uint32_t capacity;
  std::atomic<std::uint32_t> count{0};
  std::atomic<std::uint64_t> dropped{0};
  std::unique_ptr<trace_event[]> events;
  // Spans open in this buffer (owner only): an end is recorded only after its begin was, so
  // that a trace started or stopped mid-span never has an end without a begin.
  std::uint8_t open_attached = 0, open_detached = 0, open_waiting = 0, open_task = 0;
};

extern std::atomic<std::uint64_t> g_session;  // the running trace's number; 0: none
extern std::mutex g_trace_mutex;  // start/flush/stop, and the exited threads' buffers
// The running trace's events per thread: set by start_trace before it publishes the session,
// read by threads that saw the session (relaxed: a thread still on the previous session may read
// it while the next start_trace sets it).
extern std::atomic<std::uint32_t> g_capacity;
// PYATTACH_TRACE's path, while its trace runs (see trace_recording.cpp for why a function).
std::string& env_trace_path();
extern thread_local std::string tls_pool;  // set by obs_worker_start on pool workers

// Pool worker labels for task events: index -> (pool, worker). Protected by g_labels_mutex.
extern std::mutex g_labels_mutex;
extern std::vector<std::pair<std::string, std::string>> g_labels;

// Threads that exited: their metrics summed per pool name ("" for no pool), and their trace
// buffers of the running session. Protected by registry().mutex (metrics) and g_trace_mutex
// (buffers).
// A thread's figures in one sub-interpreter (obs_interp_figures), in ticks.
struct interp_ticks {
  std::uint64_t attaches = 0, wait = 0, attached = 0;
};
struct retired_metrics {
  std::uint64_t threads = 0;
  std::uint64_t retakes = 0;
  std::uint64_t wait[obs_buckets] = {}, attached[obs_buckets] = {}, detached[obs_buckets] = {};
  std::uint64_t sums[3] = {}, maxes[3] = {};
  std::vector<std::pair<std::int64_t, interp_ticks>> interps;  // by sub-interpreter id
};
std::map<std::string, retired_metrics>& retired();
struct retired_buffer {
  std::uint64_t os_tid;
  std::string name;
  std::unique_ptr<trace_buffer> buffer;
};
std::vector<retired_buffer>& retired_buffers();

// Instants (gate closing, misuse): rare, from any thread, with or without a slot: a locked
// bounded list.
struct instant_event {
  std::uint64_t tick;
  std::uint64_t os_tid;
  std::string name;
  std::string message;
};
extern std::mutex g_instants_mutex;
extern std::vector<instant_event> g_instants;
extern std::uint64_t g_instants_dropped;

// Calls f(slot, its observer) for every registered thread that has one. PRECONDITION:
// registry().mutex held: a thread frees its observer at exit under it (obs_thread_exit).
template <class F>
void for_each_observer(F f) {
  for (slot* x : registry().slots) {
    observer* o = x->obs.load(std::memory_order_acquire);
    if (o != nullptr) f(x, o);
  }
}

// The calling thread's observer: the slot's, or one made now if the slot observes anything.
inline observer* observer_of(slot* s) noexcept {
  observer* o = s->obs.load(std::memory_order_relaxed);
  if (PYATTACH_LIKELY(o != nullptr)) return o;
  if (s->observe.load(std::memory_order_relaxed) == 0) return nullptr;
  return obs_prepare(s);
}

// The buffer this thread records into now, or nullptr: no trace runs, or this thread recorded
// nothing of it and `begin` is false. (Re)made for a new session under registry().mutex.
trace_buffer* buffer_for(slot* s, observer* o, bool begin) noexcept;

inline void record(trace_buffer* b, ev kind, std::uint64_t tick, std::uint64_t arg = 0,
                   std::uint32_t aux = 0) noexcept {
  const std::uint32_t n = b->count.load(std::memory_order_relaxed);
  if (PYATTACH_UNLIKELY(n >= b->capacity)) {
    add_owned(b->dropped, 1);
    return;
  }
  b->events[n] = trace_event{tick, arg, aux, kind};
  b->count.store(n + 1, std::memory_order_release);
}

// A begin is recorded (and its span counted open) only if it fits: a span whose begin was
// dropped records no end either, so the spans written always match.
inline void record_begin(trace_buffer* b, ev kind, std::uint8_t& open, std::uint64_t tick,
                         std::uint64_t arg = 0, std::uint32_t aux = 0) noexcept {
  // Keep room for the ends of the spans open now (at most 4 deep) and this one's.
  const std::uint32_t n = b->count.load(std::memory_order_relaxed);
  const std::uint32_t pending =
      b->open_attached + b->open_detached + b->open_waiting + b->open_task + 1u;
  if (n + pending + 1 > b->capacity) {
    add_owned(b->dropped, 2);
    return;
  }
  record(b, kind, tick, arg, aux);
  ++open;
}

inline void record_end(trace_buffer* b, ev kind, std::uint8_t& open, std::uint64_t tick,
                       std::uint64_t arg = 0, std::uint32_t aux = 0) noexcept {
  if (open == 0) return;  // its begin was dropped, or came before this trace
  --open;
  record(b, kind, tick, arg, aux);
}

// Whether this thread counts metrics now; clears its counters first if reset_metrics() ran.
inline bool metrics_on(slot* s, observer* o) noexcept {
  if ((s->observe.load(std::memory_order_relaxed) & observe_metrics) == 0) return false;
  if (PYATTACH_UNLIKELY(o->epoch != g_obs_epoch.load(std::memory_order_relaxed))) obs_prepare(s);
  return true;
}

// ---- the trace writer (trace_writer.cpp) ----
// threading's names of the live threads, if the calling thread holds the GIL or can take it for
// a moment. Never called with g_trace_mutex held: a thread holding the GIL may be waiting for it.
std::map<unsigned long, std::string> names_if_possible(bool may_attach) noexcept;
// Writes the running session's events to `path`. PRECONDITION: g_trace_mutex held.
trace_result write_trace_locked(const std::string& path,
                                const std::map<unsigned long, std::string>& names) noexcept;

}  // namespace pyattach::detail

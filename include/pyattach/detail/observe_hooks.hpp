// pyattach/detail/observe_hooks.hpp — the inline half of observation (pyattach/observe.hpp): the
// clock, the histograms, a thread's observer, and the hooks the inline attach calls around the
// GIL take and release (attach.hpp). Not part of the public API. The out-of-line half is in
// src/: clock.cpp, metrics.cpp, trace.cpp, trace_writer.cpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "pyattach/detail/slot.hpp"

namespace pyattach::detail {

// ---------------------------------------------------------------------------------------------
// The attach path's observed twin is inline (attach.hpp), so that metrics cost the clock reads
// and the counter updates, not two calls.

// The clock. g_obs_tsc: the TSC (src/clock.cpp explains when), set once before any slot observes;
// otherwise CLOCK_MONOTONIC in nanoseconds. lfence: rdtsc is not ordered after the instructions
// before it (Intel SDM, RDTSC), and a tick taken right after PyEval_RestoreThread must not be
// read before the GIL was taken (nor one taken right before PyEval_SaveThread after it).
extern std::atomic<bool> g_obs_tsc;  // relaxed: set before any slot observes (clock_init)
std::uint64_t obs_monotonic_ns() noexcept;
PYATTACH_ALWAYS_INLINE std::uint64_t obs_ticks() noexcept {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  if (PYATTACH_LIKELY(g_obs_tsc.load(std::memory_order_relaxed))) {
    __builtin_ia32_lfence();
    return __builtin_ia32_rdtsc();
  }
#endif
  return obs_monotonic_ns();
}

// Log-scale histograms of ticks: four buckets per power of two, so a bucket's bounds are within
// 25% of each other. Values below 4 ticks count as 4..7 (under 2 ns on the TSC, 7 ns at most on
// the nanosecond clock), which spares the add a branch.
constexpr unsigned obs_buckets = 248;
PYATTACH_ALWAYS_INLINE unsigned obs_bucket(std::uint64_t v) noexcept {
  v |= 4;
  const unsigned shift = 61u - static_cast<unsigned>(__builtin_clzll(v));  // msb - 2
  return shift * 4 + static_cast<unsigned>((v >> shift) & 3);
}

// Written by the owner thread only (relaxed load + store: single writer, no read-modify-write),
// read by metrics() from any thread.
struct obs_histogram {
  std::atomic<std::uint64_t> bucket[obs_buckets] = {};
  std::atomic<std::uint64_t> sum{0};
  std::atomic<std::uint64_t> max{0};
  PYATTACH_ALWAYS_INLINE void add(std::uint64_t v) noexcept {
    std::atomic<std::uint64_t>& b = bucket[obs_bucket(v)];
    b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    sum.store(sum.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
    if (v > max.load(std::memory_order_relaxed)) max.store(v, std::memory_order_relaxed);
  }
};

struct trace_buffer;  // src/observe_internal.hpp

// A thread's figures in one sub-interpreter (written by the owner only, read by metrics()): the
// main interpreter's are the thread's totals minus those of its sub-interpreters, so that the
// main attach path, inline, records nothing more. Ticks.
struct obs_interp_figures {
  std::atomic<std::int64_t> id{0};  // PyInterpreterState_GetID; -1: the sub-interpreters past
                                    // the first obs_interps - 1 the thread used, summed
  std::atomic<std::uint64_t> attaches{0}, wait{0}, attached{0};
};
constexpr unsigned obs_interps = 8;

// A thread's metrics and trace state. Made by its thread (obs_prepare), freed by its exit
// clean-up (obs_retire); plain fields are the owner's only.
struct observer {
  std::uint64_t epoch = 0;           // the reset_metrics() generation its counters belong to
  std::uint64_t hold_since = 0;      // when it took the GIL through pyattach; 0: not holding it
  std::uint64_t wait_since = 0;      // the slow paths' wait start; 0: not waiting
  std::uint64_t detached_since = 0;  // inside a detach scope since; 0: not inside one
  obs_histogram wait, attached, detached;
  // GIL takes that were not an attach (a detach scope's end): attaches = wait count - retakes.
  std::atomic<std::uint64_t> retakes{0};
  std::atomic<trace_buffer*> buffer{nullptr};  // this thread's events of the running trace
  std::string pool;                            // the pool it works for (set before publishing)
  // Per sub-interpreter (src/trace_recording.cpp): interps[0, interp_count) are in use, each
  // published by a release store of interp_count after its id.
  obs_interp_figures interps[obs_interps];
  std::atomic<std::uint32_t> interp_count{0};
  // The interpreter whose GIL hold_since is a hold of (0: the main interpreter's). Set by the
  // sub-interpreter hooks, back to 0 wherever a hold ends out of line; the inline hooks only take
  // and release the main interpreter's GIL, when no sub-interpreter hold is open.
  std::int64_t hold_interp = 0;
};
extern std::atomic<std::uint64_t> g_obs_epoch;  // bumped by reset_metrics()

// The calling thread's observer, made now, or with its counters cleared if reset_metrics() ran
// since it last counted. nullptr if it cannot be allocated. PRECONDITION: s is its slot.
observer* obs_prepare(slot* s) noexcept;
// The trace's half of the observed attach and release (out of line: a trace may allocate).
void obs_trace_took(slot* s, observer* o, std::uint64_t t0, std::uint64_t t1) noexcept;
void obs_trace_release(slot* s, observer* o, std::uint64_t t) noexcept;

// The hooks the inline attach and end call around the GIL take and release (attach.hpp):
// none, or these. PRECONDITION: o is the calling thread's observer, bits its slot's observe.
struct no_hooks {
  void before_take() noexcept {}
  void after_take() noexcept {}
  void before_release() noexcept {}
};
struct obs_hooks {
  slot* s;
  observer* o;
  std::uint8_t bits;
  std::uint64_t t0;
  PYATTACH_ALWAYS_INLINE void before_take() noexcept { t0 = obs_ticks(); }
  PYATTACH_ALWAYS_INLINE void after_take() noexcept {
    const std::uint64_t t1 = obs_ticks();
    o->hold_since = t1;
    if (bits & observe_metrics) o->wait.add(t1 - t0);
    if (PYATTACH_UNLIKELY(bits & observe_trace)) obs_trace_took(s, o, t0, t1);
  }
  // Records whatever the thread records now: a switch in between is seen at the release.
  PYATTACH_ALWAYS_INLINE void before_release() noexcept {
    const std::uint64_t t = obs_ticks();
    if (o->hold_since != 0 && (s->observe.load(std::memory_order_relaxed) & observe_metrics)) {
      o->attached.add(t - o->hold_since);
    }
    o->hold_since = 0;
    if (PYATTACH_UNLIKELY(o->buffer.load(std::memory_order_relaxed) != nullptr)) {
      obs_trace_release(s, o, t);
    }
  }
};

// The slow paths' hooks (src/attach.cpp), called by the owner around each GIL take and release
// pyattach makes there, only when slot::observe is set or (the ends) when the begin recorded.
void obs_wait_begin(slot* s) noexcept;               // about to take the GIL
void obs_attached(slot* s, bool outermost) noexcept; // took it (outermost: an attach, else a
                                                     // detach_scope's re-attach)
void obs_release(slot* s) noexcept;                  // about to release it at an attach's end
void obs_detach_begin(slot* s) noexcept;             // about to release it for a detach_scope
void obs_detach_end(slot* s) noexcept;               // the detach_scope ends (before re-taking)

// Sub-interpreter scopes' hooks (src/subinterpreter.cpp), called by the owner. `in`: the
// interpreter whose GIL is asked for (id 0: the main interpreter's state, restored after a scope
// that swapped it out). ask: only when slot::observe is set; took and release: whenever the
// thread has an observer (they record only what an ask or a take recorded).
struct obs_in {
  std::int64_t id;
  bool own_gil;
};
enum class obs_take : std::uint8_t {
  attach,   // a scope made its state current: an attach, and a new attached span
  resume,   // a state swapped out by a scope is current again: a re-take, and a new span
  reattach  // a detach_scope ended: a re-take inside the attached span that goes on
};
void obs_sub_ask(slot* s, obs_in in) noexcept;                 // about to take its GIL
void obs_sub_took(slot* s, obs_in in, obs_take how) noexcept;  // took it
// About to release the current state's GIL (a scope's end, or a swap to another state): ends the
// hold and its attached span. Returns whether either was open (then a swap resumes it later).
bool obs_sub_release(slot* s) noexcept;

}  // namespace pyattach::detail

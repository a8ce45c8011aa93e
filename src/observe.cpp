// src/observe.cpp — metrics and the timeline trace (pyattach/observe.hpp): the clock, each
// thread's counters and trace buffer, the observed attach path, snapshots and the JSON writer.
//
// Ownership: a thread's `observer` is written only by that thread (plain loads and stores of
// relaxed atomics: no read-modify-write, no lock), and read by metrics() and the trace writer
// under registry().mutex, which also covers the observer's creation, a trace buffer's
// (re)allocation and the observer's retirement at thread exit; so whatever is found through
// slot::obs under that mutex stays alive while it is held.
#include "pyattach/observe.hpp"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include "internal.hpp"

namespace pyattach {
namespace detail {

// ---- the clock ------------------------------------------------------------------------------
// The TSC where the kernel itself uses it as its clocksource: Linux switches away from the TSC
// when it finds it unstable or unsynchronized across CPUs, so "tsc" there means invariant and
// synchronized, hence monotonic per thread and comparable across threads (the trace needs both).
// lfence first: rdtsc is not ordered after the instructions before it (Intel SDM, RDTSC), and a
// timestamp taken right after PyEval_RestoreThread must not be read before the GIL was taken.
// Cost, measured with callgrind (Debian 3.11, the metrics row of bench/attach_alternatives.cpp,
// three reads per pair): 612 instructions per pair with the TSC, 669 with PYATTACH_CLOCK set,
// so clock_gettime through the vDSO costs about 19 instructions more per read than the ~7 of
// lfence+rdtsc with its branch. The fallback is CLOCK_MONOTONIC in nanoseconds.
namespace {
std::once_flag g_clock_once;
std::uint64_t g_tick0 = 0;    // ticks and CLOCK_MONOTONIC ns read together at clock_init
std::uint64_t g_ns0 = 0;

bool kernel_uses_tsc() {
#if defined(__x86_64__) || defined(__i386__)
  std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string name;
  // PYATTACH_CLOCK=monotonic forces the fallback (tests, and machines where it is wanted).
  return f && (f >> name) && name == "tsc" && std::getenv("PYATTACH_CLOCK") == nullptr;
#else
  return false;
#endif
}
}  // namespace

std::atomic<bool> g_obs_tsc{false};
std::atomic<std::uint64_t> g_obs_epoch{1};

std::uint64_t obs_monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

namespace {
inline std::uint64_t ticks() noexcept { return obs_ticks(); }
inline std::uint64_t monotonic_ns() noexcept { return obs_monotonic_ns(); }

// Reads a tick and a CLOCK_MONOTONIC time as close together as it can (the pair with the
// shortest bracket of three tries).
void tick_pair(std::uint64_t& tick, std::uint64_t& ns) noexcept {
  std::uint64_t best = ~std::uint64_t{0};
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t a = monotonic_ns();
    const std::uint64_t t = ticks();
    const std::uint64_t b = monotonic_ns();
    if (b - a < best) {
      best = b - a;
      tick = t;
      ns = a + (b - a) / 2;
    }
  }
}

void clock_init() {
  std::call_once(g_clock_once, [] {
    g_obs_tsc.store(kernel_uses_tsc(), std::memory_order_relaxed);
    tick_pair(g_tick0, g_ns0);
  });
}

// Nanoseconds per tick, from the interval since clock_init (at least 5 ms: waits for the rest
// the first time, so that a snapshot right after enabling is still within 0.01%).
double ns_per_tick() noexcept {
  if (!g_obs_tsc.load(std::memory_order_relaxed)) return 1.0;
  std::uint64_t t = 0, n = 0;
  tick_pair(t, n);
  if (n - g_ns0 < 5000000) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(5000000 - (n - g_ns0)));
    tick_pair(t, n);
  }
  return static_cast<double>(n - g_ns0) / static_cast<double>(t - g_tick0);
}

// ---- histograms -------------------------------------------------------------------------------
// The first value above bucket b of obs_bucket (detail/slot.hpp), as a double (the last bucket's
// end is 2^64).
double bucket_end(unsigned b) noexcept {
  const unsigned shift = b / 4, sub = b % 4;
  return std::ldexp(static_cast<double>(5 + sub), static_cast<int>(shift));
}

// ---- trace records ------------------------------------------------------------------------------
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

}  // namespace

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

namespace {
std::atomic<std::uint64_t> g_session{0};  // the running trace's number; 0: none
}  // namespace

namespace {
std::atomic<std::uint8_t> g_bits{0};          // what every slot records (observe_metrics|trace)
std::mutex g_trace_mutex;                      // start/flush/stop, and the exited threads' buffers
// The running trace's events per thread: set by start_trace before it publishes the session,
// read by threads that saw the session (relaxed: a thread still on the previous session may read
// it while the next start_trace sets it).
std::atomic<std::uint32_t> g_capacity{65536};
// PYATTACH_TRACE's path, while its trace runs. Made on first use, not a namespace-scope string:
// observe_init_once sets it from gate.cpp's load-time bind, which for an extension module runs
// during the module's static initialization, possibly before this file's dynamic initializers,
// which would then construct an empty string over it (and no file would be written at exit).
std::string& env_trace_path() {
  static auto* path = new std::string;  // read by the gate's exit hook: never destroyed
  return *path;
}
thread_local std::string tls_pool, tls_worker;  // set by obs_worker_start on pool workers
constexpr std::uint32_t k_no_label = ~std::uint32_t{0};
thread_local std::uint32_t tls_label = k_no_label;  // its g_labels index, once it traced a task

// Pool worker labels for task events: index -> (pool, worker). Protected by g_labels_mutex.
std::mutex g_labels_mutex;
std::vector<std::pair<std::string, std::string>> g_labels;

// Threads that exited: their metrics summed per pool name ("" for no pool), and their trace
// buffers of the running session. Protected by registry().mutex (metrics) and g_trace_mutex
// (buffers).
struct retired_metrics {
  std::uint64_t threads = 0;
  std::uint64_t retakes = 0;
  std::uint64_t wait[obs_buckets] = {}, attached[obs_buckets] = {}, detached[obs_buckets] = {};
  std::uint64_t sums[3] = {}, maxes[3] = {};
};
std::map<std::string, retired_metrics>& retired() {
  static auto* m = new std::map<std::string, retired_metrics>;  // threads may exit after main
  return *m;
}
struct retired_buffer {
  std::uint64_t os_tid;
  std::string name;
  std::unique_ptr<trace_buffer> buffer;
};
std::vector<retired_buffer>& retired_buffers() {
  static auto* v = new std::vector<retired_buffer>;
  return *v;
}

// Instants (gate closing, misuse): rare, from any thread, with or without a slot: a locked
// bounded list.
struct instant_event {
  std::uint64_t tick;
  std::uint64_t os_tid;
  std::string name;
  std::string message;
};
std::mutex g_instants_mutex;
std::vector<instant_event> g_instants;
std::uint64_t g_instants_dropped = 0;
constexpr std::size_t k_max_instants = 4096;

void clear(obs_histogram& h) noexcept {
  for (auto& b : h.bucket) b.store(0, std::memory_order_relaxed);
  h.sum.store(0, std::memory_order_relaxed);
  h.max.store(0, std::memory_order_relaxed);
}

inline observer* observer_of(slot* s) noexcept {
  observer* o = s->obs.load(std::memory_order_relaxed);
  if (PYATTACH_LIKELY(o != nullptr)) return o;
  if (s->observe.load(std::memory_order_relaxed) == 0) return nullptr;
  return obs_prepare(s);
}

// The buffer this thread records into now, or nullptr: no trace runs, or this thread recorded
// nothing of it and `begin` is false. (Re)made for a new session under registry().mutex.
trace_buffer* buffer_for(slot* s, observer* o, bool begin) noexcept {
  const std::uint64_t session = g_session.load(std::memory_order_acquire);
  trace_buffer* b = o->buffer.load(std::memory_order_relaxed);
  if (PYATTACH_LIKELY(b != nullptr && b->session.load(std::memory_order_relaxed) == session &&
                      session != 0)) {
    return b;
  }
  if (session == 0 || !begin || (s->observe.load(std::memory_order_relaxed) & observe_trace) == 0) {
    return nullptr;
  }
  try {
    std::lock_guard<std::mutex> lock(registry().mutex);
    const std::uint32_t cap = g_capacity.load(std::memory_order_relaxed);
    if (b == nullptr || b->capacity != cap) {
      auto* fresh = new trace_buffer(cap);
      o->buffer.store(fresh, std::memory_order_release);
      delete b;  // the writer reads buffers only under this mutex
      b = fresh;
    }
    b->count.store(0, std::memory_order_relaxed);
    b->dropped.store(0, std::memory_order_relaxed);
    b->open_attached = b->open_detached = b->open_waiting = b->open_task = 0;
    b->session.store(session, std::memory_order_release);
    return b;
  } catch (...) {
    return nullptr;
  }
}

inline void record(trace_buffer* b, ev kind, std::uint64_t tick, std::uint64_t arg = 0,
                   std::uint32_t aux = 0) noexcept {
  const std::uint32_t n = b->count.load(std::memory_order_relaxed);
  if (PYATTACH_UNLIKELY(n >= b->capacity)) {
    b->dropped.store(b->dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
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
    b->dropped.store(b->dropped.load(std::memory_order_relaxed) + 2, std::memory_order_relaxed);
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

inline bool metrics_on(slot* s, observer* o) noexcept {
  if ((s->observe.load(std::memory_order_relaxed) & observe_metrics) == 0) return false;
  if (PYATTACH_UNLIKELY(o->epoch != g_obs_epoch.load(std::memory_order_relaxed))) obs_prepare(s);
  return true;
}
}  // namespace

observer* obs_prepare(slot* s) noexcept {
  observer* o = s->obs.load(std::memory_order_relaxed);
  const std::uint64_t epoch = g_obs_epoch.load(std::memory_order_relaxed);
  if (o == nullptr) {
    try {
      o = new observer;
      o->pool = tls_pool;
      o->epoch = epoch;
      std::lock_guard<std::mutex> lock(registry().mutex);
      s->obs.store(o, std::memory_order_release);
    } catch (...) {
      return nullptr;
    }
  } else if (o->epoch != epoch) {
    // reset_metrics() ran: this thread clears its own counters (single writer).
    o->epoch = epoch;
    o->retakes.store(0, std::memory_order_relaxed);
    clear(o->wait);
    clear(o->attached);
    clear(o->detached);
  }
  return o;
}

// ---- hooks ------------------------------------------------------------------------------------

void obs_wait_begin(slot* s) noexcept {
  observer* const o = observer_of(s);
  if (o == nullptr || o->wait_since != 0) return;  // waiting since its detach scope ended
  const std::uint64_t t = ticks();
  o->wait_since = t;
  if (trace_buffer* b = buffer_for(s, o, true)) record_begin(b, ev::wait_begin, b->open_waiting, t);
}

void obs_attached(slot* s, bool outermost) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr || o->wait_since == 0) return;
  const std::uint64_t t = ticks();
  if (metrics_on(s, o)) {
    o->wait.add(t - o->wait_since);
    if (!outermost) o->retakes.store(o->retakes.load(std::memory_order_relaxed) + 1,
                                     std::memory_order_relaxed);
  }
  o->wait_since = 0;
  o->hold_since = t;
  if (trace_buffer* b = buffer_for(s, o, false)) {
    record_end(b, ev::wait_end, b->open_waiting, t);
    if (outermost) record_begin(b, ev::attached_begin, b->open_attached, t);
  }
}

void obs_release(slot* s) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr) return;
  const std::uint64_t t = ticks();
  if (o->hold_since != 0 && metrics_on(s, o)) o->attached.add(t - o->hold_since);
  o->hold_since = 0;
  o->wait_since = 0;
  if (trace_buffer* b = buffer_for(s, o, false)) {
    // A scope that ends while detach scopes inside it are still open (out of order), or whose
    // detach scope could not re-attach (the gate closed: still waiting): close those first, so
    // that the spans still nest.
    record_end(b, ev::wait_end, b->open_waiting, t);
    record_end(b, ev::detached_end, b->open_detached, t);
    record_end(b, ev::attached_end, b->open_attached, t);
  }
}

void obs_detach_begin(slot* s) noexcept {
  observer* const o = observer_of(s);
  if (o == nullptr) return;
  const std::uint64_t t = ticks();
  if (o->hold_since != 0 && metrics_on(s, o)) o->attached.add(t - o->hold_since);
  o->hold_since = 0;
  o->detached_since = t;
  if (trace_buffer* b = buffer_for(s, o, true)) {
    record_begin(b, ev::detached_begin, b->open_detached, t);
  }
}

// The scope's end starts the wait for the GIL at the same tick: between the two the thread holds
// nothing, and a gap there would read as held (inside its attached span) in the trace.
void obs_detach_end(slot* s) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr || o->detached_since == 0) return;
  const std::uint64_t t = ticks();
  if (metrics_on(s, o)) o->detached.add(t - o->detached_since);
  o->detached_since = 0;
  o->wait_since = t;
  if (trace_buffer* b = buffer_for(s, o, false)) {
    record_end(b, ev::detached_end, b->open_detached, t);
    record_begin(b, ev::wait_begin, b->open_waiting, t);
  }
}

}  // namespace detail

bool attach_scope::attach_observed(detail::slot* s, std::uint64_t w,
                                   const source_site& site) noexcept {
  detail::observer* o = s->obs.load(std::memory_order_relaxed);
  if (PYATTACH_UNLIKELY(o == nullptr ||
                        o->epoch != detail::g_obs_epoch.load(std::memory_order_relaxed))) {
    o = detail::obs_prepare(s);  // first use, or reset_metrics() ran
    if (o == nullptr) {
      detail::no_hooks none;  // out of memory: attach unobserved
      return attach_outer(s, w, site, none);
    }
  }
  detail::obs_hooks hooks{s, o, s->observe.load(std::memory_order_relaxed), 0};
  return attach_outer(s, w, site, hooks);
}

bool attach_scope::end_observed(detail::slot* s, const source_site* at) noexcept {
  // The observer exists from the attach until the thread exits.
  detail::observer* const o = s != nullptr ? s->obs.load(std::memory_order_relaxed) : nullptr;
  if (o == nullptr) return false;
  detail::obs_hooks hooks{s, o, 0, 0};
  return end_outer(s, at, hooks);
}

namespace detail {

// The trace's half of the observed attach and release (detail::obs_hooks).
void obs_trace_took(slot* s, observer* o, std::uint64_t t0, std::uint64_t t1) noexcept {
  if (trace_buffer* b = buffer_for(s, o, true)) {
    record_begin(b, ev::wait_begin, b->open_waiting, t0);
    record_end(b, ev::wait_end, b->open_waiting, t1);
    record_begin(b, ev::attached_begin, b->open_attached, t1);
  }
}

void obs_trace_release(slot* s, observer* o, std::uint64_t t) noexcept {
  if (trace_buffer* b = buffer_for(s, o, false)) {
    record_end(b, ev::wait_end, b->open_waiting, t);
    record_end(b, ev::detached_end, b->open_detached, t);
    record_end(b, ev::attached_end, b->open_attached, t);
  }
}

void obs_worker_start(const std::string& pool, const std::string& worker) noexcept {
  try {
    tls_pool = pool;
    tls_worker = worker;
  } catch (...) {
  }
}

namespace {
// This worker's index in g_labels, added at its first traced task (never, without a trace).
std::uint32_t worker_label() noexcept {
  if (PYATTACH_LIKELY(tls_label != k_no_label)) return tls_label;
  try {
    std::lock_guard<std::mutex> lock(g_labels_mutex);
    g_labels.emplace_back(tls_pool, tls_worker);
    tls_label = static_cast<std::uint32_t>(g_labels.size() - 1);
  } catch (...) {
  }
  return tls_label;  // k_no_label if it could not be added: written with empty names
}
}  // namespace

bool tracing_anywhere() noexcept {
  return (g_bits.load(std::memory_order_relaxed) & observe_trace) != 0;
}

void obs_task(bool begin, std::uint64_t task_number) noexcept {
  slot* s = begin ? this_thread_slot() : tls_slot;
  if (s == nullptr) return;
  observer* const o = begin ? observer_of(s) : s->obs.load(std::memory_order_relaxed);
  if (o == nullptr) return;
  trace_buffer* b = buffer_for(s, o, begin);
  if (b == nullptr) return;
  const std::uint64_t t = ticks();
  if (begin) {
    record_begin(b, ev::task_begin, b->open_task, t, task_number, worker_label());
  } else {
    record_end(b, ev::task_end, b->open_task, t, task_number, worker_label());
  }
}

void trace_instant(const std::string& name, const std::string& message) noexcept {
  if (g_session.load(std::memory_order_acquire) == 0) return;
  try {
    const std::uint64_t t = ticks();
    std::lock_guard<std::mutex> lock(g_instants_mutex);
    if (g_instants.size() >= k_max_instants) {
      ++g_instants_dropped;
      return;
    }
    g_instants.push_back(instant_event{t, this_os_tid(), name, message});
  } catch (...) {
  }
}

// ---- thread exit ------------------------------------------------------------------------------

void obs_retire(slot* s) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr) return;
  // Spans still open (a thread that exits inside a scope was reported; its end closed them).
  obs_release(s);
  trace_buffer* b = o->buffer.load(std::memory_order_relaxed);
  std::string name;
  try {
    if (b != nullptr) name = thread_label(s->os_tid);
  } catch (...) {
  }
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    s->obs.store(nullptr, std::memory_order_relaxed);
    if (o->epoch == g_obs_epoch.load(std::memory_order_relaxed)) {
      try {
        retired_metrics& r = retired()[o->pool];
        ++r.threads;
        r.retakes += o->retakes.load(std::memory_order_relaxed);
        const obs_histogram* h[3] = {&o->wait, &o->attached, &o->detached};
        std::uint64_t* dst[3] = {r.wait, r.attached, r.detached};
        for (int i = 0; i < 3; ++i) {
          for (unsigned k = 0; k < obs_buckets; ++k) {
            dst[i][k] += h[i]->bucket[k].load(std::memory_order_relaxed);
          }
          r.sums[i] += h[i]->sum.load(std::memory_order_relaxed);
          r.maxes[i] = std::max(r.maxes[i], h[i]->max.load(std::memory_order_relaxed));
        }
      } catch (...) {
      }
    }
  }
  if (b != nullptr) {
    try {
      std::lock_guard<std::mutex> lock(g_trace_mutex);
      const std::uint64_t session = g_session.load(std::memory_order_acquire);
      if (session != 0 && b->session.load(std::memory_order_relaxed) == session &&
          b->count.load(std::memory_order_relaxed) + b->dropped.load(std::memory_order_relaxed) > 0) {
        retired_buffers().push_back(retired_buffer{s->os_tid, name, std::unique_ptr<trace_buffer>(b)});
        b = nullptr;
      }
    } catch (...) {
    }
    delete b;
  }
  delete o;
}

// ---- switches ---------------------------------------------------------------------------------

namespace {
// Sets every registered slot's observe byte to g_bits (and new slots copy it: make_slot).
void publish_bits(std::uint8_t bits) noexcept {
  std::lock_guard<std::mutex> lock(registry().mutex);
  g_bits.store(bits, std::memory_order_relaxed);
  for (slot* x : registry().slots) x->observe.store(bits, std::memory_order_relaxed);
}

void set_bit(std::uint8_t bit, bool on) noexcept {
  clock_init();
  std::uint8_t bits = g_bits.load(std::memory_order_relaxed);
  bits = on ? static_cast<std::uint8_t>(bits | bit) : static_cast<std::uint8_t>(bits & ~bit);
  publish_bits(bits);
}
}  // namespace

std::uint8_t observe_bits() noexcept { return g_bits.load(std::memory_order_relaxed); }

void observe_init_once() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* m = std::getenv("PYATTACH_METRICS");
    if (m != nullptr && *m != '\0' && std::strcmp(m, "0") != 0) set_metrics(true);
    const char* t = std::getenv("PYATTACH_TRACE");
    if (t != nullptr && *t != '\0' && start_trace()) {
      std::lock_guard<std::mutex> lock(g_trace_mutex);
      env_trace_path() = t;
    }
  });
}

// ---- the trace writer -------------------------------------------------------------------------

namespace {
std::string json_escape(const std::string& in) {
  std::string out;
  out.reserve(in.size() + 2);
  for (const char c : in) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

struct thread_events {
  std::uint64_t os_tid = 0;
  unsigned long ident = 0;
  std::string os_name;
  std::string python_name;
  std::vector<trace_event> events;
  std::uint64_t dropped = 0;
};

void copy_buffer(const trace_buffer* b, std::uint64_t session, thread_events& out) {
  if (b == nullptr || b->session.load(std::memory_order_acquire) != session) return;
  const std::uint32_t n = b->count.load(std::memory_order_acquire);
  out.events.assign(b->events.get(), b->events.get() + n);
  out.dropped = b->dropped.load(std::memory_order_relaxed);
}

const char* span_name(ev kind) noexcept {
  switch (kind) {
    case ev::wait_begin: case ev::wait_end: return "waiting for the GIL";
    case ev::attached_begin: case ev::attached_end: return "attached";
    case ev::detached_begin: case ev::detached_end: return "detached (blocking C++)";
    case ev::task_begin: case ev::task_end: return "task";
  }
  return "?";
}

bool is_begin(ev kind) noexcept {
  return kind == ev::wait_begin || kind == ev::attached_begin || kind == ev::detached_begin ||
         kind == ev::task_begin;
}

// threading's names of the live threads, if the calling thread holds the GIL or can take it for a
// moment. Never called with g_trace_mutex held: a thread holding the GIL may be waiting for it.
std::map<unsigned long, std::string> names_if_possible(bool may_attach) noexcept {
  try {
    if (attached_here(tls_slot)) return python_thread_names();
    if (may_attach && Py_IsInitialized() != 0) {
      attach_scope py(nothrow);
      if (py) return python_thread_names();
    }
  } catch (...) {
  }
  return {};
}

// Called with g_trace_mutex held. Writes the running session's events to `path`.
trace_result write_trace_locked(const std::string& path,
                                const std::map<unsigned long, std::string>& names) noexcept {
  trace_result result;
  const std::uint64_t session = g_session.load(std::memory_order_acquire);
  if (session == 0) {
    result.error = "no trace is running";
    return result;
  }
  try {
    const std::uint64_t now = ticks();
    std::vector<thread_events> threads;
    {
      std::lock_guard<std::mutex> lock(registry().mutex);
      for (slot* x : registry().slots) {
        observer* o = x->obs.load(std::memory_order_acquire);
        if (o == nullptr) continue;
        thread_events t;
        t.os_tid = x->os_tid;
        t.ident = x->py_ident;
        copy_buffer(o->buffer.load(std::memory_order_acquire), session, t);
        if (!t.events.empty() || t.dropped != 0) threads.push_back(std::move(t));
      }
    }
    for (thread_events& t : threads) t.os_name = thread_label(t.os_tid);
    for (const retired_buffer& r : retired_buffers()) {
      thread_events t;
      t.os_tid = r.os_tid;
      t.os_name = r.name + " [exited]";
      copy_buffer(r.buffer.get(), session, t);
      threads.push_back(std::move(t));
    }
    std::vector<instant_event> instants;
    std::uint64_t instants_dropped = 0;
    {
      std::lock_guard<std::mutex> lock(g_instants_mutex);
      instants = g_instants;
      instants_dropped = g_instants_dropped;
    }
    std::vector<std::pair<std::string, std::string>> labels;
    {
      std::lock_guard<std::mutex> lock(g_labels_mutex);
      labels = g_labels;
    }
    const double per_tick = ns_per_tick();
    const auto us = [&](std::uint64_t tick) {
      // Relative to clock_init, in CLOCK_MONOTONIC microseconds.
      const double ns = static_cast<double>(g_ns0) +
                        (static_cast<double>(tick) - static_cast<double>(g_tick0)) * per_tick;
      return ns / 1000.0;
    };
    const long pid = static_cast<long>(::getpid());
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) {
      result.error = "cannot open " + path + ": " + std::strerror(errno);
      return result;
    }
    std::fprintf(f, "{\"traceEvents\":[\n");
    std::fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%ld,\"tid\":0,"
                    "\"args\":{\"name\":\"pyattach trace (pid %ld)\"}}", pid, pid);
    std::uint64_t written = 0, dropped = instants_dropped;
    // A thread's instants go among its spans in time order (a thread's events must be in time
    // order: tools/trace_check.py); those of threads with no spans follow them all.
    std::stable_sort(instants.begin(), instants.end(),
                     [](const instant_event& a, const instant_event& b) {
                       return a.os_tid != b.os_tid ? a.os_tid < b.os_tid : a.tick < b.tick;
                     });
    std::vector<bool> instant_written(instants.size(), false);
    const auto write_instant = [&](std::size_t k) {
      const instant_event& i = instants[k];
      std::string args;
      if (!i.message.empty()) args = ",\"args\":{\"message\":\"" + json_escape(i.message) + "\"}";
      const bool misuse = i.name.rfind("misuse", 0) == 0;
      std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"i\",\"s\":\"%s\",\"pid\":%ld,"
                      "\"tid\":%" PRIu64 ",\"ts\":%.3f%s}",
                   json_escape(i.name).c_str(), misuse ? "misuse" : "pyattach", misuse ? "t" : "g",
                   pid, i.os_tid, us(i.tick), args.c_str());
      instant_written[k] = true;
      ++written;
    };
    std::string threads_meta;
    for (const thread_events& t : threads) {
      std::string name = t.os_name;
      const auto it = names.find(t.ident);
      if (t.ident != 0 && it != names.end()) name += " [python: " + it->second + "]";
      std::fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%ld,\"tid\":%" PRIu64
                      ",\"args\":{\"name\":\"%s\"}}", pid, t.os_tid, json_escape(name).c_str());
      // This thread's instants, [next, last): written before the first event after each.
      const auto before = [](const instant_event& i, std::uint64_t tid) { return i.os_tid < tid; };
      std::size_t next = static_cast<std::size_t>(
          std::lower_bound(instants.begin(), instants.end(), t.os_tid, before) - instants.begin());
      std::size_t last = next;
      while (last < instants.size() && instants[last].os_tid == t.os_tid) ++last;
      const auto instants_until = [&](std::uint64_t tick) {
        for (; next < last && instants[next].tick <= tick; ++next) {
          if (!instant_written[next]) write_instant(next);  // a reused tid's: written already
        }
      };
      // Spans still open now: closed at the write's time, marked open.
      std::vector<const trace_event*> stack;
      for (const trace_event& e : t.events) {
        instants_until(e.tick);
        if (is_begin(e.kind)) {
          stack.push_back(&e);
        } else if (!stack.empty()) {
          stack.pop_back();
        }
        std::string args;
        if (e.kind == ev::task_begin || e.kind == ev::task_end) {
          const bool known = e.aux < labels.size();
          args = ",\"args\":{\"pool\":\"" + json_escape(known ? labels[e.aux].first : "") +
                 "\",\"worker\":\"" + json_escape(known ? labels[e.aux].second : "") +
                 "\",\"task\":" + std::to_string(e.arg) + "}";
        }
        std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"%s\",\"pid\":%ld,\"tid\":%"
                        PRIu64 ",\"ts\":%.3f%s}",
                     span_name(e.kind), e.kind == ev::task_begin || e.kind == ev::task_end ? "pool" : "gil",
                     is_begin(e.kind) ? "B" : "E", pid, t.os_tid, us(e.tick), args.c_str());
        ++written;
      }
      instants_until(UINT64_MAX);  // recorded before `now`: before the open spans' closing
      const double end_us = std::max(us(now), t.events.empty() ? 0.0 : us(t.events.back().tick));
      for (auto it2 = stack.rbegin(); it2 != stack.rend(); ++it2) {
        std::fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"E\",\"pid\":%ld,\"tid\":%"
                        PRIu64 ",\"ts\":%.3f,\"args\":{\"open\":true}}",
                     span_name((*it2)->kind), (*it2)->kind == ev::task_begin ? "pool" : "gil", pid,
                     t.os_tid, end_us);
        ++written;
      }
      dropped += t.dropped;
      if (!threads_meta.empty()) threads_meta += ",";
      threads_meta += "{\"tid\":" + std::to_string(t.os_tid) + ",\"name\":\"" + json_escape(name) +
                      "\",\"events\":" + std::to_string(t.events.size()) +
                      ",\"dropped\":" + std::to_string(t.dropped) + "}";
    }
    for (std::size_t k = 0; k < instants.size(); ++k) {
      if (!instant_written[k]) write_instant(k);
    }
    std::fprintf(f, "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":{\"pyattach\":{\"clock\":\"%s\","
                    "\"dropped\":%" PRIu64 ",\"instants_dropped\":%" PRIu64 ",\"threads\":[%s]}}}\n",
                 g_obs_tsc.load(std::memory_order_relaxed) ? "tsc" : "clock_gettime(CLOCK_MONOTONIC)", dropped, instants_dropped,
                 threads_meta.c_str());
    const bool ok = std::fflush(f) == 0;
    std::fclose(f);
    if (!ok) {
      result.error = "cannot write " + path;
      return result;
    }
    result.ok = true;
    result.events = written;
    result.dropped = dropped;
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}

void end_session_locked() noexcept {
  g_session.store(0, std::memory_order_release);
  set_bit(observe_trace, false);
  retired_buffers().clear();
  std::lock_guard<std::mutex> lock(g_instants_mutex);
  g_instants.clear();
  g_instants_dropped = 0;
}
}  // namespace

void observe_gate_closed() noexcept {
  const auto names = names_if_possible(false);  // the gate is closed: no attaching
  std::lock_guard<std::mutex> lock(g_trace_mutex);
  if (env_trace_path().empty()) return;
  const trace_result r = write_trace_locked(env_trace_path(), names);
  if (!r.ok) std::fprintf(stderr, "pyattach: PYATTACH_TRACE: %s\n", r.error.c_str());
  env_trace_path().clear();
  end_session_locked();
}

// ---- snapshots --------------------------------------------------------------------------------

namespace {
duration_histogram to_durations(const std::uint64_t* buckets, std::uint64_t sum, std::uint64_t max,
                                double per_tick) {
  duration_histogram h;
  const auto ns = [per_tick](double ticks_) {
    return std::chrono::nanoseconds(static_cast<std::int64_t>(std::llround(ticks_ * per_tick)));
  };
  for (unsigned b = 0; b < obs_buckets; ++b) {
    if (buckets[b] == 0) continue;
    h.count += buckets[b];
    h.buckets.emplace_back(ns(static_cast<double>(bucket_end(b))), buckets[b]);
  }
  h.total = ns(static_cast<double>(sum));
  h.max = ns(static_cast<double>(max));
  return h;
}

duration_histogram read(const obs_histogram& t, double per_tick) {
  std::uint64_t b[obs_buckets];
  for (unsigned k = 0; k < obs_buckets; ++k) b[k] = t.bucket[k].load(std::memory_order_relaxed);
  return to_durations(b, t.sum.load(std::memory_order_relaxed),
                      t.max.load(std::memory_order_relaxed), per_tick);
}
}  // namespace

}  // namespace detail

std::chrono::nanoseconds duration_histogram::quantile(double q) const noexcept {
  if (count == 0) return std::chrono::nanoseconds(0);
  q = std::min(1.0, std::max(0.0, q));
  const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count)));
  std::uint64_t seen = 0;
  for (const auto& [upper, n] : buckets) {
    seen += n;
    if (seen >= std::max<std::uint64_t>(rank, 1)) return std::min(upper, max);
  }
  return max;
}

std::chrono::nanoseconds duration_histogram::mean() const noexcept {
  return count == 0 ? std::chrono::nanoseconds(0)
                    : std::chrono::nanoseconds(total.count() / static_cast<std::int64_t>(count));
}

duration_histogram& duration_histogram::operator+=(const duration_histogram& other) {
  std::map<std::int64_t, std::uint64_t> merged;
  for (const auto& [upper, n] : buckets) merged[upper.count()] += n;
  for (const auto& [upper, n] : other.buckets) merged[upper.count()] += n;
  buckets.clear();
  for (const auto& [upper, n] : merged) buckets.emplace_back(std::chrono::nanoseconds(upper), n);
  count += other.count;
  total += other.total;
  max = std::max(max, other.max);
  return *this;
}

void set_metrics(bool on) noexcept { detail::set_bit(detail::observe_metrics, on); }

bool metrics_enabled() noexcept {
  return (detail::g_bits.load(std::memory_order_relaxed) & detail::observe_metrics) != 0;
}

void reset_metrics() noexcept {
  std::lock_guard<std::mutex> lock(detail::registry().mutex);
  detail::g_obs_epoch.fetch_add(1, std::memory_order_relaxed);
  detail::retired().clear();
}

metrics_snapshot metrics() {
  using namespace detail;
  clock_init();
  metrics_snapshot snap;
  snap.enabled = metrics_enabled();
  snap.clock = g_obs_tsc.load(std::memory_order_relaxed) ? "tsc" : "clock_gettime(CLOCK_MONOTONIC)";
  const double per_tick = ns_per_tick();
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    const std::uint64_t epoch = g_obs_epoch.load(std::memory_order_relaxed);
    for (slot* x : registry().slots) {
      observer* o = x->obs.load(std::memory_order_acquire);
      if (o == nullptr) continue;
      thread_metrics t;
      t.os_tid = x->os_tid;
      t.ident = x->py_ident;
      t.pool = o->pool;  // a worker names its pool before its first attach (obs_worker_start)
      // A thread that has not noticed a reset yet: its counters are from before it.
      if (o->epoch == epoch) {
        t.wait = read(o->wait, per_tick);
        t.attaches = t.wait.count - std::min(t.wait.count, o->retakes.load(std::memory_order_relaxed));
        t.attached = read(o->attached, per_tick);
        t.detached = read(o->detached, per_tick);
      }
      snap.threads.push_back(std::move(t));
    }
    for (const auto& [pool, r] : retired()) {
      thread_metrics t;
      t.alive = false;
      t.name = pool.empty() ? "<exited threads>" : "<exited workers of " + pool + ">";
      t.pool = pool;
      t.wait = to_durations(r.wait, r.sums[0], r.maxes[0], per_tick);
      t.attaches = t.wait.count - std::min(t.wait.count, r.retakes);
      t.attached = to_durations(r.attached, r.sums[1], r.maxes[1], per_tick);
      t.detached = to_durations(r.detached, r.sums[2], r.maxes[2], per_tick);
      snap.threads.push_back(std::move(t));
    }
  }
  for (thread_metrics& t : snap.threads) {
    if (t.alive) t.name = thread_label(t.os_tid);
  }
  std::map<std::string, pool_metrics> pools;
  for (const thread_metrics& t : snap.threads) {
    if (t.pool.empty()) continue;
    pool_metrics& p = pools[t.pool];
    p.name = t.pool;
    if (t.alive) ++p.workers;
    p.attaches += t.attaches;
    p.wait += t.wait;
    p.attached += t.attached;
    p.detached += t.detached;
  }
  for (auto& [name, p] : pools) snap.pools.push_back(std::move(p));
  return snap;
}

namespace {
std::string ms(std::chrono::nanoseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(d.count()) / 1e6);
  return buf;
}

std::string hist_text(const duration_histogram& h) {
  return std::to_string(h.count) + " total " + ms(h.total) + " p50 " + ms(h.quantile(0.5)) +
         " p90 " + ms(h.quantile(0.9)) + " p99 " + ms(h.quantile(0.99)) + " max " + ms(h.max);
}
}  // namespace

std::string to_string(const metrics_snapshot& snapshot) {
  std::string out = std::string("pyattach metrics (") + (snapshot.enabled ? "on" : "off") +
                    ", clock " + snapshot.clock + "; durations in ms)\n";
  const auto block = [&out](const std::string& who, std::uint64_t attaches,
                            const duration_histogram& wait, const duration_histogram& attached,
                            const duration_histogram& detached) {
    out += who + ": attaches " + std::to_string(attaches) + "\n";
    out += "  waiting  " + hist_text(wait) + "\n";
    out += "  attached " + hist_text(attached) + "\n";
    out += "  detached " + hist_text(detached) + "\n";
  };
  for (const thread_metrics& t : snapshot.threads) {
    block("thread " + t.name + (t.pool.empty() ? "" : " of pool " + t.pool), t.attaches, t.wait,
          t.attached, t.detached);
  }
  for (const pool_metrics& p : snapshot.pools) {
    block("pool " + p.name + " (" + std::to_string(p.workers) + " live workers)", p.attaches,
          p.wait, p.attached, p.detached);
  }
  return out;
}

bool start_trace(trace_options options) noexcept {
  using namespace detail;
  if (options.events_per_thread < 16) options.events_per_thread = 16;
  std::lock_guard<std::mutex> lock(g_trace_mutex);
  if (g_session.load(std::memory_order_relaxed) != 0) return false;
  clock_init();
  static std::uint64_t sessions = 0;
  g_capacity.store(options.events_per_thread, std::memory_order_relaxed);
  retired_buffers().clear();
  {
    std::lock_guard<std::mutex> ilock(g_instants_mutex);
    g_instants.clear();
    g_instants_dropped = 0;
  }
  g_session.store(++sessions, std::memory_order_release);
  set_bit(observe_trace, true);
  return true;
}

bool trace_running() noexcept { return detail::g_session.load(std::memory_order_acquire) != 0; }

trace_result flush_trace(const std::string& path) noexcept {
  const auto names = detail::names_if_possible(true);
  std::lock_guard<std::mutex> lock(detail::g_trace_mutex);
  return detail::write_trace_locked(path, names);
}

trace_result stop_trace(const std::string& path) noexcept {
  const auto names = detail::names_if_possible(true);
  std::lock_guard<std::mutex> lock(detail::g_trace_mutex);
  trace_result r = detail::write_trace_locked(path, names);
  if (detail::g_session.load(std::memory_order_relaxed) != 0) {
    detail::env_trace_path().clear();
    detail::end_session_locked();
  }
  return r;
}

void trace_begin(trace_span span) noexcept {
  using namespace detail;
  if (g_session.load(std::memory_order_acquire) == 0) return;
  slot* s = this_thread_slot();
  if (s == nullptr) return;
  observer* o = observer_of(s);
  if (o == nullptr) return;
  trace_buffer* b = buffer_for(s, o, true);
  if (b == nullptr) return;
  const std::uint64_t t = ticks();
  switch (span) {
    case trace_span::waiting: record_begin(b, ev::wait_begin, b->open_waiting, t); break;
    case trace_span::attached: record_begin(b, ev::attached_begin, b->open_attached, t); break;
    case trace_span::detached: record_begin(b, ev::detached_begin, b->open_detached, t); break;
  }
}

void trace_end(trace_span span) noexcept {
  using namespace detail;
  slot* s = tls_slot;
  observer* o = s != nullptr ? s->obs.load(std::memory_order_relaxed) : nullptr;
  trace_buffer* b = o != nullptr ? buffer_for(s, o, false) : nullptr;
  if (b == nullptr) return;
  const std::uint64_t t = ticks();
  switch (span) {
    case trace_span::waiting: record_end(b, ev::wait_end, b->open_waiting, t); break;
    case trace_span::attached: record_end(b, ev::attached_end, b->open_attached, t); break;
    case trace_span::detached: record_end(b, ev::detached_end, b->open_detached, t); break;
  }
}

}  // namespace pyattach

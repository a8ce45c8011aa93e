// src/trace_recording.cpp — the timeline trace's recording (pyattach/observe.hpp): sessions,
// each thread's buffer, the slow paths' hooks (metrics and trace), pool task events, instants,
// and start/flush/stop. The file itself is written by trace_writer.cpp.
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "observe_internal.hpp"

namespace pyattach {
namespace detail {

std::atomic<std::uint64_t> g_session{0};
std::mutex g_trace_mutex;
std::atomic<std::uint32_t> g_capacity{65536};
// PYATTACH_TRACE's path, while its trace runs. Made on first use, not a namespace-scope string:
// observe_init_once sets it from gate.cpp's load-time bind, which for an extension module runs
// during the module's static initialization, possibly before this file's dynamic initializers,
// which would then construct an empty string over it (and no file would be written at exit).
std::string& env_trace_path() {
  static auto* path = new std::string;  // read by the gate's exit hook: never destroyed
  return *path;
}
thread_local std::string tls_pool;
std::mutex g_labels_mutex;
std::vector<std::pair<std::string, std::string>> g_labels;
std::vector<retired_buffer>& retired_buffers() {
  static auto* v = new std::vector<retired_buffer>;
  return *v;
}
std::mutex g_instants_mutex;
std::vector<instant_event> g_instants;
std::uint64_t g_instants_dropped = 0;

namespace {
thread_local std::string tls_worker;  // set by obs_worker_start on pool workers
constexpr std::uint32_t k_no_label = ~std::uint32_t{0};
thread_local std::uint32_t tls_label = k_no_label;  // its g_labels index, once it traced a task
constexpr std::size_t k_max_instants = 4096;
}  // namespace

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

// ---- hooks ------------------------------------------------------------------------------------

namespace {
// The calling thread's figures of sub-interpreter `id`, made now if it has none (the last entry
// sums every interpreter past the others, as id -1). Owner only.
obs_interp_figures& figures_of(observer* o, std::int64_t id) noexcept {
  const std::uint32_t n = o->interp_count.load(std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < n; ++k) {
    const std::int64_t have = o->interps[k].id.load(std::memory_order_relaxed);
    if (have == id || have == -1) return o->interps[k];
  }
  obs_interp_figures& f = o->interps[n];  // n < obs_interps: the last one, once made, matches all
  f.id.store(n + 1 == obs_interps ? -1 : id, std::memory_order_relaxed);
  o->interp_count.store(n + 1, std::memory_order_release);
  return f;
}

// The hold that ends at tick t: its attached time, counted for the thread and for the
// sub-interpreter it was in, if metrics are on. Returns whether one was open.
bool end_hold(slot* s, observer* o, std::uint64_t t) noexcept {
  const bool open = o->hold_since != 0;
  if (open && metrics_on(s, o)) {
    const std::uint64_t d = t - o->hold_since;
    o->attached.add(d);
    if (o->hold_interp != 0) add_owned(figures_of(o, o->hold_interp).attached, d);
  }
  o->hold_since = 0;
  o->hold_interp = 0;
  return open;
}
}  // namespace

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
    if (!outermost) add_owned(o->retakes, 1);
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
  end_hold(s, o, t);
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
  end_hold(s, o, t);
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

// ---- sub-interpreter scopes' hooks (detail/observe_hooks.hpp) ----
// Spans: a thread's attached spans never nest. A scope that swaps in another interpreter's state
// ends the attached span of the state it swaps out (obs_sub_release) and, when it ends, begins a
// new one for that state once it is current again (resume). So the innermost open span among
// attached, waiting and detached always names the GIL the thread holds, if any: the begins of
// a sub-interpreter's spans carry its id and whether it has a GIL of its own
// (trace_writer.cpp: args interp and gil).

void obs_sub_ask(slot* s, obs_in in) noexcept {
  observer* const o = observer_of(s);
  if (o == nullptr) return;
  const std::uint64_t t = ticks();
  o->wait_since = t;
  if (trace_buffer* b = buffer_for(s, o, true)) {
    record_begin(b, ev::wait_begin, b->open_waiting, t, static_cast<std::uint64_t>(in.id),
                 in.own_gil ? 1u : 0u);
  }
}

void obs_sub_took(slot* s, obs_in in, obs_take how) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr || o->wait_since == 0) return;  // its ask (or detach end) recorded nothing
  const std::uint64_t t = ticks();
  if (metrics_on(s, o)) {
    const std::uint64_t d = t - o->wait_since;
    o->wait.add(d);
    if (how != obs_take::attach) add_owned(o->retakes, 1);
    if (in.id != 0) {
      obs_interp_figures& f = figures_of(o, in.id);
      add_owned(f.wait, d);
      if (how == obs_take::attach) add_owned(f.attaches, 1);
    }
  }
  o->wait_since = 0;
  o->hold_since = t;
  o->hold_interp = in.id;
  if (trace_buffer* b = buffer_for(s, o, false)) {
    record_end(b, ev::wait_end, b->open_waiting, t);
    if (how != obs_take::reattach) {
      record_begin(b, ev::attached_begin, b->open_attached, t, static_cast<std::uint64_t>(in.id),
                   in.own_gil ? 1u : 0u);
    }
  }
}

bool obs_sub_release(slot* s) noexcept {
  observer* const o = s->obs.load(std::memory_order_relaxed);
  if (o == nullptr) return false;
  const std::uint64_t t = ticks();
  // No hold: its take was not observed, and the innermost attached span, if any, is another's.
  if (!end_hold(s, o, t)) return false;
  if (trace_buffer* b = buffer_for(s, o, false)) {
    record_end(b, ev::attached_end, b->open_attached, t);
  }
  return true;
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

namespace {
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

}  // namespace detail

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

namespace {
// A span kind of the public API: its two events and the buffer's count of them open.
struct span_events {
  detail::ev begin, end;
  std::uint8_t detail::trace_buffer::*open;
};

span_events events_of(trace_span span) noexcept {
  using detail::ev;
  using detail::trace_buffer;
  switch (span) {
    case trace_span::waiting: return {ev::wait_begin, ev::wait_end, &trace_buffer::open_waiting};
    case trace_span::attached:
      return {ev::attached_begin, ev::attached_end, &trace_buffer::open_attached};
    case trace_span::detached: break;
  }
  return {ev::detached_begin, ev::detached_end, &trace_buffer::open_detached};
}
}  // namespace

void trace_begin(trace_span span) noexcept {
  using namespace detail;
  if (g_session.load(std::memory_order_acquire) == 0) return;
  slot* s = this_thread_slot();
  if (s == nullptr) return;
  observer* o = observer_of(s);
  if (o == nullptr) return;
  trace_buffer* b = buffer_for(s, o, true);
  if (b == nullptr) return;
  const span_events e = events_of(span);
  record_begin(b, e.begin, b->*e.open, ticks());
}

void trace_end(trace_span span) noexcept {
  using namespace detail;
  slot* s = tls_slot;
  observer* o = s != nullptr ? s->obs.load(std::memory_order_relaxed) : nullptr;
  trace_buffer* b = o != nullptr ? buffer_for(s, o, false) : nullptr;
  if (b == nullptr) return;
  const span_events e = events_of(span);
  record_end(b, e.end, b->*e.open, ticks());
}

}  // namespace pyattach

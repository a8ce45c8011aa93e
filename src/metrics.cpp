// src/metrics.cpp — GIL metrics (pyattach/observe.hpp): each thread's observer (made, reset,
// retired at thread exit), the observed attach path, the switches, and snapshots.
// observe_internal.hpp states who owns what.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "observe_internal.hpp"

namespace pyattach {
namespace detail {

std::atomic<std::uint64_t> g_obs_epoch{1};
std::atomic<std::uint8_t> g_bits{0};

// ---- histograms -------------------------------------------------------------------------------
// The first value above bucket b of obs_bucket (detail/slot.hpp), as a double (the last bucket's
// end is 2^64).
double bucket_end(unsigned b) noexcept {
  const unsigned shift = b / 4, sub = b % 4;
  return std::ldexp(static_cast<double>(5 + sub), static_cast<int>(shift));
}

std::map<std::string, retired_metrics>& retired() {
  static auto* m = new std::map<std::string, retired_metrics>;  // threads may exit after main
  return *m;
}

namespace {
void clear(obs_histogram& h) noexcept {
  for (auto& b : h.bucket) b.store(0, std::memory_order_relaxed);
  h.sum.store(0, std::memory_order_relaxed);
  h.max.store(0, std::memory_order_relaxed);
}

// The observer's per sub-interpreter figures (detail/observe_hooks.hpp), read from any thread.
std::vector<std::pair<std::int64_t, interp_ticks>> sub_figures(const observer* o) {
  std::vector<std::pair<std::int64_t, interp_ticks>> out;
  const std::uint32_t n = o->interp_count.load(std::memory_order_acquire);
  for (std::uint32_t k = 0; k < n && k < obs_interps; ++k) {
    const obs_interp_figures& f = o->interps[k];
    out.emplace_back(f.id.load(std::memory_order_relaxed),
                     interp_ticks{f.attaches.load(std::memory_order_relaxed),
                                  f.wait.load(std::memory_order_relaxed),
                                  f.attached.load(std::memory_order_relaxed)});
  }
  return out;
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
    o->interp_count.store(0, std::memory_order_release);  // before the entries are reused
    for (obs_interp_figures& f : o->interps) {
      f.attaches.store(0, std::memory_order_relaxed);
      f.wait.store(0, std::memory_order_relaxed);
      f.attached.store(0, std::memory_order_relaxed);
    }
  }
  return o;
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
        for (const auto& [id, f] : sub_figures(o)) {
          auto it = std::find_if(r.interps.begin(), r.interps.end(),
                                 [id = id](const auto& x) { return x.first == id; });
          if (it == r.interps.end()) it = r.interps.insert(it, {id, interp_ticks{}});
          it->second.attaches += f.attaches;
          it->second.wait += f.wait;
          it->second.attached += f.attached;
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

}  // namespace

void set_bit(std::uint8_t bit, bool on) noexcept {
  clock_init();
  std::uint8_t bits = g_bits.load(std::memory_order_relaxed);
  bits = on ? static_cast<std::uint8_t>(bits | bit) : static_cast<std::uint8_t>(bits & ~bit);
  publish_bits(bits);
}

std::uint8_t observe_bits() noexcept { return g_bits.load(std::memory_order_relaxed); }

bool observing_anywhere() noexcept { return g_bits.load(std::memory_order_relaxed) != 0; }

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

// thread_metrics::interpreters from a thread's totals (attaches, and the wait and attached sums
// in ticks) and its sub-interpreters' figures: the main interpreter's row is what they leave.
std::vector<interpreter_metrics> interpreter_rows(
    interp_ticks main, const std::vector<std::pair<std::int64_t, interp_ticks>>& subs,
    double per_tick) {
  const auto row = [per_tick](std::int64_t id, const interp_ticks& f) {
    const auto ns = [per_tick](std::uint64_t ticks_) {
      return std::chrono::nanoseconds(
          static_cast<std::int64_t>(std::llround(static_cast<double>(ticks_) * per_tick)));
    };
    return interpreter_metrics{id, f.attaches, ns(f.wait), ns(f.attached)};
  };
  std::vector<interpreter_metrics> rows;
  for (const auto& [id, f] : subs) {  // a snapshot of a busy thread may be a few events apart
    main.attaches -= std::min(main.attaches, f.attaches);
    main.wait -= std::min(main.wait, f.wait);
    main.attached -= std::min(main.attached, f.attached);
  }
  if (main.attaches != 0 || main.wait != 0 || main.attached != 0) rows.push_back(row(0, main));
  for (const auto& [id, f] : subs) rows.push_back(row(id, f));
  return rows;
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
    for_each_observer([&](slot* x, observer* o) {
      thread_metrics& t = snap.threads.emplace_back();
      t.os_tid = x->os_tid;
      t.ident = x->py_ident;
      t.pool = o->pool;  // a worker names its pool before its first attach (obs_worker_start)
      // A thread that has not noticed a reset yet: its counters are from before it.
      if (o->epoch != epoch) return;
      t.wait = read(o->wait, per_tick);
      t.attaches = t.wait.count - std::min(t.wait.count, o->retakes.load(std::memory_order_relaxed));
      t.attached = read(o->attached, per_tick);
      t.detached = read(o->detached, per_tick);
      t.interpreters = interpreter_rows(
          interp_ticks{t.attaches, o->wait.sum.load(std::memory_order_relaxed),
                       o->attached.sum.load(std::memory_order_relaxed)},
          sub_figures(o), per_tick);
    });
    for (const auto& [pool, r] : retired()) {
      thread_metrics t;
      t.alive = false;
      t.name = pool.empty() ? "<exited threads>" : "<exited workers of " + pool + ">";
      t.pool = pool;
      t.wait = to_durations(r.wait, r.sums[0], r.maxes[0], per_tick);
      t.attaches = t.wait.count - std::min(t.wait.count, r.retakes);
      t.attached = to_durations(r.attached, r.sums[1], r.maxes[1], per_tick);
      t.detached = to_durations(r.detached, r.sums[2], r.maxes[2], per_tick);
      t.interpreters =
          interpreter_rows(interp_ticks{t.attaches, r.sums[0], r.sums[1]}, r.interps, per_tick);
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
    // By interpreter, for threads that used a sub-interpreter.
    if (t.interpreters.size() > 1 || (!t.interpreters.empty() && t.interpreters[0].interpreter)) {
      for (const interpreter_metrics& i : t.interpreters) {
        out += "  in interpreter " + std::to_string(i.interpreter) + ": attaches " +
               std::to_string(i.attaches) + " waiting " + ms(i.wait) + " attached " +
               ms(i.attached) + "\n";
      }
    }
  }
  for (const pool_metrics& p : snapshot.pools) {
    block("pool " + p.name + " (" + std::to_string(p.workers) + " live workers)", p.attaches,
          p.wait, p.attached, p.detached);
  }
  return out;
}

}  // namespace pyattach

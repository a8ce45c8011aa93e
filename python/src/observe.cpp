// python/src/observe.cpp — the bindings of pyattach's thread report (report.hpp) and of its
// metrics and trace (observe.hpp), for python/pyattach/__init__.py, which gives them their
// Python shape. They see this package's copy of pyattach: its executors' workers.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "pyattach/pyattach.hpp"

using namespace nb::literals;

namespace {

nb::list thread_report() {
  const pyattach::thread_report report = pyattach::make_thread_report();
  nb::list out;
  for (const auto& t : report.threads) {
    out.append(nb::make_tuple(t.python_name, t.ident, t.os_tid, t.pool,
                              pyattach::to_string(t.state), t.scopes, t.has_thread_state,
                              t.made_by_pyattach, t.is_caller, t.interpreter));
  }
  return out;
}

// ---- metrics and trace (pyattach/observe.hpp) ---------------------------------------------------
// The GIL is released around every call below that takes one of the library's mutexes, may sleep
// (the clock's calibration, ~5 ms on first use) or writes a file: other Python threads, and this
// package's workers in particular, keep running meanwhile, and a trace that is still recording
// does not show them stalled by the call that observes them.

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

nb::dict histogram_dict(const pyattach::duration_histogram& h) {
  nb::dict d;
  d["count"] = h.count;
  d["total_s"] = seconds(h.total);
  d["mean_s"] = seconds(h.mean());
  d["p50_s"] = seconds(h.quantile(0.5));
  d["p90_s"] = seconds(h.quantile(0.9));
  d["p99_s"] = seconds(h.quantile(0.99));
  d["max_s"] = seconds(h.max);
  nb::list buckets;
  for (const auto& [upper, n] : h.buckets) buckets.append(nb::make_tuple(seconds(upper), n));
  d["buckets"] = buckets;
  return d;
}

void put_histograms(nb::dict& d, const pyattach::duration_histogram& wait,
                    const pyattach::duration_histogram& attached,
                    const pyattach::duration_histogram& detached) {
  d["wait"] = histogram_dict(wait);
  d["attached"] = histogram_dict(attached);
  d["detached"] = histogram_dict(detached);
}

// A list with one dict per item (a thread's or a pool's metrics): the fields `fill` writes, then
// the three histograms every item has.
template <class Item, class Fill>
nb::list histogram_dicts(const std::vector<Item>& items, Fill fill) {
  nb::list out;
  for (const Item& item : items) {
    nb::dict d;
    fill(d, item);
    put_histograms(d, item.wait, item.attached, item.detached);
    out.append(d);
  }
  return out;
}

// One snapshot as {"enabled", "clock", "threads": [dict], "pools": [dict]}, so that the threads'
// and the pools' figures of one call agree (a pool's are the sum of its threads').
nb::dict metrics_dict() {
  pyattach::metrics_snapshot snap;
  {
    nb::gil_scoped_release unlocked;
    snap = pyattach::metrics();
  }
  nb::dict out;
  out["enabled"] = snap.enabled;
  out["clock"] = snap.clock;
  out["threads"] = histogram_dicts(snap.threads, [](nb::dict& d, const auto& t) {
    d["name"] = t.name;
    d["native_id"] = t.os_tid;
    d["ident"] = t.ident;
    d["pool"] = t.pool;
    d["alive"] = t.alive;
    d["attaches"] = t.attaches;
    nb::list interpreters;
    for (const pyattach::interpreter_metrics& i : t.interpreters) {
      nb::dict row;
      row["interpreter"] = i.interpreter;
      row["attaches"] = i.attaches;
      row["wait_s"] = seconds(i.wait);
      row["attached_s"] = seconds(i.attached);
      interpreters.append(row);
    }
    d["interpreters"] = interpreters;
  });
  out["pools"] = histogram_dicts(snap.pools, [](nb::dict& d, const auto& p) {
    d["name"] = p.name;
    d["workers"] = p.workers;
    d["attaches"] = p.attaches;
  });
  return out;
}

std::string metrics_text() {
  nb::gil_scoped_release unlocked;
  return pyattach::to_string(pyattach::metrics());
}

nb::tuple trace_tuple(const pyattach::trace_result& r) {
  return nb::make_tuple(r.ok, r.error, r.events, r.dropped);
}

// flush_trace and stop_trace read threading's thread names for the file: directly when the caller
// holds the GIL, else by attaching this thread (its own thread state, briefly) before writing.
// They are called without the GIL: the write is file I/O proportional to the events (megabytes),
// which would otherwise stall every Python thread, and, for flush_trace, put that stall into the
// trace that goes on recording.
nb::tuple flush_trace(const std::string& path) {
  pyattach::trace_result r;
  {
    nb::gil_scoped_release unlocked;
    r = pyattach::flush_trace(path);
  }
  return trace_tuple(r);
}

nb::tuple stop_trace(const std::string& path) {
  pyattach::trace_result r;
  {
    nb::gil_scoped_release unlocked;
    r = pyattach::stop_trace(path);
  }
  return trace_tuple(r);
}

bool start_trace(std::uint32_t events_per_thread) {
  nb::gil_scoped_release unlocked;
  pyattach::trace_options o;
  o.events_per_thread = events_per_thread;
  return pyattach::start_trace(o);
}

}  // namespace

void bind_report(nb::module_& m) {
  m.def("thread_report", &thread_report,
        "pyattach's thread report: (name, ident, native_id, pool, state, scopes, "
        "has_thread_state, made_by_pyattach, is_caller, interpreter) per thread state.");
}

void bind_observe(nb::module_& m) {
  // The observation API of this module's copy of pyattach (observe.hpp); pyattach/__init__.py
  // gives it its Python shape.
  m.def("set_metrics", &pyattach::set_metrics, "on"_a, nb::call_guard<nb::gil_scoped_release>(),
        "Switches GIL metrics on or off for every thread.");
  m.def("metrics_enabled", &pyattach::metrics_enabled, "Whether GIL metrics are on.");
  m.def("reset_metrics", &pyattach::reset_metrics, nb::call_guard<nb::gil_scoped_release>(),
        "Zeroes every counter and histogram and forgets exited threads.");
  m.def("metrics", &metrics_dict,
        "One snapshot: {enabled, clock, threads: [dict], pools: [dict]}.");
  m.def("metrics_text", &metrics_text, "pyattach::to_string of a snapshot: a readable table.");
  m.def("start_trace", &start_trace, "events_per_thread"_a,
        "Starts a trace; False if one is running already.");
  m.def("trace_running", &pyattach::trace_running, "Whether a trace is running.");
  m.def("flush_trace", &flush_trace, "path"_a,
        "Writes the trace so far to path; it goes on. Returns (ok, error, events, dropped).");
  m.def("stop_trace", &stop_trace, "path"_a,
        "Writes the trace to path and ends it. Returns (ok, error, events, dropped).");
}

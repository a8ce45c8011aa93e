// src/report.cpp — every thread state of the main interpreter and pyattach's states in
// sub-interpreters, joined with pyattach's slots.
#include "pyattach/report.hpp"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "internal.hpp"
#include "pyattach/subinterpreter.hpp"
#include "subinterpreter_internal.hpp"

namespace pyattach {

namespace {
struct slot_snapshot {
  unsigned long ident;
  std::uint64_t os_tid;
  bool owned;
  detail::slot_phase phase;
  std::uint64_t scopes;
};

std::vector<slot_snapshot> snapshot_slots() {
  std::vector<slot_snapshot> out;
  std::lock_guard<std::mutex> lock(detail::registry().mutex);
  for (const detail::slot* s : detail::registry().slots) {
    out.push_back({s->py_ident, s->os_tid, s->owned, s->phase.load(std::memory_order_relaxed),
                   s->scopes.load(std::memory_order_relaxed)});
  }
  return out;
}

// One state pyattach holds in a sub-interpreter (subinterpreter_internal.hpp, sub_entry).
struct sub_state_snapshot {
  std::int64_t interp;
  unsigned long ident;
  std::uint64_t os_tid;
  detail::entry_phase phase;
  std::uint64_t attaches;
};

// The states pyattach holds in the sub-interpreters it knows, from its own records rather than
// from CPython's list of each interpreter's states, which the main walk below reads. CPython
// 3.12-3.15 change that list under the runtime's HEAD_LOCK (Python/pystate.c: new_threadstate,
// tstate_delete_common), which PyInterpreterState_ThreadHead and PyThreadState_Next do not take:
// a reader relies on the interpreter's GIL instead, under which its states are cleared and
// deleted (the C API's rule for walking it). The main walk holds the main GIL; a sub-interpreter
// with a GIL of its own deletes its states under that GIL, which the caller would have to take
// for each interpreter (a state of the caller's in each, a wait behind whoever holds it, and a
// refusal while it ends), and holding the main GIL does not stop them. pyattach's records are under interp_core::m, which no one holds while waiting
// for a GIL: each entry stays in `entries` (and alive) while m is held, and its ids and phase
// are what the report needs (its PyThreadState* is written without m). The cost: states that
// other code made in a sub-interpreter (its Python threads, concurrent.interpreters' own) and
// each interpreter's anchor (never current) are not listed. Takes cores().m, then each record's
// m, never both at once (the lock order is a record's m before the registry's).
std::vector<sub_state_snapshot> snapshot_sub_states() {
  std::vector<std::shared_ptr<detail::interp_core>> live;
  {
    detail::core_registry& r = detail::cores();
    std::lock_guard<std::mutex> lock(r.m);
    for (const auto& entry : r.by_state) {
      if (auto c = entry.second.lock()) live.push_back(std::move(c));
    }
  }
  std::sort(live.begin(), live.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  std::vector<sub_state_snapshot> out;
  for (const auto& c : live) {
    std::lock_guard<std::mutex> lock(c->m);
    if (c->interp == nullptr) continue;  // it ended meanwhile
    for (const detail::sub_entry* e : c->entries) {
      const detail::entry_phase p = e->phase.load(std::memory_order_relaxed);
      if (p == detail::entry_phase::none) continue;  // no state (yet, or any more)
      out.push_back({c->id, e->ident, e->os_tid, p, e->attaches.load(std::memory_order_relaxed)});
    }
  }
  return out;
}

thread_attachment from_phase(detail::slot_phase p) {
  switch (p) {
    case detail::slot_phase::attached: return thread_attachment::attached;
    case detail::slot_phase::waiting: return thread_attachment::waiting;
    case detail::slot_phase::parked: return thread_attachment::parked;
    case detail::slot_phase::detached: break;
  }
  return thread_attachment::detached;
}

}  // namespace

namespace detail {
std::map<unsigned long, std::string> python_thread_names() {
  std::map<unsigned long, std::string> out;
  const error_scope keep;  // the caller's pending error survives the lookup
  PyObject* modules = PySys_GetObject("modules");  // borrowed
  PyObject* threading = modules ? PyDict_GetItemString(modules, "threading") : nullptr;
  PyObject* active = threading ? PyObject_GetAttrString(threading, "_active") : nullptr;
  // A copy of the items: reading `name` runs Python code, which may hand the GIL to a thread that
  // changes _active (and drops the Thread it would otherwise only be borrowed from).
  PyObject* items = active != nullptr && PyDict_Check(active) ? PyDict_Items(active) : nullptr;
  const Py_ssize_t n = items != nullptr ? PyList_GET_SIZE(items) : 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(items, i);  // borrowed from items: (ident, Thread)
    const unsigned long ident = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
    PyObject* name = PyObject_GetAttrString(PyTuple_GET_ITEM(item, 1), "name");
    if (name != nullptr && PyUnicode_Check(name)) {
      if (const char* utf8 = PyUnicode_AsUTF8(name)) out[ident] = utf8;
    }
    Py_XDECREF(name);
    PyErr_Clear();
  }
  Py_XDECREF(items);
  Py_XDECREF(active);
  return out;
}
}  // namespace detail

const char* to_string(thread_attachment state) noexcept {
  switch (state) {
    case thread_attachment::attached: return "attached";
    case thread_attachment::waiting: return "waiting";
    case thread_attachment::detached: return "detached";
    case thread_attachment::parked: return "parked";
  }
  return "unknown";
}

thread_report make_thread_report() {
  thread_report r;
  r.misuse_reports = misuse_count();
  // Before attaching: the records' mutexes are never taken while holding a GIL here.
  const std::vector<sub_state_snapshot> subs = snapshot_sub_states();
  // On the main interpreter's handle: inside a sub-interpreter scope, this swaps it out for the
  // walk instead of being refused (attach.hpp, "Interpreters").
  auto py = try_attach(subinterpreter::main());
  r.generation = current_generation();
  const std::vector<slot_snapshot> slots = snapshot_slots();
  std::vector<bool> joined(slots.size(), false);
  std::map<unsigned long, std::string> names;
  if (py) {
    r.interpreter_available = true;
    const std::string version = Py_GetVersion();
    r.python_version = version.substr(0, version.find(' '));
    names = detail::python_thread_names();
    PyThreadState* const self = detail::compat::current_state_unchecked();
    // The list py-spy walks. Holding the GIL keeps every state in it alive while we read it.
    for (PyThreadState* ts = PyInterpreterState_ThreadHead(PyInterpreterState_Main());
         ts != nullptr; ts = PyThreadState_Next(ts)) {
      thread_info ti;
      ti.has_thread_state = true;
      ti.ident = ts->thread_id;
      ti.os_tid = detail::compat::native_thread_id_of(ts);
      ti.is_caller = ts == self;
      ti.state = ti.is_caller ? thread_attachment::attached : thread_attachment::detached;
      const auto name = names.find(ti.ident);
      if (name != names.end()) ti.python_name = name->second;
      for (std::size_t i = 0; i < slots.size(); ++i) {
        if (!joined[i] && slots[i].ident == ti.ident) {
          joined[i] = true;
          ti.known_to_pyattach = true;
          ti.made_by_pyattach = slots[i].owned;
          ti.os_tid = slots[i].os_tid;
          ti.scopes = slots[i].scopes;
          if (!ti.is_caller) ti.state = from_phase(slots[i].phase);
        }
      }
      r.threads.push_back(std::move(ti));
    }
    r.thread_states = r.threads.size();
  }
  // A thread runs one state at a time: one attached or waiting in a sub-interpreter means that its
  // main-interpreter state is not (its slot's phase stays as it was across the swap). So for the
  // caller too, whose states are shown as they were when it called (subs was read before the
  // walk's attach, which swaps its sub-interpreter state out).
  const std::uint64_t me = detail::this_os_tid();
  for (thread_info& ti : r.threads) {
    if (ti.state == thread_attachment::parked) continue;
    for (const sub_state_snapshot& x : subs) {
      if (x.os_tid == ti.os_tid && x.phase != detail::entry_phase::detached) {
        ti.state = thread_attachment::detached;
      }
    }
  }
  for (const sub_state_snapshot& x : subs) {
    thread_info ti;
    ti.interpreter = x.interp;
    ti.has_thread_state = true;
    ti.known_to_pyattach = true;
    ti.made_by_pyattach = true;  // pyattach made every state it caches
    ti.ident = x.ident;
    ti.os_tid = x.os_tid;
    ti.scopes = x.attaches;
    ti.is_caller = x.os_tid == me;
    ti.state = x.phase == detail::entry_phase::attached  ? thread_attachment::attached
               : x.phase == detail::entry_phase::waiting ? thread_attachment::waiting
                                                         : thread_attachment::detached;
    const auto name = names.find(ti.ident);
    if (name != names.end()) ti.python_name = name->second;
    r.threads.push_back(std::move(ti));
  }
  r.subinterpreter_states = subs.size();
  // pyattach threads without a thread state (never attached yet, after release, or parked after
  // the interpreter that had their state was finalized).
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (joined[i]) continue;
    thread_info ti;
    ti.ident = slots[i].ident;
    ti.os_tid = slots[i].os_tid;
    ti.known_to_pyattach = true;
    ti.scopes = slots[i].scopes;
    // Parked shows after its interpreter is gone too; any other phase would be stale here.
    if (slots[i].phase == detail::slot_phase::parked) ti.state = thread_attachment::parked;
    r.threads.push_back(std::move(ti));
  }
  // Which pool each worker belongs to, by OS thread id.
  const auto workers = detail::pool_workers();
  for (thread_info& ti : r.threads) {
    for (const auto& w : workers) {
      if (ti.os_tid != 0 && w.first == ti.os_tid) ti.pool = w.second;
    }
  }
  return r;
}

std::string to_string(const thread_report& r) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "interpreter: %s, generation %llu, %zu thread state(s), %zu in sub-interpreters, "
                "%llu misuse report(s)\n",
                r.interpreter_available ? ("Python " + r.python_version).c_str()
                                        : "not available",
                static_cast<unsigned long long>(r.generation), r.thread_states,
                r.subinterpreter_states, static_cast<unsigned long long>(r.misuse_reports));
  out += line;
  std::snprintf(line, sizeof line, "  %-6s %-20s %-9s %-8s %-9s %-9s %-14s %s\n", "interp",
                "python name", "os tid", "state", "pyattach", "scopes", "pool", "");
  out += line;
  for (const thread_info& t : r.threads) {
    const char* who = t.made_by_pyattach    ? "made"
                      : t.known_to_pyattach ? "reused"
                                            : "-";
    std::snprintf(line, sizeof line, "  %-6lld %-20s %-9llu %-8s %-9s %-9llu %-14s %s\n",
                  static_cast<long long>(t.interpreter),
                  t.python_name.empty() ? "(none)" : t.python_name.c_str(),
                  static_cast<unsigned long long>(t.os_tid),
                  t.has_thread_state ? to_string(t.state) : "no-state", who,
                  static_cast<unsigned long long>(t.scopes), t.pool.empty() ? "-" : t.pool.c_str(),
                  t.is_caller ? "<- caller" : "");
    out += line;
  }
  return out;
}

std::optional<std::size_t> count_thread_states() {
  auto py = try_attach();
  if (!py) return std::nullopt;
  std::size_t n = 0;
  for (PyThreadState* ts = PyInterpreterState_ThreadHead(PyInterpreterState_Main()); ts;
       ts = PyThreadState_Next(ts)) {
    ++n;
  }
  return n;
}

}  // namespace pyattach

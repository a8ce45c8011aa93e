// src/report.cpp — every thread state of the interpreter, joined with pyattach's slots.
#include "pyattach/report.hpp"

#include <cstdio>

#include "internal.hpp"

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
  auto py = try_attach();
  r.generation = current_generation();
  const std::vector<slot_snapshot> slots = snapshot_slots();
  std::vector<bool> joined(slots.size(), false);
  if (py) {
    r.interpreter_available = true;
    const std::string version = Py_GetVersion();
    r.python_version = version.substr(0, version.find(' '));
    const std::map<unsigned long, std::string> names = detail::python_thread_names();
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
                "interpreter: %s, generation %llu, %zu thread state(s), %llu misuse report(s)\n",
                r.interpreter_available ? ("Python " + r.python_version).c_str()
                                        : "not available",
                static_cast<unsigned long long>(r.generation), r.thread_states,
                static_cast<unsigned long long>(r.misuse_reports));
  out += line;
  std::snprintf(line, sizeof line, "  %-20s %-9s %-8s %-9s %-9s %-14s %s\n", "python name",
                "os tid", "state", "pyattach", "scopes", "pool", "");
  out += line;
  for (const thread_info& t : r.threads) {
    const char* who = t.made_by_pyattach    ? "made"
                      : t.known_to_pyattach ? "reused"
                                            : "-";
    std::snprintf(line, sizeof line, "  %-20s %-9llu %-8s %-9s %-9llu %-14s %s\n",
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

// src/subinterpreter_end.cpp — the end of an interpreter other than the main one: closing its
// gate, destroying every thread's cached state of it, and ending it (subinterpreter::end(), its
// atexit callback when anyone else ends it, and the main interpreter's finalization). The caches
// and the scopes are in subinterpreter.cpp.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "attach_internal.hpp"
#include "pyattach/attach.hpp"
#include "subinterpreter_internal.hpp"

namespace pyattach {
namespace detail {

namespace {

// The close, from the interpreter's atexit callback: on the ending thread, with a state of the
// interpreter current and its GIL held, before Py_EndInterpreter checks that no other thread
// state is left. Waits for the passes (GIL released), then destroys every thread's cached state
// but the current one (which Py_EndInterpreter destroys).
void close_core(interp_core* core) noexcept {
  {
    std::lock_guard<std::mutex> lock(core->m);
    // end() closes it before Py_EndInterpreter, whose atexit then calls this again: nothing left.
    if (core->phase.load(std::memory_order_relaxed) == sub_closed) return;
    core->phase.store(sub_closing, std::memory_order_seq_cst);
  }
  if (core->inside.load(std::memory_order_seq_cst) != 0) {
    PyThreadState* self = PyEval_SaveThread();
    // end() drained the passes before calling Py_EndInterpreter; an end that Python code began
    // (Interpreter.close()) did not: CPython aborts the process if a state is left, so wait.
    bool said = false;
    const auto start = std::chrono::steady_clock::now();
    while (core->inside.load(std::memory_order_seq_cst) != 0) {
      if (!said && std::chrono::steady_clock::now() - start > std::chrono::seconds(2)) {
        std::fprintf(stderr,
                     "pyattach: sub-interpreter %lld is ending while native threads are inside "
                     "a scope of it; waiting for them\n",
                     static_cast<long long>(core->id));
        said = true;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    PyEval_RestoreThread(self);
  }
  PyThreadState* const self = compat::current_state_unchecked();
  std::lock_guard<std::mutex> lock(core->m);
  core->phase.store(sub_closed, std::memory_order_seq_cst);
  // No pass is held: no thread uses these states, and none can make one current again.
  for (sub_entry* e : core->entries) {
    if (e->ts == nullptr) continue;
    if (e->ts != self) {
      unmark_gilstate_bound(e->ts);
      PyThreadState_Clear(e->ts);
      PyThreadState_Delete(e->ts);
    }
    e->ts = nullptr;  // self: Py_EndInterpreter deletes it
    e->phase.store(entry_phase::none, std::memory_order_relaxed);
    core->states_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
  for (PyThreadState* ts : core->orphans) {
    unmark_gilstate_bound(ts);
    PyThreadState_Clear(ts);
    PyThreadState_Delete(ts);
    core->states_destroyed.fetch_add(1, std::memory_order_relaxed);
  }
  core->orphans.clear();
  if (core->anchor != nullptr && core->anchor != self) {
    PyThreadState_Clear(core->anchor);  // never current, never bound: nothing else to undo
    PyThreadState_Delete(core->anchor);
  }
  core->anchor = nullptr;
  {
    core_registry& r = cores();
    std::lock_guard<std::mutex> l(r.m);
    r.by_state.erase(core->interp);
  }
  core->interp = nullptr;
}

// The atexit callback: its self is a capsule holding the record (kept alive by the registry's
// strong reference in g_live until it ran).
std::mutex g_live_mutex;
std::map<interp_core*, std::shared_ptr<interp_core>> g_live;  // records whose close hook is armed

PyObject* close_hook(PyObject* self, PyObject*) {
  auto* core = static_cast<interp_core*>(PyCapsule_GetPointer(self, "pyattach.subinterpreter"));
  if (core == nullptr) return nullptr;
  std::shared_ptr<interp_core> keep;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    auto it = g_live.find(core);
    if (it != g_live.end()) {
      keep = it->second;
      g_live.erase(it);
    }
  }
  if (keep) close_core(core);
  Py_RETURN_NONE;
}

PyMethodDef g_close_def = {"_pyattach_close_subinterpreter", close_hook, METH_NOARGS,
                           "pyattach: closes the interpreter's gate before it ends."};

}  // namespace

bool arm_close_hook(const std::shared_ptr<interp_core>& core) noexcept {
  error_scope keep_caller_error;
  PyObject* capsule = PyCapsule_New(core.get(), "pyattach.subinterpreter", nullptr);
  if (capsule == nullptr) return false;
  PyObject* fn = PyCFunction_New(&g_close_def, capsule);
  Py_DECREF(capsule);
  if (fn == nullptr) return false;
  PyObject* atexit = PyImport_ImportModule("atexit");
  PyObject* r = atexit != nullptr ? PyObject_CallMethod(atexit, "register", "O", fn) : nullptr;
  Py_XDECREF(atexit);
  Py_DECREF(fn);
  if (r == nullptr) return false;
  Py_DECREF(r);
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live[core.get()] = core;
  return true;
}

// ---- records --------------------------------------------------------------------------------

bool end_core(const std::shared_ptr<interp_core>& record, std::chrono::milliseconds bound) noexcept {
  interp_core* const core = record.get();
  std::lock_guard<std::mutex> ending(core->end_mutex);
  PyInterpreterState* interp;
  {
    std::lock_guard<std::mutex> lock(core->m);
    interp = core->interp;
    if (interp == nullptr) return true;
  }
  PyThreadState* const cur = compat::current_state_unchecked();
  sub_entry* const mine = find_entry(core);
  if (mine != nullptr && mine->depth != 0) {
    misuse_details d{misuse_kind::release_while_attached, "subinterpreter::end()",
                     source_site::current(), nullptr, nullptr,
                     "a scope of this interpreter is open on this thread", this_os_tid()};
    report_misuse(d);
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(core->m);
    core->phase.store(sub_closing, std::memory_order_seq_cst);
  }
  // Wait for the threads inside, holding no GIL (with a shared GIL they need the one we hold).
  PyThreadState* const saved = cur != nullptr ? PyEval_SaveThread() : nullptr;
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (core->inside.load(std::memory_order_seq_cst) != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (core->inside.load(std::memory_order_seq_cst) != 0) {
    if (saved != nullptr) PyEval_RestoreThread(saved);
    return false;  // closed to new attaches, not ended: ending would pull states from under them
  }
  // Drained: end it on a thread of its own, which has no other state, so that the ending
  // state is that thread's PyGILState state and goes with it, touching no other thread's
  // binding. The ending state is made while the anchor still exists (see interp_core::anchor);
  // then close_core destroys every cached state and the anchor BEFORE Py_EndInterpreter: on
  // 3.12, Py_EndInterpreter first calls threading._shutdown(), which waits for the thread
  // that imported `threading` in that interpreter (its _MainThread, e.g. a pool worker that
  // named itself there) until that thread's state is deleted; the atexit callback that would
  // delete it runs only after that wait (Python/pylifecycle.c, 3.12.1: a pool's interpreter
  // ended this way hung for good). The atexit callback then finds it closed.
  // An adopted interpreter is not pyattach's to end: its owner may keep states in it (3.12's
  // _xxsubinterpreters keeps its creation state, and Py_EndInterpreter aborts with "not the last
  // thread", measured on 3.12.1). pyattach lets go of it instead: the same close, then the
  // ending state goes too, and the owner ends it (the atexit callback then finds it closed).
  const bool owned = core->owned;
  try {
    std::thread([core, interp, owned] {
      PyThreadState* const ts = PyThreadState_New(interp);
      PyEval_RestoreThread(ts);
      close_core(core);
      if (owned) {
        Py_EndInterpreter(ts);
      } else {
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();  // releases its GIL
      }
    }).join();
  } catch (...) {  // no thread could be started: it stays closed, not ended
    if (saved != nullptr) PyEval_RestoreThread(saved);
    return false;
  }
  if (mine != nullptr) drop_entry(mine);
  std::lock_guard<std::mutex> lock(core->m);
  if (core->interp != nullptr) {
    // Its close hook did not run (atexit.register failed at creation): close it here. Unreachable
    // in practice; keep the record consistent.
    core->phase.store(sub_closed, std::memory_order_seq_cst);
    core->interp = nullptr;
  }
  if (saved != nullptr) PyEval_RestoreThread(saved);
  return true;
}

void end_owned_subinterpreters(std::chrono::milliseconds bound) noexcept {
  std::vector<std::shared_ptr<interp_core>> owned, others;
  {
    core_registry& r = cores();
    std::lock_guard<std::mutex> lock(r.m);
    for (auto& [interp, weak] : r.by_state) {
      if (auto c = weak.lock()) (c->owned ? owned : others).push_back(c);
    }
  }
  for (auto& c : owned) end_core(c, bound);
  // Python ends the others (3.13+ at finalization, and their close hook then runs): until then,
  // no new attaches. (Lock order: a record's m, then the registry's; never the reverse.)
  for (auto& c : others) {
    std::lock_guard<std::mutex> l(c->m);
    if (c->phase.load(std::memory_order_relaxed) == sub_open) {
      c->phase.store(sub_closing, std::memory_order_seq_cst);
    }
  }
}

}  // namespace detail
}  // namespace pyattach

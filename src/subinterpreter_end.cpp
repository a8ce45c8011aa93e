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

// Registers `def` bound to `capsule` with module.method(fn). PRECONDITION: attached.
bool register_hook(PyMethodDef* def, PyObject* capsule, const char* module, const char* method) {
  PyObject* fn = PyCFunction_New(def, capsule);
  if (fn == nullptr) return false;
  PyObject* m = PyImport_ImportModule(module);
  PyObject* r = m != nullptr ? PyObject_CallMethod(m, method, "O", fn) : nullptr;
  Py_XDECREF(m);
  Py_DECREF(fn);
  Py_XDECREF(r);
  return r != nullptr;
}

#if PY_VERSION_HEX < 0x030D0000
// CPython 3.12 (Lib/threading.py and Python/pylifecycle.c, measured on 3.12.1): Py_EndInterpreter
// calls threading._shutdown() before the interpreter's atexit callbacks. _shutdown() runs the
// callbacks of threading._register_atexit, then, if the ending thread has the ident of the
// interpreter's threading._MainThread (the thread whose state imported `threading` there first),
// asserts that _MainThread's lock is held and releases it; otherwise it joins that lock, which is
// released when that state is deleted. A native thread's cached state as _MainThread hangs every
// end that starts on another thread (pyattach's atexit callback deletes it only after the join),
// and once it is deleted (its thread exited, or end() closed), an end on a thread with that ident
// (the same thread, or one reusing the ident of the exited one) fails the assertion: "Exception
// ignored in threading", and the join of the interpreter's own threads is skipped.
// So pyattach makes its anchor _MainThread (arm_close_hook imports `threading` on it, on the
// thread that made it), and this callback, which _shutdown() runs before both, makes either path
// hold: another thread ends it -> the anchor is deleted now (its lock released, the join passes);
// the anchor's thread ends it but the anchor is gone already -> the lock is taken again, as
// _shutdown() expects. The anchor is otherwise deleted by close_core, after _shutdown() when
// Python or C code ends the interpreter, before Py_EndInterpreter in end(). 3.13 joins only
// threads that `threading` started (_shutdown -> _thread._shutdown; measured on 3.13.0).
PyObject* threading_shutdown_hook(PyObject* self, PyObject*) {
  auto* core = static_cast<interp_core*>(PyCapsule_GetPointer(self, "pyattach.subinterpreter"));
  if (core == nullptr) return nullptr;
  std::shared_ptr<interp_core> keep;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    auto it = g_live.find(core);
    if (it != g_live.end()) keep = it->second;
  }
  if (!keep) Py_RETURN_NONE;  // its close ran (atexit): the anchor is gone and so is its record
  // _shutdown()'s own test, on its own objects. An exception here would end _shutdown() before
  // its join (and be printed): none is kept.
  PyObject* threading = PyImport_ImportModule("threading");  // in sys.modules: it is running
  PyObject* main =
      threading != nullptr ? PyObject_GetAttrString(threading, "_main_thread") : nullptr;
  PyObject* ident = main != nullptr ? PyObject_GetAttrString(main, "ident") : nullptr;
  const unsigned long main_ident = ident != nullptr ? PyLong_AsUnsignedLong(ident) : 0;
  const bool known = ident != nullptr && !PyErr_Occurred();
  if (known && main_ident != PyThread_get_thread_ident()) {
    PyThreadState* const self_state = PyThreadState_Get();
    std::lock_guard<std::mutex> lock(core->m);
    PyThreadState* const anchor = core->anchor;
    // No pass is needed: no thread uses the anchor. It is not bound (arm_close_hook).
    if (anchor != nullptr && anchor != self_state) {
      PyThreadState_Clear(anchor);  // releases _MainThread's lock (its on_delete)
      PyThreadState_Delete(anchor);
      core->anchor = nullptr;  // close_core then skips it
    }
  } else if (known) {
    bool gone;
    {
      std::lock_guard<std::mutex> lock(core->m);
      gone = core->anchor == nullptr;
    }
    PyObject* tlock = gone ? PyObject_GetAttrString(main, "_tstate_lock") : nullptr;
    PyObject* held = tlock != nullptr && tlock != Py_None
                         ? PyObject_CallMethod(tlock, "locked", nullptr) : nullptr;
    if (held == Py_False) Py_XDECREF(PyObject_CallMethod(tlock, "acquire", nullptr));
    Py_XDECREF(held);
    Py_XDECREF(tlock);
  }
  Py_XDECREF(ident);
  Py_XDECREF(main);
  Py_XDECREF(threading);
  PyErr_Clear();
  Py_RETURN_NONE;
}

PyMethodDef g_threading_shutdown_def = {
    "_pyattach_subinterpreter_threading_shutdown", threading_shutdown_hook, METH_NOARGS,
    "pyattach: keeps threading._shutdown() of an ending sub-interpreter from waiting for or "
    "failing on pyattach's anchor state, threading's main thread there."};

// Makes the anchor threading's _MainThread and registers threading_shutdown_hook, unless
// `threading` is imported there already (then _MainThread is a state of other code: pyattach made
// none there before its anchor). PRECONDITION: a state of core's interpreter current, and the
// anchor made on this thread. Costs an import of `threading` in a fresh interpreter
// (docs/subinterpreters.md).
bool make_anchor_threadings_main(interp_core* core, PyObject* capsule) {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  if (modules == nullptr) return false;
  if (PyDict_GetItemString(modules, "threading") != nullptr) return true;
  PyThreadState* const cur = PyThreadState_Get();
  PyThreadState* const anchor = core->anchor;
  const bool swap = anchor != cur;  // create(): the anchor is the creation state, current already
  if (swap) {
    // Marked bound while current, so that making it current does not bind this thread's
    // PyGILState to it (subinterpreter_internal.hpp); same interpreter, so the same GIL.
    mark_gilstate_bound(anchor);
    PyThreadState_Swap(anchor);
  }
  const bool ok =
      register_hook(&g_threading_shutdown_def, capsule, "threading", "_register_atexit");
  if (!ok) PyErr_Clear();  // the anchor keeps no exception (3.12 keeps it in the thread state)
  if (swap) {
    PyThreadState_Swap(cur);
    unmark_gilstate_bound(anchor);
  }
  return ok;
}
#endif

}  // namespace

bool arm_close_hook(const std::shared_ptr<interp_core>& core) noexcept {
  error_scope keep_caller_error;
  PyObject* capsule = PyCapsule_New(core.get(), "pyattach.subinterpreter", nullptr);
  if (capsule == nullptr) return false;
  bool ok = register_hook(&g_close_def, capsule, "atexit", "register");
#if PY_VERSION_HEX < 0x030D0000
  ok = ok && make_anchor_threadings_main(core.get(), capsule);
#endif
  Py_DECREF(capsule);
  if (!ok) return false;
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

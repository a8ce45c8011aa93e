// src/subinterpreter_end.cpp — the end of an interpreter other than the main one: closing its
// gate, destroying every thread's cached state of it, and ending it (subinterpreter::end(), its
// atexit callback when anyone else ends it, and the main interpreter's finalization). The caches
// and the scopes are in subinterpreter.cpp.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "attach_internal.hpp"
#include "pyattach/attach.hpp"
#include "subinterpreter_internal.hpp"

namespace pyattach {
namespace detail {

namespace {

using clock = std::chrono::steady_clock;

// Waits, holding no GIL of `core`'s interpreter, until no pass of it is held or `until`.
bool wait_drained(const interp_core* core, clock::time_point until) noexcept {
  while (core->inside.load(std::memory_order_seq_cst) != 0) {
    if (clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// ---- asking the threads inside to leave (docs/safety.md, "Exit", rule 4) --------------------

// The threads inside a scope of `core` that run Python in it: their state of it is attached or
// waiting for its GIL (a thread in a detach_scope, or whose state of it a scope on another
// interpreter swapped out, is not running Python there). PRECONDITION: core->m held.
template <typename Fn>
void for_each_running(interp_core* core, Fn fn) {
  for (sub_entry* e : core->entries) {
    const entry_phase p = e->phase.load(std::memory_order_relaxed);
    if (p == entry_phase::attached || p == entry_phase::waiting) fn(e);
  }
}

// Raises pyattach.InterpreterShutdown asynchronously in every thread running Python in `core`'s
// interpreter. PRECONDITION: attached to that interpreter (its GIL held).
// The type is made in that interpreter: objects must not cross interpreters (with its own GIL it
// has its own allocator). PyThreadState_SetAsyncExc looks the thread id up among the states of
// the CURRENT interpreter only, and takes the first match from the head of its list, where CPython
// adds each new state (Python/pystate.c, 3.12.1, 3.13.0): the thread's pyattach state there, made
// after the anchor (which carries its creator's id) and after any orphan of an exited thread
// whose id it may reuse. Delivered at the thread's next bytecode boundary (or when it has the GIL
// it is waiting for); a thread inside C code called from Python gets it when that call returns.
void request_leave(interp_core* core) noexcept {
  PyObject* const type = new_shutdown_request_type();
  if (type == nullptr) return;
  {
    // core->m, then CPython's HEAD_LOCK (inside the call): no thread holding core->m waits for
    // this interpreter's GIL, which this thread holds.
    std::lock_guard<std::mutex> lock(core->m);
    for_each_running(core, [&](sub_entry* e) {
      PyThreadState_SetAsyncExc(e->ident, type);  // 0 if it has no state here: nothing to ask
    });
  }
  Py_DECREF(type);  // each state that got it holds its own reference
}

// The trace function that parks a thread still running Python in an interpreter whose end asked
// it to leave in vain (sub_entry::must_park), at its next traced line, as the main gate's closer
// parks its threads (park_tracer, rule 3): it releases the GIL, gives back its passes, and blocks
// for good in park(), counted in parked_thread_count() and shown parked in the thread report
// (through its slot, which its first sub-interpreter scope made: this_table()). Every pass it
// holds in any sub-interpreter goes back, not only this one's: it never runs again, so none of
// its states is used again, and those interpreters' ends may destroy them (a state of another
// interpreter that a scope swapped out is not current). Its main-interpreter passes stay, as a
// thread parked by the main gate keeps them (that gate skips parked threads).
int park_sub_tracer(PyObject*, PyFrameObject*, int, PyObject*) noexcept {
  sub_entry* const e = current_entry(compat::current_state_unchecked());
  if (e == nullptr || !e->must_park.load(std::memory_order_acquire)) return 0;
  slot* const s = this_thread_slot();
  if (s == nullptr) return 0;  // cannot be counted: it goes on, and the end gives up on it
  std::string why;
  try {
    why = "it was still running Python in sub-interpreter " + std::to_string(e->core->id) +
          " when its end's bound and the grace after the shutdown request expired";
  } catch (...) {
  }
  e->phase.store(entry_phase::detached, std::memory_order_relaxed);
  if (s->obs.load(std::memory_order_relaxed) != nullptr) obs_sub_release(s);  // its held span
  PyEval_SaveThread();  // this state is never current again: the end destroys it
  // From here the end may destroy the state at any moment: only this thread's table and slot,
  // which no end touches, are used.
  // An entry in a detach_scope is marked abandoned under its record's lock, as its end would
  // (sub_entry::detach): its passes go back once, here or by that end, never both.
  for (sub_entry* x : e->table->by_index) {
    if (x == nullptr || x->depth == 0) continue;
    std::lock_guard<std::mutex> lock(x->core->m);
    if (x->detach.load(std::memory_order_relaxed) == detach_mark::abandoned) continue;
    if (x->detach.load(std::memory_order_relaxed) == detach_mark::detached) {
      x->detach.store(detach_mark::abandoned, std::memory_order_relaxed);
    }
    x->core->inside.fetch_sub(x->depth, std::memory_order_seq_cst);
  }
  park(s, why);
}

// Flags every thread still running Python in `core`'s interpreter for parking and installs
// park_sub_tracer on its state there. PRECONDITION: attached to that interpreter
// (compat::install_park_tracer: 3.12 sets the events on the current interpreter, 3.13+ sets the
// tracer on all of the current interpreter's states, where park_sub_tracer lets every unflagged
// thread go on).
void flag_for_parking(interp_core* core) noexcept {
  std::lock_guard<std::mutex> lock(core->m);
  for_each_running(core, [&](sub_entry* e) {
    e->must_park.store(true, std::memory_order_release);  // before its tracer can run
    if (!compat::install_park_tracer(core->interp, e->ident, park_sub_tracer)) {
      e->must_park.store(false, std::memory_order_relaxed);
    }
  });
}

// Abandons the threads that keep the interpreter from ending only by sitting in a detach_scope
// inside scopes of it (docs/safety.md, "Exit": the main interpreter finalizes anyway, and such a
// thread parks when its detach_scope ends), all of them or none: only when every pass still held
// is one of theirs (sub_entry::detach). Under core->m, where no detached entry's owner can take
// its state back, so those passes cannot change, and any other pass (a thread running or waiting
// in the interpreter, one that took its state back, a helper's) makes `inside` larger: then
// nothing is abandoned. Their passes are taken over here, so `inside` drains; their states are
// destroyed by close_core, none being current. Nothing waits for those threads (they park).
bool abandon_detached(interp_core* core) noexcept {
  std::lock_guard<std::mutex> lock(core->m);
  std::int64_t held = 0;
  for (const sub_entry* e : core->entries) {
    // acquire: the owner's release store published e->depth, which it no longer writes.
    if (e->detach.load(std::memory_order_acquire) == detach_mark::detached) held += e->depth;
  }
  if (held == 0 || core->inside.load(std::memory_order_seq_cst) != held) return false;
  for (sub_entry* e : core->entries) {
    if (e->detach.load(std::memory_order_relaxed) == detach_mark::detached) {
      e->detach.store(detach_mark::abandoned, std::memory_order_relaxed);
    }
  }
  core->inside.fetch_sub(held, std::memory_order_seq_cst);
  return true;
}

// Waits, holding no GIL of `core`'s interpreter, until no pass of it is held or `until`,
// abandoning the threads in a detach_scope once theirs are the only passes left.
bool drain_or_abandon(interp_core* core, clock::time_point until) noexcept {
  while (core->inside.load(std::memory_order_seq_cst) != 0) {
    if (abandon_detached(core)) continue;  // `inside` is 0 now, but for refused attaches' moment
    if (clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// The threads still inside at the bound are asked to leave, and waited for `grace`; those still
// running Python then are parked at their next line, and waited for `grace` again (the main
// gate's rules 4 and 3), while the threads in a detach_scope are abandoned once only they are
// left (abandon_detached). `attached(until, fn)` runs fn attached to the interpreter and says
// whether it ran before `until`. Returns true if every pass of the interpreter was given back.
// A flagged thread that has not parked when this returns false parks at its next line later.
template <typename Attached>
bool ask_to_leave(interp_core* core, std::chrono::milliseconds grace, Attached attached) noexcept {
  const clock::time_point until = clock::now() + grace;
  if (!attached(until, [core] { request_leave(core); })) return false;
  if (wait_drained(core, until)) return true;
  const clock::time_point again = clock::now() + grace;
  if (!attached(again, [core] { flag_for_parking(core); })) return false;
  return drain_or_abandon(core, again);
}

// A step of an end that must run attached to the interpreter, on a helper thread of its own, so
// that the ender waits for that interpreter's GIL only until `until`: a thread may hold it in C++
// for as long as it likes (a scope with no detach_scope around a blocking call), and end() must
// not hang. The helper holds a pass of the interpreter, taken here for it (the gate is closing,
// so take_sub_pass would refuse), from before it makes its state until after it deleted it: no
// end gets past its wait for the passes meanwhile (a later end() or the close hook waits for it),
// so the interpreter outlives the state, and the anchor (interp_core::anchor) is still there when
// the state is made (3.12 aborts when a state is made in an interpreter whose list of states went
// empty). Its state is its thread's first, so CPython binds its PyGILState to it and deleting it
// unbinds only that thread's (as for the ending thread in end_core).
// If the ender stops waiting before fn ran, the helper finds `abandoned` when it gets the GIL and
// does nothing: no request or tracer reaches a thread after end() returned false. fn runs under
// the step's mutex, which the ender takes to give up, so fn never runs after that.
struct helper_step {
  std::mutex m;
  std::condition_variable cv;
  bool ran = false;        // fn ran (under m)
  bool failed = false;     // no state could be made: fn will not run (under m)
  bool abandoned = false;  // the ender gave up first: fn must not run (under m)
};

bool run_on_helper(const std::shared_ptr<interp_core>& record, PyInterpreterState* interp,
                   clock::time_point until, std::function<void()> fn) noexcept {
  std::shared_ptr<helper_step> step;
  record->inside.fetch_add(1, std::memory_order_seq_cst);  // the helper's pass (above)
  try {
    step = std::make_shared<helper_step>();
    std::thread([record, interp, step, fn] {
      PyThreadState* const ts = PyThreadState_New(interp);  // needs no GIL
      if (ts != nullptr) {
        PyEval_RestoreThread(ts);  // may wait as long as a thread holds this GIL
        {
          std::lock_guard<std::mutex> lock(step->m);
          if (!step->abandoned) {
            fn();
            step->ran = true;
          }
        }
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();  // releases the GIL; unbinds this thread's PyGILState
      } else {
        std::lock_guard<std::mutex> lock(step->m);
        step->failed = true;
      }
      step->cv.notify_all();
      record->inside.fetch_sub(1, std::memory_order_seq_cst);
    }).detach();
  } catch (...) {  // out of memory or no thread: nothing asked
    record->inside.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  std::unique_lock<std::mutex> lock(step->m);
  if (step->cv.wait_until(lock, until, [&] { return step->ran || step->failed; })) return step->ran;
  step->abandoned = true;
  return false;
}

// How long the close hook waits for the threads inside before it asks them to leave: an end that
// Python code began has no bound of its own (CPython's Py_EndInterpreter takes none).
constexpr std::chrono::milliseconds k_close_hook_bound{2000};

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
    // end() drained the passes before calling Py_EndInterpreter; an end that Python code began
    // (Interpreter.close()) did not. The same rules as end()'s: a bounded wait with the GIL
    // released, then the shutdown request and the parking, each followed by a grace, made on
    // this thread (its state is of this interpreter: it takes the GIL back for each, and may wait
    // for it as long as a thread holds it in C++: no helper, since this end cannot give up).
    // After that CPython would abort the process on a state left behind, so it waits for good,
    // saying so, still abandoning the threads in a detach_scope once only they are left.
    PyThreadState* const ending = PyEval_SaveThread();
    bool drained = wait_drained(core, clock::now() + k_close_hook_bound);
    if (!drained) {
      drained = ask_to_leave(core, leave_grace(k_close_hook_bound),
                             [ending](clock::time_point, const auto& fn) {
                               PyEval_RestoreThread(ending);
                               fn();
                               PyEval_SaveThread();
                               return true;
                             });
    }
    if (!drained) {
      std::fprintf(stderr,
                   "pyattach: sub-interpreter %lld is ending while native threads are inside "
                   "a scope of it; waiting for them\n",
                   static_cast<long long>(core->id));
      drain_or_abandon(core, clock::time_point::max());
    }
    PyEval_RestoreThread(ending);
    // 3.13+: the park tracer is on every state of the interpreter, this one too, which runs
    // Python again before the interpreter is gone (atexit callbacks registered before pyattach's).
    compat::clear_park_tracers();
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

// The record a hook's capsule holds, if its close hook has not run yet (null if it has, or if
// `self` is not such a capsule: then `*bad` is set, with a Python error). `take`: the close hook
// itself, which removes it from g_live.
std::shared_ptr<interp_core> live_record(PyObject* self, bool take, bool* bad) {
  auto* core = static_cast<interp_core*>(PyCapsule_GetPointer(self, "pyattach.subinterpreter"));
  *bad = core == nullptr;
  std::lock_guard<std::mutex> lock(g_live_mutex);
  auto it = core != nullptr ? g_live.find(core) : g_live.end();
  if (it == g_live.end()) return nullptr;
  std::shared_ptr<interp_core> keep = it->second;
  if (take) g_live.erase(it);
  return keep;
}

PyObject* close_hook(PyObject* self, PyObject*) {
  bool bad = false;
  const std::shared_ptr<interp_core> keep = live_record(self, true, &bad);
  if (bad) return nullptr;
  if (keep) close_core(keep.get());
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
  bool bad = false;
  const std::shared_ptr<interp_core> keep = live_record(self, false, &bad);
  if (bad) return nullptr;
  if (!keep) Py_RETURN_NONE;  // its close ran (atexit): the anchor is gone and so is its record
  interp_core* const core = keep.get();
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
  // Those still inside at the bound are asked to leave (the main gate's rules, docs/safety.md,
  // "Exit"), each step attached on a helper thread (run_on_helper) and bounded by the grace.
  PyThreadState* const saved = cur != nullptr ? PyEval_SaveThread() : nullptr;
  bool drained = wait_drained(core, clock::now() + bound);
  if (!drained) {
    drained = ask_to_leave(core, leave_grace(bound),
                           [&record, interp](clock::time_point until, std::function<void()> fn) {
                             return run_on_helper(record, interp, until, std::move(fn));
                           });
  }
  if (!drained) {
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

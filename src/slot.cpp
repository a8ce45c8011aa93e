// src/slot.cpp — the slot's life: made on a thread's first attach, its gate passes, its thread
// state made, reused, destroyed or forgotten, the registry of live slots, and the thread-exit
// clean-up. The scopes that use it are in attach.cpp; what both share is in attach_internal.hpp.
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>

#include "attach_internal.hpp"

namespace pyattach::detail {

PYATTACH_TLS slot* tls_slot = nullptr;

// Set once this thread's exit clean-up has run; an attach after that (from another thread_local's
// destructor) gets a one-off PyGILState_Ensure/Release pair instead of a persistent state.
PYATTACH_TLS bool tls_exited = false;
// The owner_ of such a one-off scope: never equal to tls_slot, so its end takes end_slow.
slot g_transient_owner;
std::atomic<std::uint64_t> g_parked{0};  // threads park() has parked

// The gate's entry protocol in its slow form (detail/slot.hpp, "Ordering"): count a pass in the
// slot, a full fence, then confirm that the gate still reads `w`. Returns false, holding no new
// pass, if it moved. PRECONDITION: s->gen == w >> 2 (the closer counts a slot's passes only for
// its generation).
bool take_pass(slot* s, std::uint64_t w) noexcept {
  const std::uint32_t n = s->passes.load(std::memory_order_relaxed);
  s->passes.store(n + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (g_gate.word.load(std::memory_order_relaxed) == w) return true;
  s->passes.store(n, std::memory_order_relaxed);
  return false;
}

// Returns a pass. Release: what the thread did inside happens before a closer's "drained".
void drop_pass(slot* s) noexcept {
  s->passes.store(s->passes.load(std::memory_order_relaxed) - 1, std::memory_order_release);
}

// The same protocol for a one-off pass of a thread without a slot (after its exit clean-up).
bool take_oneoff_pass(std::uint64_t w) noexcept {
  g_gate.inside.fetch_add(1, std::memory_order_seq_cst);
  if (g_gate.word.load(std::memory_order_seq_cst) == w) return true;
  g_gate.inside.fetch_sub(1, std::memory_order_seq_cst);
  return false;
}

// After the slot's state, ownership or generation changed: whether the inline attach may make
// the state current (slot::fast_word).
void refresh_fast_word(slot* s) noexcept {
  const bool fast = s->tstate != nullptr && s->owned && g_gate.fast_ok.load(std::memory_order_relaxed);
  s->fast_word = fast ? gate_word(s->gen.load(std::memory_order_relaxed), phase_open) : no_fast_word;
}

// True while the interpreter generation the slot's state belongs to exists (bound, any phase).
bool generation_live(const slot* s, std::uint64_t w) noexcept {
  return (w >> 2) == s->gen && (w & 3) != phase_unbound;
}

// Takes a pass for a thread that is already attached (other code made its state current), so
// that a closer waits for the pyattach scope at `level` (slot::pass_mask). Open or closing: such
// a thread is already inside Python, like one that re-enters while a closer waits (attach_slow).
void take_extra_pass(slot* s, std::uint32_t level, std::uint64_t w) noexcept {
  if (s->passes.load(std::memory_order_relaxed) != 0 || level_bit(level) == 0) return;
  // Only while the gate is open. A closing gate admits threads that are inside already, not new
  // native work: a Python thread that calls native code in a loop would otherwise hold a pass
  // almost all the time, the closer would never see it drain, and the thread would be sent
  // InterpreterShutdown at the bound (measured: every run of test_exit.cpp's daemon "within"
  // case, and 1 in 3 aborted on 3.13.5, where the traceback's print met finalization). Without a
  // pass, the scope's code runs as it would have before pyattach was bound; a detach_scope in it
  // takes a pass at its end to re-attach while closing, and parks after the close.
  if ((w & 3) != phase_open) return;
  if (s->gen.load(std::memory_order_relaxed) != (w >> 2)) return;  // callers set it; defensive
  if (!take_pass(s, w)) return;  // the gate moved: go on without one, as before it was bound
  s->pass_mask |= level_bit(level);
}

// The main interpreter, or the id of the one `ts` belongs to, for other_interpreter reports.
// PRECONDITION: ts is this thread's state (so it cannot be deleted meanwhile).
bool belongs_to_main(PyThreadState* ts) noexcept {
  return PyThreadState_GetInterpreter(ts) == PyInterpreterState_Main();
}
std::string interpreter_text(PyThreadState* ts) {
  return "this thread's thread state belongs to interpreter " +
         std::to_string(PyInterpreterState_GetID(PyThreadState_GetInterpreter(ts))) +
         ", not the main interpreter";
}

void forget_state(slot* s) noexcept {
  // The state belongs to an interpreter that is finalizing or gone: never touch it.
  s->tstate = nullptr;
  s->owned = false;
  s->gen.store(0, std::memory_order_relaxed);
  s->fast_word = no_fast_word;
}

// ≤3.12 only: drop threading's _DummyThread entry for this thread (see compat.hpp).
// PRECONDITION: GIL held, this thread's state current.
void drop_dummy_thread_entry() noexcept {
  if (!compat::threading_keeps_stale_dummy_threads) return;
  const error_scope keep;
  PyObject* modules = PySys_GetObject("modules");  // borrowed
  PyObject* mod = modules ? PyDict_GetItemString(modules, "threading") : nullptr;  // borrowed
  if (mod != nullptr) {
    PyObject* active = PyObject_GetAttrString(mod, "_active");
    PyObject* dummy_type = PyObject_GetAttrString(mod, "_DummyThread");
    PyObject* key = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (active && dummy_type && key && PyDict_Check(active)) {
      PyObject* entry = PyDict_GetItemWithError(active, key);  // borrowed
      if (entry != nullptr && PyObject_IsInstance(entry, dummy_type) == 1) {
        PyDict_DelItem(active, key);
      }
    }
    Py_XDECREF(key);
    Py_XDECREF(dummy_type);
    Py_XDECREF(active);
  }
}

// Destroys the slot's state, which is current on this thread, and releases the GIL.
// PRECONDITION: a pass keeps the interpreter from finalizing meanwhile.
void delete_current_state(slot* s) noexcept {
  drop_dummy_thread_entry();
  obs_release(s);
  PyThreadState_Clear(s->tstate);  // threading.local data, trace functions, frames: freed here
  // Deletes the current state, unregisters it from PyGILState and releases the GIL.
  PyThreadState_DeleteCurrent();
  s->phase.store(slot_phase::detached, std::memory_order_relaxed);
  forget_state(s);
}

// Destroys the state pyattach made for this thread, on this thread, through the gate.
// Returns false (and only forgets it) if its interpreter is finalizing or gone.
bool destroy_owned_state(slot* s) noexcept {
  if (s->tstate == nullptr || !s->owned) return false;
  const std::uint64_t w = g_gate.word.load(std::memory_order_seq_cst);
  if (w != gate_word(s->gen.load(std::memory_order_relaxed), phase_open)) {
    forget_state(s);
    return false;
  }
  // Through the gate like an attach (docs/design.md, invariant 4 "never killed": a clean-up that
  // re-attached after finalization was ended inside a destructor and the process aborted).
  const compat::interpreter_view view = g_gate.view.load();  // opt-in; after w, before the pass
  if (!take_pass(s, w)) {
    forget_state(s);
    return false;
  }
  compat::entry_guard guard(view);  // opt-in: refused once CPython started finalizing
  if (!guard) {
    drop_pass(s);
    forget_state(s);
    return false;
  }
  // Third-party code may have left it attached (PyGILState_Ensure without Release).
  if (compat::current_state_unchecked() != s->tstate) PyEval_RestoreThread(s->tstate);
  guard.close();  // before PyThreadState_Clear, which may run arbitrary __del__ code
  delete_current_state(s);
  drop_pass(s);
  return true;
}

struct slot_owner {
  ~slot_owner();  // the thread-exit clean-up; defined below scope_access
};

slot* make_slot() {
  // A function-local thread_local is constructed on this thread's first call and destroyed at
  // its exit: that destructor is the clean-up (docs/design.md, invariant 1 "one state per thread":
  // made and destroyed on that thread).
  static thread_local slot_owner owner;
  (void)owner;
  install_fork_handlers();
  observe_init_once();
  auto* s = new slot;
  s->os_tid = this_os_tid();
  s->py_ident = PyThread_get_thread_ident();  // pthread_self(); needs no GIL
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    registry().slots.push_back(s);
    s->observe.store(observe_bits(), std::memory_order_relaxed);
  }
  tls_slot = s;
  return s;
}

std::string open_scopes_text(const slot* s) {
  return std::to_string(s->depth) + (s->depth == 1 ? " scope is" : " scopes are");
}



slot_registry& registry() {
  static slot_registry* r = new slot_registry;  // never destroyed: threads may exit after main
  return *r;
}

std::uint64_t this_os_tid() noexcept { return static_cast<std::uint64_t>(::syscall(SYS_gettid)); }

std::string thread_label(std::uint64_t os_tid) {
  char name[64] = "?";
  const std::string path = "/proc/self/task/" + std::to_string(os_tid) + "/comm";
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    if (std::fgets(name, sizeof name, f) == nullptr) name[0] = '\0';
    std::fclose(f);
    for (char* p = name; *p; ++p) {
      if (*p == '\n') *p = '\0';
    }
  }
  return std::string(name) + " (tid " + std::to_string(os_tid) + ")";
}

slot* this_thread_slot() noexcept {
  if (tls_slot != nullptr || tls_exited) return tls_slot;
  try {
    return make_slot();
  } catch (...) {
    return nullptr;
  }
}

bool attached_here(const slot* s) noexcept {
  PyThreadState* cur = compat::current_state_unchecked();
  if (cur == nullptr) return false;
  if (s != nullptr && s->tstate == cur) return true;
  if (Py_IsInitialized() != 0 && cur == PyGILState_GetThisThreadState()) return true;
  // 3.12+: the current state is per thread, so any non-null one is this thread's.
  return compat::current_state_is_per_thread;
}


namespace {
// The thread exits with scopes open (a scope leaked on the heap, or a scope object that is never
// destroyed): misuse_kind::scope_outlived_thread. A dead thread must not keep the GIL (every
// other attach, and Py_FinalizeEx, would wait for it for ever) nor its gate passes (the closer
// would wait its whole bound). Gives both back, then destroys the state as at a normal exit, or
// only forgets it if its interpreter is finalizing or gone.
void exit_with_open_scopes(slot* s) noexcept {
  static const source_site k_exit{"<thread exit>", 0, "the thread's exit"};
  std::string other;
  try {
    other = open_scopes_text(s) + " still open; pyattach released the GIL and the thread state "
            "for it";
  } catch (...) {
  }
  misuse_details d{misuse_kind::scope_outlived_thread, "attach_scope", s->outer_site, &k_exit,
                   nullptr, other, s->os_tid};
  report_misuse(d);

  const std::uint64_t w = g_gate.word.load(std::memory_order_seq_cst);
  const bool live = generation_live(s, w);
  // Attached (holds the GIL with its state current). Not possible for a state whose interpreter
  // is gone: Py_FinalizeEx could not have finished without the GIL this thread holds.
  // A state that is not ours counts only while PyGILState still maps this thread to it: a Python
  // thread's bootstrap deletes its state before the thread's thread_locals are destroyed, and on
  // <= 3.11 the current state is global, so a new state at the same address may be another's.
  const bool holds = live && s->tstate != nullptr &&
                     compat::current_state_unchecked() == s->tstate &&
                     (s->owned || PyGILState_GetThisThreadState() == s->tstate);
  const std::uint32_t passes = s->passes.load(std::memory_order_relaxed);
  if (holds) {
    if (s->owned && passes > 0 && (w & 3) != phase_closed) {
      // Its own pass keeps the interpreter from finalizing (the closer waits for it).
      delete_current_state(s);
    } else {
      // Someone else's state, or the closer gave up on this thread (finalization may be waiting
      // for this GIL): only hand the GIL back; dropping it never ends the thread.
      obs_release(s);
      PyEval_SaveThread();
    }
  }
  s->passes.store(0, std::memory_order_release);  // after the GIL went back
  s->phase.store(slot_phase::detached, std::memory_order_relaxed);
  s->depth = 0;
  s->restored_mask = s->detached_mask = s->pass_mask = s->anomaly_mask = 0;
  if (s->tstate != nullptr && s->owned) {
    destroy_owned_state(s);  // through the gate; only forgets it unless the gate is open
  } else {
    forget_state(s);
  }
}

}  // namespace

slot_owner::~slot_owner() {
  slot* s = tls_slot;
  tls_exited = true;
  if (s == nullptr) return;
  scope_access::absorb_remote_orphans(s);
  if (s->depth == 0) {
    destroy_owned_state(s);
  } else {
    exit_with_open_scopes(s);
  }
  obs_retire(s);
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    auto& v = registry().slots;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (*it == s) {
        v.erase(it);
        break;
      }
    }
  }
  tls_slot = nullptr;
  delete s;
}

}  // namespace pyattach::detail

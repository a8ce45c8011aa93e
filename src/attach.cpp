// src/attach.cpp — every path of attach_scope and detach_scope that is not the inline one
// (attach.hpp): the out-of-line attach, ending scopes (in order, out of order, on the wrong
// thread, after their interpreter), detach scopes, parking, and the public helpers. The slot's
// own life is in slot.cpp.
#include "pyattach/attach.hpp"

#include <atomic>
#include <cstdio>
#include <string>

#include "attach_internal.hpp"

namespace pyattach {
namespace detail {


// ---- attach: the out-of-line path -----------------------------------------------------------
// The inline attach (attach.hpp) comes here when it cannot take its fast path: first use on this
// thread, a thread that is attached already, an observed attach, a gate that is not open, or
// after this thread's clean-up.

void scope_access::attach_slow(attach_scope& sc, const source_site& site) noexcept {
  // The scope's fields are uninitialized until here (attach.hpp).
  sc.owner_ = nullptr;
  sc.level_ = 0;
  sc.status_ = attach_status::not_initialized;
  sc.kind_ = attach_scope::kind_none;
  slot* s = tls_slot;
  if (s == nullptr && tls_exited) {
    attach_after_exit(sc);
    return;
  }
  if (s == nullptr) s = make_slot();
  absorb_remote_orphans(s);

  for (;;) {
    const std::uint64_t w = g_gate.word.load(std::memory_order_seq_cst);
    const bool initialized = Py_IsInitialized() != 0;
    const std::uint64_t gen = w >> 2;
    const std::uint64_t phase = w & 3;
    if (initialized && phase != phase_unbound && s->depth > 0 && s->gen != gen) {
      // Scopes opened for an interpreter that has been finalized are still open on this thread:
      // it still believes it is attached to that one. Refuse until they end (each end is then
      // reported as scope_outlived_interpreter and skipped).
      misuse_details d{misuse_kind::other_interpreter, "attach_scope", site, &s->outer_site,
                       nullptr,
                       open_scopes_text(s) + " still open for an earlier interpreter that has "
                       "been finalized; end them first",
                       s->os_tid};
      report_misuse(d);
      sc.status_ = attach_status::other_interpreter;
      return;
    }
    if (s->tstate != nullptr && (s->gen != gen || phase == phase_unbound)) forget_state(s);

    PyThreadState* const gs = initialized ? compat::gilstate_of_this_thread() : nullptr;
    if (initialized && attached_here(s)) {
      attach_reusing(sc, s, site);
      return;
    }
    if (attach_through_gate(sc, s, w, gs, site)) return;
  }
}

void scope_access::attach_after_exit(attach_scope& sc) noexcept {
  // The state is destroyed when this scope ends.
  const std::uint64_t w = bind_here();  // binds only if this thread holds the GIL
  if ((w & 3) != phase_open) {
    sc.status_ = refusal_status(w);
    return;
  }
  const compat::interpreter_view view = g_gate.view.load();  // opt-in; after w
  if (!take_oneoff_pass(w)) {
    sc.status_ = attach_status::finalizing;
    return;
  }
  compat::entry_guard guard(view);  // opt-in: refused once CPython started finalizing
  if (!guard) {
    g_gate.inside.fetch_sub(1, std::memory_order_seq_cst);
    sc.status_ = attach_status::finalizing;
    return;
  }
  sc.level_ = static_cast<std::uint32_t>(PyGILState_Ensure());  // inside the gate: safe
  guard.close();
  sc.owner_ = &g_transient_owner;
  sc.kind_ = attach_scope::kind_transient;
  sc.status_ = attach_status::attached;
}

void scope_access::attach_reusing(attach_scope& sc, slot* s, const source_site& site) noexcept {
  // Never make a second state (docs/design.md, invariant 1). We hold the GIL: bind and arm the
  // gate if that has not happened (a first pyattach call from Python, or an extension module's
  // pending bind that has not run yet).
  const std::uint64_t w = bind_here();
  PyThreadState* const cur = compat::current_state_unchecked();
  // A sub-interpreter's state is attached here (Py_NewInterpreter, or a swap): attaching the
  // main interpreter's state on top would deadlock or run code in the wrong interpreter.
  if (!belongs_to_main(cur)) {
    refuse_other_interpreter(sc, s, cur, site);
    return;
  }
  if (s->depth == 0 && s->tstate != cur) {
    s->tstate = cur;
    s->owned = false;  // someone else's state: reuse, never destroy
  }
  s->gen.store(w >> 2, std::memory_order_relaxed);
  refresh_fast_word(s);
  // The first pyattach scope on a thread that other code attached takes a pass, so that a
  // closer waits for the native code under it, which may drop and re-take the GIL (rule 6 in
  // docs/safety.md, "Exit"). Nested inside another pyattach scope, it only counts.
  const bool first = s->passes.load(std::memory_order_relaxed) == 0;
  push(sc, s, attach_scope::kind_nested, site);
  if (first) {
    take_extra_pass(s, sc.level_, w);
    if (s->pass_mask & level_bit(sc.level_)) sc.kind_ = attach_scope::kind_passed;
  }
}

bool scope_access::attach_through_gate(attach_scope& sc, slot* s, std::uint64_t w,
                                       PyThreadState* gs, const source_site& site) noexcept {
  const std::uint64_t gen = w >> 2;
  const std::uint64_t phase = w & 3;
  // Taking the GIL is safe only through a bound gate. This thread cannot bind it: without the
  // GIL it cannot register the close hook before the interpreter might finalize (gate.cpp).
  // Refuse (not_bound) rather than guess.
  if (phase == phase_unbound) {
    sc.status_ = refusal_status(w);
    return true;
  }
  // A thread that already holds a pass (inside a detach scope) may re-enter while a closer
  // waits for it; every other attach is refused once closing starts.
  const bool inside_already =
      phase == phase_closing && s->gen == gen && s->passes.load(std::memory_order_relaxed) > 0;
  if (phase != phase_open && !inside_already) {
    sc.status_ = refusal_status(w);
    return true;
  }
  // ≤3.11 registers a sub-interpreter's state with PyGILState when it is the thread's first:
  // attaching it would run our caller's code in that interpreter.
  if (gs != nullptr && !belongs_to_main(gs)) {
    refuse_other_interpreter(sc, s, gs, site);
    return true;
  }
  const compat::interpreter_view view = g_gate.view.load();  // opt-in; after w, before the pass
  // The pass belongs to this generation: tstate, if any, is of it (forgotten by the caller
  // otherwise), and with scopes open the generation cannot differ (refused by the caller).
  s->gen.store(gen, std::memory_order_relaxed);
  if (!take_pass(s, w)) return false;  // the gate moved: decide again
  // opt-in: a PEP 788 guard across the attach only. Refused: CPython has started finalizing
  // although the gate reads open (its hook did not close it): refuse, never retry.
  compat::entry_guard guard(view);
  if (!guard) {
    drop_pass(s);
    sc.status_ = attach_status::finalizing;
    return true;
  }
  s->phase.store(slot_phase::waiting, std::memory_order_relaxed);
  const bool observed = s->observe.load(std::memory_order_relaxed) != 0;
  if (observed) obs_wait_begin(s);
  if (gs != nullptr) {
    // PyGILState knows a state for this thread (ours, or pybind11's/another library's that
    // is detached now): attach that one (docs/design.md, invariant 2).
    if (!(s->owned && s->tstate == gs)) {
      s->tstate = gs;
      s->owned = false;
    }
    PyEval_RestoreThread(gs);  // inside the gate: the runtime is not finalizing
  } else {
    // First use: a state that PyGILState knows on every version, attached (compat.hpp says
    // how, per version). Its PyGILState count stays at 1 for the thread's life: pyattach never
    // calls a matching Release, it deletes the state itself.
    s->tstate = compat::new_main_state_attached();
    s->owned = true;
  }
  if (observed) obs_attached(s, true);
  guard.close();  // entry only: a thread that stays inside never delays shutdown
  refresh_fast_word(s);
  s->phase.store(slot_phase::attached, std::memory_order_relaxed);
  add_owned(s->scopes, 1);
  push(sc, s, attach_scope::kind_restored, site);
  return true;
}

// ---- ending scopes, and detach scopes ----------------------------------------------------------

// Re-attaches the state that the detach scope at `level` released, inside the gate. Returns
// false, leaving the thread detached, when that is not safe: the interpreter is gone, or the
// closer gave up on this thread (gate closed while it held a pass) and finalization may be under
// way, where taking the GIL would end the thread (pthread_exit, 3.9-3.13.0) or hang it (3.14+).
bool reattach_level(slot* s, std::uint32_t level, std::uint64_t w, bool live) noexcept {
  if (!live) return false;
  const std::uint64_t phase = w & 3;
  if (phase == phase_closed && is_finalizing_thread(w >> 2)) {
    // An atexit callback that runs after pyattach's, on the thread finalizing the interpreter:
    // it holds the GIL again when its callback returns, as CPython expects.
    s->phase.store(slot_phase::waiting, std::memory_order_relaxed);
    if (s->observe.load(std::memory_order_relaxed) != 0) obs_wait_begin(s);
    PyEval_RestoreThread(s->tstate);
    obs_attached(s, false);
    s->phase.store(slot_phase::attached, std::memory_order_relaxed);
    return true;
  }
  bool took = false;
  if (s->passes.load(std::memory_order_relaxed) > 0) {
    if (phase == phase_closed) return false;  // open, or closing: the closer waits for this pass
  } else {
    // No pass: the gate was not open when the scope began. Take one like a thread that is
    // already inside (a closing gate admits it; a closed one does not).
    if (phase != phase_open && phase != phase_closing) return false;
    if (!take_pass(s, w)) return false;  // it moved: closed now
    took = true;
  }
  // opt-in: a PEP 788 guard across the re-attach; refused once CPython started finalizing
  // although the gate did not show it. No-op before 3.15.
  compat::entry_guard guard(g_gate.view.load());
  if (!guard) {
    if (took) drop_pass(s);
    return false;
  }
  s->phase.store(slot_phase::waiting, std::memory_order_relaxed);
  if (s->observe.load(std::memory_order_relaxed) != 0) obs_wait_begin(s);
  PyEval_RestoreThread(s->tstate);  // inside the gate: the runtime is not finalizing
  obs_attached(s, false);  // records only if obs_wait_begin did
  guard.close();
  s->phase.store(slot_phase::attached, std::memory_order_relaxed);
  if (took) {
    // Keep the pass until the scope around this one ends, so that the closer also waits for the
    // code after this scope; with none around it, the caller's own code is not ours to cover.
    if (level > 1 && level_bit(level - 1) != 0) {
      s->pass_mask |= level_bit(level - 1);
    } else {
      drop_pass(s);
    }
  }
  return true;
}

// Undoes what the scope at `level` did to the thread's attachment. `ended` describes the scope
// being ended when it is this level (nullptr for a deferred level, which is not reported again).
// Returns false only for a detach scope that could not re-attach (see reattach_level): the
// thread is then detached and lost_bit is set, so the scopes around it do not detach again.
bool scope_access::undo_level(slot* s, std::uint32_t level, const end_context* ended) noexcept {
  const std::uint64_t bit = level_bit(level);
  const std::uint64_t w = g_gate.word.load(std::memory_order_seq_cst);
  const bool live = generation_live(s, w);
  bool ok = true;
  if (s->restored_mask & bit) {
    s->restored_mask &= ~bit;
    s->phase.store(slot_phase::detached, std::memory_order_relaxed);
    obs_release(s);  // the spans this scope opened end here, whichever way it ends
    if (s->anomaly_mask & lost_bit) {
      s->anomaly_mask &= ~lost_bit;  // already detached: the gate refused the re-attach
    } else if (!live) {
      // Its interpreter was finalized while the scope was open (the state is freed): never
      // touch it. Not attached either: finalization took the GIL.
      if (ended != nullptr) {
        misuse_details d{misuse_kind::scope_outlived_interpreter, ended->what, ended->made,
                         ended->at, ended->code, "its interpreter was finalized", s->os_tid};
        report_misuse(d);
      }
      drop_pass(s);  // of that generation: no closer counts it any more
      return true;
    } else {
      PyEval_SaveThread();
    }
    drop_pass(s);
    return true;
  }
  if (s->detached_mask & bit) {
    s->detached_mask &= ~bit;
    obs_detach_end(s);
    ok = reattach_level(s, level, w, live);
    if (!ok) s->anomaly_mask |= lost_bit;
  }
  if (s->pass_mask & bit) {
    s->pass_mask &= ~bit;
    drop_pass(s);
  }
  return ok;
}

void scope_access::refuse_other_interpreter(attach_scope& sc, slot* s, PyThreadState* ts,
                                            const source_site& site) noexcept {
  std::string other;
  try {
    other = interpreter_text(ts) + "; pyattach attaches to the main interpreter only and never "
            "swaps a thread's state under code that is using another";
  } catch (...) {
  }
  // The second site: where pyattach last attached this thread, if a scope is open.
  misuse_details d{misuse_kind::other_interpreter, "attach_scope", site,
                   s->depth > 0 ? &s->outer_site : &site, nullptr, other, s->os_tid};
  report_misuse(d);
  sc.status_ = attach_status::other_interpreter;
}

// Undoes every innermost level that already ended (out of order, or on another thread).
// Not while a sub-interpreter scope sits on the innermost level: its state is current, and the
// level is undone when that scope ends (src/subinterpreter.cpp, leave_sub).
bool scope_access::unwind_ended(slot* s) noexcept {
  bool ok = true;
  sync_sub_on_top(s);
  while (s->depth > 0 && (s->anomaly_mask & sub_on_top_bit) == 0 &&
         (s->anomaly_mask & level_bit(s->depth))) {
    s->anomaly_mask &= ~level_bit(s->depth);
    ok = undo_level(s, s->depth, nullptr) && ok;
    resume_swapped_out(s->depth--);
    sync_sub_on_top(s);
  }
  if (s->depth == 0) s->anomaly_mask = 0;
  return ok;
}

void scope_access::absorb_remote_orphans(slot* s) noexcept {
  const std::uint64_t remote = s->remote_orphans.exchange(0, std::memory_order_acq_rel);
  if (remote == 0) return;
  s->anomaly_mask |= remote & ~lost_bit;
  // A detach scope ended on another thread that cannot re-attach here leaves this thread
  // detached (lost_bit): it is in a pyattach call that then attaches afresh or is refused.
  unwind_ended(s);
}

// Ends the innermost level, then every level above it that ended early.
bool scope_access::pop_and_unwind(slot* s, const end_context& ended) noexcept {
  const bool ok = undo_level(s, s->depth, &ended);
  --s->depth;
  return unwind_ended(s) && ok;
}

// Shared checks for ending a scope: returns true if the caller may pop its level now.
bool scope_access::check_end(slot* s, slot* owner, bool released, std::uint32_t level,
                             const char* what, const source_site& made, const source_site* at,
                             void* code) noexcept {
  misuse_details d{misuse_kind::double_release, what, made, at, code, {}, 0};
  if (released) {
    d.made_on_thread = this_os_tid();
    report_misuse(d);
    return false;
  }
  if (s != owner) {
    d.kind = misuse_kind::wrong_thread;
    {
      // The owner thread may have exited: only read its slot if it is still registered.
      std::lock_guard<std::mutex> lock(registry().mutex);
      for (slot* x : registry().slots) {
        if (x != owner) continue;
        d.made_on_thread = owner->os_tid;
        // Only the owner may detach its state: ask it to, at its next pyattach call or exit.
        if (!released) owner->remote_orphans.fetch_or(level_bit(level), std::memory_order_acq_rel);
      }
    }
    report_misuse(d);
    return false;
  }
  if (s->depth != level || (s->anomaly_mask & sub_on_top_bit) != 0) {
    d.kind = misuse_kind::out_of_order;
    const std::uint32_t inner = s->depth > level ? s->depth - level : 0;
    d.other = s->depth == level ? "a scope on a sub-interpreter nested inside it is"
              : std::to_string(inner) + (inner == 1 ? " scope nested inside it is"
                                                    : " scopes nested inside it are");
    d.made_on_thread = s->os_tid;
    report_misuse(d);
    if (s->depth >= level) s->anomaly_mask |= level_bit(level);  // undone when they end
    return false;
  }
  return true;
}

void scope_access::end_slow(attach_scope& sc, const source_site* at, void* code) noexcept {
  if ((sc.kind_ & attach_scope::kind_swapped) != 0) {
    end_swapped(sc, at);
    return;
  }
  const std::uint8_t kind = sc.kind_ & ~attach_scope::kind_released;
  if (kind == attach_scope::kind_sub || kind == attach_scope::kind_sub_nested) {
    end_sub(sc, at, code);
    return;
  }
  const bool released = (sc.kind_ & attach_scope::kind_released) != 0;
  if ((sc.kind_ & ~attach_scope::kind_released) == attach_scope::kind_transient) {
    if (released) {
      check_end(tls_slot, sc.owner_, true, 0, "attach_scope", sc.site_, at, code);
      return;
    }
    sc.kind_ |= attach_scope::kind_released;
    PyGILState_Release(static_cast<PyGILState_STATE>(sc.level_));
    g_gate.inside.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  slot* s = tls_slot;
  if (s != nullptr && s == sc.owner_) absorb_remote_orphans(s);
  const bool ok =
      check_end(s, sc.owner_, released, sc.level_, "attach_scope", sc.site_, at, code);
  sc.kind_ |= attach_scope::kind_released;  // reported or done: never act on this scope again
  if (ok) pop_and_unwind(s, end_context{"attach_scope", sc.site_, at, code});
}

void scope_access::detach_begin(detach_scope& sc) noexcept {
  // The scope's fields are uninitialized until here (attach.hpp).
  sc.owner_ = nullptr;
  sc.level_ = 0;
  sc.state_ = detach_scope::state_idle;
  sc.sub_ = nullptr;
  if (detach_sub_begin(sc)) return;  // inside a sub-interpreter scope
  slot* s = tls_slot;
  if (s == nullptr && !tls_exited) s = make_slot();
  if (s == nullptr || !attached_here(s) || s->depth + 1 >= tracked_levels) {
    misuse_details d{misuse_kind::detach_without_attach, "detach_scope", sc.site_, &sc.site_,
                     nullptr, {}, this_os_tid()};
    report_misuse(d);
    return;
  }
  PyThreadState* const cur = compat::current_state_unchecked();
  // Attached, so we hold the GIL: bind if this is the first pyattach use in this interpreter
  // (the end of this scope checks that the state's interpreter still exists).
  const std::uint64_t w = bind_here();
  if (s->depth == 0 && (s->tstate != cur || s->gen.load(std::memory_order_relaxed) != (w >> 2))) {
    // A Python-created (or third-party) state, attached: record it to re-attach it later.
    // (Ours is current, so of this generation: only a foreign one can differ.)
    if (s->tstate != cur) {
      s->tstate = cur;
      s->owned = false;
    }
    s->gen.store(w >> 2, std::memory_order_relaxed);
    refresh_fast_word(s);
  }
  sc.owner_ = s;
  sc.level_ = ++s->depth;
  if (sc.level_ == 1) s->outer_site = sc.site_;
  s->detached_mask |= level_bit(sc.level_);
  // Hold a pass across the detached time unless this thread holds one already (rule 6): a
  // closer then waits for the scope to end, and its end re-attaches inside the gate.
  take_extra_pass(s, sc.level_, w);
  s->phase.store(slot_phase::detached, std::memory_order_relaxed);
  // Observed: ended out of line too (detach_scope::state_observed), so that its end records.
  const bool observed = s->observe.load(std::memory_order_relaxed) != 0;
  if (observed) obs_detach_begin(s);
  PyEval_SaveThread();  // keeps the state (s->tstate), hands the GIL to others
  sc.state_ = observed ? detach_scope::state_observed : detach_scope::state_active;
}

void scope_access::detach_end(detach_scope& sc, const source_site* at, void* code,
                              bool* reattached) noexcept {
  if (sc.state_ == detach_scope::state_sub) {
    detach_sub_end(sc, at, code);
    if (reattached != nullptr) *reattached = compat::current_state_unchecked() != nullptr;
    return;
  }
  slot* s = tls_slot;
  if (s != nullptr && s == sc.owner_) absorb_remote_orphans(s);
  const bool ok = check_end(s, sc.owner_, sc.state_ == detach_scope::state_ended, sc.level_,
                            "detach_scope", sc.site_, at, code);
  sc.state_ = detach_scope::state_ended;
  if (!ok) {
    if (reattached != nullptr) *reattached = attached_here(s);
    return;
  }
  if (pop_and_unwind(s, end_context{"detach_scope", sc.site_, at, code})) {
    if (reattached != nullptr) *reattached = true;
    return;
  }
  // Could not re-attach: the interpreter began finalizing while this thread was inside and the
  // closer gave up on it. The code after this scope would run Python without a thread state.
  // reattach() may say so instead, when an attach_scope of pyattach's made the state current
  // (restored_mask): its caller can leave, and those scopes end without touching CPython.
  if (reattached != nullptr && s->restored_mask != 0) {
    *reattached = false;
    return;
  }
  std::string why;
  try {
    why = "its detach_scope made at " + site_text(sc.site_) + " ended after the interpreter "
          "began finalizing (the gate closed while it was inside), and the code after it would "
          "run Python without a thread state";
  } catch (...) {
  }
  park(s, why);
}

[[noreturn]] void park(slot* s, const std::string& why) noexcept {
  // Blocks for good without the GIL: nothing above this frame runs again, so nothing can call
  // Python without a state or be unwound by CPython. exit() does not wait for this thread.
  // The line first: whoever sees the thread counted as parked also sees why.
  try {
    std::fprintf(stderr, "pyattach: thread %s parked for good: %s; the process exits without it\n",
                 thread_label(s->os_tid).c_str(), why.c_str());
  } catch (...) {
  }
  s->phase.store(slot_phase::parked, std::memory_order_relaxed);
  g_parked.fetch_add(1, std::memory_order_release);
  note_worker_parked();
  for (;;) ::pause();  // returns after each signal handler: wait again
}

int park_tracer(PyObject*, PyFrameObject*, int, PyObject*) noexcept {
  slot* s = tls_slot;
  if (s == nullptr || !s->must_park.load(std::memory_order_acquire)) return 0;
  // The closer gave up on this thread while it runs Python, and asked it to leave in vain: park
  // it between two lines, before CPython may finalize under it. The gate is still closing (the
  // closer waits for this), so releasing the GIL here is safe.
  obs_release(s);
  PyEval_SaveThread();
  park(s, "it was still running Python when the close bound and the grace after the shutdown "
          "request expired");
}

// The out-of-line entry points named in attach.hpp. noinline: end_slow's return address must be
// the user's code that ended the scope.
void attach_slow(attach_scope& scope, const source_site& site) noexcept {
  scope_access::attach_slow(scope, site);
}

__attribute__((noinline)) void end_slow(attach_scope& scope, const source_site* at) noexcept {
  // A sub-interpreter scope's common end first, before end_slow's larger frame is set up.
  if (scope_access::end_sub_fast(scope)) return;
  scope_access::end_slow(scope, at, __builtin_return_address(0));
}

}  // namespace detail

const char* to_string(attach_status status) noexcept {
  switch (status) {
    case attach_status::attached: return "attached";
    case attach_status::not_initialized: return "not_initialized";
    case attach_status::not_bound: return "not_bound";
    case attach_status::finalizing: return "finalizing";
    case attach_status::finalized: return "finalized";
    case attach_status::other_interpreter: return "other_interpreter";
  }
  return "unknown";
}

namespace {
const char* status_reason(attach_status status) noexcept {
  switch (status) {
    case attach_status::not_initialized: return " (the interpreter has not been initialized)";
    case attach_status::not_bound:
      return " (pyattach is not bound to this interpreter: call pyattach::bind() on a thread that "
             "holds the GIL right after Py_InitializeEx; extension modules bind when imported)";
    case attach_status::finalizing: return " (the interpreter is shutting down)";
    case attach_status::finalized: return " (the interpreter has been finalized)";
    case attach_status::other_interpreter:
      return " (this thread is attached to another interpreter)";
    case attach_status::attached: break;
  }
  return "";
}
}  // namespace

attach_error::attach_error(attach_status status)
    : std::runtime_error(std::string("pyattach: cannot attach to Python: ") + to_string(status) +
                         status_reason(status)),
      status_(status) {}

namespace detail {
void detach_begin_slow(detach_scope& scope) noexcept { scope_access::detach_begin(scope); }

__attribute__((noinline)) void detach_end_slow(detach_scope& scope) noexcept {
  scope_access::detach_end(scope, nullptr, __builtin_return_address(0), nullptr);
}
}  // namespace detail

__attribute__((noinline)) void detach_scope::release(source_site site) noexcept {
  if (state_ == state_idle) return;  // constructor found nothing to detach
  detail::scope_access::detach_end(*this, &site, __builtin_return_address(0), nullptr);
}

__attribute__((noinline)) bool detach_scope::reattach(source_site site) noexcept {
  if (state_ == state_idle) return is_attached();  // constructor found nothing to detach
  bool attached = false;
  detail::scope_access::detach_end(*this, &site, __builtin_return_address(0), &attached);
  return attached;
}

std::uint64_t parked_thread_count() noexcept {
  return detail::g_parked.load(std::memory_order_acquire);
}

bool is_attached() noexcept { return detail::attached_here(detail::tls_slot); }

bool expect_attached(source_site site) noexcept {
  const detail::slot* s = detail::tls_slot;
  if (detail::attached_here(s)) return true;
  const bool finalized = Py_IsInitialized() == 0;
  detail::misuse_details d{misuse_kind::python_without_state, "expect_attached()",
                           s != nullptr ? s->outer_site : source_site{}, &site, nullptr,
                           finalized ? "and the interpreter is not initialized"
                           : s == nullptr ? "pyattach never attached this thread"
                           : s->depth > 0 ? "a pyattach scope is open but its state is not "
                                            "current: released by other code"
                                          : "no pyattach scope is open",
                           detail::this_os_tid()};
  detail::report_misuse(d);
  return false;
}

bool release_thread_state(source_site site) noexcept {
  detail::slot* s = detail::tls_slot;
  if (s == nullptr) return false;
  if (s->depth > 0) {
    detail::misuse_details d{misuse_kind::release_while_attached, "release_thread_state()",
                             s->outer_site, &site, nullptr, detail::open_scopes_text(s),
                             s->os_tid};
    detail::report_misuse(d);
    return false;
  }
  return detail::destroy_owned_state(s);
}

}  // namespace pyattach

// src/subinterpreter.cpp — interpreters other than the main one (pyattach/subinterpreter.hpp):
// each one's gate, every thread's cache of its states (one per interpreter) and the scopes on
// them. Their close and end are in subinterpreter_end.cpp, the records' registry and the public
// handle in subinterpreter_handle.cpp. The main interpreter's slot and gate (detail/slot.hpp) are not
// involved, but for a thread's first state (its PyGILState identity, below).
#include "pyattach/subinterpreter.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
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

thread_local sub_table tls_table;
// Set when this thread's table has been destroyed (thread exit): a scope made later, from another
// thread_local's destructor, must not touch it.
PYATTACH_TLS bool tls_table_gone = false;
// &tls_table once this thread used it: an initial-exec TLS read instead of the thread_local's
// wrapper and __tls_get_addr (tls_table needs a destructor, so it cannot be PYATTACH_TLS).
PYATTACH_TLS sub_table* tls_table_ptr = nullptr;
// The entry whose state a pyattach sub-interpreter scope made current on this thread, if that
// state is still current (a scope on another interpreter inside it swaps it out: null or that one).
PYATTACH_TLS sub_entry* tls_current = nullptr;

// ---- what the thread report and observation see (report.hpp, observe.hpp) ----
// The owner calls these around each take and release of a state's GIL: the entry's phase for the
// report (e: null for the thread's main-interpreter state, which has its slot's phase), and the
// observation hooks. Observation off costs one load of the thread's slot (and one of a byte of it
// when it has one); the release hooks record only what an observed take began.
obs_in in_of(const sub_entry* e) noexcept {
  return e != nullptr ? obs_in{e->core->id, e->core->own_gil} : obs_in{0, true};
}

// The calling thread's slot if it observes now (made for a thread that has none yet, as its
// first main-interpreter attach would); else null.
slot* observing_slot() noexcept {
  slot* s = tls_slot;
  if (PYATTACH_UNLIKELY(s == nullptr) && observing_anywhere()) s = this_thread_slot();
  return s != nullptr && s->observe.load(std::memory_order_relaxed) != 0 ? s : nullptr;
}

// Before taking e's GIL; returns the slot to pass to took() (null: not observed).
slot* taking(sub_entry* e) noexcept {
  slot* const s = observing_slot();
  if (PYATTACH_UNLIKELY(s != nullptr)) obs_sub_ask(s, in_of(e));
  e->phase.store(entry_phase::waiting, std::memory_order_relaxed);
  return s;
}

void took(slot* s, sub_entry* e, obs_take how) noexcept {
  e->phase.store(entry_phase::attached, std::memory_order_relaxed);
  if (PYATTACH_UNLIKELY(s != nullptr)) obs_sub_took(s, in_of(e), how);
}

// Before releasing the current state's GIL (e: its entry, null for a main-interpreter state).
// Returns whether an observed hold ended (a swap then resumes it: resume()).
bool releasing(sub_entry* e) noexcept {
  if (e != nullptr) e->phase.store(entry_phase::detached, std::memory_order_relaxed);
  slot* const s = tls_slot;
  return PYATTACH_UNLIKELY(s != nullptr && s->obs.load(std::memory_order_relaxed) != nullptr) &&
         obs_sub_release(s);
}

// Makes `ts` (of entry e, null for a main-interpreter state) current again after a scope that
// swapped it out; `observed`: releasing() said its hold was observed, which then resumes. The
// caller sets tls_current.
void resume(PyThreadState* ts, sub_entry* e, bool observed) noexcept {
  slot* const s = observed ? tls_slot : nullptr;
  if (s != nullptr) obs_sub_ask(s, in_of(e));
  if (e != nullptr) e->phase.store(entry_phase::waiting, std::memory_order_relaxed);
  PyEval_RestoreThread(ts);
  if (e != nullptr) e->phase.store(entry_phase::attached, std::memory_order_relaxed);
  if (s != nullptr) obs_sub_took(s, in_of(e), obs_take::resume);
}

}  // namespace

sub_table* this_table() noexcept {
  if (PYATTACH_LIKELY(tls_table_ptr != nullptr)) return tls_table_ptr;
  if (tls_table_gone) return nullptr;
  // The thread's main slot first: thread_locals are destroyed in the reverse order of their
  // construction, so this table's clean-up then runs before the slot's, which attaches the
  // thread's main state to destroy it. After it, a sub-interpreter state that a leaked scope left
  // current made CPython abort (3.13.0: "_PyThreadState_Attach: non-NULL old thread state") or
  // the table's clean-up wait for ever for the GIL the slot's had taken over (3.12.1).
  (void)this_thread_slot();
  tls_table_ptr = &tls_table;
  return tls_table_ptr;
}

void sync_sub_on_top(slot* s) noexcept {
  const sub_table* const t = tls_table_ptr;
  const bool on = t != nullptr && s->depth != 0 && s->depth < tracked_levels &&
                  t->covering[s->depth] != 0;
  s->anomaly_mask = on ? s->anomaly_mask | sub_on_top_bit : s->anomaly_mask & ~sub_on_top_bit;
}

sub_entry* find_entry(interp_core* core) noexcept {
  sub_table* const t = this_table();
  if (t != nullptr && core->index < t->by_index.size()) {
    sub_entry* e = t->by_index[core->index];
    if (e != nullptr && e->core.get() == core) return e;
  }
  return nullptr;
}

sub_entry* current_entry(PyThreadState* cur) noexcept {
  sub_table* const t = this_table();
  if (cur == nullptr || t == nullptr) return nullptr;
  for (sub_entry* e : t->by_index) {
    // A current state's scope is open (depth > 0) and holds a pass, under which ts may be read;
    // an idle entry's ts may be written by a closer meanwhile (sub_entry::ts): not read.
    // Nor is a detached one's (an end may abandon it, then destroy its state): not current.
    if (e != nullptr && e->depth != 0 &&
        e->detach.load(std::memory_order_relaxed) == detach_mark::none && e->ts == cur) {
      return e;
    }
  }
  return nullptr;
}

bool take_back(sub_entry* e) noexcept {
  // Only this thread leaves none (detach_sub_begin): no lock needed to see it.
  if (PYATTACH_LIKELY(e->detach.load(std::memory_order_relaxed) == detach_mark::none)) return true;
  std::lock_guard<std::mutex> lock(e->core->m);
  if (e->detach.load(std::memory_order_relaxed) == detach_mark::abandoned) return false;
  e->detach.store(detach_mark::none, std::memory_order_relaxed);
  return true;
}

// Frees an entry whose state is gone (or handed to the closer). PRECONDITION: e->depth == 0.
void drop_entry(sub_entry* e) noexcept {
  {
    std::lock_guard<std::mutex> lock(e->core->m);
    auto& v = e->core->entries;
    v.erase(std::remove(v.begin(), v.end(), e), v.end());
    e->core->attaches.fetch_add(e->attaches.load(std::memory_order_relaxed),
                                std::memory_order_relaxed);
    if (e->ts != nullptr) {
      // The gate is closing or closed: the closer destroys it (it cannot be attached any more).
      e->core->orphans.push_back(e->ts);
      e->ts = nullptr;
      e->phase.store(entry_phase::none, std::memory_order_relaxed);
    }
  }
  if (tls_current == e) tls_current = nullptr;
  e->table->by_index[e->core->index] = nullptr;
  delete e;
}

namespace {

sub_entry* entry_for(const std::shared_ptr<interp_core>& core) {
  if (sub_entry* e = find_entry(core.get())) return e;
  if (this_table() == nullptr) return nullptr;
  sub_table& t = tls_table;
  if (core->index < t.by_index.size() && t.by_index[core->index] != nullptr) {
    // A record that used this index before is gone; its entry holds no state (it ended).
    sub_entry* stale = t.by_index[core->index];
    if (stale->depth == 0) drop_entry(stale);
    else return nullptr;
  }
  if (core->index >= t.by_index.size()) t.by_index.resize(core->index + 1, nullptr);
  auto* e = new sub_entry;
  e->core = core;
  e->table = &t;
  e->ident = PyThread_get_thread_ident();  // needs no GIL
  e->os_tid = this_os_tid();
  {
    std::lock_guard<std::mutex> lock(core->m);
    core->entries.push_back(e);
  }
  t.by_index[core->index] = e;
  return e;
}

// The gate's entry (interp_core): a pass, or false, holding none, once it is closing.
bool enter_sub_gate(interp_core* core) noexcept {
  core->inside.fetch_add(1, std::memory_order_seq_cst);
  if (core->phase.load(std::memory_order_seq_cst) == sub_open) return true;
  core->inside.fetch_sub(1, std::memory_order_seq_cst);
  return false;
}

// The same for an attach, whose refusal stats() counts.
bool take_sub_pass(interp_core* core) noexcept {
  if (PYATTACH_LIKELY(enter_sub_gate(core))) return true;
  core->refused.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void drop_sub_pass(interp_core* core) noexcept {
  core->inside.fetch_sub(1, std::memory_order_seq_cst);
}

attach_status sub_refusal(const interp_core* core) noexcept {
  return core->phase.load(std::memory_order_relaxed) == sub_closed ? attach_status::finalized
                                                                     : attach_status::finalizing;
}

// Destroys this thread's state of the entry's interpreter, on this thread. PRECONDITION: no
// scope of it open here; this thread attached to nothing (its thread exit).
void destroy_own_state(sub_entry* e) noexcept {
  interp_core* core = e->core.get();
  // The pass first: only inside the gate may this thread read ts (a closer writes it once the
  // gate is closed and no pass is held). Refused: drop_entry hands it to the closer, under m.
  if (enter_sub_gate(core)) {
    if (e->ts != nullptr) {
      PyEval_RestoreThread(e->ts);  // inside its gate: it cannot end meanwhile
      unmark_gilstate_bound(e->ts);
      PyThreadState_Clear(e->ts);
      PyThreadState_DeleteCurrent();  // releases its GIL
      e->ts = nullptr;
      e->phase.store(entry_phase::none, std::memory_order_relaxed);
      core->states_destroyed.fetch_add(1, std::memory_order_relaxed);
    }
    drop_sub_pass(core);
  }
  drop_entry(e);
}

// ---- misuse: scopes ended out of order or on another thread (attach.hpp, "Contract") ---------

// Gives a thread with no PyGILState state its main-interpreter state first (see the header,
// "PyGILState"): CPython 3.12+ binds the first state a thread makes, of any interpreter.
attach_status ensure_main_identity(const source_site& site) noexcept {
  if (PyGILState_GetThisThreadState() != nullptr) return attach_status::attached;
  attach_scope main_scope(nothrow, site);
  return main_scope.status();
}

// A scope that made a sub-interpreter's state current while the main slot is at depth L >= 1
// covers that level until it ends: ending a main scope there meanwhile is out of order
// (slot::anomaly_mask, sub_on_top_bit). Invariant: while it is open, the main depth stays L
// (a main scope inside it swaps it out and ends first, or is out of order itself).
void cover_main(sub_table* t) noexcept {
  slot* const s = tls_slot;
  if (s != nullptr && s->depth != 0 && s->depth < tracked_levels) {
    ++t->covering[s->depth];
    s->anomaly_mask |= sub_on_top_bit;
  }
}

// Its end; then the main levels that ended while it sat on them are undone, once no other
// sub-interpreter scope covers them.
void uncover_main(sub_table* t) noexcept {
  slot* const s = tls_slot;
  if (s != nullptr && s->depth != 0 && s->depth < tracked_levels && t->covering[s->depth] != 0) {
    --t->covering[s->depth];
    scope_access::unwind_main(s);
  }
}

// Whether the thread has lost its PyGILState state (below). While pyattach's own main state of
// the thread is live and bound (slot::fast_word: made by pyattach, in the open generation), its
// bound_gilstate flag answers without PyGILState_GetThisThreadState's TSS lookup: CPython clears
// the flag of the state it unbinds when it binds another (Python/pystate.c, bind_gilstate_tstate,
// 3.12-3.15), which is how 3.13's imports lose it (below).
bool gilstate_lost([[maybe_unused]] const slot* s) noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  if (PYATTACH_LIKELY(s != nullptr &&
                      s->fast_word == g_gate.word.load(std::memory_order_acquire))) {
    return s->tstate->_status.bound_gilstate == 0;
  }
#endif
  return PyGILState_GetThisThreadState() == nullptr;
}

// Ends the level of a scope that made e's state current: releases it with its GIL and makes
// `outer` (the state that scope swapped out; null: none) current again.
void leave_sub(sub_entry* e, std::uint32_t level, PyThreadState* outer,
               const source_site& site) noexcept {
  const bool resumes = (e->obs_resumes & level_bit(level)) != 0;
  releasing(e);
  PyEval_SaveThread();  // keeps the state for the next attach; hands its GIL on
  tls_current = nullptr;
  if (outer == nullptr && (e->detach_levels & level_bit(e->depth)) != 0) {
    // Back in the detach_scope this scope was opened in (sub_entry::detach); the caller's depth
    // is written and this scope's pass is still held until it drops it.
    e->detach.store(detach_mark::detached, std::memory_order_release);
  }
  if (outer != nullptr) {
    sub_entry* const oe = current_entry(outer);  // another interpreter's scope, or none
    resume(outer, oe, resumes);  // the outer scope's pass holds
    tls_current = oe;
  } else if (PYATTACH_UNLIKELY(gilstate_lost(tls_slot))) {
    // CPython 3.13 imports a built-in or extension module in a sub-interpreter through a
    // temporary main-interpreter state that it binds to PyGILState and deletes
    // (Python/import.c, import_run_extension -> switch_back_from_main_interpreter), which
    // leaves the thread with none (measured on 3.13.0: an `import atexit` in an interpreter
    // made by _interpreters.create()); the next state made on the thread, of any interpreter,
    // would be bound instead. Give the thread its main state back now (one attach and detach
    // of the main interpreter, which makes it current and so binds it again).
    ensure_main_identity(site);
  }
  uncover_main(tls_table_ptr);
}

// Undoes the thread's innermost scopes that already ended (out of order, or on another thread),
// from the current sub-interpreter scope outward, as each becomes the innermost.
void unwind_subs() noexcept {
  for (sub_entry* e = tls_current; e != nullptr && e->depth != 0; e = tls_current) {
    const std::uint32_t level = e->depth;
    if ((e->ended & level_bit(level)) == 0 || compat::current_state_unchecked() != e->ts) return;
    e->ended &= ~level_bit(level);
    --e->depth;
    auto& swaps = e->ended_swaps;
    auto it = std::find_if(swaps.begin(), swaps.end(),
                           [level](const auto& x) { return x.first == level; });
    if (it != swaps.end()) {
      PyThreadState* const outer = it->second;
      swaps.erase(it);
      leave_sub(e, level, outer, e->outer_site);
    }
    drop_sub_pass(e->core.get());
  }
}

// After a scope on the main interpreter's handle: the sub-interpreter state it swapped out is
// current again (its scope's pass holds), and that scope, if it already ended, is undone.
void resume_swapped_state(PyThreadState* outer) noexcept {
  sub_entry* const inner = current_entry(outer);
  resume(outer, inner, inner != nullptr && (inner->obs_lent & level_bit(inner->depth)) != 0);
  tls_current = inner;
  unwind_subs();
}

// Records that the scope at `level` of e ended before its time; `swapped`: it made e's state
// current, swapping out `outer`.
void mark_ended(sub_entry* e, std::uint32_t level, bool swapped, PyThreadState* outer) noexcept {
  e->ended |= level_bit(level);
  if (swapped) {
    try {
      e->ended_swaps.emplace_back(level, outer);
    } catch (...) {  // out of memory: the level is undone without making `outer` current
    }
  }
}

// The scope of another thread's entry e ended here (wrong_thread): only its thread may release
// its state, so hand the level over (sub_entry::remote) for its next sub-interpreter call or its
// exit. `e` may be gone with its thread: it is used only while found among a live record's
// entries, under that record's lock (drop_entry removes it there before freeing it).
void hand_over(sub_entry* e, std::uint32_t level, bool swapped, PyThreadState* outer,
               misuse_details& d) noexcept {
  std::vector<std::shared_ptr<interp_core>> live;
  try {
    core_registry& r = cores();
    std::lock_guard<std::mutex> lock(r.m);  // not with a record's lock: the order is record, registry
    for (auto& w : r.by_index) {
      if (auto c = w.lock()) live.push_back(std::move(c));
    }
  } catch (...) {
  }
  for (auto& c : live) {
    std::lock_guard<std::mutex> lock(c->m);
    if (std::find(c->entries.begin(), c->entries.end(), e) == c->entries.end()) continue;
    d.made_on_thread = e->os_tid;
    try {
      e->remote.push_back({level, swapped, outer});
      e->table->remote_pending.store(true, std::memory_order_release);
    } catch (...) {  // out of memory: its thread releases it at exit, as a leaked scope
    }
    return;
  }
}

// Takes over the levels other threads ended (hand_over) and undoes the innermost ended ones.
void absorb_remote_ends(sub_table* t) noexcept {
  if (PYATTACH_LIKELY(!t->remote_pending.load(std::memory_order_relaxed))) {
    unwind_subs();
    return;
  }
  t->remote_pending.exchange(false, std::memory_order_acq_rel);
  for (sub_entry* e : t->by_index) {
    if (e == nullptr) continue;
    std::vector<sub_entry::remote_end> got;
    {
      std::lock_guard<std::mutex> lock(e->core->m);
      got.swap(e->remote);
    }
    for (const auto& r : got) mark_ended(e, r.level, r.swapped, r.outer);
  }
  unwind_subs();
}

}  // namespace

sub_table::~sub_table() {
  // Scopes that ended early (out of order, or on another thread) are undone first, as the
  // thread's next call would have, so that only scopes still open are reported below.
  absorb_remote_ends(this);
  // A current state that is none of this table's is a leaked main-interpreter scope's: hand its
  // GIL back before this thread's sub-interpreter states are made current below. The slot's
  // clean-up, which runs after this one (this_table()), reports that scope and destroys the state
  // through the main gate.
  PyThreadState* const cur = compat::current_state_unchecked();
  if (cur != nullptr && current_entry(cur) == nullptr) PyEval_SaveThread();
  for (sub_entry* e : std::vector<sub_entry*>(by_index)) {
    if (e == nullptr) continue;
    if (e->depth != 0) {
      // Scopes leaked on this thread (on the heap): release what they hold, as the main slot does.
      misuse_details d{misuse_kind::scope_outlived_thread, "attach_scope", e->outer_site,
                       nullptr, nullptr,
                       std::to_string(e->depth) + " sub-interpreter scope(s) still open; "
                       "pyattach released its thread state",
                       this_os_tid()};
      report_misuse(d);
      // Abandoned in a leaked detach_scope: its end took the passes and destroys the state.
      if (take_back(e)) {
        if (compat::current_state_unchecked() == e->ts && e->ts != nullptr) PyEval_SaveThread();
        for (std::uint32_t i = 0; i < e->depth; ++i) drop_sub_pass(e->core.get());
      }
      e->depth = 0;
    }
    destroy_own_state(e);
  }
  if (slot* const s = tls_slot) s->anomaly_mask &= ~sub_on_top_bit;  // no scope here is open
  tls_table_gone = true;
  tls_table_ptr = nullptr;
  tls_current = nullptr;
}

// ---- scopes on a sub-interpreter ------------------------------------------------------------

// The common switch, as short as it can be (a function of its own: attach_sub_slow's frame is
// large): the thread's state of this interpreter exists and no scope of it is open here,
// nothing is current (no state to swap out), no main scope is open (nothing to cover), nothing
// observes, and no other thread ended a scope of this one. Returns false, having done nothing,
// otherwise.
bool scope_access::attach_sub_fast(attach_scope& sc, interp_core* core,
                                   const source_site& site) noexcept {
  slot* const s = tls_slot;
  sub_table* const t = tls_table_ptr;
  if (PYATTACH_UNLIKELY(t == nullptr || s == nullptr || core->index >= t->by_index.size())) {
    return false;
  }
  sub_entry* const e = t->by_index[core->index];
  // e->depth == 0: the outermost scope of this thread here (none open, so no detach_scope either).
  if (PYATTACH_UNLIKELY(e == nullptr || e->core.get() != core || e->depth != 0 ||
                        s->depth != 0 || s->observe.load(std::memory_order_relaxed) != 0 ||
                        t->remote_pending.load(std::memory_order_relaxed) ||
                        compat::current_state_unchecked() != nullptr)) {
    return false;
  }
  if (PYATTACH_UNLIKELY(!take_sub_pass(core))) {
    sc.kind_ = attach_scope::kind_none;
    sc.status_ = sub_refusal(core);
    return true;
  }
  // Read only inside the gate: a closer writes it once the gate is closed (sub_entry::ts).
  PyThreadState* const ts = e->ts;
  if (PYATTACH_UNLIKELY(ts == nullptr)) {  // its first scope here: made by the slow path
    drop_sub_pass(core);
    return false;
  }
  e->phase.store(entry_phase::waiting, std::memory_order_relaxed);
  PyEval_RestoreThread(ts);  // its GIL; inside the gate: the interpreter cannot end
  e->phase.store(entry_phase::attached, std::memory_order_relaxed);
  tls_current = e;
  add_owned(e->attaches, 1);
  sc.owner_ = s;
  sc.sub_ = e;
  sc.outer_ = nullptr;
  sc.level_ = e->depth = 1;
  e->outer_site = site;
  sc.kind_ = attach_scope::kind_sub;
  sc.status_ = attach_status::attached;
  return true;
}

void scope_access::attach_sub_slow(attach_scope& sc, const std::shared_ptr<interp_core>& core,
                                   const source_site& site) noexcept {
  // Refused unless set below (the scope's fields are uninitialized until here, attach.hpp).
  sc.owner_ = nullptr;
  sc.kind_ = attach_scope::kind_none;
  if (PYATTACH_UNLIKELY(!take_sub_pass(core.get()))) {
    sc.status_ = sub_refusal(core.get());
    return;
  }
  if (sub_table* const t = tls_table_ptr) absorb_remote_ends(t);
  sub_entry* e = find_entry(core.get());
  if (PYATTACH_UNLIKELY(e == nullptr)) {
    try {
      e = entry_for(core);
    } catch (...) {
    }
  }
  if (PYATTACH_UNLIKELY(e == nullptr || e->depth + 1 >= tracked_levels)) {
    drop_sub_pass(core.get());
    sc.status_ = attach_status::other_interpreter;
    return;
  }
  std::uint8_t kind = attach_scope::kind_sub_nested;  // inside a scope of this interpreter
  PyThreadState* cur = e->ts;
  if (tls_current != e) {
    kind = attach_scope::kind_sub;
    cur = compat::current_state_unchecked();  // main, another interpreter's, or none
    if (e->ts == nullptr && cur == nullptr) {
      const attach_status main = ensure_main_identity(site);
      if (main != attach_status::attached) {
        drop_sub_pass(core.get());
        sc.status_ = main;
        return;
      }
    }
    // The outer state's observed hold ends here and resumes at this scope's end.
    const std::uint64_t bit = level_bit(e->depth + 1);
    sub_entry* const outer =
        tls_current != nullptr && tls_current->ts == cur ? tls_current : nullptr;
    const bool resumes = cur != nullptr && releasing(outer);
    e->obs_resumes = resumes ? e->obs_resumes | bit : e->obs_resumes & ~bit;
    if (cur != nullptr) PyEval_SaveThread();  // the outer state stays this thread's; its GIL goes
    // Inside a detach_scope of e: take its state back before making it current, holding no GIL
    // (sub_entry::detach). It cannot have been abandoned: this scope's pass was taken with the
    // gate open, and an end abandons only once the gate is closed and every pass held is a
    // detached entry's, which this one is not.
    take_back(e);
    if (e->ts == nullptr) {
      // Made on this thread, for this thread only, so that CPython's records of the thread
      // (thread_id, its PyGILState) are this thread's. Needs no GIL.
      e->ts = PyThreadState_New(core->interp);
      if (e->ts == nullptr) {
        if (cur != nullptr) resume(cur, outer, resumes);
        drop_sub_pass(core.get());
        sc.status_ = attach_status::other_interpreter;
        return;
      }
      // The thread has a PyGILState state (its main one, above), so CPython did not bind this
      // one; mark it so that making it current does not either (see mark_gilstate_bound).
      // Unless CPython left it none: 3.13.0 runs a sub-interpreter's first import of a module on
      // a main-interpreter state that it binds and deletes (Python/import.c,
      // switch_to_main_interpreter), and a state made then, inside such a scope, is bound. That
      // one is deleted under its GIL (which unbinds it) and one made while it was bound is kept.
      PyThreadState* const bound = PyGILState_GetThisThreadState() == e->ts ? e->ts : nullptr;
      if (bound != nullptr) {
        if (PyThreadState* const other = PyThreadState_New(core->interp)) e->ts = other;
      }
      mark_gilstate_bound(e->ts);
      core->states_made.fetch_add(1, std::memory_order_relaxed);
      if (bound != nullptr && bound != e->ts) {
        PyEval_RestoreThread(e->ts);  // inside the gate
        PyThreadState_Clear(bound);
        PyThreadState_Delete(bound);  // unbinds it: the thread has no PyGILState state again
        PyEval_SaveThread();
      }
    }
    slot* const observed = taking(e);
    PyEval_RestoreThread(e->ts);  // its GIL; inside the gate: the interpreter cannot end
    took(observed, e, obs_take::attach);
    tls_current = e;
    add_owned(e->attaches, 1);
    cover_main(e->table);
  }
  sc.owner_ = tls_slot;  // names the thread (its main slot) without touching e
  sc.sub_ = e;
  sc.outer_ = cur;
  sc.level_ = ++e->depth;
  if (sc.level_ == 1) e->outer_site = site;
  sc.kind_ = kind;
  sc.status_ = attach_status::attached;
}

// The common end, of the common switch: in order, on its thread, nothing to restore, no main
// scope open (nothing covered), nothing recording. (Whatever other threads ended waits for the
// next attach, and nothing of this thread is left to undo: nothing was current before.)
bool scope_access::end_sub_fast(attach_scope& sc) noexcept {
  if (sc.kind_ != attach_scope::kind_sub) return false;  // any other kind, or ended already
  sub_entry* const e = static_cast<sub_entry*>(sc.sub_);
  slot* const s = tls_slot;
  // Level 1 and depth 1: the outermost scope here, ending in order (so no detach_scope is open
  // around it in this interpreter, which leave_sub would mark again).
  if (PYATTACH_UNLIKELY(sc.outer_ != nullptr || sc.level_ != 1 ||
                        sc.owner_ != s || s == nullptr || tls_current != e ||
                        e->depth != 1 || s->depth != 0 ||
                        s->obs.load(std::memory_order_relaxed) != nullptr)) {
    return false;
  }
  sc.kind_ |= attach_scope::kind_released;
  e->depth = 0;
  e->phase.store(entry_phase::detached, std::memory_order_relaxed);
  PyEval_SaveThread();  // keeps the state for the next attach; hands its GIL on
  tls_current = nullptr;
  if (PYATTACH_UNLIKELY(gilstate_lost(s))) ensure_main_identity(sc.site_);  // see leave_sub
  drop_sub_pass(e->core.get());
  return true;
}

void scope_access::end_sub(attach_scope& sc, const source_site* at, void* code) noexcept {
  sub_entry* const e = static_cast<sub_entry*>(sc.sub_);
  if (PYATTACH_UNLIKELY((sc.kind_ & attach_scope::kind_released) != 0)) {
    misuse_details d{misuse_kind::double_release, "attach_scope", sc.site_, at, code, {},
                     this_os_tid()};
    report_misuse(d);
    return;
  }
  slot* const s = tls_slot;
  // swapped: this scope made e's state current (its outer_: what it swapped out).
  bool swapped = sc.kind_ == attach_scope::kind_sub;
  sc.kind_ |= attach_scope::kind_released;
  if (PYATTACH_UNLIKELY(sc.owner_ != s)) {  // e may be gone with its thread: not read here
    misuse_details d{misuse_kind::wrong_thread, "attach_scope", sc.site_, at, code,
                     "a sub-interpreter scope", 0};
    hand_over(e, sc.level_, swapped, sc.outer_, d);
    report_misuse(d);
    return;
  }
  swapped = swapped && sc.outer_ != e->ts;
  absorb_remote_ends(e->table);
  if (PYATTACH_UNLIKELY(tls_current != e || e->depth != sc.level_)) {
    misuse_details d{misuse_kind::out_of_order, "attach_scope", sc.site_, at, code,
                     "a scope nested inside it (of another interpreter) is", this_os_tid()};
    report_misuse(d);
    mark_ended(e, sc.level_, swapped, sc.outer_);  // undone when the scopes inside it end
    return;
  }
  --e->depth;
  if (swapped) leave_sub(e, sc.level_, sc.outer_, sc.site_);
  drop_sub_pass(e->core.get());
  unwind_subs();  // the scope around this one, if it already ended
}

// A scope on the main interpreter's handle inside a sub-interpreter scope: release the inner
// state first, attach the main one as attach_scope() does, and restore the inner at the end.
void scope_access::attach_main_from_handle(attach_scope& sc, const source_site& site) noexcept {
  PyThreadState* const cur = compat::current_state_unchecked();
  sub_entry* const inner = current_entry(cur);
  if (inner == nullptr) {
    sc.attach_fast(site);
    return;
  }
  const std::uint64_t bit = level_bit(inner->depth);
  inner->obs_lent = releasing(inner) ? inner->obs_lent | bit : inner->obs_lent & ~bit;
  PyEval_SaveThread();
  tls_current = nullptr;
  sc.attach_fast(site);
  if (sc.kind_ == attach_scope::kind_none) {
    resume(cur, inner, (inner->obs_lent & bit) != 0);
    tls_current = inner;
    return;
  }
  sc.outer_ = cur;
  sc.kind_ |= attach_scope::kind_swapped;
}

void scope_access::end_swapped(attach_scope& sc, const source_site* at) noexcept {
  sc.kind_ &= static_cast<std::uint8_t>(~attach_scope::kind_swapped);
  PyThreadState* const outer = static_cast<PyThreadState*>(sc.outer_);
  slot* const s = tls_slot;
  const bool own = sc.owner_ == s && s != nullptr;  // else reported by finish: not ours to resume
  const std::uint32_t level = sc.level_;
  sc.finish(at);
  if (!own) return;
  if (compat::current_state_unchecked() == nullptr) {
    resume_swapped_state(outer);
  } else if (s->depth >= level && (s->anomaly_mask & level_bit(level)) != 0) {
    // Ended before a scope inside it (out_of_order): its level is undone when that one ends,
    // and the state it swapped out is made current again then (resume_swapped_out).
    try {
      tls_table_ptr->swapped_out.emplace_back(level, outer);
    } catch (...) {  // out of memory: the thread is left detached then
    }
  }
}

void resume_swapped_out(std::uint32_t undone_level) noexcept {
  sub_table* const t = tls_table_ptr;
  if (PYATTACH_LIKELY(t == nullptr || t->swapped_out.empty())) return;
  auto& v = t->swapped_out;
  auto it = std::find_if(v.begin(), v.end(),
                         [undone_level](const auto& x) { return x.first == undone_level; });
  if (it == v.end()) return;
  PyThreadState* const outer = it->second;
  v.erase(it);
  if (compat::current_state_unchecked() == nullptr) resume_swapped_state(outer);
}

// ---- detach scopes inside a sub-interpreter scope --------------------------------------------

bool scope_access::detach_sub_begin(detach_scope& sc) noexcept {
  sub_entry* const e = tls_current;
  if (e == nullptr || compat::current_state_unchecked() != e->ts) return false;
  sc.owner_ = tls_slot;
  sc.level_ = e->depth;
  sc.sub_ = e;
  e->phase.store(entry_phase::detached, std::memory_order_relaxed);
  if (slot* const s = observing_slot()) obs_detach_begin(s);
  PyEval_SaveThread();  // keeps the state; the enclosing scope's pass keeps the interpreter
  // Not current any more: a scope on this interpreter inside makes it current again (kind_sub).
  tls_current = nullptr;
  // Released, its GIL too: from here an end may abandon this thread (sub_entry::detach). The
  // release publishes e->depth, which that end reads.
  e->detach_levels |= level_bit(e->depth);
  e->detach.store(detach_mark::detached, std::memory_order_release);
  sc.state_ = detach_scope::state_sub;
  return true;
}

void scope_access::detach_sub_end(detach_scope& sc, const source_site* at, void* code) noexcept {
  auto* e = static_cast<sub_entry*>(sc.sub_);
  sc.state_ = detach_scope::state_ended;
  slot* const s = tls_slot;
  if (PYATTACH_UNLIKELY(sc.owner_ != s || compat::current_state_unchecked() != nullptr)) {
    // Another thread cannot re-attach this one's state; and a state current here means a scope
    // opened inside this one is still open. Reported; the thread stays as it is.
    const bool wrong = sc.owner_ != s;
    misuse_details d{wrong ? misuse_kind::wrong_thread : misuse_kind::out_of_order,
                     "detach_scope", sc.site_, at, code,
                     wrong ? "a detach_scope inside a sub-interpreter scope"
                           : "a scope nested inside it is", this_os_tid()};
    report_misuse(d);
    return;
  }
  e->detach_levels &= ~level_bit(sc.level_);
  // Under the record's lock, before the state is touched: either an end abandoned this thread
  // (closed the gate, waited the bound and the graces, took over its passes, and destroys or
  // destroyed the state: it cannot be made current again), or the state is taken back and no
  // end abandons it any more (it keeps its passes: the end waits for them or gives up).
  if (PYATTACH_UNLIKELY(!take_back(e))) {
    std::string why;
    try {
      why = "its detach_scope made at " + site_text(sc.site_) + " ended after the end of "
            "sub-interpreter " + std::to_string(e->core->id) + " abandoned it (the bound and the "
            "graces expired while it was inside), and the code after it would run Python "
            "without a thread state";
    } catch (...) {
    }
    park(this_thread_slot(), why);  // holds no GIL: nothing is current in a detach_scope
  }
  const bool observed = s != nullptr && s->obs.load(std::memory_order_relaxed) != nullptr;
  if (observed) obs_detach_end(s);  // records only if its begin did
  e->phase.store(entry_phase::waiting, std::memory_order_relaxed);
  PyEval_RestoreThread(e->ts);  // taken back: no end destroys it while this scope's pass holds
  // A scope on another interpreter opened and ended inside this detach_scope left tls_current
  // null (nothing was current to restore): this state is current again.
  tls_current = e;
  took(observed ? s : nullptr, e, obs_take::reattach);
  unwind_subs();  // the scope around it, if that one already ended
}

}  // namespace detail

}  // namespace pyattach

// src/attach_internal.hpp — what the slot's life (slot.cpp) and the scopes' out-of-line paths
// (attach.cpp) share: the gate's entry protocol in its slow form, the slot's state handling, and
// scope_access, the scopes' private access.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "internal.hpp"

namespace pyattach::detail {

struct interp_core;  // src/subinterpreter.cpp

// Set once this thread's exit clean-up has run; an attach after that (from another thread_local's
// destructor) gets a one-off PyGILState_Ensure/Release pair instead of a persistent state.
extern PYATTACH_TLS bool tls_exited;
// The owner_ of such a one-off scope: never equal to tls_slot, so its end takes end_slow.
extern slot g_transient_owner;
extern std::atomic<std::uint64_t> g_parked;  // threads park() has parked

// The gate's entry protocol in its slow form (detail/slot.hpp, "Ordering"): count a pass in the
// slot, a full fence, then confirm that the gate still reads `w`. Returns false, holding no new
// pass, if it moved. PRECONDITION: s->gen == w >> 2.
bool take_pass(slot* s, std::uint64_t w) noexcept;
// Returns a pass. Release: what the thread did inside happens before a closer's "drained".
void drop_pass(slot* s) noexcept;
// The same protocol for a one-off pass of a thread without a slot (after its exit clean-up).
bool take_oneoff_pass(std::uint64_t w) noexcept;
// After the slot's state, ownership or generation changed: whether the inline attach may make
// the state current (slot::fast_word).
void refresh_fast_word(slot* s) noexcept;
// True while the interpreter generation the slot's state belongs to exists (bound, any phase).
bool generation_live(const slot* s, std::uint64_t w) noexcept;
// Takes a pass for a thread that is already attached (slot::pass_mask), while the gate is open.
void take_extra_pass(slot* s, std::uint32_t level, std::uint64_t w) noexcept;
// Whether `ts` belongs to the main interpreter, and what to say when it does not.
// PRECONDITION: ts is this thread's state (so it cannot be deleted meanwhile).
bool belongs_to_main(PyThreadState* ts) noexcept;
std::string interpreter_text(PyThreadState* ts);
// The state belongs to an interpreter that is finalizing or gone: never touch it again.
void forget_state(slot* s) noexcept;
// Destroys the slot's state, which is current on this thread, and releases the GIL.
// PRECONDITION: a pass keeps the interpreter from finalizing meanwhile.
void delete_current_state(slot* s) noexcept;
// Destroys the state pyattach made for this thread, on this thread, through the gate; only
// forgets it if the gate is not open for its generation. Returns whether it was destroyed.
bool destroy_owned_state(slot* s) noexcept;
// This thread's slot, made now (registered, and its thread-exit clean-up armed).
slot* make_slot();
// "N scope(s) is/are", for misuse reports.
std::string open_scopes_text(const slot* s);

// After the slot's depth changed, or the sub-interpreter scopes covering it (sub_table::covering):
// sets sub_on_top_bit in s->anomaly_mask while a sub-interpreter scope sits on its innermost
// level (src/subinterpreter.cpp).
void sync_sub_on_top(slot* s) noexcept;
// After the slot's level `undone_level` was undone out of order: if it was a scope on the main
// interpreter's handle, makes the sub-interpreter state it swapped out current again.
void resume_swapped_out(std::uint32_t undone_level) noexcept;

// Private access to the scopes, for the out-of-line paths.
class scope_access {
 public:
  static void attach_slow(attach_scope& sc, const source_site& site) noexcept;
  static void end_slow(attach_scope& sc, const source_site* at, void* code) noexcept;
  static void detach_begin(detach_scope& sc) noexcept;
  // reattached: nullptr from the destructor and release(), which park a thread that could not
  // re-attach; from reattach(), receives whether the thread is attached again.
  static void detach_end(detach_scope& sc, const source_site* at, void* code,
                         bool* reattached) noexcept;

  // Sub-interpreter scopes (src/subinterpreter.cpp). The _fast ones take the common switch
  // (nothing to swap out, cover or record) and return false, having done nothing, otherwise.
  static bool attach_sub_fast(attach_scope& sc, interp_core* core,
                              const source_site& site) noexcept;
  static void attach_sub_slow(attach_scope& sc, const std::shared_ptr<interp_core>& core,
                              const source_site& site) noexcept;
  static bool end_sub_fast(attach_scope& sc) noexcept;
  static void end_sub(attach_scope& sc, const source_site* at, void* code) noexcept;
  // attach_scope(subinterpreter::main()): attach_scope() after swapping out a sub-interpreter's
  // state that is current (kind_swapped), restored by end_swapped.
  static void attach_main_from_handle(attach_scope& sc, const source_site& site) noexcept;
  static void end_swapped(attach_scope& sc, const source_site* at) noexcept;
  // A detach_scope inside a sub-interpreter scope: returns false if the thread is not in one.
  static bool detach_sub_begin(detach_scope& sc) noexcept;
  static void detach_sub_end(detach_scope& sc, const source_site* at, void* code) noexcept;
  // Undoes the main slot's levels that ended out of order while sub-interpreter scopes sat on
  // them, once none does (src/subinterpreter.cpp).
  static void unwind_main(slot* s) noexcept { unwind_ended(s); }

 private:
  static void push(attach_scope& sc, slot* s, std::uint8_t kind, const source_site& site) noexcept {
    sc.owner_ = s;
    sc.level_ = ++s->depth;
    sc.kind_ = kind;
    sc.status_ = attach_status::attached;
    if (sc.level_ == 1) s->outer_site = site;
    if (kind == attach_scope::kind_restored) s->restored_mask |= level_bit(sc.level_);
    s->anomaly_mask &= ~sub_on_top_bit;  // nothing is open inside a new level
  }
  // What ended the scope at the innermost level, for a scope_outlived_interpreter report.
  struct end_context {
    const char* what;
    const source_site& made;
    const source_site* at;
    void* code;
  };
  // These return false if a detach scope among the levels undone could not re-attach.
  static bool undo_level(slot* s, std::uint32_t level, const end_context* ended) noexcept;
  static bool pop_and_unwind(slot* s, const end_context& ended) noexcept;
  static void refuse_other_interpreter(attach_scope& sc, slot* s, PyThreadState* ts,
                                       const source_site& site) noexcept;
  static bool unwind_ended(slot* s) noexcept;
  // attach_slow's three cases. After this thread's clean-up: a one-off state.
  static void attach_after_exit(attach_scope& sc) noexcept;
  // The thread is attached already (a Python thread, a callback, PyGILState_Ensure): reuse it.
  static void attach_reusing(attach_scope& sc, slot* s, const source_site& site) noexcept;
  // The thread is detached: take the GIL through the gate. Returns false if the gate word moved
  // under it (w is stale: decide again); true once the scope is decided, attached or refused.
  static bool attach_through_gate(attach_scope& sc, slot* s, std::uint64_t w, PyThreadState* gs,
                                  const source_site& site) noexcept;

 public:
  // Takes over levels other threads ended (wrong_thread) and undoes the innermost ended levels.
  static void absorb_remote_orphans(slot* s) noexcept;

 private:
  static bool check_end(slot* s, slot* owner, bool released, std::uint32_t level,
                        const char* what, const source_site& made, const source_site* at,
                        void* code) noexcept;
};

}  // namespace pyattach::detail

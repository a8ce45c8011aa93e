// pyattach/detail/slot.hpp — the per-thread slot and the gate. Not part of the public API.
//
// They are in a header only so that the common attach/detach path can be inlined into the
// caller (docs/design.md, "Measured costs"); everything rare lives in src/.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "pyattach/detail/compat.hpp"
#include "pyattach/diagnostics.hpp"

#if defined(__GNUC__) || defined(__clang__)
#define PYATTACH_LIKELY(x) __builtin_expect(!!(x), 1)
#define PYATTACH_UNLIKELY(x) __builtin_expect(!!(x), 0)
// initial-exec: the thread pointer plus a link-time offset, without a __tls_get_addr call even
// when pyattach sits in a shared library (+19 instructions per pair, against +61 with the
// default model: docs/design.md, "Measured costs").
#define PYATTACH_TLS __thread __attribute__((tls_model("initial-exec")))
#define PYATTACH_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PYATTACH_ALWAYS_INLINE inline
#define PYATTACH_LIKELY(x) (x)
#define PYATTACH_UNLIKELY(x) (x)
#define PYATTACH_TLS thread_local
#endif

namespace pyattach::detail {

// ---------------------------------------------------------------------------------------------
// The gate: the library's view of the (main) interpreter's life. docs/design.md, invariants 4
// and 5.
//
// `word` packs a generation (which Py_Initialize..Py_FinalizeEx cycle) and a phase:
//   unbound  no interpreter bound: never initialized, or the last one is gone (Py_AtExit ran)
//   open     attaching is allowed
//   closing  a closer waits (GIL released, bounded) for the passes already inside to leave;
//            new outermost attaches are refused, threads already inside may re-attach
//   closed   finalization may proceed: every attach is refused
// Protected by: transitions happen under the gate mutex in src/gate.cpp; reads are lock-free.
//
// A *pass* marks a thread as inside: one per scope that made this thread's state current
// through the gate, one per outermost scope on a thread that other code attached
// (slot::pass_mask), one per thread-exit clean-up. A thread's passes are counted in its own slot
// (slot::passes, written by that thread only, with plain stores); the one-off passes of threads
// that have no slot any more (an attach from another thread_local's destructor) in `inside`.
// The closer waits until the passes of its generation are gone (src/gate.cpp, passes_inside()).
//
// Ordering (the store-then-check protocol, asymmetric). An attacher stores its pass, then
// re-reads `word`; the closer stores `closing`, then reads the passes. At least one of them must
// see the other, which plain stores and loads alone do not give (a store may still sit in the
// attaching core's store buffer when its load executes). Two ways:
// - fast (the inline attach): a compiler barrier between the store and the load, and on the
//   closer's side heavy_barrier() (src/gate.cpp): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
//   runs a full memory barrier on every thread of this process that is running, and a thread
//   that is not running went through a context switch, itself a full barrier. So every attaching
//   thread executes a full barrier at some point P between the closer's store and its loads;
//   its pass store and its word load are on the same side of P or on either side, and:
//     both before P: the store is globally visible before the closer reads passes: it sees it.
//     both after P:  the closer's store of `closing` is visible before P: the load sees it.
//     store before P, load after P: both of the above.
//   (A load that P separates from its later store cannot happen: program order store; load.)
//   The same argument as folly's asymmetric barrier and userspace RCU's sys_membarrier flavour.
// - slow (every out-of-line path, and every path when membarrier is unavailable): a seq_cst
//   fence between the store and the load, paired with heavy_barrier()'s own seq_cst fence.
// The fast path is allowed only through slot::fast_word, which is set only when the process is
// registered for expedited membarrier (g_gate.fast_ok), so heavy_barrier() covers every thread
// that can take it. Test: the finalization stress tests (tests/cpp/test_stress.cpp, every leg,
// and the 1,000-run long mode).
enum : std::uint64_t { phase_unbound = 0, phase_open = 1, phase_closing = 2, phase_closed = 3 };

struct gate_state {
  std::atomic<std::uint64_t> word{0};
  std::atomic<std::int64_t> inside{0};  // one-off passes only (see above)
  // The process is registered for MEMBARRIER_CMD_PRIVATE_EXPEDITED: the fast path may be used
  // (set once, before the first generation is published; never cleared).
  std::atomic<bool> fast_ok{false};
  // PYATTACH_PEP788 only: the main interpreter's PEP 788 view for the bound generation, stored
  // before `word` publishes the generation; empty (no code, no load) otherwise. See
  // compat::entry_guard.
  compat::view_cell view;
};
extern gate_state g_gate;

constexpr std::uint64_t gate_word(std::uint64_t generation, std::uint64_t phase) noexcept {
  return (generation << 2) | phase;
}

// ---------------------------------------------------------------------------------------------
// The slot: one per native thread that used pyattach (docs/design.md, invariant 1).
// Protected by: every plain field is read and written only by the owning thread. The atomics
// are written only by it too (plain load+store, no read-modify-write) and also read, relaxed, by
// the thread report and the closer: they are advisory there.
// Lifetime: heap-allocated by the thread's first attach, freed by that thread's exit clean-up.
// parked: the thread could not safely continue after the interpreter began finalizing, and
// blocks in pyattach for good without the GIL (src/attach.cpp, park()).
enum class slot_phase : std::uint8_t { detached, waiting, attached, parked };

struct observer;  // below
enum : std::uint8_t { observe_metrics = 1, observe_trace = 2 };

// The word slot::fast_word holds when the inline path may not restore the state: matches no
// gate word (phases are 0..3).
constexpr std::uint64_t no_fast_word = ~std::uint64_t{0};

struct slot {
  // gate_word(gen, phase_open) while the inline attach may make tstate current: pyattach made
  // tstate in generation gen, and g_gate.fast_ok. Otherwise no_fast_word. One compare with the
  // gate word then checks the generation, the phase, the ownership and the barrier mode at once.
  std::uint64_t fast_word = no_fast_word;
  PyThreadState* tstate = nullptr;  // the state pyattach attaches; valid only while gen is live
  std::uint32_t depth = 0;          // open scopes (attach and detach) on this thread
  bool owned = false;               // pyattach made tstate (and destroys it at thread exit)
  // The gate generation tstate belongs to, and that this thread's passes belong to (a pass is
  // only taken with gen equal to the gate's generation). Written by the owner; read, relaxed, by
  // the closer, which counts only the passes of the generation it closes.
  std::atomic<std::uint64_t> gen{0};
  std::uint64_t restored_mask = 0;  // bit L: the attach scope at level L made tstate current
  std::uint64_t detached_mask = 0;  // bit L: the scope at level L is a detach scope
  // bit L: the scope at level L holds a gate pass of its own although it did not take the GIL:
  // the outermost pyattach scope on a thread that something else attached (a Python thread, a
  // raw PyGILState_Ensure), so that the closer waits for its code to leave (docs/safety.md).
  std::uint64_t pass_mask = 0;
  // bit L (L >= 1): the scope at level L ended out of order; undo it when the inner ones end.
  // bit 0 (lost_bit): a detach scope could not re-attach because the gate closed: the state is
  // not current although scopes are open, so their ends must not detach it.
  // bit 63 (sub_on_top_bit): a sub-interpreter scope opened inside the innermost scope here is
  // still open, so ending that one now is out of order: every inline end goes slow meanwhile.
  std::uint64_t anomaly_mask = 0;
  source_site outer_site;           // where the outermost open scope was made (for reports)
  std::atomic<std::uint32_t> passes{0};  // gate passes this thread holds (see gate_state)
  // bit L: another thread ended this thread's scope at level L (misuse_kind::wrong_thread).
  // Set by that thread (fetch_or, while this slot is registered); moved into anomaly_mask by this
  // thread at its next pyattach call or at exit, which then undoes the level (releasing the GIL).
  std::atomic<std::uint64_t> remote_orphans{0};
  std::atomic<slot_phase> phase{slot_phase::detached};
  std::atomic<std::uint64_t> scopes{0};  // outermost attaches that made tstate current
  // Set by a closer (GIL held) that gave up on this thread while it runs Python: the tracer the
  // closer installed parks the thread at its next traced event (gate.cpp).
  std::atomic<bool> must_park{false};
  std::uint64_t os_tid = 0;              // gettid()
  unsigned long py_ident = 0;            // PyThread_get_thread_ident() == threading.get_ident()
  // What this thread records (observe_metrics, observe_trace; pyattach/observe.hpp). Written by
  // set_metrics()/start_trace()/stop_trace() on every registered slot under registry().mutex,
  // and by make_slot; read, relaxed, by the owner on its attach path: 0 keeps it inline.
  std::atomic<std::uint8_t> observe{0};
  // The thread's counters and trace buffer (detail/observe_hooks.hpp), made by the owner at its
  // first observed event under registry().mutex; read by metrics() and the trace writer under it.
  std::atomic<observer*> obs{nullptr};
};

// This thread's slot, or nullptr before its first attach and after its exit clean-up.
extern PYATTACH_TLS slot* tls_slot;

constexpr std::uint64_t lost_bit = 1;
constexpr std::uint32_t tracked_levels = 63;  // levels beyond this are not undone out of order
constexpr std::uint64_t sub_on_top_bit = std::uint64_t{1} << tracked_levels;

inline std::uint64_t level_bit(std::uint32_t level) noexcept {
  return level < tracked_levels ? (std::uint64_t{1} << level) : 0;
}

}  // namespace pyattach::detail

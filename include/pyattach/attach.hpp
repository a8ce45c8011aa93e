// pyattach/attach.hpp — attach a native thread to Python, and detach it for blocking C++ work.
//
// Why this exists
//   A thread that Python did not create must have an *attached thread state* to run Python. The
//   usual PyGILState_Ensure/Release pair creates one on the outermost Ensure and destroys it on the
//   matching Release: every call on a pool thread pays for a new state (and its frame stack),
//   and loses threading.local data, trace/profile functions and py-spy's view of the thread.
//   Pinning a state by never releasing it keeps the GIL while the thread waits in C++.
//   pyattach gives each native thread ONE persistent state, made on first use and destroyed on
//   that thread when it exits, and attaches it only inside an attach_scope.
//
// Contract
// - attach_scope: on construction the calling thread is attached (it holds the GIL and its
//   state is current) until the scope ends. Scopes nest; inner ones only count. The first scope
//   on a native thread creates its state through PyGILState_Ensure, so PyGILState_*, pybind11,
//   nanobind and Cython on the same thread find and reuse it (never a second state). A thread
//   that is already attached (a Python-created thread, a callback from Python, code that called
//   PyGILState_Ensure) is reused as it is and is not detached when the scope ends.
// - detach_scope: inside Python-facing code, releases the GIL for blocking C++ work and keeps the
//   thread state; the end of the scope re-attaches. Also valid on a Python-created thread.
// - Exit (docs/safety.md, "Exit"): the outermost pyattach scope on a thread holds a gate pass
//   (an attach_scope that took the GIL, or the first scope on a thread that other code attached),
//   so a closing gate waits for the thread to leave, for at most its close bound. Then threads
//   still running Python are asked to leave with an asynchronous pyattach.InterpreterShutdown
//   exception (a BaseException: `except Exception` does not stop it) and waited for a little
//   longer; a thread that still runs Python after that is parked at its next traced line.
//   A thread that cannot safely continue is PARKED: it blocks in pyattach for good without the
//   GIL, one line on stderr names it, the thread report shows it as parked, and the process exits
//   without it (exit() does not wait for threads; neither do pyattach's closer, its interpreter
//   and its pools). Never join a thread that may park (detach it, or use reattach()).
// - A thread that exits with scopes still open (a scope leaked on the heap) is reported as
//   misuse_kind::scope_outlived_thread; pyattach releases the GIL it held and destroys (or, if its
//   interpreter is finalizing or gone, forgets) its state.
// - Scopes are neither copyable nor movable: a scope belongs to the thread and the C++ block that
//   made it. End scopes on the thread that made them, innermost first; a scope that ends on the
//   wrong thread, out of order or twice is reported (diagnostics.hpp) and its CPython call skipped
//   (an outer scope that ended early is undone when the scopes inside it end; a scope ended on
//   another thread is undone by its own thread at its next pyattach call or when it exits — until
//   then that thread keeps what the scope gave it, the GIL included).
// - Source sites are captured by a defaulted argument: a scope built inside std::optional::emplace
//   or std::make_unique records the library's line unless you pass source_site::current().
// - Failure: the throwing constructor throws attach_error; try_attach() and the nothrow
//   constructor never throw and report why in status(). Nothing in this header ever ends
//   the thread, unwinds it, or crashes because the interpreter is finalizing, and an attach never
//   blocks for it: once pyattach's gate closes (an atexit hook, or interpreter's destructor),
//   every attach that would need to take the GIL returns attach_status::finalizing, and after
//   Py_FinalizeEx ::finalized. Only a thread that cannot continue safely is parked ("Exit").
// - Binding (interpreter.hpp, "Binding"): an attach that must take the GIL needs the gate bound
//   to the running interpreter first. pyattach::interpreter, an extension module's import, and
//   pyattach::bind() bind it; so does this scope when the calling thread already holds the GIL.
//   A native thread that finds it unbound is refused with attach_status::not_bound and never
//   touches CPython: an embedder that calls Py_InitializeEx itself calls pyattach::bind() first.
// - Thread exit: the state pyattach made is destroyed on its own thread when the thread exits
//   (or by release_thread_state()), through the gate; a state whose interpreter is finalizing or
//   gone is only forgotten, never touched.
// - Thread-safety: every function may be called from any thread; each acts on the calling thread.
// - Interpreters: attach_scope() attaches to the main interpreter; attach_scope(handle) to the
//   one a subinterpreter handle names (subinterpreter.hpp: one persistent state per thread and
//   interpreter, a gate per interpreter; CPython 3.12+). A plain attach_scope() while a
//   sub-interpreter's state is current on the thread is refused (other_interpreter): say which
//   interpreter with attach_scope(subinterpreter::main()), which swaps.
// - Limits: on CPython <= 3.11, a state that another thread made
//   with PyThreadState_New and this thread attached with PyEval_RestoreThread is not this thread's
//   PyGILState state and cannot be recognised as attached (3.12+ can): attaching on top of it
//   deadlocks, as PyGILState_Ensure itself does.
#pragma once

#include <cstdint>
#include <new>
#include <stdexcept>
#include <type_traits>

#include "pyattach/detail/compat.hpp"
#include "pyattach/detail/observe_hooks.hpp"
#include "pyattach/diagnostics.hpp"

namespace pyattach {

// Why an attach did or did not happen.
enum class attach_status : std::uint8_t {
  attached,         // success: the thread is attached until the scope ends
  not_initialized,  // no interpreter has been initialized in this process yet
  finalizing,       // the interpreter is shutting down: pyattach's gate is closed
  finalized,        // the interpreter was finalized and no new one has been initialized
  other_interpreter,  // refused as misuse_kind::other_interpreter: this thread is attached to
                      // another interpreter, or still has scopes open from a finalized one
  not_bound,          // CPython runs, but pyattach was never bound to it and this thread does
                      // not hold the GIL, so nothing guarantees that the interpreter will not
                      // finalize under the attach: call pyattach::bind() (interpreter.hpp) on a
                      // thread that holds the GIL first. Extension modules and
                      // pyattach::interpreter bind by themselves.
};

const char* to_string(attach_status status) noexcept;

// Thrown by the throwing attach_scope constructor. what() names the status.
class attach_error : public std::runtime_error {
 public:
  explicit attach_error(attach_status status);
  attach_status status() const noexcept { return status_; }

 private:
  attach_status status_;
};

// Tag for the non-throwing constructor.
struct nothrow_t {
  explicit constexpr nothrow_t() = default;
};
inline constexpr nothrow_t nothrow{};

namespace detail {
class scope_access;
}  // namespace detail
class subinterpreter;  // subinterpreter.hpp

class attach_scope {
 public:
  // Attaches or throws attach_error. PRECONDITION: none (any thread, any time).
  explicit attach_scope(source_site site = source_site::current());
  // Attaches or records why not; never throws. Test with status() or operator bool.
  attach_scope(nothrow_t, source_site site = source_site::current()) noexcept;
  // The same on the interpreter `in` (subinterpreter.hpp): on the main interpreter's handle, as
  // above; on another, with this thread's persistent state of it, swapping out the state of the
  // scope around this one (if any) until this one ends. Refused with finalizing (finalized) once
  // that interpreter's end has begun (ended). Out of line.
  attach_scope(const subinterpreter& in, source_site site = source_site::current());
  attach_scope(nothrow_t, const subinterpreter& in,
               source_site site = source_site::current()) noexcept;
  ~attach_scope();

  attach_scope(const attach_scope&) = delete;
  attach_scope& operator=(const attach_scope&) = delete;
  attach_scope(attach_scope&&) = delete;
  attach_scope& operator=(attach_scope&&) = delete;

  // Ends the scope early (detaching if it was the outermost). Calling it again is reported as
  // misuse_kind::double_release with both sites and has no other effect.
  void release(source_site site = source_site::current()) noexcept;

  attach_status status() const noexcept {
    return kind_ != kind_none ? attach_status::attached : status_;
  }
  bool is_valid() const noexcept { return kind_ != kind_none; }
  explicit operator bool() const noexcept { return is_valid(); }
  // True if this scope made the state current (the outermost scope of an idle thread, or a
  // scope that swapped in another interpreter's state).
  bool made_current() const noexcept {
    const std::uint8_t k = kind_ & ~(kind_released | kind_swapped);
    return k == kind_restored || k == kind_outer || k == kind_observed || k == kind_sub;
  }
  const source_site& site() const noexcept { return site_; }

 private:
  friend class detail::scope_access;
  // transient: after this thread's exit clean-up ran (another thread_local's destructor); level_
  // then holds the PyGILState_STATE of a one-off Ensure, released when the scope ends.
  // passed: the outermost scope on a thread that other code attached; it holds a gate pass
  // (slot::pass_mask) so that the closer waits for it, and returns it when it ends.
  // outer: the inline path made the state current at level 1 (else like restored, which the
  // out-of-line path makes at any level; both end through restored_mask when ended slowly).
  // released: or-ed into kind_ once the scope has ended (released() or ended by misuse), so that
  // one byte compare tells a live scope of a kind from everything else.
  // observed: outer, made while the thread records metrics or a trace (observe.hpp); its end
  // records too (detail::end_observed), whatever the thread records by then.
  // sub: on a sub-interpreter (src/subinterpreter.cpp): sub_ is the thread's cached state of it,
  // outer_ the state it swapped out (null if none); sub_nested: inside a scope of the same one.
  // swapped: or-ed into a main-interpreter kind whose scope swapped out a sub-interpreter's
  // state (outer_), restored when it ends. Every sub and swapped scope ends out of line.
  enum : std::uint8_t { kind_none, kind_nested, kind_restored, kind_transient, kind_passed,
                        kind_outer, kind_observed, kind_sub, kind_sub_nested,
                        kind_swapped = 0x40, kind_released = 0x80 };

  void attach_on(const subinterpreter& in, const source_site& site) noexcept;

  void attach_fast(const source_site& site) noexcept;
  // The observed twins (src/metrics.cpp): attach_outer and end_outer with detail::obs_hooks,
  // out of line, so that the inline paths stay as small as they are without observation.
  bool attach_observed(detail::slot* s, std::uint64_t w, const source_site& site) noexcept;
  bool end_observed(detail::slot* s, const source_site* at) noexcept;
  template <class Hooks>
  bool attach_outer(detail::slot* s, std::uint64_t w, const source_site& site,
                    Hooks& hooks) noexcept;
  template <class Hooks>
  bool end_outer(detail::slot* s, const source_site* at, Hooks& hooks) noexcept;
  void finish(const source_site* at) noexcept;

  // No default member initializers: the inline path stores each field it needs once, and
  // attach_slow sets all of them before anything else. status_ is read only when kind_ is
  // kind_none (a refused scope): the inline path never stores it. sub_ and outer_ are read only
  // for the sub and swapped kinds, which set them.
  detail::slot* owner_;
  source_site site_;
  std::uint32_t level_;
  attach_status status_;
  std::uint8_t kind_;
  void* sub_;
  PyThreadState* outer_;
};

// Attaches without throwing; C++17 guaranteed elision lets the scope be returned by value.
//   if (auto py = pyattach::try_attach()) { ... } else { log(to_string(py.status())); }
inline attach_scope try_attach(source_site site = source_site::current()) noexcept {
  return attach_scope(nothrow, site);
}
// The same on the interpreter `in` (subinterpreter.hpp).
inline attach_scope try_attach(const subinterpreter& in,
                               source_site site = source_site::current()) noexcept {
  return attach_scope(nothrow, in, site);
}

class detach_scope {
 public:
  // PRECONDITION: the calling thread is attached (inside an attach_scope, or a Python thread
  // holding the GIL). Otherwise reported as misuse_kind::detach_without_attach and a no-op.
  explicit detach_scope(source_site site = source_site::current()) noexcept;
  ~detach_scope();
  detach_scope(const detach_scope&) = delete;
  detach_scope& operator=(const detach_scope&) = delete;
  detach_scope(detach_scope&&) = delete;
  detach_scope& operator=(detach_scope&&) = delete;

  // Re-attaches early. A second call is misuse_kind::double_release.
  // The destructor and release() cannot fail: if the scope ends after the gate closed on it (it
  // was still inside when the close bound expired) or after its interpreter was finalized, the
  // thread cannot be attached again, and the code after the scope would call Python without a
  // thread state. Then the thread is parked (see "Exit" at the top of this file).
  void release(source_site site = source_site::current()) noexcept;
  // Ends the scope early like release(), and says whether the thread is attached again. False:
  // the interpreter began finalizing while the thread was inside (see release()); the thread
  // stays detached and must not call Python, and the attach_scopes around this one end without
  // touching CPython. Only where the thread's attachment is pyattach's own (an attach_scope made
  // its state current): on a thread that other code attached (a Python thread, a raw
  // PyGILState_Ensure) the code waiting above cannot be told, so this parks like release().
  // A second call, or a call after release(), is misuse_kind::double_release and returns
  // is_attached().
  [[nodiscard]] bool reattach(source_site site = source_site::current()) noexcept;
  // False if the constructor found nothing to detach (misuse).
  bool is_valid() const noexcept { return state_ != state_idle; }

 private:
  friend class detail::scope_access;
  bool begin_fast() noexcept;
  bool end_fast() noexcept;

  // idle: the constructor found nothing to detach; active: detached until the scope ends;
  // ended: released, reattached or ended by misuse; observed: active, begun while the thread
  // records metrics or a trace (observe.hpp), so that its end (out of line) records too;
  // sub: active inside a sub-interpreter scope (sub_: that thread's cached state), out of line.
  enum : std::uint8_t { state_idle, state_active, state_ended, state_observed, state_sub };

  // No default member initializers (as attach_scope): begin_fast stores each field it uses
  // once, and detach_begin_slow sets all of them first.
  detail::slot* owner_;
  source_site site_;
  std::uint32_t level_;
  std::uint8_t state_;
  void* sub_;
};

// True if the calling thread is attached (holds the GIL with its own thread state).
bool is_attached() noexcept;

// For code about to call the C API that cannot see whether its caller attached: returns
// is_attached(), and if false reports misuse_kind::python_without_state with this call site and
// the site of the thread's last pyattach scope. Never attaches, never touches CPython. Exact on
// 3.12+; on 3.9–3.11 it can only see states that pyattach or PyGILState know for this thread.
bool expect_attached(source_site site = source_site::current()) noexcept;

// How many threads pyattach has parked in this process (see "Exit" above). Thread-safe.
std::uint64_t parked_thread_count() noexcept;

// Destroys the calling thread's pyattach-made thread state now instead of at thread exit
// (threading.local data and the thread's py-spy entry go with it). A later attach makes a new
// one. PRECONDITION: no scope open on this thread (else misuse_kind::release_while_attached).
// Returns true if a state was destroyed.
bool release_thread_state(source_site site = source_site::current()) noexcept;

// ---- inline fast path ------------------------------------------------------------------------
namespace detail {
// Out of line: first use, adoption of foreign states, refusal, binding the gate.
void attach_slow(attach_scope& scope, const source_site& site) noexcept;
// Out of line: the misuse and out-of-order paths of ending a scope.
// Its own return address is the code that ended the scope (the inlined destructor or release()).
void end_slow(attach_scope& scope, const source_site* at) noexcept;
// Out of line: every detach_scope begin and end the inline paths below do not take.
void detach_begin_slow(detach_scope& scope) noexcept;
void detach_end_slow(detach_scope& scope) noexcept;  // its return address: the ending code
}  // namespace detail

// The outermost attach of an idle thread whose state pyattach made, the gate open in its
// generation (w == s->fast_word). Hooks: detail::no_hooks, or detail::obs_hooks while the thread
// records metrics or a trace (observe.hpp). Returns false, holding nothing, if the gate moved
// (the caller then takes attach_slow).
template <class Hooks>
PYATTACH_ALWAYS_INLINE bool attach_scope::attach_outer(detail::slot* s, std::uint64_t w,
                                                       const source_site& site,
                                                       Hooks& hooks) noexcept {
  // opt-in: the view of w's generation (read after w, confirmed with it below); no-op when off.
  const detail::compat::interpreter_view view = detail::g_gate.view.load();
  // Take a pass, then confirm that the gate still reads w (detail/slot.hpp, "Ordering": the
  // closer's heavy barrier pairs with this compiler barrier). Depth 0: no scope is open, so this
  // thread holds no pass (each belongs to an open scope).
  s->passes.store(1, std::memory_order_relaxed);
  s->phase.store(detail::slot_phase::waiting, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  // opt-in: a PEP 788 guard across the attach only; refused once CPython has started finalizing
  // (then attach_slow refuses too). Off: empty, always true.
  detail::compat::entry_guard guard(view);
  if (PYATTACH_LIKELY(detail::g_gate.word.load(std::memory_order_relaxed) == w && guard)) {
    hooks.before_take();
    // The gate is open and we hold a pass, so the interpreter cannot start finalizing before
    // this returns (the closer waits for passes): no pthread_exit, no hang.
    PyEval_RestoreThread(s->tstate);
    hooks.after_take();
    guard.close();  // entry only: a thread that stays inside never delays shutdown
    s->phase.store(detail::slot_phase::attached, std::memory_order_relaxed);
    s->scopes.store(s->scopes.load(std::memory_order_relaxed) + 1,
                    std::memory_order_relaxed);  // single writer: no RMW needed
    s->depth = 1;
    s->outer_site = site;
    s->restored_mask = detail::level_bit(1);
    owner_ = s;
    level_ = 1;
    kind_ = std::is_same_v<Hooks, detail::no_hooks> ? kind_outer : kind_observed;
    return true;
  }
  s->passes.store(0, std::memory_order_relaxed);
  s->phase.store(detail::slot_phase::detached, std::memory_order_relaxed);
  return false;
}

inline void attach_scope::attach_fast(const source_site& site) noexcept {
  detail::slot* const s = detail::tls_slot;
  if (PYATTACH_LIKELY(s != nullptr)) {
    // One compare checks the generation, the open gate, that pyattach made the state and that
    // the asymmetric barrier is available (slot::fast_word). Anything else goes slow.
    const std::uint64_t w = detail::g_gate.word.load(std::memory_order_acquire);
    if (PYATTACH_LIKELY(w == s->fast_word)) {
      PyThreadState* const cur = detail::compat::current_state_unchecked();
      if (s->depth == 0) {
        // Not attached here (<= 3.11: the current state may be another thread's; 3.12+: any
        // state current on this thread, ours attached by other code or a sub-interpreter's, goes
        // slow, as does ours on <= 3.11: it takes a pass without taking the GIL).
        if (PYATTACH_LIKELY(detail::compat::current_state_is_per_thread ? cur == nullptr
                                                                          : cur != s->tstate)) {
          // Metrics or a trace (pyattach/observe.hpp): the one branch they cost when off.
          if (PYATTACH_UNLIKELY(s->observe.load(std::memory_order_relaxed) != 0)) {
            if (attach_observed(s, w, site)) return;
          } else {
            detail::no_hooks none;
            if (attach_outer(s, w, site, none)) return;
          }
        }
      } else if (PYATTACH_LIKELY(cur == s->tstate && s->depth + 1 < detail::tracked_levels &&
                                 s->remote_orphans.load(std::memory_order_relaxed) == 0)) {
        // Already attached with our state inside our own scope: count only. (A state released
        // by other code inside a scope, Py_BEGIN_ALLOW_THREADS, is not current: slow path.)
        owner_ = s;
        level_ = ++s->depth;
        kind_ = kind_nested;
        return;
      }
    }
  }
  detail::attach_slow(*this, site);
}

inline attach_scope::attach_scope(nothrow_t, source_site site) noexcept : site_(site) {
  attach_fast(site_);
}

inline attach_scope::attach_scope(source_site site) : site_(site) {
  attach_fast(site_);
  if (PYATTACH_UNLIKELY(kind_ == kind_none)) throw attach_error(status_);
}

// The end of a scope the inline attach made (kind_outer: no hooks; kind_observed: obs_hooks).
// Level 1 and depth 1: no other scope is open, so this one holds
// the thread's only pass and the only restored level, and the only possible anomaly is the lost
// bit (a detach scope inside could not re-attach). Remote orphans need no check: another thread
// can only have ended this scope (then kind_released is set) or one that is still open (then the
// depth would be higher). w == fast_word: the gate still open in the state's generation (a scope
// that outlived its interpreter, or ends while the gate closes, goes slow). Returns false, having
// done nothing, if end_slow must end it.
template <class Hooks>
PYATTACH_ALWAYS_INLINE bool attach_scope::end_outer(detail::slot* s, const source_site* at,
                                                    Hooks& hooks) noexcept {
  if (PYATTACH_LIKELY(s == owner_ && s->depth == 1 && s->anomaly_mask == 0 &&
                      detail::g_gate.word.load(std::memory_order_acquire) == s->fast_word)) {
    if (at != nullptr) kind_ |= kind_released;  // a destroyed scope is never looked at again
    s->depth = 0;
    s->restored_mask = 0;
    s->phase.store(detail::slot_phase::detached, std::memory_order_relaxed);
    hooks.before_release();
    // This scope made the state current on this thread; hand the GIL back, keep the state.
    PyEval_SaveThread();
    // After the GIL is released: a closer that sees the pass gone may finalize at once.
    s->passes.store(0, std::memory_order_release);
    return true;
  }
  return false;
}

PYATTACH_ALWAYS_INLINE void attach_scope::finish(const source_site* at) noexcept {
  detail::slot* const s = detail::tls_slot;
  if (kind_ == kind_outer) {
    detail::no_hooks none;
    if (PYATTACH_LIKELY(end_outer(s, at, none))) return;
  } else if (kind_ == kind_nested) {
    if (PYATTACH_LIKELY(s == owner_ && s->depth == level_ && s->anomaly_mask == 0 &&
                        s->remote_orphans.load(std::memory_order_relaxed) == 0)) {
      if (at != nullptr) kind_ |= kind_released;
      --s->depth;
      return;
    }
  } else if (kind_ == kind_observed) {
    if (end_observed(s, at)) return;
  } else if (at == nullptr && (kind_ == kind_none || (kind_ & kind_released) != 0)) {
    return;  // destroyed after it was refused, released, or ended by misuse: nothing to do
  }
  detail::end_slow(*this, at);
}

inline attach_scope::~attach_scope() { finish(nullptr); }

inline void attach_scope::release(source_site site) noexcept {
  if (kind_ == kind_none) return;  // never attached: nothing to release
  finish(&site);
}

// Inside a scope of ours, while the gate is open: the state is ours and current, and this
// thread already holds a pass (its outer scope's), so no pass is taken here.
PYATTACH_ALWAYS_INLINE bool detach_scope::begin_fast() noexcept {
  detail::slot* const s = detail::tls_slot;
  if (PYATTACH_LIKELY(s != nullptr && detail::g_gate.word.load(std::memory_order_acquire) ==
                                          s->fast_word)) {
    const std::uint32_t depth = s->depth;
    // observe: an observed detach_scope is begun and ended out of line (state_observed).
    if (PYATTACH_LIKELY(depth != 0 && depth + 1 < detail::tracked_levels &&
                        s->observe.load(std::memory_order_relaxed) == 0 &&
                        s->passes.load(std::memory_order_relaxed) != 0 &&
                        s->remote_orphans.load(std::memory_order_relaxed) == 0 &&
                        detail::compat::current_state_unchecked() == s->tstate)) {
      owner_ = s;
      level_ = s->depth = depth + 1;
      s->detached_mask |= std::uint64_t{1} << level_;  // level_ < tracked_levels
      s->phase.store(detail::slot_phase::detached, std::memory_order_relaxed);
      PyEval_SaveThread();  // keeps the state, hands the GIL to others
      state_ = state_active;
      return true;
    }
  }
  return false;
}

// The scope is the innermost, nothing ended out of order, and the gate is still open in the
// state's generation: re-attach inside the pass the thread holds (as reattach_level does).
PYATTACH_ALWAYS_INLINE bool detach_scope::end_fast() noexcept {
  detail::slot* const s = detail::tls_slot;
  if (PYATTACH_LIKELY(s == owner_ && s->depth == level_ && s->anomaly_mask == 0 &&
                      s->remote_orphans.load(std::memory_order_relaxed) == 0 &&
                      detail::g_gate.word.load(std::memory_order_acquire) == s->fast_word)) {
    // opt-in: a PEP 788 guard across the re-attach (refused once CPython started finalizing);
    // empty and always true when off.
    detail::compat::entry_guard guard(detail::g_gate.view.load());
    if (PYATTACH_LIKELY(guard)) {
      s->phase.store(detail::slot_phase::waiting, std::memory_order_relaxed);
      PyEval_RestoreThread(s->tstate);  // the pass keeps the runtime from finalizing
      guard.close();
      s->phase.store(detail::slot_phase::attached, std::memory_order_relaxed);
      s->detached_mask &= ~(std::uint64_t{1} << level_);
      s->depth = level_ - 1;
      state_ = state_ended;
      return true;
    }
  }
  return false;
}

inline detach_scope::detach_scope(source_site site) noexcept : site_(site) {
  if (!begin_fast()) detail::detach_begin_slow(*this);
}

inline detach_scope::~detach_scope() {
  if (PYATTACH_LIKELY(state_ == state_active)) {
    if (!end_fast()) detail::detach_end_slow(*this);
  } else if (state_ >= state_observed) {  // observed, sub: ended out of line
    detail::detach_end_slow(*this);
  }
}

}  // namespace pyattach

// src/subinterpreter_internal.hpp — what subinterpreter.cpp (every thread's cache, the scopes,
// the close and the end) and subinterpreter_handle.cpp (the records' registry and the public
// handle) share. Everything here is pyattach's own, in namespace detail.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "pyattach/subinterpreter.hpp"

namespace pyattach::detail {

enum : int { sub_open = 0, sub_closing = 1, sub_closed = 2 };

struct sub_table;

// Where a thread's cached state of an interpreter is, for the thread report (src/report.cpp).
enum class entry_phase : std::uint8_t { none, detached, waiting, attached };

// Whether a thread sits in a detach_scope of its entry's state (sub_entry::detach).
enum class detach_mark : std::uint8_t { none, detached, abandoned };

// One thread's cached state of one interpreter. Owned by that thread's table.
// ts: written by the owning thread while it holds a pass of the interpreter (gate open), or, once
// the gate is closed and no pass is held, by the closer under interp_core::m.
struct sub_entry {
  std::shared_ptr<interp_core> core;
  PyThreadState* ts = nullptr;
  std::uint32_t depth = 0;  // open scopes of this thread in this interpreter
  source_site outer_site{};  // where the outermost open scope was made (owner only): reports
  sub_table* table = nullptr;
  // Scopes that made ts current (written by the owner only; summed by stats() under core->m).
  std::atomic<std::uint64_t> attaches{0};
  // What the thread report reads under interp_core::m instead of ts (which the owner writes
  // without it): the owning thread's ids, set before the entry is published in `entries`, and
  // where its state is (none: no state), stored by the owner around each take and release of its
  // GIL, and to none by whoever destroys the state.
  unsigned long ident = 0;
  std::uint64_t os_tid = 0;
  std::atomic<entry_phase> phase{entry_phase::none};
  // Set by an end that gave up asking this thread to leave while it ran Python in the interpreter,
  // before it installs the tracer that parks the thread at its next line (subinterpreter_end.cpp).
  std::atomic<bool> must_park{false};
  // An end may abandon a thread that keeps it from ending only by sitting in a detach_scope
  // (subinterpreter_end.cpp, abandon_detached). detached: stored (release) by the owner once it
  // released the state in a detach_scope, and at the end of a scope inside it that released the
  // state again; it holds e->depth passes, runs nothing with this state, and writes neither
  // e->depth nor e->ts until it takes the state back. Only under interp_core::m does anyone leave
  // `detached`: the owner to none before it makes the state current again (take_back), or an end
  // to abandoned, taking over e->depth passes; a thread parked by another interpreter's end
  // (park_sub_tracer) to abandoned, giving them back. abandoned is for good: the owner parks when
  // its detach_scope ends and never touches the state, which the end destroys.
  std::atomic<detach_mark> detach{detach_mark::none};
  std::uint64_t detach_levels = 0;  // bit L: a detach_scope is open at depth L (owner only)
  // Observation (pyattach/observe.hpp), owner only. resumes: bit L, the scope at level L ended
  // an observed hold of the state it swapped out, so its end begins that hold again. lent: bit L,
  // a scope on the main interpreter's handle swapped this state out at depth L the same way.
  std::uint64_t obs_resumes = 0, obs_lent = 0;
  // Misuse (attach.hpp, "Scopes"), owner only. ended: bit L, the scope at level L ended before a
  // scope inside it (out_of_order) or on another thread (wrong_thread); it is undone when it is
  // the thread's innermost scope again. ended_swaps: those of them that made ts current, with
  // the state each swapped out (null: none), to make current again then.
  std::uint64_t ended = 0;
  std::vector<std::pair<std::uint32_t, PyThreadState*>> ended_swaps;
  // Scopes of this entry that other threads ended, handed over under core->m (the owner moves
  // them into `ended` at its next sub-interpreter call or its exit: sub_table::remote_pending).
  struct remote_end {
    std::uint32_t level;
    bool swapped;
    PyThreadState* outer;
  };
  std::vector<remote_end> remote;
};

// One interpreter pyattach knows. The gate: an attach adds a pass to `inside` (seq_cst), then
// reads `phase` (seq_cst); the closer stores `closing` (seq_cst), then waits for `inside` to be
// 0. In the single total order of these seq_cst operations, either the attacher's read comes
// after the closer's store (it sees closing and leaves), or its pass comes before the closer's
// read of `inside` (the closer waits for it). One shared counter per interpreter is enough here:
// a switch between interpreters already costs two GIL hand-overs.
struct interp_core {
  PyInterpreterState* interp = nullptr;  // null once it has ended (under m)
  std::int64_t id = -1;
  bool owned = false;  // pyattach created it: it ends it before the main interpreter finalizes
  bool own_gil = false;
  std::uint32_t index = 0;  // in every thread's table
  std::atomic<int> phase{sub_open};
  std::atomic<std::int64_t> inside{0};
  std::mutex m;
  std::vector<sub_entry*> entries;        // every thread's cached state of it (under m)
  std::vector<PyThreadState*> orphans;    // states of threads that exited while it closed (m)
  // A state of its own that no scope makes current, kept from registration to close: CPython
  // 3.12 aborts ("init_threadstate: thread state already initialized") when a state is made in
  // an interpreter whose list of states went empty (it reuses the first state's storage), which
  // every thread's exit could otherwise cause. On 3.12 it imports `threading` there at
  // create()/adopt(), on the thread that made it, and so is threading's main thread (see
  // arm_close_hook). Written before the record is shared; deleted by close_core, or on 3.12 by
  // the interpreter's threading._shutdown() when another thread ends it (under m).
  PyThreadState* anchor = nullptr;
  std::mutex end_mutex;                   // one end() at a time
  // attaches: of the threads whose entries are gone (the live ones count in their entries).
  std::atomic<std::uint64_t> states_made{0}, states_destroyed{0}, attaches{0}, refused{0};
};

// The calling thread's cache: entries by interpreter index. Its destructor (thread exit)
// destroys the states on this thread.
struct sub_table {
  std::vector<sub_entry*> by_index;
  // Set by a thread that ended one of this thread's scopes (sub_entry::remote).
  std::atomic<bool> remote_pending{false};
  // covering[L]: the sub-interpreter scopes open on this thread that were opened while the main
  // interpreter's slot was at depth L >= 1 (slot::anomaly_mask, sub_on_top_bit).
  std::uint16_t covering[tracked_levels] = {};
  // Scopes on the main interpreter's handle that ended before a scope inside them: their main
  // level, and the sub-interpreter state each swapped out (resume_swapped_out).
  std::vector<std::pair<std::uint32_t, PyThreadState*>> swapped_out;
  ~sub_table();
};

// Every interpreter's record by index (for the O(1) lookup in each thread's table), and which
// indexes are free. A record keeps its index until it is destroyed.
struct core_registry {
  std::mutex m;
  std::vector<std::weak_ptr<interp_core>> by_index;
  std::vector<std::uint32_t> free_indexes;
  std::map<PyInterpreterState*, std::weak_ptr<interp_core>> by_state;  // live ones only
};
inline core_registry& cores() {
  static core_registry* r = new core_registry;  // never destroyed: thread exits may use it late
  return *r;
}

// PyGILState stays on the thread's main-interpreter state. CPython 3.12-3.15 binds a thread's
// PyGILState to whichever of its states is made current last, unless that state is already
// marked bound (Python/pystate.c, tstate_activate -> bind_gilstate_tstate), and deleting a bound
// state clears the PyGILState of the thread that deletes it (tstate_delete_common ->
// unbind_gilstate_tstate): a state of a sub-interpreter bound on its own thread and deleted by
// the thread that ends the interpreter would clear the ender's binding and leave the owner's
// dangling (its next bind writes to the freed state). So pyattach marks each sub-interpreter
// state it makes as bound (it never is) for its whole life, which keeps CPython from binding it,
// and unmarks it just before deleting it, which keeps CPython from unbinding anything.
// CPython's debug build asserts that a marked state is the bound one: create() refuses there.
#if PY_VERSION_HEX >= 0x030C0000
inline void mark_gilstate_bound(PyThreadState* ts) noexcept { ts->_status.bound_gilstate = 1; }
inline void unmark_gilstate_bound(PyThreadState* ts) noexcept { ts->_status.bound_gilstate = 0; }
#else  // no sub-interpreter is ever made or adopted before 3.12 (create() and adopt() refuse)
inline void mark_gilstate_bound(PyThreadState*) noexcept {}
inline void unmark_gilstate_bound(PyThreadState*) noexcept {}
#endif

// A new record for `interp`, registered under a fresh index. PRECONDITION: attached (reads its id).
std::shared_ptr<interp_core> new_core(PyInterpreterState* interp, bool owned, bool own_gil);
// The live record of `interp`, if pyattach knows it.
std::shared_ptr<interp_core> registered(PyInterpreterState* interp);
// Registers the close hook in the interpreter whose state is current (its GIL held), and on 3.12
// makes core->anchor threading's main thread there (subinterpreter_end.cpp). PRECONDITION:
// core->anchor made on this thread.
bool arm_close_hook(const std::shared_ptr<interp_core>& core) noexcept;
// The calling thread's table (null once its thread_local is gone: thread exit).
sub_table* this_table() noexcept;
// The calling thread's entry of `core`, if it has one.
sub_entry* find_entry(interp_core* core) noexcept;
// The entry of the interpreter whose pyattach state is current on this thread, if any.
sub_entry* current_entry(PyThreadState* cur) noexcept;
// Takes e's state back from the detach_scope it sat in (sub_entry::detach), before this thread
// makes it current or gives its passes back: false if an end abandoned it (its passes are gone,
// its state is the end's). PRECONDITION: e is this thread's, holding no GIL of its interpreter.
bool take_back(sub_entry* e) noexcept;
// Frees an entry whose state is gone (or handed to the closer). PRECONDITION: e->depth == 0.
void drop_entry(sub_entry* e) noexcept;
// Ends the record's interpreter (subinterpreter::end()).
bool end_core(const std::shared_ptr<interp_core>& record, std::chrono::milliseconds bound) noexcept;

}  // namespace pyattach::detail

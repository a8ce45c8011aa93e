// pyattach/interpreter.hpp — embed CPython in one object, and the gate that guards its shutdown.
//
// Contract
// - interpreter: the constructor starts CPython (Py_InitializeFromConfig), imports `threading` on
//   the calling thread (so Python's shutdown joins its threads before pyattach's gate closes),
//   binds pyattach's gate, and detaches the calling thread so that other threads can attach.
//   The destructor re-attaches the calling thread and calls Py_FinalizeEx, which joins Python's
//   own threads and then runs pyattach's atexit hook: it stops every thread_pool and closes the
//   gate, waiting (GIL released, both within options::close_timeout) for native threads already
//   inside a scope; threads still inside then are asked to leave or parked (attach.hpp, "Exit"),
//   which adds at most two short graces. There is no way to forget PyEval_RestoreThread before
//   Py_FinalizeEx.
// - One at a time: constructing a second interpreter while one is alive, or while CPython was
//   initialized by someone else, throws interpreter_error. After one is destroyed, a new one
//   works; every thread then gets a fresh thread state on its next attach.
// - PRECONDITION: construct and destroy on the same thread (CPython finalizes on the thread that
//   initialized it). The destructor on another thread reports it to stderr and does not finalize.
// - fork (fork.hpp): in a child forked by the creating thread (fork_process() or os.fork()), the
//   forking thread is still the creating thread, and the destructor there finalizes. In a child
//   forked by any other thread no thread is: there the destructor reports to stderr and does not
//   finalize. PRECONDITION: such a child does not finalize at all; it ends with _exit() or
//   std::_Exit() (or exec).
// - Binding: the constructor binds pyattach's gate (see "Binding" below for the other ways).
// - Threads that outlive the interpreter: their attaches return attach_status::finalizing while it
//   finalizes and ::finalized after; their thread states are forgotten, never touched.
// - Thread-safety: the constructor and destructor must not race with each other; everything else
//   in pyattach may run on other threads meanwhile.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyattach {

class interpreter_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What closing the gate found (docs/safety.md, "Exit"). still_inside names the threads (OS name
// and id) that still held a pass when the bound and the grace after the shutdown request expired;
// parked names those parked meanwhile. Neither may touch Python again: their attaches are
// refused, and one that comes back to Python through pyattach is parked.
struct close_result {
  bool drained = true;
  std::chrono::microseconds waited{0};
  std::vector<std::string> still_inside;
  std::vector<std::string> parked;
};

class interpreter {
 public:
  struct options {
    std::string program_name = "pyattach";
    std::vector<std::string> sys_path;  // prepended to sys.path, in order
    bool install_signal_handlers = false;  // Python's SIGINT handler etc.; off for embedders
    std::chrono::milliseconds close_timeout{2000};
  };

  interpreter();  // default options
  explicit interpreter(options opts);
  ~interpreter();
  interpreter(const interpreter&) = delete;
  interpreter& operator=(const interpreter&) = delete;

  // Closes the gate now (idempotent) without finalizing: later attaches are refused. Optional:
  // the destructor closes it at the right moment anyway. Callable from the creating thread.
  close_result close_gate();

 private:
  options opts_;
  void* main_state_ = nullptr;   // PyThreadState* of the creating thread, detached
};

enum class gate_phase : std::uint8_t { unbound, open, closing, closed };

// ---- Binding: which calls bind pyattach's gate to a running interpreter ----------------------
// A native thread may only take the GIL through pyattach once the gate is bound to the running
// interpreter, because binding registers the hook that closes the gate (an atexit callback,
// which runs after Python joins its non-daemon threads and before the runtime starts tearing
// thread states down). Only a thread that holds the GIL can bind: then the interpreter cannot
// start finalizing before the hook is in place. These bind, each acting only when the calling
// thread holds the GIL with a main-interpreter thread state:
//   1. pyattach::interpreter's constructor (it starts CPython itself);
//   2. loading an extension module (or any shared object) that contains pyattach into a running
//      interpreter: `import` holds the GIL while it loads the module, and pyattach binds then, with
//      no call from the module's code. Inside the loader only the gate is opened; threading and
//      the atexit hook are set up by a pending call on the main thread that runs before any more
//      Python code runs there, and in any case before CPython runs its atexit callbacks. (So on
//      3.9–3.12, a C++ host that loads such a module itself and then runs no Python on its main
//      thread should import threading there first: see "Binding also imports" below.);
//   3. pyattach::bind(), below — for an embedder that calls Py_InitializeEx itself: call it right
//      after, on the same (main) thread, before starting threads that attach;
//   4. any other pyattach call made with the GIL held: an attach_scope or detach_scope on a thread
//      that is already attached (a Python thread, a callback from Python), or a thread_pool
//      constructed by such a thread.
// Binding also imports `threading` on the binding thread if no thread has: on 3.9–3.12 the first
// importer becomes threading's main thread, and a persistent thread state there would hang
// Py_FinalizeEx. So bind on the main thread.
// A native thread that finds the gate unbound never binds and never takes the GIL: its attach is
// refused with attach_status::not_bound (a thrown attach_error names this fix).

// Binds the gate to the running interpreter (see above); idempotent and cheap once bound.
// PRECONDITION: the calling thread holds the GIL with a main-interpreter thread state, and
// CPython is initialized and not finalizing. Otherwise it does nothing. Returns the gate's phase
// after the call: open on success (or closing/closed if it is already being shut down).
// Thread-safety: any thread; concurrent binds are serialized.
gate_phase bind() noexcept;

// ---- Closing --------------------------------------------------------------------------------
// The gate closes from the atexit hook registered at binding; call close_gate() to close earlier.
// PRECONDITION for close_gate: the interpreter is initialized. The calling thread may hold the
// GIL (it is released while waiting) or not. Idempotent; the second caller waits for the first.
close_result close_gate(std::chrono::milliseconds timeout);

// The bound used by the atexit hook (default 2000 ms; PYATTACH_CLOSE_TIMEOUT_MS overrides).
void set_close_timeout(std::chrono::milliseconds timeout) noexcept;

const char* to_string(gate_phase phase) noexcept;
gate_phase current_gate_phase() noexcept;
// Which interpreter lifetime (Py_Initialize..Py_FinalizeEx) the gate is bound to; 0 before any.
std::uint64_t current_generation() noexcept;

}  // namespace pyattach

// pyattach/report.hpp — what py-spy would see, joined with what pyattach knows.
//
// Contract
// - thread_report() lists every thread state of the main interpreter (the list py-spy,
//   sys._current_frames() and faulthandler walk: PyInterpreterState_ThreadHead/PyThreadState_Next),
//   every thread state pyattach holds in a sub-interpreter it knows (subinterpreter.hpp: one per
//   thread and interpreter, from pyattach's own records; states that other code made in a
//   sub-interpreter are not listed), and every thread that pyattach knows, joined by thread
//   identity. A row is one thread state: a thread with states in several interpreters has one row
//   per state, each naming its interpreter.
// - It attaches the calling thread to the main interpreter for the walk (the list may only be read
//   with its GIL held; inside a sub-interpreter scope, that scope's state is swapped out meanwhile),
//   so it costs one attach; if attaching is refused (not initialized, finalizing, finalized) it
//   still returns pyattach's own records, with `interpreter_available == false`.
// - `state` for threads other than the caller is exact for pyattach's threads (attached, waiting
//   for the GIL, detached, parked: shown also after its interpreter is gone), and for pyattach's
//   states in sub-interpreters (a thread whose sub-interpreter state is attached or waiting shows
//   its main-interpreter state detached); for the others it is `detached` (while the caller holds
//   the main GIL no other thread can be attached to the main interpreter, on a GIL build) and
//   `attached` for the caller's main-interpreter state. The caller's states are shown as they were
//   when it called: from inside a sub-interpreter scope, that state attached and its main one not.
// - Thread-safety: callable from any thread; the figures are a snapshot.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pyattach {

// parked: pyattach parked it for good at the interpreter's end (attach.hpp, "Exit").
enum class thread_attachment : std::uint8_t { attached, waiting, detached, parked };
const char* to_string(thread_attachment state) noexcept;

struct thread_info {
  // The interpreter of this thread state: its id (PyInterpreterState_GetID), 0 for the main
  // interpreter (and for a thread listed without a state).
  std::int64_t interpreter = 0;
  // The main interpreter's threading name for the thread, on every row of it ("" if threading has
  // no entry)
  std::string python_name;
  unsigned long ident = 0;         // threading.get_ident() / PyThread_get_thread_ident()
  std::uint64_t os_tid = 0;        // the kernel's thread id (what py-spy and top show)
  bool has_thread_state = false;   // in the interpreter's list of thread states
  bool known_to_pyattach = false;  // has a pyattach slot (or a sub-interpreter state of pyattach)
  bool made_by_pyattach = false;   // pyattach created its thread state
  thread_attachment state = thread_attachment::detached;
  // Main interpreter: outermost attach scopes it has run through pyattach; sub-interpreter: scopes
  // that made this state current.
  std::uint64_t scopes = 0;
  bool is_caller = false;          // the thread that made the report (each row of it)
  std::string pool;                // the thread_pool it is a worker of ("" if none)
};

struct thread_report {
  bool interpreter_available = false;
  std::string python_version;       // Py_GetVersion()'s first word
  std::uint64_t generation = 0;     // see current_generation()
  std::size_t thread_states = 0;    // how many thread states the main interpreter has
  std::size_t subinterpreter_states = 0;  // rows of pyattach's states in sub-interpreters
  std::uint64_t misuse_reports = 0;
  std::vector<thread_info> threads;
};

thread_report make_thread_report();

// A readable table, one line per thread.
std::string to_string(const thread_report& report);

// How many thread states the main interpreter has now (attaches to count); nullopt if refused.
std::optional<std::size_t> count_thread_states();

}  // namespace pyattach

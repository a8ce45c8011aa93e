// pyattach/report.hpp — what py-spy would see, joined with what pyattach knows.
//
// Contract
// - thread_report() lists every thread state of the main interpreter (the list py-spy,
//   sys._current_frames() and faulthandler walk: PyInterpreterState_ThreadHead/PyThreadState_Next)
//   and every thread that pyattach knows, joined by thread identity.
// - It attaches the calling thread for the walk (the list may only be read with the GIL held),
//   so it costs one attach; if attaching is refused (not initialized, finalizing, finalized) it
//   still returns pyattach's own records, with `interpreter_available == false`.
// - `state` for threads other than the caller is exact for pyattach's threads (attached, waiting
//   for the GIL, detached, parked: shown also after its interpreter is gone); for the others it is `detached` (while the caller holds the GIL no
//   other thread can be attached, on a GIL build) and `attached` for the caller itself.
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
  std::string python_name;         // threading's name for it ("" if threading has no entry)
  unsigned long ident = 0;         // threading.get_ident() / PyThread_get_thread_ident()
  std::uint64_t os_tid = 0;        // the kernel's thread id (what py-spy and top show)
  bool has_thread_state = false;   // in the interpreter's list of thread states
  bool known_to_pyattach = false;  // has a pyattach slot
  bool made_by_pyattach = false;   // pyattach created its thread state
  thread_attachment state = thread_attachment::detached;
  std::uint64_t scopes = 0;        // outermost attach scopes it has run through pyattach
  bool is_caller = false;          // the thread that made the report
  std::string pool;                // the thread_pool it is a worker of ("" if none)
};

struct thread_report {
  bool interpreter_available = false;
  std::string python_version;       // Py_GetVersion()'s first word
  std::uint64_t generation = 0;     // see current_generation()
  std::size_t thread_states = 0;    // how many thread states the interpreter has
  std::uint64_t misuse_reports = 0;
  std::vector<thread_info> threads;
};

thread_report make_thread_report();

// A readable table, one line per thread.
std::string to_string(const thread_report& report);

// How many thread states the main interpreter has now (attaches to count); nullopt if refused.
std::optional<std::size_t> count_thread_states();

}  // namespace pyattach

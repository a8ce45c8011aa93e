// src/interpreter.cpp — the embedding helper.
#include "pyattach/interpreter.hpp"

#include <atomic>
#include <cstdio>

#include "internal.hpp"

namespace pyattach {

namespace {
std::atomic<bool> g_alive{false};  // an interpreter object exists (one at a time)
// The OS thread id (gettid) of the thread that created the live interpreter: the only thread on
// which its destructor finalizes. 0: no thread of this process is that thread (none was created,
// or this process was forked by another thread). Written by the constructor and, in a forked
// child, by fork.cpp's child handler (interpreter_after_fork_in_child) while it is the only thread.
std::atomic<std::uint64_t> g_creator_tid{0};
}  // namespace

namespace detail {
void interpreter_after_fork_in_child(std::uint64_t forking_tid_in_parent) noexcept {
  // Why the tid is re-recorded here and not compared as a pthread_t: the forking thread keeps its
  // pthread_t in the child but gets a new tid, so a tid check alone refuses the creator's own
  // child. pthread_equal alone accepts too much: glibc gives the stack and descriptor of a thread
  // that ended, or that does not exist in a child, to the next new thread, so that thread compares
  // equal to the creator (measured: the first new thread in a child forked by another thread had
  // the creator's pthread_t in 20 of 20 forks). The creator's tid is exact in the parent (checked
  // before fork, under fork.cpp's locks), and only the forking thread survives a fork: it is the
  // creator in the child if and only if it was the creator in the parent.
  const std::uint64_t creator = g_creator_tid.load();
  const bool forked_by_creator = creator != 0 && creator == forking_tid_in_parent;
  g_creator_tid.store(forked_by_creator ? this_os_tid() : 0);
}
}  // namespace detail

interpreter::interpreter() : interpreter(options{}) {}

interpreter::interpreter(options opts) : opts_(std::move(opts)) {
  bool expected = false;
  if (!g_alive.compare_exchange_strong(expected, true)) {
    throw interpreter_error("pyattach::interpreter: another pyattach::interpreter is alive");
  }
  if (Py_IsInitialized() != 0) {
    g_alive = false;
    throw interpreter_error(
        "pyattach::interpreter: CPython is already initialized by other code; use attach_scope "
        "without an interpreter object");
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = opts_.install_signal_handlers ? 1 : 0;
  PyStatus status =
      PyConfig_SetBytesString(&config, &config.program_name, opts_.program_name.c_str());
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    g_alive = false;
    throw interpreter_error(std::string("pyattach::interpreter: Py_InitializeFromConfig failed: ") +
                            (status.err_msg ? status.err_msg : "unknown error") +
                            (status.func ? std::string(" in ") + status.func : std::string()));
  }

  PyObject* path = PySys_GetObject("path");  // borrowed
  for (auto it = opts_.sys_path.rbegin(); it != opts_.sys_path.rend(); ++it) {
    PyObject* dir = PyUnicode_DecodeFSDefault(it->c_str());
    if (path == nullptr || dir == nullptr || PyList_Insert(path, 0, dir) != 0) PyErr_Print();
    Py_XDECREF(dir);
  }
  // The atexit hook closes the gate inside Py_FinalizeEx with this bound. Binding imports
  // threading on this (the main) thread: Python's shutdown then joins its threads before the
  // atexit hook closes the gate (docs/design.md, "Closing, exit and parking").
  set_close_timeout(opts_.close_timeout);
  detail::bind_here();

  // Before recording the creator: every fork() from now on must re-record it in the child.
  detail::install_fork_handlers();
  g_creator_tid.store(detail::this_os_tid());
  // Detach the main thread so that other threads can attach (scenario 1 forgot this, or forgot
  // the matching PyEval_RestoreThread before Py_FinalizeEx and crashed).
  main_state_ = PyEval_SaveThread();
}

interpreter::~interpreter() {
  const std::uint64_t me = detail::this_os_tid();
  const std::uint64_t creator = g_creator_tid.load();
  if (me != creator) {
    // Not the creating thread (or, in a forked child, the thread that forked it from the
    // creator): main_state_ is not this thread's, and in a child forked by another thread it was
    // deleted by PyOS_AfterFork_Child. Finalizing here would use it.
    if (creator == 0) {
      std::fprintf(stderr,
                   "pyattach: interpreter destroyed on thread %llu of a process forked by a "
                   "thread other than its creator; CPython was not finalized (see fork.hpp)\n",
                   static_cast<unsigned long long>(me));
    } else {
      std::fprintf(stderr,
                   "pyattach: interpreter destroyed on thread %llu but created on thread %llu; "
                   "CPython was not finalized\n",
                   static_cast<unsigned long long>(me), static_cast<unsigned long long>(creator));
    }
    return;
  }
  auto* main = static_cast<PyThreadState*>(main_state_);
  // Re-attach the main thread's own state, unless a scope on this thread already did.
  if (detail::compat::current_state_unchecked() != main) PyEval_RestoreThread(main);
  // Py_FinalizeEx joins Python's threads, then runs the atexit hook, which closes the gate with
  // opts_.close_timeout. Closing here instead would refuse native threads that a still-running
  // Python thread waits for (docs/design.md, "Closing, exit and parking"). The hook is
  // registered at bind time; if that failed,
  // close now so that no thread attaches while the runtime finalizes.
  if (!detail::register_gate_hooks(current_generation())) detail::close_gate_impl(opts_.close_timeout);
  if (Py_FinalizeEx() < 0) {
    std::fputs("pyattach: Py_FinalizeEx could not flush buffered data\n", stderr);
  }
  g_creator_tid.store(0);
  g_alive = false;
}

close_result interpreter::close_gate() { return detail::close_gate_impl(opts_.close_timeout); }

gate_phase bind() noexcept { return static_cast<gate_phase>(detail::bind_here() & 3); }

}  // namespace pyattach

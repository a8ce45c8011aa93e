// src/interpreter.cpp — the embedding helper.
#include "pyattach/interpreter.hpp"

#include <atomic>
#include <cstdio>

#include "internal.hpp"

namespace pyattach {

namespace {
std::atomic<bool> g_alive{false};  // an interpreter object exists (one at a time)
}

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
  // atexit hook closes the gate (DESIGN.md, "The gate, as measured").
  set_close_timeout(opts_.close_timeout);
  detail::bind_here();

  creator_tid_ = detail::this_os_tid();
  // Detach the main thread so that other threads can attach (scenario 1 forgot this, or forgot
  // the matching PyEval_RestoreThread before Py_FinalizeEx and crashed).
  main_state_ = PyEval_SaveThread();
}

interpreter::~interpreter() {
  if (detail::this_os_tid() != creator_tid_) {
    std::fprintf(stderr,
                 "pyattach: interpreter destroyed on thread %llu but created on thread %llu; "
                 "CPython was not finalized\n",
                 static_cast<unsigned long long>(detail::this_os_tid()),
                 static_cast<unsigned long long>(creator_tid_));
    return;
  }
  auto* main = static_cast<PyThreadState*>(main_state_);
  // Re-attach the main thread's own state, unless a scope on this thread already did.
  if (detail::compat::current_state_unchecked() != main) PyEval_RestoreThread(main);
  // Py_FinalizeEx joins Python's threads, then runs the atexit hook, which closes the gate with
  // opts_.close_timeout. Closing here instead would refuse native threads that a still-running
  // Python thread waits for (DESIGN.md). The hook is registered at bind time; if that failed,
  // close now so that no thread attaches while the runtime finalizes.
  if (!detail::register_gate_hooks(current_generation())) detail::close_gate_impl(opts_.close_timeout);
  if (Py_FinalizeEx() < 0) {
    std::fputs("pyattach: Py_FinalizeEx could not flush buffered data\n", stderr);
  }
  g_alive = false;
}

close_result interpreter::close_gate() { return detail::close_gate_impl(opts_.close_timeout); }

gate_phase bind() noexcept { return static_cast<gate_phase>(detail::bind_here() & 3); }

}  // namespace pyattach

// tests/cpp/load_probe.cpp — a shared object that contains its own copy of pyattach, as an
// extension module does, loaded by test_binding.cpp's child cases with dlopen while the loading
// thread holds the GIL (what `import` does). Its pyattach binds at load; these entry points let the
// test watch that copy's gate and start native threads that attach through it.
#include <pyattach/pyattach.hpp>

#include <cxxabi.h>

#include <atomic>
#include <thread>

namespace {
std::atomic<long> g_started{0};
std::atomic<long> g_attached{0};        // scopes that ran Python
std::atomic<long> g_refused_ok{0};      // refused with finalizing or finalized, then returned
std::atomic<long> g_refused_other{0};   // refused with anything else (not_bound: binding failed)
std::atomic<long> g_forced_unwind{0};   // ended by pthread_exit inside CPython
std::atomic<long> g_python_errors{0};

void attach_loop() {
  g_started.fetch_add(1);
  try {
    for (;;) {
      pyattach::attach_scope py(pyattach::nothrow);
      if (!py) {
        const auto st = py.status();
        (st == pyattach::attach_status::finalizing || st == pyattach::attach_status::finalized
             ? g_refused_ok
             : g_refused_other)
            .fetch_add(1);
        return;
      }
      // No `import threading` here: see test_binding.cpp's binding_at_load for why.
      if (PyRun_SimpleString("_n = sum(range(100))\n") != 0) {
        g_python_errors.fetch_add(1);
      }
      g_attached.fetch_add(1);
    }
  } catch (abi::__forced_unwind&) {
    g_forced_unwind.fetch_add(1);
    throw;  // into thread_main's noexcept: std::terminate, so the test sees SIGABRT
  }
}

// noexcept, as many callers are: a pthread_exit unwinding through here aborts the process.
void thread_main() noexcept { attach_loop(); }
}  // namespace

extern "C" {
__attribute__((visibility("default"))) int probe_gate_phase() {
  return static_cast<int>(pyattach::current_gate_phase());
}

// Detached threads that attach in a loop until refused.
__attribute__((visibility("default"))) void probe_start_threads(int n) {
  for (int i = 0; i < n; ++i) std::thread(thread_main).detach();
  while (g_started.load() < n) std::this_thread::yield();
}

__attribute__((visibility("default"))) void probe_counts(long* started, long* attached,
                                                         long* refused_ok, long* refused_other,
                                                         long* forced_unwind, long* python_errors) {
  *started = g_started.load();
  *attached = g_attached.load();
  *refused_ok = g_refused_ok.load();
  *refused_other = g_refused_other.load();
  *forced_unwind = g_forced_unwind.load();
  *python_errors = g_python_errors.load();
}
}

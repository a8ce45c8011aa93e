// bench/alternatives.hpp — every way a native thread can get to run Python, behind one shape, so
// that bench/attach_alternatives.cpp can run the same workload over each of them in one binary.
//
// Why these: they are what programs that call Python from C++ threads actually write
//   gilstate_per_call   PyGILState_Ensure/Release around each call: the usual code. The outermost
//                       Ensure creates a thread state and the matching Release destroys it.
//   gilstate_pinned     the usual fix: one outer Ensure for the thread's life (its state is never
//                       destroyed), the GIL released between calls, inner Ensure/Release pairs.
//   floor               the least any correct attach can do: a persistent PyThreadState made once,
//                       PyEval_RestoreThread/PyEval_SaveThread around each call. Every ratio in
//                       docs/benchmarks.md is against this one, measured in the same run.
//   floor_pep788        (CPython 3.15+) the floor with a PEP 788 interpreter guard taken before
//                       each attach and closed once attached: what an attach that guards itself
//                       against finalization with CPython's own API pays (docs/versions.md, 3.15).
//   pybind11_per_call   pybind11's gil_scoped_acquire per call (creates/destroys a state each time).
//   pybind11_inc_ref    the same guard with the state pinned by one inc_ref() at thread start.
//   pyattach            pyattach::attach_scope per call (the state persists, made on first use).
//   pyattach_nested     an inner attach_scope per call inside an outer one held for the whole
//                       batch: what a library function pays when its caller already attached.
//   pyattach_detach     inside an attach_scope, a detach_scope per call (GIL released, state
//                       kept, re-attached at its end), then the body attached.
//   body_only           reference, not an alternative: the body alone, attached throughout (for
//                       the empty body this is the cost of the measuring loop itself).
//
// Shape of an alternative (all run on one native std::thread, in this order):
//   thread_begin()      once per thread; returns detached (GIL not held)
//   batch_begin()       before a batch of iterations (warm-up, or the measured loop); the nested
//                       and detach alternatives open their outer scope here, body_only attaches
//   iteration(body)     one attach + body + detach, the unit every figure is per
//   batch_end()         undoes batch_begin; returns detached
//   thread_end()        once; destroys what thread_begin made (pyattach's state goes at thread exit)
// keeps_state says whether the alternative claims one persistent thread state for the thread:
// the harness then fails the benchmark (SkipWithError) if a threading.local value did not persist
// or if a thread state was created after warm-up. The hooks an alternative has nothing to do in
// come from a base (no_hooks, and the bases below it that several alternatives share).
#pragma once

#include <pyattach/pyattach.hpp>

#include <benchmark/benchmark.h>
#include <pybind11/pybind11.h>

#include <optional>

namespace bench {

// Every hook but iteration, doing nothing.
struct no_hooks {
  void thread_begin() {}
  void batch_begin() {}
  void batch_end() {}
  void thread_end() {}
};

// A PyThreadState made once on the alternative's thread and kept until thread_end: the floor's,
// and body_only's.
struct own_thread_state : no_hooks {
  static constexpr bool keeps_state = true;
  void thread_begin() {
    // Made on the thread that uses it: PyGILState registers a thread's first PyThreadState_New
    // state with its creating thread (every version), so nothing else makes a second one; the
    // GIL is not needed to create a state.
    ts_ = PyThreadState_New(PyInterpreterState_Main());
  }
  void thread_end() {
    PyEval_RestoreThread(ts_);
    PyThreadState_Clear(ts_);       // attached: threading.local data is freed under the GIL
    PyThreadState_DeleteCurrent();  // deletes ts_ and releases the GIL
  }

 protected:
  PyThreadState* ts_ = nullptr;
};

// An attach_scope held around each batch (made at batch_begin, closed at batch_end), so that
// iteration runs attached: the nested and detach alternatives.
struct outer_scope : no_hooks {
  static constexpr bool keeps_state = true;
  void batch_begin() { outer_.emplace(pyattach::source_site::current()); }
  void batch_end() { outer_.reset(); }

 private:
  std::optional<pyattach::attach_scope> outer_;
};

struct gilstate_per_call : no_hooks {
  static constexpr const char* name = "gilstate_per_call";
  static constexpr bool keeps_state = false;
  template <class Body>
  void iteration(Body& body) {
    // No state on this thread: Ensure creates one and attaches it (the gate-less raw API; the
    // interpreter is alive for the whole benchmark, so it cannot be finalizing here).
    const PyGILState_STATE g = PyGILState_Ensure();
    body();
    PyGILState_Release(g);  // the outermost Release: clears and deletes the state, drops the GIL
  }
};

struct gilstate_pinned : no_hooks {
  static constexpr const char* name = "gilstate_pinned";
  static constexpr bool keeps_state = true;
  void thread_begin() {
    outer_ = PyGILState_Ensure();  // creates this thread's state; its count stays >= 1 until end
    saved_ = PyEval_SaveThread();  // let go of the GIL between calls (else every thread stalls)
  }
  template <class Body>
  void iteration(Body& body) {
    // The pinned state is found (PyGILState's TSS) and re-attached: PyEval_RestoreThread inside.
    const PyGILState_STATE g = PyGILState_Ensure();
    body();
    PyGILState_Release(g);  // count back to 1: not destroyed, the GIL is released
  }
  void thread_end() {
    PyEval_RestoreThread(saved_);  // Release must run attached, on the thread that made it
    PyGILState_Release(outer_);    // count 0: the state is cleared and deleted here
  }

 private:
  PyGILState_STATE outer_{};
  PyThreadState* saved_ = nullptr;
};

struct floor_state : own_thread_state {
  static constexpr const char* name = "floor";
  template <class Body>
  void iteration(Body& body) {
    PyEval_RestoreThread(ts_);  // takes the GIL; the interpreter outlives the benchmark
    body();
    PyEval_SaveThread();        // drops the GIL, keeps ts_
  }
};

#if PYATTACH_HAS_PEP788_API
struct floor_pep788 : no_hooks {
  static constexpr const char* name = "floor_pep788";
  static constexpr bool keeps_state = true;
  void thread_begin() {
    floor_.thread_begin();
    view_ = PyInterpreterView_FromMain();  // no attached state needed
  }
  template <class Body>
  void iteration(Body& body) {
    // While the guard is held the interpreter cannot start finalizing, so the attach below cannot
    // hang; closed once attached, so that a thread inside never delays shutdown.
    PyInterpreterGuard* const guard = PyInterpreterGuard_FromView(view_);
    auto guarded = [&] {
      PyInterpreterGuard_Close(guard);
      body();
    };
    floor_.iteration(guarded);
  }
  void thread_end() {
    floor_.thread_end();
    PyInterpreterView_Close(view_);
  }

 private:
  floor_state floor_;
  PyInterpreterView* view_ = nullptr;
};
#endif

struct pybind11_per_call : no_hooks {
  static constexpr const char* name = "pybind11_per_call";
  static constexpr bool keeps_state = false;
  template <class Body>
  void iteration(Body& body) {
    // No state known to pybind11 or PyGILState: PyThreadState_New + attach; the destructor's
    // count reaches 0 and deletes it. (pybind11's internals were made on the main thread.)
    pybind11::gil_scoped_acquire gil;
    body();
  }
};

struct pybind11_inc_ref : no_hooks {
  static constexpr const char* name = "pybind11_inc_ref";
  static constexpr bool keeps_state = true;
  void thread_begin() {
    pybind11::gil_scoped_acquire pin;
    pin.inc_ref();  // count 2; the destructor leaves 1: the state survives, the GIL is released
  }
  template <class Body>
  void iteration(Body& body) {
    pybind11::gil_scoped_acquire gil;  // finds the pinned state in pybind11's TLS, re-attaches
    body();
  }
  void thread_end() {
    pybind11::gil_scoped_acquire gil;
    gil.dec_ref();  // count 1 -> the destructor's dec_ref reaches 0: cleared and deleted
  }
};

// No thread_begin: the first attach (in the warm-up) makes the state; no thread_end: the state is
// destroyed on this thread when it exits.
struct pyattach_scope : no_hooks {
  static constexpr const char* name = "pyattach";
  static constexpr bool keeps_state = true;
  template <class Body>
  void iteration(Body& body) {
    pyattach::attach_scope py;  // throws attach_error if refused; never here (gate open)
    body();
  }
};

// pyattach_scope with metrics on (observe.hpp) for the whole thread: what metrics cost when on.
struct pyattach_metrics : pyattach_scope {
  static constexpr const char* name = "pyattach_metrics";
  void thread_begin() { pyattach::set_metrics(true); }  // before the warm-up's first attach
  void thread_end() { pyattach::set_metrics(false); }
};

// pyattach_scope while a trace runs, with room for every event of the warm-up and the loop (a
// full buffer would measure the cheaper drop path); the trace is written to /dev/null.
struct pyattach_traced : pyattach_scope {
  static constexpr const char* name = "pyattach_traced";
  void thread_begin() {
    pyattach::trace_options o;
    o.events_per_thread = 1u << 20;  // 4 events per pair: 262,144 pairs
    pyattach::start_trace(o);
  }
  void thread_end() { pyattach::stop_trace("/dev/null"); }
};

struct pyattach_nested : outer_scope {
  static constexpr const char* name = "pyattach_nested";
  template <class Body>
  void iteration(Body& body) {
    pyattach::attach_scope inner;  // already attached by outer_: counts a level, no CPython call
    body();
  }
};

struct pyattach_detach : outer_scope {
  static constexpr const char* name = "pyattach_detach";
  template <class Body>
  void iteration(Body& body) {
    {
      pyattach::detach_scope blocking;  // GIL released, state kept (PyEval_SaveThread)
      benchmark::ClobberMemory();       // where blocking C++ work would go
    }                                   // re-attached here (PyEval_RestoreThread)
    body();
  }
};

// Its state as floor's.
struct body_only : own_thread_state {
  static constexpr const char* name = "body_only";
  void batch_begin() { PyEval_RestoreThread(ts_); }  // attached for the whole batch
  template <class Body>
  void iteration(Body& body) {
    body();
  }
  void batch_end() { PyEval_SaveThread(); }
};

}  // namespace bench

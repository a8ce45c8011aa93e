// examples/extension/src/example_common.hpp — what both flavours of the example share: native
// threads that call back into Python through pyattach, the module's thread_pool, and the
// bookkeeping the tests read (tests/python/).
//
// Copying this example: the parts a real module needs are background_thread_loop() (a native
// thread that attaches per call and stops when refused), module_pool() and the pool_map() code
// in each flavour. The counters, phases and the exit report exist so that the tests can prove
// what happened to every thread after Python exited; a real module does not need them.
//
// Each flavour's .so includes this header and so has its own copy of everything here (and its
// own static copy of pyattach): never load the two in one process if you want to reason about
// one gate.
#pragma once

#include <pyattach/pyattach.hpp>  // includes <Python.h> first

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

namespace example {

// ---- bookkeeping, readable after Py_FinalizeEx --------------------------------------------------
// Everything below is static storage of trivially destructible atomics: constant-initialized,
// never destroyed, so threads still running while the process exits can keep writing to it.

// Where a background thread is. A thread that CPython ends with pthread_exit (what a raw
// PyGILState_Ensure does once the interpreter finalizes) stays in `in_attach` or `in_python`
// forever: the phases are plain stores, not RAII, so a forced unwind does not update them.
enum thread_phase : int {
  not_started = 0,
  in_attach,  // inside attach_scope's constructor (or PyGILState_Ensure for variant "raw")
  in_python,  // attached: calling the Python function
  in_cpp,     // between scopes: no GIL, no thread state attached
  refused,    // an attach was refused (the interpreter is finalizing or gone): the thread left
};

enum class variant : int { plain, catch_all, noexcept_fn, raw };

inline const char* to_string(variant v) noexcept {
  switch (v) {
    case variant::plain: return "plain";
    case variant::catch_all: return "catch_all";
    case variant::noexcept_fn: return "noexcept";
    case variant::raw: return "raw";
  }
  return "?";
}

inline variant parse_variant(const std::string& name) {
  if (name == "plain") return variant::plain;
  if (name == "catch_all") return variant::catch_all;
  if (name == "noexcept") return variant::noexcept_fn;
  if (name == "raw") return variant::raw;
  throw std::invalid_argument("variant must be plain, catch_all, noexcept or raw, not '" + name +
                              "'");
}

struct background_stats {
  static constexpr int max_threads = 256;
  std::atomic<int> threads{0};  // records handed out
  std::atomic<int> started{0};
  std::atomic<long long> iterations{0};
  std::atomic<int> refused_by_status[8]{};  // index: pyattach::attach_status
  std::atomic<int> caught{0};                // variant catch_all: exceptions swallowed
  std::atomic<int> last_variant{-1};
  std::atomic<int> phase[max_threads]{};
};
inline background_stats g_background;

struct pool_counters {
  std::atomic<long long> posted{0};      // post_python() accepted
  std::atomic<long long> post_refused{0};  // post_python() threw (pool stopped)
  std::atomic<long long> ran{0};         // task bodies entered
  std::atomic<long long> finished{0};    // task bodies left
  std::atomic<long long> python_errors{0};  // on_error: a Python exception
  std::atomic<long long> refused{0};     // on_error: pool_error(finalizing) (never ran)
  std::atomic<long long> other_errors{0};
};
inline pool_counters g_pool;

inline void set_phase(int index, thread_phase p) noexcept {
  g_background.phase[index].store(p, std::memory_order_release);
}

// ---- native threads that call back into Python ----------------------------------------------

// One call from a native thread. The pattern for any callback: attach (nothrow), check, call,
// let the scope end. Returns false when the attach was refused: the interpreter is finalizing or
// gone, and this thread must not touch Python again (not even Py_DECREF).
inline bool call_once(PyObject* fn, int index) {
  set_phase(index, in_attach);
  pyattach::attach_scope py(pyattach::nothrow);
  if (!py) {
    g_background.refused_by_status[static_cast<int>(py.status()) & 7].fetch_add(1);
    return false;
  }
  set_phase(index, in_python);
  PyObject* r = PyObject_CallNoArgs(fn);
  if (r != nullptr) {
    Py_DECREF(r);
  } else {
    PyErr_Print();  // a Python exception must not be left set when the scope ends
  }
  g_background.iterations.fetch_add(1, std::memory_order_relaxed);
  return true;
}  // the scope ends here: the GIL is released, the thread state kept for the next call

// The same behind a noexcept frame: a thread ended inside CPython by pthread_exit would be
// force-unwound through it, and that calls std::terminate (this is what the exit race tests).
inline bool call_once_noexcept(PyObject* fn, int index) noexcept { return call_once(fn, index); }

// The raw C API, for comparison only (tests' positive control): no gate, no refusal. Once the
// interpreter finalizes, PyGILState_Ensure ends this thread with pthread_exit (3.9-3.13).
inline bool call_once_raw(PyObject* fn, int index) {
  set_phase(index, in_attach);
  const PyGILState_STATE g = PyGILState_Ensure();
  set_phase(index, in_python);
  PyObject* r = PyObject_CallNoArgs(fn);
  if (r != nullptr) {
    Py_DECREF(r);
  } else {
    PyErr_Print();
  }
  g_background.iterations.fetch_add(1, std::memory_order_relaxed);
  PyGILState_Release(g);
  return true;
}

// A detached native thread that calls fn until Python refuses it. It owns one reference to fn,
// taken by the starter while it held the GIL, and deliberately never drops it: a thread that was
// refused must not call Py_DECREF, and one that is still calling cannot know it is the last.
inline void background_thread_loop(PyObject* fn, variant v, int index) {
  g_background.started.fetch_add(1);
  set_phase(index, in_cpp);
  for (;;) {
    bool again = false;
    switch (v) {
      case variant::plain:
        again = call_once(fn, index);
        break;
      case variant::catch_all:
        try {  // code that "must not let anything escape": what a forced unwind cannot pass
          again = call_once(fn, index);
        } catch (...) {
          g_background.caught.fetch_add(1);
          again = true;
        }
        break;
      case variant::noexcept_fn:
        again = call_once_noexcept(fn, index);
        break;
      case variant::raw:
        again = call_once_raw(fn, index);
        break;
    }
    if (!again) break;
    set_phase(index, in_cpp);
  }
  set_phase(index, refused);
}

// PRECONDITION: the caller holds the GIL (a call from Python).
inline void start_background_threads(PyObject* fn, int n, const std::string& variant_name) {
  const variant v = parse_variant(variant_name);
  if (n < 0 || g_background.threads.load() + n > background_stats::max_threads) {
    throw std::invalid_argument("too many background threads");
  }
  g_background.last_variant.store(static_cast<int>(v));
  for (int i = 0; i < n; ++i) {
    const int index = g_background.threads.fetch_add(1);
    Py_INCREF(fn);  // owned by the thread, never released (see background_thread_loop)
    std::thread(background_thread_loop, fn, v, index).detach();
  }
}

// Detached native threads that call fn every `pause_ms`, and sit in C++ (a sleep) in between: the
// shape of a C++ service's callback thread. raw: per-call PyGILState_Ensure/Release, so the thread
// has no thread state between calls (py-spy, sys._current_frames() and threading cannot see it);
// otherwise an attach_scope per call, whose persistent state stays listed. They run until the
// process exits; a refused attach (finalizing) ends a pyattach one, and the raw one is left to
// CPython's exit (the tests end these processes with os._exit). Each owns a reference to fn that
// it never drops (see background_thread_loop). PRECONDITION: the caller holds the GIL.
inline void start_paced_threads(PyObject* fn, int n, bool raw, int pause_ms) {
  for (int i = 0; i < n; ++i) {
    Py_INCREF(fn);
    std::thread([fn, raw, pause_ms] {
      for (;;) {
        if (raw) {
          const PyGILState_STATE g = PyGILState_Ensure();
          PyObject* r = PyObject_CallNoArgs(fn);
          if (r == nullptr) PyErr_Print();
          Py_XDECREF(r);
          PyGILState_Release(g);
        } else {
          pyattach::attach_scope py(pyattach::nothrow);
          if (!py) return;
          PyObject* r = PyObject_CallNoArgs(fn);
          if (r == nullptr) PyErr_Print();
          Py_XDECREF(r);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
      }
    }).detach();
  }
}

// ---- the module's thread pool ---------------------------------------------------------------
// Module-level: made at its first use (with the GIL held), never shut down by the module. At interpreter exit pyattach's
// gate stops it before closing (queued tasks are refused with pool_error(finalizing), running
// ones finish); the static object's destructor then joins the stopped workers when the process
// exits, after Py_FinalizeEx. The module writes no atexit code for it.
inline pyattach::thread_pool& module_pool() {
  static pyattach::thread_pool pool([] {
    pyattach::pool_options o;
    o.name = "example_pool";
    o.workers = 2;
    o.on_error = [](const pyattach::task_failure& f) noexcept {
      // Called on a worker, or on the finalizing thread for tasks refused at exit: count only.
      try {
        std::rethrow_exception(f.error);
      } catch (const pyattach::pool_error& e) {
        (e.code() == pyattach::pool_errc::finalizing ? g_pool.refused : g_pool.other_errors)
            .fetch_add(1);
      } catch (const pyattach::python_error&) {
        g_pool.python_errors.fetch_add(1);
      } catch (...) {
        g_pool.other_errors.fetch_add(1);
      }
    };
    return o;
  }());
  return pool;
}

// Fire and forget: n calls of fn() on the module pool. The tasks capture a borrowed pointer to
// fn, kept alive by one reference taken here and never released (a task refused at exit is
// destroyed without the GIL, so it must not own a Python reference).
// PRECONDITION: GIL held. Returns how many were accepted.
inline long long pool_post(PyObject* fn, long long n) {
  Py_INCREF(fn);
  long long accepted = 0;
  for (long long i = 0; i < n; ++i) {
    try {
      module_pool().post_python([fn] {
        g_pool.ran.fetch_add(1);
        PyObject* r = PyObject_CallNoArgs(fn);  // attached: a Python task
        Py_XDECREF(r);  // an exception left set arrives at on_error as python_error
        g_pool.finished.fetch_add(1);
      });
      g_pool.posted.fetch_add(1);
      ++accepted;
    } catch (const pyattach::pool_error&) {
      g_pool.post_refused.fetch_add(1);
    }
  }
  return accepted;
}

// ---- a pool on an interpreter that Python made (CPython 3.12+) ---------------------------------
// Runs `tasks` copies of `code` on a pool of `workers` native threads bound to the interpreter
// whose id is `interp_id` (concurrent.interpreters' Interpreter.id, 3.14+). Each task runs the
// code in that interpreter's __main__, on the worker's own state there, and returns
// repr(result): text is what crosses between interpreters, never objects. With its own GIL the
// interpreter runs these tasks in parallel with the caller's interpreter.
// PRECONDITION: GIL held; the interpreter stays alive during the call (the caller holds its
// Interpreter object). Throws std::runtime_error (RuntimeError in Python) if there is no such
// interpreter, before 3.12, or with the first task's Python error.
inline std::vector<std::string> run_on_interpreter(long long interp_id, const std::string& code,
                                                   int tasks, int workers) {
  pyattach::subinterpreter in = [&] {
    try {
      return pyattach::subinterpreter::adopt_id(interp_id);
    } catch (const pyattach::interpreter_error& e) {
      throw std::runtime_error(e.what());
    }
  }();
  pyattach::pool_options o;
  o.name = "interp_pool";
  o.workers = static_cast<std::size_t>(workers < 1 ? 1 : workers);
  o.interpreter = in;
  pyattach::thread_pool pool(o);
  std::vector<std::future<std::string>> results;
  for (int i = 0; i < tasks; ++i) {
    results.push_back(pool.submit_python([&code]() -> std::string {
      // Attached to the pool's interpreter: everything here is that interpreter's.
      PyObject* main = PyImport_AddModule("__main__");  // borrowed
      PyObject* globals = main != nullptr ? PyModule_GetDict(main) : nullptr;
      PyObject* r = globals != nullptr ? PyRun_String(code.c_str(), Py_file_input, globals, globals)
                                       : nullptr;
      if (r == nullptr) throw pyattach::python_error::fetch();
      Py_DECREF(r);
      PyObject* result = PyDict_GetItemString(globals, "result");  // borrowed
      PyObject* text = result != nullptr ? PyObject_Repr(result) : nullptr;
      if (text == nullptr) {
        if (!PyErr_Occurred()) return "<no result>";
        throw pyattach::python_error::fetch();
      }
      const char* utf8 = PyUnicode_AsUTF8(text);
      std::string out = utf8 != nullptr ? utf8 : "<repr failed>";
      Py_DECREF(text);
      return out;
    }));
  }
  pool.wait();  // releases the caller's GIL while the tasks run
  std::vector<std::string> out;
  for (auto& f : results) {
    try {
      out.push_back(f.get());
    } catch (const pyattach::python_error& e) {
      throw std::runtime_error(e.type_name() + ": " + e.message());
    } catch (const pyattach::pool_error& e) {
      throw std::runtime_error(std::string("pool_error(") + pyattach::to_string(e.code()) + ")");
    }
  }
  return out;
}

// ---- guards of the binding library mixed with pyattach's on one native thread -----------------
// A program is a string over: A pyattach::attach_scope, G the binding's gil_scoped_acquire,
// D pyattach::detach_scope, R the binding's gil_scoped_release, C call fn() and probe; a guard
// followed by "( ... )" holds while the parenthesized sequence runs. E.g. "A(C R(G(C)) C)".
// The probe, at each C: this thread must be attached, with exactly one thread state of the
// interpreter belonging to it.
struct guard_probe {
  unsigned long ident = 0;
  int calls = 0;
  int max_states = 0;        // most thread states of this thread seen at one C
  int min_states = 1 << 30;  // fewest (must be 1 as well)
  int not_attached = 0;      // C reached without an attached state (a bug in the program)
  std::unordered_set<const void*> distinct;  // distinct thread states seen across the program
  std::string python_error;
};

// PRECONDITION: GIL held. Counts the interpreter's thread states whose thread is `ident`.
inline int count_states_of(unsigned long ident) {
  int n = 0;
  PyInterpreterState* interp = PyInterpreterState_Main();
  for (PyThreadState* ts = PyInterpreterState_ThreadHead(interp); ts != nullptr;
       ts = PyThreadState_Next(ts)) {
    if (ts->thread_id == ident) ++n;
  }
  return n;
}

template <class Acquire, class Release>
void run_guard_program(const char*& p, PyObject* fn, guard_probe& probe) {
  while (*p != '\0' && *p != ')') {
    const char op = *p++;
    if (op == ' ') continue;
    const bool group = *p == '(';
    if (group) ++p;
    auto inner = [&] {
      if (group) {
        run_guard_program<Acquire, Release>(p, fn, probe);
        if (*p != ')') throw std::invalid_argument("unbalanced '(' in guard program");
        ++p;
      }
    };
    switch (op) {
      case 'A': {
        pyattach::attach_scope scope;  // throws attach_error if refused
        inner();
        break;
      }
      case 'D': {
        pyattach::detach_scope scope;
        inner();
        break;
      }
      case 'G': {
        Acquire guard;
        inner();
        break;
      }
      case 'R': {
        Release guard;
        inner();
        break;
      }
      case 'C': {
        if (group) throw std::invalid_argument("C takes no group");
        ++probe.calls;
        if (!pyattach::is_attached() || PyGILState_Check() == 0) {
          ++probe.not_attached;
          break;
        }
        PyThreadState* ts = PyThreadState_Get();
        probe.distinct.insert(ts);
        const int n = count_states_of(probe.ident);
        if (n > probe.max_states) probe.max_states = n;
        if (n < probe.min_states) probe.min_states = n;
        PyObject* r = PyObject_CallNoArgs(fn);
        if (r == nullptr) {
          PyObject *t, *v, *tb;
          PyErr_Fetch(&t, &v, &tb);
          PyObject* s = v ? PyObject_Str(v) : nullptr;
          const char* text = s ? PyUnicode_AsUTF8(s) : nullptr;
          if (probe.python_error.empty()) probe.python_error = text ? text : "error";
          PyErr_Clear();
          Py_XDECREF(s);
          Py_XDECREF(t);
          Py_XDECREF(v);
          Py_XDECREF(tb);
        }
        Py_XDECREF(r);
        break;
      }
      default:
        throw std::invalid_argument(std::string("unknown guard '") + op + "'");
    }
  }
}

// Runs `program` on a new native thread and fills `probe`; afterwards (GIL held again) reports
// how many thread states of that thread remain (0: its state was destroyed when it exited).
// PRECONDITION: the caller holds the GIL. Throws what the thread threw.
template <class Acquire, class Release>
int run_guard_program_on_new_thread(const std::string& program, PyObject* fn,
                                    guard_probe& probe) {
  std::exception_ptr error;
  unsigned long ident = 0;
  {
    pyattach::detach_scope nogil;  // the thread needs the GIL; on a Python thread this is valid
    std::thread t([&] {
      probe.ident = PyThread_get_thread_ident();
      ident = probe.ident;
      try {
        const char* p = program.c_str();
        run_guard_program<Acquire, Release>(p, fn, probe);
        if (*p != '\0') throw std::invalid_argument("unbalanced ')' in guard program");
      } catch (...) {
        error = std::current_exception();
      }
    });
    t.join();
  }
  if (error) std::rethrow_exception(error);
  return count_states_of(ident);
}

// ---- the exit report ------------------------------------------------------------------------
// With PYATTACH_EXAMPLE_EXIT_REPORT=1 in the environment, one line on stderr at process exit:
// a std::atexit handler registered at module init runs after Py_FinalizeEx has returned (the
// interpreter is gone), so it reads only the atomics above. It first lets the background threads
// settle (up to PYATTACH_EXAMPLE_SETTLE_MS, default 500): a refused thread reaches `refused` at
// once, so a thread still `in_attach` or `in_python` after that was lost inside CPython.
inline const char* g_flavour = "?";

inline void exit_report() {
  const char* s = std::getenv("PYATTACH_EXAMPLE_SETTLE_MS");
  const long long settle_ms = (s != nullptr && *s != '\0') ? std::atoll(s) : 500;
  const int n = g_background.threads.load();
  const auto start = std::chrono::steady_clock::now();
  auto unsettled = [&] {
    int k = 0;
    for (int i = 0; i < n; ++i) {
      if (g_background.phase[i].load(std::memory_order_acquire) != refused) ++k;
    }
    return k;
  };
  while (unsettled() > 0 &&
         std::chrono::steady_clock::now() - start < std::chrono::milliseconds(settle_ms)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const long long waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now() - start)
                               .count();
  int count[5] = {};
  for (int i = 0; i < n; ++i) {
    const int p = g_background.phase[i].load(std::memory_order_acquire);
    if (p >= 0 && p < 5) ++count[p];
  }
  const int v = g_background.last_variant.load();
  auto refused_as = [](pyattach::attach_status st) {
    return g_background.refused_by_status[static_cast<int>(st)].load();
  };
  std::fprintf(stderr,
               "pyattach-example-exit: flavour=%s variant=%s threads=%d started=%d "
               "iterations=%lld refused_finalizing=%d refused_finalized=%d "
               "refused_not_initialized=%d refused_not_bound=%d refused_other_interpreter=%d exited=%d in_attach=%d "
               "in_python=%d in_cpp=%d not_started=%d caught=%d settle_ms=%lld "
               "pool_posted=%lld pool_post_refused=%lld pool_ran=%lld pool_finished=%lld "
               "pool_python_errors=%lld pool_refused=%lld pool_other_errors=%lld gate=%s\n",
               g_flavour, v < 0 ? "none" : to_string(static_cast<variant>(v)), n,
               g_background.started.load(), g_background.iterations.load(),
               refused_as(pyattach::attach_status::finalizing),
               refused_as(pyattach::attach_status::finalized),
               refused_as(pyattach::attach_status::not_initialized),
               refused_as(pyattach::attach_status::not_bound),
               refused_as(pyattach::attach_status::other_interpreter), count[refused],
               count[in_attach], count[in_python], count[in_cpp], count[not_started],
               g_background.caught.load(), waited, g_pool.posted.load(),
               g_pool.post_refused.load(), g_pool.ran.load(), g_pool.finished.load(),
               g_pool.python_errors.load(), g_pool.refused.load(), g_pool.other_errors.load(),
               pyattach::to_string(pyattach::current_gate_phase()));
  std::fflush(stderr);
}

// Called from the module's init function (GIL held). Deliberately opens no scope and makes no
// pool, nothing that would bind pyattach's gate as a side effect: binding at import is
// pyattach's own job, and the exit-race tests check that it does it. (The pool is made at its
// first use, after this std::atexit: its destructor runs before the report.)
inline void module_init(const char* flavour) {
  g_flavour = flavour;
  const char* e = std::getenv("PYATTACH_EXAMPLE_EXIT_REPORT");
  if (e != nullptr && std::strcmp(e, "1") == 0) std::atexit(exit_report);
}

// Text for a refused attach, as raised to Python.
inline std::string refused_text(pyattach::attach_status st) {
  return std::string("attach refused: ") + pyattach::to_string(st);
}

}  // namespace example

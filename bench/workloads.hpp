// bench/workloads.hpp — the bodies each alternative (alternatives.hpp) runs while attached.
//
//   empty  nothing: a compiler barrier only (benchmark::ClobberMemory), so the attach and detach
//          around it cannot be merged or dropped; measures the attach + detach alone
//   call   one call of a Python function that returns None: the smallest real Python work, and on
//          3.11+ the first use of a new thread state's frame stack (mapped on demand)
//   local  read, then set, an attribute of one shared threading.local: the read must find the
//          value this thread set on the previous iteration, which holds only if the thread kept
//          its thread state between iterations (a new state starts with an empty local)
//
// PRECONDITION for operator(): the calling thread is attached (every alternative's iteration
// holds the GIL around the body). The objects are made once on the main thread (python_objects)
// and live until after every benchmark thread has been joined.
#pragma once

#include <Python.h>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

namespace bench {

struct python_objects {
  PyObject* globals = nullptr;  // the namespace the objects below were made in
  PyObject* noop = nullptr;     // def noop(): return None
  PyObject* local = nullptr;    // threading.local()
  PyObject* attr = nullptr;     // the attribute name set on `local`
  PyObject* tokens[2] = {};     // two distinct objects, stored alternately
};

struct empty_body {
  static constexpr const char* name = "empty";
  explicit empty_body(const python_objects&) {}
  void operator()() { benchmark::ClobberMemory(); }
  void reset_counts() {}
  std::string failure() const { return {}; }
  bool checks_persistence() const { return false; }
  double kept_fraction() const { return -1; }
};

struct call_body {
  static constexpr const char* name = "call";
  explicit call_body(const python_objects& py) : py_(py) {}
  void operator()() {
    PyObject* r = PyObject_CallNoArgs(py_.noop);  // attached (precondition); noop is immortal here
    if (__builtin_expect(r == nullptr, 0)) {
      PyErr_Clear();
      ++failures_;
      return;
    }
    Py_DECREF(r);
  }
  void reset_counts() { failures_ = 0; }
  std::string failure() const {
    return failures_ == 0 ? std::string() : std::to_string(failures_) + " calls raised";
  }
  bool checks_persistence() const { return false; }
  double kept_fraction() const { return -1; }

 private:
  const python_objects& py_;
  std::uint64_t failures_ = 0;
};

struct local_body {
  static constexpr const char* name = "local";
  explicit local_body(const python_objects& py) : py_(py) {}
  void operator()() {
    // New reference, or nullptr with AttributeError when this thread state never set it.
    PyObject* prev = PyObject_GetAttr(py_.local, py_.attr);
    if (prev == py_.tokens[(i_ + 1) & 1]) {
      ++kept_;
    } else {
      ++lost_;
    }
    if (prev != nullptr) {
      Py_DECREF(prev);
    } else {
      PyErr_Clear();  // the expected AttributeError of a fresh state: not a failure
    }
    if (PyObject_SetAttr(py_.local, py_.attr, py_.tokens[i_ & 1]) != 0) {
      PyErr_Clear();
      ++failures_;
    }
    ++i_;
  }
  void reset_counts() { kept_ = lost_ = failures_ = 0; }
  std::string failure() const {
    return failures_ == 0 ? std::string() : std::to_string(failures_) + " setattr calls raised";
  }
  bool checks_persistence() const { return true; }
  double kept_fraction() const {
    const std::uint64_t n = kept_ + lost_;
    return n == 0 ? -1 : static_cast<double>(kept_) / static_cast<double>(n);
  }
  std::uint64_t lost() const { return lost_; }

 private:
  const python_objects& py_;
  std::uint64_t i_ = 0;
  std::uint64_t kept_ = 0;
  std::uint64_t lost_ = 0;
  std::uint64_t failures_ = 0;
};

}  // namespace bench

// tests/cpp/subinterpreter_helpers.hpp — what the sub-interpreter tests share
// (test_subinterpreters.cpp, test_subinterpreter_rules.cpp): Python in the current interpreter's
// __main__, and SUB_TEST, a test of one child case that skips before CPython 3.12 (no
// per-interpreter GIL, no PyInterpreterConfig: subinterpreter::create() and adopt() refuse there).
#pragma once

#include <string>

#include "helpers.hpp"

namespace testutil {

constexpr bool k_has_subinterpreters = PY_VERSION_HEX >= 0x030C0000;

// The interpreter whose state is current on this thread (PRECONDITION: attached).
inline PyInterpreterState* current_interp() { return PyThreadState_Get()->interp; }

// Runs `code` in the current interpreter's __main__; false (and prints) on error.
inline bool run(const std::string& code) {
  PyObject* main = PyImport_AddModule("__main__");  // borrowed
  if (main == nullptr) return false;
  return py_exec(code, PyModule_GetDict(main));
}

// Evaluates `expr` in the current interpreter's __main__ (-999999 on error).
inline long eval_long(const std::string& expr) {
  PyObject* main = PyImport_AddModule("__main__");
  return main == nullptr ? -1 : py_eval_long(expr, PyModule_GetDict(main));
}

}  // namespace testutil

// A test in the Subinterpreter suite that runs one child case and expects it clean; it skips before
// 3.12. The optional last argument is a child_options expression (child_process.hpp).
#define SUB_TEST(test_name, case_name, ...)                                                 \
  USES_CHILD_CASE(case_name);                                                               \
  TEST(Subinterpreter, test_name) {                                                         \
    if (!::testutil::k_has_subinterpreters) {                                               \
      GTEST_SKIP() << "sub-interpreters with their own GIL: 3.12+";                         \
    }                                                                                       \
    EXPECT_CHILD_CLEAN(::testutil::run_child(uses_##case_name, ##__VA_ARGS__));             \
  }

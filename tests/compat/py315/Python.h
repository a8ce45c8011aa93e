/* tests/compat/py315/Python.h — a compile-only stand-in for CPython 3.15's <Python.h>.
 *
 * CPython 3.15 cannot be installed on the machine that runs pyattach's tests. This shim lets the
 * `compat` CTest tests parse pyattach's headers and every source file in src/ as if for 3.15:
 * it includes the real <Python.h> of the configured CPython 3.13 (the next directory on the
 * include path, see tests/compat/CMakeLists.txt), claims to be 3.15.0 final, and declares the
 * PEP 788 API that pyattach's 3.15 branch (include/pyattach/detail/compat.hpp) uses.
 * Declarations only: nothing is linked or run.
 *
 * The declarations follow CPython's documentation of the merged PEP 788 (python/cpython#149116,
 * "gh-149101: Implement PEP 788", merged May 2026; PEP 788 marked Final in python/peps#4959):
 *   Doc/c-api/interp-lifecycle.rst
 *   (python/cpython, commit 04bd87add1ccaf30ed9a1c4d07a56647eeefc685),
 *   section "Cautions regarding interpreter finalization": PyInterpreterGuard, PyInterpreterView
 *   and their functions, all ".. versionadded:: 3.15";
 *   Doc/c-api/threads.rst (python/cpython, commit 0398b3c60a331f5ebb39238f6af92927bf25cc31):
 *   PyThreadStateToken, PyThreadState_Ensure/EnsureFromView/Release.
 * Which CPython header declares them (under Include/) is not verified here; all of them are
 * reached through <Python.h>, which is all that pyattach includes.
 *
 * Only what pyattach uses is declared, so that a use of anything else fails to compile:
 *   PyInterpreterView, PyInterpreterGuard (opaque)
 *   PyInterpreterView_FromMain, PyInterpreterView_Close
 *   PyInterpreterGuard_FromView, PyInterpreterGuard_Close
 * Not declared (pyattach does not use them): PyInterpreterView_FromCurrent,
 * PyInterpreterGuard_FromCurrent, PyThreadStateToken, PyThreadState_Ensure,
 * PyThreadState_EnsureFromView, PyThreadState_Release.
 *
 * PYATTACH_COMPAT_SHIM_BREAK (the negative test in tests/compat/CMakeLists.txt): declares
 * PyInterpreterGuard_FromView under a misspelt name, to prove that the check fails when a name
 * the 3.15 branch uses is missing.
 *
 * Limits: struct layouts, inline functions and every other declaration are 3.13's.
 */
#ifndef PYATTACH_COMPAT_SHIM_PY315_H
#define PYATTACH_COMPAT_SHIM_PY315_H

#pragma GCC system_header /* for #include_next: see ../claim_version.h */
#include_next <Python.h>
#define PYATTACH_SHIM_MINOR 15
#include "../claim_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Doc/c-api/interp-lifecycle.rst: ".. c:type:: PyInterpreterView  An opaque view of an
 * interpreter." and ".. c:type:: PyInterpreterGuard  An opaque interpreter guard structure." */
typedef struct PyInterpreterView PyInterpreterView;
typedef struct PyInterpreterGuard PyInterpreterGuard;

/* ".. c:function:: PyInterpreterView *PyInterpreterView_FromMain(void)": NULL without an
 * exception on failure (out of memory); no attached thread state needed. */
PyAPI_FUNC(PyInterpreterView *) PyInterpreterView_FromMain(void);
/* ".. c:function:: void PyInterpreterView_Close(PyInterpreterView *view)": cannot fail. */
PyAPI_FUNC(void) PyInterpreterView_Close(PyInterpreterView *view);

/* ".. c:function:: PyInterpreterGuard *PyInterpreterGuard_FromView(PyInterpreterView *view)":
 * NULL without an exception if the interpreter no longer exists, is already finalizing, or out
 * of memory; no attached thread state needed. */
#ifndef PYATTACH_COMPAT_SHIM_BREAK
PyAPI_FUNC(PyInterpreterGuard *) PyInterpreterGuard_FromView(PyInterpreterView *view);
#else
PyAPI_FUNC(PyInterpreterGuard *) PyInterpreterGuard_FromVeiw(PyInterpreterView *view);
#endif
/* ".. c:function:: void PyInterpreterGuard_Close(PyInterpreterGuard *guard)": cannot fail. */
PyAPI_FUNC(void) PyInterpreterGuard_Close(PyInterpreterGuard *guard);

#ifdef __cplusplus
}
#endif

/* See tests/compat/py314/Python.h. */
#undef _PyThreadState_UncheckedGet
#pragma GCC poison _PyThreadState_UncheckedGet _Py_IsFinalizing

#endif /* PYATTACH_COMPAT_SHIM_PY315_H */

/* tests/compat/py314/Python.h — a compile-only stand-in for CPython 3.14's <Python.h>.
 *
 * CPython 3.14 cannot be installed on the machine that runs pyattach's tests. This shim lets the
 * `compat` CTest tests parse pyattach's headers and every source file in src/ as if for 3.14:
 * it includes the real <Python.h> of the configured CPython 3.13 (the next directory on the
 * include path, see tests/compat/CMakeLists.txt), then claims to be 3.14.0 final.
 *
 * What pyattach's 3.14 branches (include/pyattach/detail/compat.hpp) use:
 *   PyThreadState_GetUnchecked()  public since 3.13 (Doc/c-api/threads.rst: "versionadded 3.13",
 *                                 no later change noted in the 3.15 docs); 3.13 declares it in
 *                                 Include/cpython/pystate.h
 *   Py_IsFinalizing()             public since 3.13 (Doc/c-api/interp-lifecycle.rst:
 *                                 "versionadded 3.13", no later change noted); 3.13 declares it
 *                                 in Include/pylifecycle.h
 * Both are declared by the 3.13 headers, so nothing needs declaring here. What 3.14 changed that
 * matters to pyattach is behaviour, not declarations: a thread that takes the GIL while the
 * runtime finalizes hangs (PyThread_hang_thread) instead of being ended by pthread_exit
 * (python/cpython#105805, commit 8cc5aa47ee464ddfd8da5461edecf4a5c72df2ff, first in 3.14.0a1;
 * Doc/c-api/threads.rst: ".. versionchanged:: 3.14 Hangs the current thread, rather than
 * terminating it").
 *
 * Limits: struct layouts, inline functions and every other declaration are 3.13's. A name that
 * 3.14 removed would still compile here; only the names listed above are checked.
 */
#ifndef PYATTACH_COMPAT_SHIM_PY314_H
#define PYATTACH_COMPAT_SHIM_PY314_H

#pragma GCC system_header /* for #include_next: see ../claim_version.h */
#include_next <Python.h>
#define PYATTACH_SHIM_MINOR 14
#include "../claim_version.h"

/* pyattach's 3.13+ paths must use the public names above, not the private ones that 3.13 still
 * provides (as an alias, or not at all) and whose presence in 3.14 is not verified here. */
#undef _PyThreadState_UncheckedGet
#pragma GCC poison _PyThreadState_UncheckedGet _Py_IsFinalizing

#endif /* PYATTACH_COMPAT_SHIM_PY314_H */

/* tests/compat/claim_version.h — what the py314 and py315 shims share. Each shim includes the
 * real CPython 3.13 <Python.h> (#include_next: the next one on the include path, which only works
 * from the shim itself, as a system header: -Wpedantic would flag #include_next, a GCC/Clang
 * extension), defines PYATTACH_SHIM_MINOR (14, 15), then includes this file, which makes the
 * headers claim to be CPython 3.<minor>.0 final; the shim then adds its own declarations. */
#pragma GCC system_header

#if PY_MAJOR_VERSION != 3 || PY_MINOR_VERSION != 13
#error "tests/compat/claim_version.h must follow a CPython 3.13 <Python.h>"
#endif

#define PYATTACH_SHIM_STR2(x) #x
#define PYATTACH_SHIM_STR(x) PYATTACH_SHIM_STR2(x)

#undef PY_MINOR_VERSION
#undef PY_MICRO_VERSION
#undef PY_RELEASE_LEVEL
#undef PY_RELEASE_SERIAL
#undef PY_VERSION
#undef PY_VERSION_HEX
#define PY_MINOR_VERSION PYATTACH_SHIM_MINOR
#define PY_MICRO_VERSION 0
#define PY_RELEASE_LEVEL PY_RELEASE_LEVEL_FINAL
#define PY_RELEASE_SERIAL 0
#define PY_VERSION "3." PYATTACH_SHIM_STR(PYATTACH_SHIM_MINOR) ".0"
#define PY_VERSION_HEX (0x030000F0 | (PYATTACH_SHIM_MINOR << 16))

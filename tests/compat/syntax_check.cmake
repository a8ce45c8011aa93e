# tests/compat/syntax_check.cmake — run by the `compat` CTest tests (cmake -P).
#
# Parses (-fsyntax-only) tests/compat/probe.cpp with -Werror and every src/*.cpp of pyattach
# (globbed now, so new files are covered) with the include path
#   SHIM_DIR (tests/compat/py314 or py315; empty: none), then PYTHON_INCLUDE_DIRS, then include/.
# Fails if any file fails to compile. With EXPECT_FAIL_REGEX set it is a negative test: only the
# probe is compiled, and it must fail with an error matching the regex.
#
# Inputs: CXX PYATTACH_SOURCE_DIR PYTHON_INCLUDE_DIRS ("|"-separated) SHIM_DIR EXPECT_VERSION_HEX
#         EXPECT_PEP788 [DEFINES ("|"-separated)] [EXPECT_FAIL_REGEX]
cmake_minimum_required(VERSION 3.18)

foreach(v CXX PYATTACH_SOURCE_DIR PYTHON_INCLUDE_DIRS EXPECT_VERSION_HEX EXPECT_PEP788)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "syntax_check.cmake: ${v} is not set")
  endif()
endforeach()

set(include_flags)
if(SHIM_DIR)
  list(APPEND include_flags "-I${SHIM_DIR}")
endif()
string(REPLACE "|" ";" python_dirs "${PYTHON_INCLUDE_DIRS}")
foreach(dir IN LISTS python_dirs)
  list(APPEND include_flags "-I${dir}")
endforeach()
list(APPEND include_flags "-I${PYATTACH_SOURCE_DIR}/include")

set(define_flags
  -DPYATTACH_EXPECT_VERSION_HEX=${EXPECT_VERSION_HEX}
  -DPYATTACH_EXPECT_PEP788=${EXPECT_PEP788})
if(DEFINES)
  string(REPLACE "|" ";" extra "${DEFINES}")
  foreach(d IN LISTS extra)
    list(APPEND define_flags "-D${d}")
  endforeach()
endif()

# The library's own flags (CMakeLists.txt: C++17 without extensions, its warnings).
set(common_flags -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Wno-missing-field-initializers)

function(parse file strict out_rc out_err)
  set(flags ${common_flags})
  if(strict)
    list(APPEND flags -Werror)
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -E env LC_ALL=C
            "${CXX}" ${flags} ${include_flags} ${define_flags} "${file}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(${out_rc} "${rc}" PARENT_SCOPE)
  set(${out_err} "${out}${err}" PARENT_SCOPE)
endfunction()

set(probe "${CMAKE_CURRENT_LIST_DIR}/probe.cpp")
string(REPLACE ";" " " shown "${CXX} ${common_flags} ${include_flags} ${define_flags}")
message(STATUS "compiler command: ${shown} <file>")

if(EXPECT_FAIL_REGEX)
  parse("${probe}" TRUE rc err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "negative check: probe.cpp compiled, but it must fail\n${err}")
  endif()
  if(NOT err MATCHES "${EXPECT_FAIL_REGEX}")
    message(FATAL_ERROR "negative check: probe.cpp failed, but not with an error matching "
                        "'${EXPECT_FAIL_REGEX}':\n${err}")
  endif()
  message(STATUS "negative check: probe.cpp failed as expected:")
  string(REGEX MATCH "[^\n]*${EXPECT_FAIL_REGEX}[^\n]*" line "${err}")
  message(STATUS "  ${line}")
  return()
endif()

file(GLOB sources "${PYATTACH_SOURCE_DIR}/src/*.cpp")
list(SORT sources)
set(failed)
foreach(file IN ITEMS "${probe}" ${sources})
  if(file STREQUAL probe)
    set(strict TRUE)
  else()
    set(strict FALSE)
  endif()
  parse("${file}" ${strict} rc err)
  file(RELATIVE_PATH rel "${PYATTACH_SOURCE_DIR}" "${file}")
  if(rc EQUAL 0)
    message(STATUS "ok      ${rel}")
    if(NOT err STREQUAL "")
      message(STATUS "${err}")  # warnings
    endif()
  else()
    message(STATUS "FAILED  ${rel}\n${err}")
    list(APPEND failed "${rel}")
  endif()
endforeach()
if(failed)
  message(FATAL_ERROR "did not compile: ${failed}")
endif()

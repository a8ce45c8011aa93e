# Helpers for the consumer scripts (run_*.cmake), included by them.

# Every script needs these; some need more (checked by each).
foreach(v WORK_DIR PYTHON GENERATOR)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "${CMAKE_SCRIPT_MODE_FILE}: ${v} is not set")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Debug)
endif()
# What every consumer configure gets: this build's generator, build type and compiler.
set(consumer_common -G "${GENERATOR}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
if(CXX_COMPILER)
  list(APPEND consumer_common "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

# consumer_run(<step> <command>...): runs the command; fails the test, with its output, unless it
# exits with 0. Leaves its stdout+stderr in last_output.
function(consumer_run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${step} failed (${rc})\ncommand: ${ARGN}\n"
                        "--- stdout ---\n${out}\n--- stderr ---\n${err}")
  endif()
  message(STATUS "${step}: ok")
  set(last_output "${out}${err}" PARENT_SCOPE)
endfunction()

# consumer_check_libpython(<file> NEEDED|NOT_NEEDED): readelf -d's NEEDED entries of <file> must
# (NEEDED) or must not (NOT_NEEDED) name a libpython.
function(consumer_check_libpython file want)
  if(NOT READELF)
    message(FATAL_ERROR "READELF is not set")
  endif()
  consumer_run("readelf -d ${file}" "${READELF}" -d "${file}")
  string(REGEX MATCHALL "\\(NEEDED\\)[^\n]*" needed "${last_output}")
  string(REGEX MATCH "\\[libpython[^]]*\\]" libpython "${needed}")
  string(REPLACE ";" "\n  " needed_text "${needed}")
  if(want STREQUAL "NOT_NEEDED" AND libpython)
    message(FATAL_ERROR "${file} links libpython (${libpython}):\n  ${needed_text}")
  elseif(want STREQUAL "NEEDED" AND NOT libpython)
    message(FATAL_ERROR "${file} does not link libpython:\n  ${needed_text}")
  endif()
  message(STATUS "readelf -d ${file}: libpython ${want}: ok (${libpython})")
endfunction()

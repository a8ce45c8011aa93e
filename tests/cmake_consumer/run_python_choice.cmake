# Which CPython an installed pyattach accepts: configures (only) a consumer of the pyattach
# installed in PREFIX (built for PYTHON) and checks the outcome (cmake -P script, run by CTest).
#   OTHER_PYTHON set     the consumer chooses it, by -DPython_EXECUTABLE (embedder consumer,
#                        which calls find_package(pyattach) only) or, with FOUND_FIRST, by
#                        -DPython_ROOT_DIR and a find_package(Python) before find_package(pyattach)
#                        (module consumer); the configure must fail with EXPECT_FAIL_REGEX.
#                        Skipped (SKIPPED: ...) when OTHER_PYTHON does not exist.
#   OTHER_PYTHON empty   the control: the embedder consumer, configured with -DPython_EXECUTABLE=
#                        PYTHON, then with no Python chosen and a decoy python3 first on PATH
#                        (which FindPython alone would take): both must use PYTHON.
# Inputs: PREFIX WORK_DIR PYTHON GENERATOR [CXX_COMPILER BUILD_TYPE OTHER_PYTHON FOUND_FIRST
#         EXPECT_FAIL_REGEX]
cmake_minimum_required(VERSION 3.18)
include("${CMAKE_CURRENT_LIST_DIR}/common.cmake")

file(REMOVE_RECURSE "${WORK_DIR}")
list(APPEND consumer_common "-DCMAKE_PREFIX_PATH=${PREFIX}")

# configure(<name> <source dir> <args>...): out, rc
function(configure name source)
  execute_process(COMMAND ${CMAKE_COMMAND} -S "${source}" -B "${WORK_DIR}/${name}"
                  ${consumer_common} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  set(rc "${rc}" PARENT_SCOPE)
  set(out "${out}${err}" PARENT_SCOPE)
endfunction()

if(OTHER_PYTHON)
  if(NOT EXISTS "${OTHER_PYTHON}")
    message(STATUS "SKIPPED: ${OTHER_PYTHON} does not exist")
    return()
  endif()
  if(FOUND_FIRST)
    get_filename_component(root "${OTHER_PYTHON}" DIRECTORY)
    get_filename_component(root "${root}" DIRECTORY)
    configure(other "${CMAKE_CURRENT_LIST_DIR}/module" "-DPython_ROOT_DIR=${root}"
              "-DORDER=Python,pyattach")
  else()
    configure(other "${CMAKE_CURRENT_LIST_DIR}" "-DPython_EXECUTABLE=${OTHER_PYTHON}")
  endif()
  # Collapse CMake's line wrapping of the message.
  string(REGEX REPLACE "[ \n]+" " " flat "${out}")
  if(rc EQUAL 0)
    message(FATAL_ERROR "the configure with ${OTHER_PYTHON} succeeded; expected it to fail:\n${out}")
  elseif(NOT flat MATCHES "${EXPECT_FAIL_REGEX}")
    message(FATAL_ERROR "the configure with ${OTHER_PYTHON} failed, but without the expected "
                        "message (${EXPECT_FAIL_REGEX}):\n${out}")
  endif()
  message(STATUS "refused, as expected: ${CMAKE_MATCH_0}")
  return()
endif()

# The positive controls.
foreach(case IN ITEMS chosen recorded)
  set(args "")
  if(case STREQUAL "chosen")
    set(args "-DPython_EXECUTABLE=${PYTHON}")
    configure(${case} "${CMAKE_CURRENT_LIST_DIR}" ${args})
  else()
    file(MAKE_DIRECTORY "${WORK_DIR}/decoy")
    file(CREATE_LINK "${PYTHON}" "${WORK_DIR}/decoy/python3" SYMBOLIC)
    set(path "$ENV{PATH}")
    set(ENV{PATH} "${WORK_DIR}/decoy:${path}")
    configure(${case} "${CMAKE_CURRENT_LIST_DIR}")
    set(ENV{PATH} "${path}")
  endif()
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the configure (${case}: ${args}) failed:\n${out}")
  endif()
  if(NOT out MATCHES "consumer: CPython [0-9.]+ at ([^\n]*)\n" OR NOT CMAKE_MATCH_1 STREQUAL PYTHON)
    message(FATAL_ERROR "the configure (${case}: ${args}) used '${CMAKE_MATCH_1}', not ${PYTHON}:\n${out}")
  endif()
  message(STATUS "${case}: configured with ${CMAKE_MATCH_1}")
endforeach()

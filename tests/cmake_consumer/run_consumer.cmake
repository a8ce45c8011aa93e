# Configures, builds and runs tests/cmake_consumer against pyattach (cmake -P script, run by CTest).
#   MODE=installed     cmake --install the main build into WORK_DIR/prefix, then find_package it
#   MODE=subdirectory  add_subdirectory the pyattach source tree
# Inputs: PYATTACH_SOURCE_DIR PYATTACH_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR PYTHON
#         EXPECT_PYTHON_VERSION GENERATOR CXX_COMPILER BUILD_TYPE
cmake_minimum_required(VERSION 3.18)

foreach(v MODE PYATTACH_SOURCE_DIR PYATTACH_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR PYTHON GENERATOR)
  if(NOT DEFINED ${v} OR "${${v}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${v} is not set")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Debug)
endif()

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${step} failed (${rc})\n"
                        "command: ${ARGN}\n--- stdout ---\n${out}\n--- stderr ---\n${err}")
  endif()
  message(STATUS "consumer (${MODE}): ${step}: ok")
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(build "${WORK_DIR}/build")
set(common -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DPYATTACH_PYTHON=${PYTHON}
           -DPython_EXECUTABLE=${PYTHON})
if(CXX_COMPILER)
  list(APPEND common -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()

if(MODE STREQUAL "installed")
  set(prefix "${WORK_DIR}/prefix")
  run("install" ${CMAKE_COMMAND} --install "${PYATTACH_BUILD_DIR}" --prefix "${prefix}"
      --config ${BUILD_TYPE})
  file(GLOB_RECURSE config "${prefix}/*/pyattachConfig.cmake")
  if(NOT config)
    message(FATAL_ERROR "consumer (installed): no pyattachConfig.cmake under ${prefix}")
  endif()
  run("configure" ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${build}" ${common}
      "-DCMAKE_PREFIX_PATH=${prefix}")
  # It must have used the installed package, not the build tree.
  file(STRINGS "${build}/CMakeCache.txt" dir_line REGEX "^pyattach_DIR:")
  string(FIND "${dir_line}" "${prefix}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "consumer (installed): found pyattach elsewhere: ${dir_line}")
  endif()
elseif(MODE STREQUAL "subdirectory")
  run("configure" ${CMAKE_COMMAND} -S "${CONSUMER_SOURCE_DIR}" -B "${build}" ${common}
      "-DPYATTACH_CONSUMER_SOURCE_DIR=${PYATTACH_SOURCE_DIR}")
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE ${MODE}")
endif()

run("build" ${CMAKE_COMMAND} --build "${build}" --config ${BUILD_TYPE})

find_program(consumer_exe NAMES consumer PATHS "${build}" "${build}/${BUILD_TYPE}" NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "consumer (${MODE}): the consumer executable was not built")
endif()
run("run" "${consumer_exe}")
message(STATUS "${last_output}")
if(MODE STREQUAL "installed")
  set(how "find_package")
else()
  set(how "add_subdirectory")
endif()
if(NOT last_output MATCHES "consumer \\(${how}\\): attached on Python ([0-9.]+)")
  message(FATAL_ERROR "consumer (${MODE}): unexpected output:\n${last_output}")
endif()
if(EXPECT_PYTHON_VERSION AND NOT CMAKE_MATCH_1 VERSION_EQUAL EXPECT_PYTHON_VERSION)
  message(FATAL_ERROR "consumer (${MODE}): ran on Python ${CMAKE_MATCH_1}, expected ${EXPECT_PYTHON_VERSION}")
endif()

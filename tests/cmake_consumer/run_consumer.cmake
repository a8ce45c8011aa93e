# The embedder consumer (this directory's CMakeLists.txt, linking pyattach::embed): configures,
# builds and runs it (cmake -P script, run by CTest).
#   MODE=install       the fixture: cmake --install the main build (PYATTACH_BUILD_DIR) into PREFIX,
#                      shared by every test that finds an installed pyattach
#   MODE=installed     find_package the pyattach installed in PREFIX
#   MODE=subdirectory  add_subdirectory the pyattach source tree (PYATTACH_SOURCE_DIR)
# The executable must link libpython (readelf -d; when it is a shared library) and run Python on
# a native thread.
# Inputs: MODE WORK_DIR PYTHON GENERATOR [CXX_COMPILER BUILD_TYPE EXPECT_PYTHON_VERSION]
#         [EMBED_LINKS_SHARED_LIBPYTHON READELF],
#         and PREFIX, PYATTACH_BUILD_DIR or PYATTACH_SOURCE_DIR as the mode needs.
cmake_minimum_required(VERSION 3.18)
include("${CMAKE_CURRENT_LIST_DIR}/common.cmake")

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  consumer_run("install" ${CMAKE_COMMAND} --install "${PYATTACH_BUILD_DIR}" --prefix "${PREFIX}"
               --config ${BUILD_TYPE})
  file(GLOB_RECURSE config "${PREFIX}/*/pyattachConfig.cmake")
  if(NOT config)
    message(FATAL_ERROR "no pyattachConfig.cmake under ${PREFIX}")
  endif()
  return()
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
set(build "${WORK_DIR}/build")
set(source "${CMAKE_CURRENT_LIST_DIR}")
list(APPEND consumer_common -DPYATTACH_PYTHON=${PYTHON} -DPython_EXECUTABLE=${PYTHON})
if(MODE STREQUAL "installed")
  consumer_run("configure" ${CMAKE_COMMAND} -S "${source}" -B "${build}" ${consumer_common}
               "-DCMAKE_PREFIX_PATH=${PREFIX}")
  # It must have used the installed package, not the build tree.
  file(STRINGS "${build}/CMakeCache.txt" dir_line REGEX "^pyattach_DIR:")
  string(FIND "${dir_line}" "${PREFIX}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "found pyattach elsewhere: ${dir_line}")
  endif()
  set(how "find_package")
elseif(MODE STREQUAL "subdirectory")
  consumer_run("configure" ${CMAKE_COMMAND} -S "${source}" -B "${build}" ${consumer_common}
               "-DPYATTACH_CONSUMER_SOURCE_DIR=${PYATTACH_SOURCE_DIR}")
  set(how "add_subdirectory")
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE ${MODE}")
endif()

consumer_run("build" ${CMAKE_COMMAND} --build "${build}" --config ${BUILD_TYPE} --parallel 2)

find_program(consumer_exe NAMES consumer PATHS "${build}" "${build}/${BUILD_TYPE}" NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "the consumer executable was not built")
endif()
if(EMBED_LINKS_SHARED_LIBPYTHON)  # not with a static libpython
  consumer_check_libpython("${consumer_exe}" NEEDED)
endif()
consumer_run("run" "${consumer_exe}")
message(STATUS "${last_output}")
if(NOT last_output MATCHES "consumer \\(${how}\\): attached on Python ([0-9.]+)")
  message(FATAL_ERROR "unexpected output:\n${last_output}")
endif()
if(EXPECT_PYTHON_VERSION AND NOT CMAKE_MATCH_1 VERSION_EQUAL EXPECT_PYTHON_VERSION)
  message(FATAL_ERROR "ran on Python ${CMAKE_MATCH_1}, expected ${EXPECT_PYTHON_VERSION}")
endif()

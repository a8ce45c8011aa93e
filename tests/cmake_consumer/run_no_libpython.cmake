# A machine without libpython (as manylinux images are), simulated with
# -DPython_LIBRARY=<a file that does not exist>: pyattach must still configure, build and install
# without pyattach::embed; a consumer that asks for COMPONENTS embed must be told why it cannot
# have it; an extension module must still build against that install (cmake -P script, run by
# CTest).
# Inputs: PYATTACH_SOURCE_DIR WORK_DIR PYTHON GENERATOR READELF PYBIND11_DIR
#         [CXX_COMPILER BUILD_TYPE]
cmake_minimum_required(VERSION 3.18)
include("${CMAKE_CURRENT_LIST_DIR}/common.cmake")

file(REMOVE_RECURSE "${WORK_DIR}")
set(no_libpython "-DPython_LIBRARY=${WORK_DIR}/no-such-dir/libpython.so")
set(prefix "${WORK_DIR}/prefix")

consumer_run("configure pyattach" ${CMAKE_COMMAND} -S "${PYATTACH_SOURCE_DIR}" -B "${WORK_DIR}/pyattach"
  ${consumer_common} "-DPYATTACH_PYTHON=${PYTHON}" "${no_libpython}" -DPYATTACH_BUILD_TESTS=OFF
  -DPYATTACH_BUILD_EXAMPLES=OFF -DPYATTACH_BUILD_BENCH=OFF)
if(NOT last_output MATCHES "no libpython \\(Development.Embed\\) found: pyattach::embed is not defined")
  message(FATAL_ERROR "pyattach did not say that pyattach::embed is not defined:\n${last_output}")
endif()
consumer_run("build pyattach" ${CMAKE_COMMAND} --build "${WORK_DIR}/pyattach" --config ${BUILD_TYPE}
             --parallel 2)
consumer_run("install pyattach" ${CMAKE_COMMAND} --install "${WORK_DIR}/pyattach"
             --prefix "${prefix}" --config ${BUILD_TYPE})
file(GLOB_RECURSE embed_targets "${prefix}/*/pyattachEmbedTargets.cmake")
if(embed_targets)
  message(FATAL_ERROR "pyattach::embed was installed without libpython: ${embed_targets}")
endif()

# An embedder asking for COMPONENTS embed.
execute_process(COMMAND ${CMAKE_COMMAND} -S "${CMAKE_CURRENT_LIST_DIR}" -B "${WORK_DIR}/embedder"
  ${consumer_common} "-DPython_EXECUTABLE=${PYTHON}" "-DCMAKE_PREFIX_PATH=${prefix}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(REGEX REPLACE "[ \n]+" " " flat "${out}${err}")
set(expected "component embed \\(pyattach::embed\\) needs libpython: this pyattach was built without libpython")
if(rc EQUAL 0 OR NOT flat MATCHES "${expected}")
  message(FATAL_ERROR "the embedder's configure should fail with '${expected}' (${rc}):\n${out}${err}")
endif()
message(STATUS "embedder refused, as expected: ${CMAKE_MATCH_0}")

# An extension module, on the same machine without libpython.
consumer_run("module consumer" ${CMAKE_COMMAND} -DORDER=pyattach,pybind11
  "-DWORK_DIR=${WORK_DIR}/module" "-DPYTHON=${PYTHON}" "-DGENERATOR=${GENERATOR}"
  "-DCXX_COMPILER=${CXX_COMPILER}" "-DBUILD_TYPE=${BUILD_TYPE}" "-DREADELF=${READELF}"
  "-DPREFIX=${prefix}" "-DPYBIND11_DIR=${PYBIND11_DIR}" -DCHOOSE_PYTHON=ON
  "-DEXTRA_ARGS=${no_libpython}" -P "${CMAKE_CURRENT_LIST_DIR}/run_module_consumer.cmake")
message(STATUS "${last_output}")

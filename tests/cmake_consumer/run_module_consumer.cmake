# The extension-module consumer (module/, linking pyattach::module): configures it with its
# find_package calls in the ORDER given, builds a pybind11 and/or a nanobind module, checks that
# neither links libpython (readelf -d) and that PYTHON imports both and runs pyattach in them
# (cmake -P script, run by CTest).
# Inputs: ORDER (module/'s ORDER, comma-separated), WORK_DIR PYTHON GENERATOR READELF
#         [CXX_COMPILER BUILD_TYPE]
#         PREFIX                 an installed pyattach (unless SUBDIRECTORY)
#         SUBDIRECTORY           ON: add_subdirectory PYATTACH_SOURCE_DIR instead of find_package
#         PYBIND11_DIR           pybind11's CMake package directory (when ORDER names pybind11)
#         VENV                   a scripts/venv.sh venv: pybind11 from PyPI when PYBIND11_DIR is
#                                "venv", and nanobind
#         PYTHON_FROM_VENV       ON: the project's Python is VENV's python instead of PYTHON (another
#                                path to it, as in a scikit-build-core build's isolated venv)
#         PYBIND11_FINDPYTHON    ON: -DPYBIND11_FINDPYTHON=ON (pybind11 finds Python with FindPython;
#                                otherwise, found before Python, it uses its classic mode)
#         EXTRA_ARGS             more configure arguments, "|"-separated
#         CHOOSE_PYTHON          ON: -DPython_EXECUTABLE=PYTHON (and PYTHON_EXECUTABLE, for
#                                pybind11's classic mode); OFF: no Python chosen, so pyattach's
#                                recorded one (which must be PYTHON) is used
cmake_minimum_required(VERSION 3.18)
include("${CMAKE_CURRENT_LIST_DIR}/common.cmake")

string(REPLACE "," ";" order "${ORDER}")
if(PYTHON_FROM_VENV)
  set(PYTHON "${VENV}/bin/python")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
set(build "${WORK_DIR}/build")
set(args ${consumer_common} "-DORDER=${ORDER}")
if(SUBDIRECTORY)
  list(APPEND args "-DPYATTACH_SOURCE_DIR=${PYATTACH_SOURCE_DIR}")
else()
  list(APPEND args "-DCMAKE_PREFIX_PATH=${PREFIX}")
endif()
if(CHOOSE_PYTHON)
  list(APPEND args "-DPython_EXECUTABLE=${PYTHON}" "-DPYTHON_EXECUTABLE=${PYTHON}")
endif()
if(EXTRA_ARGS)
  string(REPLACE "|" ";" extra "${EXTRA_ARGS}")
  list(APPEND args ${extra})
endif()
if(PYBIND11_FINDPYTHON)
  list(APPEND args -DPYBIND11_FINDPYTHON=ON)
endif()
if(PYBIND11_DIR STREQUAL "venv")
  consumer_run("pybind11 --cmakedir" "${VENV}/bin/python" -m pybind11 --cmakedir)
  string(STRIP "${last_output}" PYBIND11_DIR)
endif()
if(pybind11 IN_LIST order)
  list(APPEND args "-Dpybind11_DIR=${PYBIND11_DIR}")
endif()
if(nanobind IN_LIST order)
  consumer_run("nanobind --cmake_dir" "${VENV}/bin/python" -m nanobind --cmake_dir)
  string(STRIP "${last_output}" nanobind_dir)
  list(APPEND args "-Dnanobind_DIR=${nanobind_dir}")
endif()

consumer_run("configure (${ORDER})" ${CMAKE_COMMAND} -S "${CMAKE_CURRENT_LIST_DIR}/module"
             -B "${build}" ${args})
if(NOT last_output MATCHES "consumer: CPython [0-9.]+ at ([^\n]*)\n")
  message(FATAL_ERROR "the consumer did not say which Python it used:\n${last_output}")
endif()
if(NOT CMAKE_MATCH_1 STREQUAL PYTHON)
  message(FATAL_ERROR "the consumer used ${CMAKE_MATCH_1}, expected ${PYTHON}")
endif()
if(SUBDIRECTORY AND NOT last_output MATCHES "pyattach: CPython [0-9.]+ \\(abiflags '[a-z]*', ([^)]*)\\)")
  message(FATAL_ERROR "pyattach did not say which Python it used:\n${last_output}")
endif()
if(SUBDIRECTORY AND NOT CMAKE_MATCH_1 STREQUAL PYTHON)
  message(FATAL_ERROR "pyattach (add_subdirectory) used ${CMAKE_MATCH_1}, not the parent's ${PYTHON}")
endif()
consumer_run("build" ${CMAKE_COMMAND} --build "${build}" --config ${BUILD_TYPE} --parallel 2)

set(modules "")
foreach(binding IN ITEMS pybind11 nanobind)
  if(binding IN_LIST order)
    file(GLOB_RECURSE module "${build}/consumer_${binding}.*")
    if(NOT module)
      message(FATAL_ERROR "the ${binding} module was not built")
    endif()
    consumer_check_libpython("${module}" NOT_NEEDED)
    get_filename_component(module_dir "${module}" DIRECTORY)
    list(APPEND modules consumer_${binding})
  endif()
endforeach()
# Each module's python_version() is pyattach's thread report, made with the GIL held.
string(REPLACE ";" "," module_list "${modules}")
consumer_run("import ${module_list}" "${PYTHON}" -c "
import importlib, platform, sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2].split(','):
    got = importlib.import_module(name).python_version()
    assert got == platform.python_version(), (name, got)
    print(name, 'reports Python', got)
" "${module_dir}" "${module_list}")
message(STATUS "${last_output}")

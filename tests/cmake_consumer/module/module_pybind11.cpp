// A pybind11 module that links pyattach::module: python_version() asks pyattach, GIL held.
#include <pyattach/pyattach.hpp>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

PYBIND11_MODULE(consumer_pybind11, m) {
  m.def("python_version", [] { return pyattach::make_thread_report().python_version; });
}

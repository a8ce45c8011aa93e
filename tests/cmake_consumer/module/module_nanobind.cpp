// A nanobind module that links pyattach::module: python_version() asks pyattach, GIL held.
#include <pyattach/pyattach.hpp>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

NB_MODULE(consumer_nanobind, m) {
  m.def("python_version", [] { return pyattach::make_thread_report().python_version; });
}

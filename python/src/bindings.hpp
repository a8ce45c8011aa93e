// python/src/bindings.hpp — the parts of the pyattach._core extension module, each binding its
// own functions and classes into the module (python/src/core.cpp calls them in order).
#pragma once

#include <nanobind/nanobind.h>

namespace nb = nanobind;

// executor.cpp: Executor, shutdown_all, after_fork_in_child, stats.
void bind_executor(nb::module_& m);
// observe.cpp: thread_report.
void bind_report(nb::module_& m);
// observe.cpp: set_metrics ... stop_trace (pyattach/observe.hpp).
void bind_observe(nb::module_& m);

// python/src/core.cpp — pyattach._core, the native module under the pure-Python package in
// python/pyattach (which is what users import): the executor's machinery (executor.cpp), the
// thread report, metrics and trace (observe.cpp).
#include "bindings.hpp"

NB_MODULE(_core, m) {
  m.doc() = "pyattach's native core: the machinery under pyattach.ThreadPoolExecutor, the "
            "thread report, metrics and trace. Import pyattach, not this module.";
  // An executor kept in a module global is often still alive when nanobind's state is torn
  // down at exit (CPython does not promise to clear every module); that is not a leak to report.
  nb::set_leak_warnings(false);
  bind_executor(m);
  bind_report(m);
  bind_observe(m);
}

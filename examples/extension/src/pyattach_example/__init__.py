"""pyattach's extension-module example.

Two independent extension modules, each with its own static copy of pyattach:

    from pyattach_example import with_pybind11   # pybind11 3.x
    from pyattach_example import with_nanobind   # nanobind

Import one of them per process if you want a single pyattach gate to reason about.
"""

// examples/extension/src/pybind11_module.cpp — pyattach_example.with_pybind11: native threads
// and a pyattach::thread_pool calling back into Python, in a pybind11 3.x module.
//
// Linked against pyattach::module: pyattach's static library and CPython's headers, no libpython
// (the python that imports this module provides the C API). See ../README.md for the rules at
// interpreter exit.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <exception>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "example_common.hpp"

namespace py = pybind11;

namespace {

// `threads` native threads each make `calls` calls fn(thread_index, call_index), one attach_scope
// per call (as a callback from C++ code would), and keep the results in order. Raises what fn
// raised, or RuntimeError("attach refused: <status>") if pyattach refused an attach.
py::list call_from_threads(py::object fn, int threads, int calls) {
  std::vector<py::list> results(static_cast<std::size_t>(threads));  // made with the GIL held
  std::vector<std::exception_ptr> errors(results.size());
  std::vector<pyattach::attach_status> refused(results.size(), pyattach::attach_status::attached);
  {
    // The workers need the GIL: release it while they run (a detach_scope is valid on a Python
    // thread; py::gil_scoped_release would do as well).
    pyattach::detach_scope nogil;
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int j = 0; j < calls; ++j) {
          pyattach::attach_scope py_scope(pyattach::nothrow);
          if (!py_scope) {  // the interpreter is finalizing or gone: stop, touch nothing
            refused[t] = py_scope.status();
            return;
          }
          try {
            results[t].append(fn(t, j));
          } catch (...) {  // py::error_already_set: carried to the calling thread
            errors[t] = std::current_exception();
            return;
          }
        }
      });
    }
    for (auto& w : workers) w.join();
  }
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  for (auto st : refused) {
    if (st != pyattach::attach_status::attached) throw std::runtime_error(example::refused_text(st));
  }
  py::list out;
  for (auto& r : results) out.append(r);
  return out;
}

// fn(item) for each item on the module's thread_pool (submit_python), results in order.
py::list pool_map(py::object fn, py::sequence items) {
  // The tasks capture borrowed pointers: fn and the items stay alive in `keep` until every
  // future is ready (a task must not own Python references: see pool.hpp, "Captured Python
  // objects").
  std::vector<py::object> keep;
  for (auto item : items) keep.push_back(py::reinterpret_borrow<py::object>(item));
  PyObject* f = fn.ptr();
  std::vector<std::future<PyObject*>> futures;
  std::exception_ptr refused;
  for (auto& item : keep) {
    PyObject* x = item.ptr();
    try {
      // A task that returns NULL with a Python exception set completes with python_error.
      futures.push_back(example::module_pool().submit_python(
          [f, x]() -> PyObject* { return PyObject_CallOneArg(f, x); }));
    } catch (const pyattach::pool_error&) {  // stopped: the interpreter is finalizing
      refused = std::current_exception();
      break;
    }
  }
  std::vector<PyObject*> values(futures.size(), nullptr);
  std::exception_ptr first;
  {
    pyattach::detach_scope nogil;  // the workers need the GIL
    for (std::size_t i = 0; i < futures.size(); ++i) {
      try {
        values[i] = futures[i].get();
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
  }
  py::list out;
  for (PyObject* v : values) {
    if (v != nullptr) out.append(py::reinterpret_steal<py::object>(v));
  }
  if (!first) first = refused;
  if (first) {
    try {
      std::rethrow_exception(first);
    } catch (const pyattach::python_error& e) {
      throw std::runtime_error(e.type_name() + ": " + e.message());
    } catch (const pyattach::pool_error& e) {
      throw std::runtime_error(std::string("pool_error(") + pyattach::to_string(e.code()) +
                               "): " + e.what());
    }
  }
  return out;
}

py::dict mix_guards(py::object fn, const std::string& program) {
  example::guard_probe probe;
  const std::uint64_t misuse_before = pyattach::misuse_count();
  const int left =
      example::run_guard_program_on_new_thread<py::gil_scoped_acquire, py::gil_scoped_release>(
          program, fn.ptr(), probe);
  py::dict d;
  d["program"] = program;
  d["calls"] = probe.calls;
  d["max_states"] = probe.max_states;
  d["min_states"] = probe.calls > 0 ? probe.min_states : 0;
  d["not_attached"] = probe.not_attached;
  d["distinct_states"] = probe.distinct.size();
  d["states_after_exit"] = left;
  d["misuse_reports"] = pyattach::misuse_count() - misuse_before;
  d["python_error"] = probe.python_error;
  return d;
}

}  // namespace

PYBIND11_MODULE(with_pybind11, m) {
  m.doc() = "pyattach example (pybind11): native threads and a thread_pool calling into Python";
  example::module_init("pybind11");

  m.def("call_from_threads", &call_from_threads, py::arg("fn"), py::arg("threads") = 4,
        py::arg("calls") = 2000);
  m.def("pool_map", &pool_map, py::arg("fn"), py::arg("items"));
  m.def(
      "pool_post",
      [](py::object fn, long long n) { return example::pool_post(fn.ptr(), n); }, py::arg("fn"),
      py::arg("n"));
  m.def(
      "pool_stats",
      [] {
        const pyattach::pool_stats s = example::module_pool().stats();
        py::dict d;
        d["name"] = s.name;
        d["submitted"] = s.submitted;
        d["completed"] = s.completed;
        d["failed"] = s.failed;
        d["cancelled"] = s.cancelled;
        py::list names;
        for (const auto& w : s.workers) names.append(w.name);
        d["workers"] = names;
        return d;
      });
  m.def(
      "start_background_threads",
      [](py::object fn, int n, const std::string& variant) {
        example::start_background_threads(fn.ptr(), n, variant);
      },
      py::arg("fn"), py::arg("n") = 4, py::arg("variant") = "plain");
  m.def(
      "start_paced_threads",
      [](py::object fn, int n, bool raw, int pause_ms) {
        example::start_paced_threads(fn.ptr(), n, raw, pause_ms);
      },
      py::arg("fn"), py::arg("n") = 2, py::arg("raw") = true, py::arg("pause_ms") = 200);
  m.def("mix_guards", &mix_guards, py::arg("fn"), py::arg("program"));
  m.def(
      "run_on_interpreter",
      [](long long interp_id, const std::string& code, int tasks, int workers) {
        py::list out;
        for (const std::string& r : example::run_on_interpreter(interp_id, code, tasks, workers)) {
          out.append(py::str(r.c_str()));
        }
        return out;
      },
      py::arg("interp_id"), py::arg("code"), py::arg("tasks") = 4, py::arg("workers") = 2);
  m.def("gate_phase", [] { return std::string(pyattach::to_string(pyattach::current_gate_phase())); });
  m.def("misuse_count", [] { return pyattach::misuse_count(); });
  m.def("thread_states", [] {  // attaches (nested here): binds the gate if nothing did
    auto n = pyattach::count_thread_states();
    return n ? py::object(py::int_(*n)) : py::object(py::none());
  });
}

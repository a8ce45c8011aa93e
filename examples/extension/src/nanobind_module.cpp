// examples/extension/src/nanobind_module.cpp — pyattach_example.with_nanobind: the same module as
// with_pybind11, in nanobind (3.x; 2.x on CPython 3.9).
//
// Linked against pyattach::module: pyattach's static library and CPython's headers, no libpython.
// See ../README.md for the rules at interpreter exit.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <exception>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "example_common.hpp"

namespace nb = nanobind;

namespace {

// See with_pybind11's call_from_threads: the same contract.
nb::list call_from_threads(nb::object fn, int threads, int calls) {
  std::vector<nb::list> results(static_cast<std::size_t>(threads));  // made with the GIL held
  std::vector<std::exception_ptr> errors(results.size());
  std::vector<pyattach::attach_status> refused(results.size(), pyattach::attach_status::attached);
  {
    nb::gil_scoped_release nogil;  // the workers need the GIL (pyattach::detach_scope works too)
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
          } catch (...) {  // nb::python_error: carried to the calling thread
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
  nb::list out;
  for (auto& r : results) out.append(r);
  return out;
}

// See with_pybind11's pool_map: the same contract.
nb::list pool_map(nb::object fn, nb::object items) {
  std::vector<nb::object> keep;  // keeps the borrowed pointers the tasks capture alive
  for (nb::handle item : items) keep.push_back(nb::borrow<nb::object>(item));
  PyObject* f = fn.ptr();
  std::vector<std::future<PyObject*>> futures;
  std::exception_ptr refused;
  for (auto& item : keep) {
    PyObject* x = item.ptr();
    try {
      futures.push_back(example::module_pool().submit_python(
          [f, x]() -> PyObject* { return PyObject_CallOneArg(f, x); }));
    } catch (const pyattach::pool_error&) {
      refused = std::current_exception();
      break;
    }
  }
  std::vector<PyObject*> values(futures.size(), nullptr);
  std::exception_ptr first;
  {
    pyattach::detach_scope nogil;
    for (std::size_t i = 0; i < futures.size(); ++i) {
      try {
        values[i] = futures[i].get();
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
  }
  nb::list out;
  for (PyObject* v : values) {
    if (v != nullptr) out.append(nb::steal(v));
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

nb::dict mix_guards(nb::object fn, const std::string& program) {
  example::guard_probe probe;
  const std::uint64_t misuse_before = pyattach::misuse_count();
  const int left =
      example::run_guard_program_on_new_thread<nb::gil_scoped_acquire, nb::gil_scoped_release>(
          program, fn.ptr(), probe);
  nb::dict d;
  d["program"] = nb::cast(program);
  d["calls"] = nb::cast(probe.calls);
  d["max_states"] = nb::cast(probe.max_states);
  d["min_states"] = nb::cast(probe.calls > 0 ? probe.min_states : 0);
  d["not_attached"] = nb::cast(probe.not_attached);
  d["distinct_states"] = nb::cast(probe.distinct.size());
  d["states_after_exit"] = nb::cast(left);
  d["misuse_reports"] = nb::cast(pyattach::misuse_count() - misuse_before);
  d["python_error"] = nb::cast(probe.python_error);
  return d;
}

}  // namespace

NB_MODULE(with_nanobind, m) {
  m.doc() = "pyattach example (nanobind): native threads and a thread_pool calling into Python";
  example::module_init("nanobind");

  m.def("call_from_threads", &call_from_threads, nb::arg("fn"), nb::arg("threads") = 4,
        nb::arg("calls") = 2000);
  m.def("pool_map", &pool_map, nb::arg("fn"), nb::arg("items"));
  m.def(
      "pool_post",
      [](nb::object fn, long long n) { return example::pool_post(fn.ptr(), n); }, nb::arg("fn"),
      nb::arg("n"));
  m.def("pool_stats", [] {
    const pyattach::pool_stats s = example::module_pool().stats();
    nb::dict d;
    d["name"] = nb::cast(s.name);
    d["submitted"] = nb::cast(s.submitted);
    d["completed"] = nb::cast(s.completed);
    d["failed"] = nb::cast(s.failed);
    d["cancelled"] = nb::cast(s.cancelled);
    nb::list names;
    for (const auto& w : s.workers) names.append(nb::cast(w.name));
    d["workers"] = names;
    return d;
  });
  m.def(
      "start_background_threads",
      [](nb::object fn, int n, const std::string& variant) {
        example::start_background_threads(fn.ptr(), n, variant);
      },
      nb::arg("fn"), nb::arg("n") = 4, nb::arg("variant") = "plain");
  m.def(
      "start_paced_threads",
      [](nb::object fn, int n, bool raw, int pause_ms) {
        example::start_paced_threads(fn.ptr(), n, raw, pause_ms);
      },
      nb::arg("fn"), nb::arg("n") = 2, nb::arg("raw") = true, nb::arg("pause_ms") = 200);
  m.def("mix_guards", &mix_guards, nb::arg("fn"), nb::arg("program"));
  m.def(
      "run_on_interpreter",
      [](long long interp_id, const std::string& code, int tasks, int workers) {
        nb::list out;
        for (const std::string& r : example::run_on_interpreter(interp_id, code, tasks, workers)) {
          out.append(nb::str(r.c_str()));
        }
        return out;
      },
      nb::arg("interp_id"), nb::arg("code"), nb::arg("tasks") = 4, nb::arg("workers") = 2);
  m.def("gate_phase",
        [] { return std::string(pyattach::to_string(pyattach::current_gate_phase())); });
  m.def("misuse_count", [] { return pyattach::misuse_count(); });
  m.def("thread_states", []() -> nb::object {  // attaches (nested here): binds the gate
    auto n = pyattach::count_thread_states();
    return n ? nb::object(nb::cast(*n)) : nb::none();
  });
}

// src/subinterpreter_handle.cpp — the records' registry (by index and by interpreter) and the
// public handle, pyattach::subinterpreter (pyattach/subinterpreter.hpp): create, adopt, find,
// stats, end, and attach_scope on a handle. The caches, scopes and the end are in
// subinterpreter.cpp.
#include <mutex>
#include <string>

#include "attach_internal.hpp"
#include "pyattach/attach.hpp"
#include "subinterpreter_internal.hpp"

namespace pyattach {
namespace detail {

std::shared_ptr<interp_core> new_core(PyInterpreterState* interp, bool owned, bool own_gil) {
  core_registry& r = cores();
  std::lock_guard<std::mutex> lock(r.m);
  std::uint32_t index;
  if (!r.free_indexes.empty()) {
    index = r.free_indexes.back();
    r.free_indexes.pop_back();
  } else {
    index = static_cast<std::uint32_t>(r.by_index.size());
    r.by_index.emplace_back();
  }
  auto core = std::shared_ptr<interp_core>(new interp_core, [](interp_core* c) {
    core_registry& reg = cores();
    {
      std::lock_guard<std::mutex> l(reg.m);
      reg.free_indexes.push_back(c->index);
    }
    delete c;
  });
  core->interp = interp;
  core->id = PyInterpreterState_GetID(interp);
  core->owned = owned;
  core->own_gil = own_gil;
  core->index = index;
  r.by_index[index] = core;
  r.by_state[interp] = core;
  return core;
}

std::shared_ptr<interp_core> registered(PyInterpreterState* interp) {
  core_registry& r = cores();
  std::lock_guard<std::mutex> lock(r.m);
  auto it = r.by_state.find(interp);
  return it == r.by_state.end() ? nullptr : it->second.lock();
}

}  // namespace detail

// ---- the handle -----------------------------------------------------------------------------

subinterpreter subinterpreter::main() { return subinterpreter(nullptr); }

#if PY_VERSION_HEX >= 0x030C0000

subinterpreter subinterpreter::create(const interpreter_options& o) {
  using namespace detail;
#ifdef Py_DEBUG
  (void)o;
  throw interpreter_error("pyattach::subinterpreter::create: not on a debug build of CPython, "
                          "which asserts on how pyattach keeps PyGILState on the main "
                          "interpreter (docs/subinterpreters.md)");
#endif
  // Py_NewInterpreterFromConfig needs a current state: this thread's main one, through the gate.
  PyThreadState* const before = compat::current_state_unchecked();
  if (current_entry(before) != nullptr) {
    throw interpreter_error("pyattach::subinterpreter::create: called inside a sub-interpreter "
                            "scope");
  }
  attach_scope main_scope(nothrow);
  if (!main_scope) {
    throw interpreter_error(std::string("pyattach::subinterpreter::create: the main interpreter "
                                        "refused: ") + to_string(main_scope.status()));
  }
  const PyInterpreterConfig cfg = o.config();
  PyThreadState* const main_state = compat::current_state_unchecked();
  PyThreadState* ts = nullptr;
  // On success the new state is current with the new interpreter's GIL held, and with its own
  // GIL the main one is released (CPython docs, Py_NewInterpreterFromConfig, 3.12+).
  const PyStatus status = Py_NewInterpreterFromConfig(&ts, &cfg);
  if (PyStatus_Exception(status)) {
    // CPython restored the previous state (main_state) as current.
    throw interpreter_error(std::string("pyattach::subinterpreter::create: CPython refused: ") +
                            (status.err_msg != nullptr ? status.err_msg : "unknown error"));
  }
  std::shared_ptr<interp_core> core;
  try {
    core = new_core(ts->interp, true, o.own_gil);
  } catch (...) {
    Py_EndInterpreter(ts);
    PyEval_RestoreThread(main_state);
    throw;
  }
  // The creation state becomes the record's anchor (on 3.12 arm_close_hook imports `threading`
  // on it). CPython bound it as this thread's PyGILState state when it made it current; making
  // the main state current again binds that one again (tstate_activate), which unbinds the
  // anchor. This thread makes its cached state of the interpreter on its first scope there, like
  // any other.
  core->anchor = ts;
  const bool armed = arm_close_hook(core);
  PyEval_SaveThread();               // releases the new interpreter's GIL
  PyEval_RestoreThread(main_state);  // as attach_scope made it; its end detaches
  subinterpreter handle(core);
  if (!armed) {
    handle.end();
    throw interpreter_error("pyattach::subinterpreter::create: could not register its close hook");
  }
  return handle;
}

subinterpreter subinterpreter::adopt(PyInterpreterState* interp) {
  using namespace detail;
  if (interp == nullptr) throw interpreter_error("pyattach::subinterpreter::adopt: null");
  if (interp == PyInterpreterState_Main()) return main();
#ifdef Py_DEBUG
  throw interpreter_error("pyattach::subinterpreter::adopt: not on a debug build of CPython "
                          "(docs/subinterpreters.md)");
#endif
  if (auto known = registered(interp)) return subinterpreter(known);
  auto core = new_core(interp, false, false);
  subinterpreter handle(core);
  // The anchor (see interp_core) is made inside the scope below, once this thread has its
  // PyGILState state (so that CPython does not bind the anchor), and before arm_close_hook's
  // imports, which can leave the thread without one (see end_sub).
  bool armed = false;
  {
    attach_scope in(nothrow, handle);
    if (!in) {
      throw interpreter_error(std::string("pyattach::subinterpreter::adopt: cannot attach: ") +
                              to_string(in.status()));
    }
    core->anchor = PyThreadState_New(interp);  // this thread's PyGILState is bound: not bound
    armed = arm_close_hook(core);
  }
  if (!armed) throw interpreter_error("pyattach::subinterpreter::adopt: atexit.register failed");
  return handle;
}

// CPython's lookup of an interpreter by id, made under the runtime's lock of the interpreter
// list. libpython 3.12-3.15 exports it (nm -D: 3.12.1, 3.13.0, 3.14.10, 3.15.2) but declares it
// in its internal headers only; the public alternative, PyInterpreterState_Head/Next, walks that
// list without the lock while other threads may end interpreters. PRECONDITION: attached (it
// sets an exception when no interpreter has the id).
extern "C" PyInterpreterState* _PyInterpreterState_LookUpID(int64_t requested_id);

subinterpreter subinterpreter::adopt_id(std::int64_t id) {
  if (id == 0) return main();
  if (auto known = find(id)) return *known;
  PyInterpreterState* interp = nullptr;
  {
    attach_scope main_scope(nothrow);
    if (!main_scope) {
      throw interpreter_error(std::string("pyattach::subinterpreter::adopt_id: the main "
                                          "interpreter refused: ") + to_string(main_scope.status()));
    }
    const detail::error_scope keep_caller_error;
    interp = _PyInterpreterState_LookUpID(id);
    if (interp == nullptr) PyErr_Clear();
  }
  if (interp == nullptr) {
    throw interpreter_error("pyattach::subinterpreter::adopt_id: no interpreter has id " +
                            std::to_string(id));
  }
  return adopt(interp);
}

#else

subinterpreter subinterpreter::adopt_id(std::int64_t id) {
  if (id == 0) return main();
  throw interpreter_error("pyattach::subinterpreter::adopt_id needs CPython 3.12+");
}

subinterpreter subinterpreter::create(const interpreter_options&) {
  throw interpreter_error("pyattach::subinterpreter::create needs CPython 3.12+");
}

subinterpreter subinterpreter::adopt(PyInterpreterState* interp) {
  if (interp != nullptr && interp == PyInterpreterState_Main()) return main();
  throw interpreter_error("pyattach::subinterpreter::adopt needs CPython 3.12+");
}

#endif

std::optional<subinterpreter> subinterpreter::find(std::int64_t id) {
  detail::core_registry& r = detail::cores();
  std::lock_guard<std::mutex> lock(r.m);
  for (auto& [interp, weak] : r.by_state) {
    if (auto c = weak.lock(); c && c->id == id) return subinterpreter(c);
  }
  return std::nullopt;
}

bool subinterpreter::is_main() const noexcept { return core_ == nullptr; }

std::int64_t subinterpreter::id() const noexcept { return core_ ? core_->id : 0; }

PyInterpreterState* subinterpreter::state() const noexcept {
  if (!core_) return PyInterpreterState_Main();
  std::lock_guard<std::mutex> lock(core_->m);
  return core_->interp;
}

bool subinterpreter::own_gil() const noexcept { return core_ ? core_->own_gil : true; }

bool subinterpreter::ended() const noexcept { return core_ != nullptr && state() == nullptr; }

subinterpreter_stats subinterpreter::stats() const {
  subinterpreter_stats s;
  if (!core_) return s;
  s.states_made = core_->states_made.load(std::memory_order_relaxed);
  s.states_destroyed = core_->states_destroyed.load(std::memory_order_relaxed);
  s.refused = core_->refused.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(core_->m);
  s.attaches = core_->attaches.load(std::memory_order_relaxed);
  for (const auto* e : core_->entries) {
    s.threads += e->ts != nullptr ? 1 : 0;
    s.attaches += e->attaches.load(std::memory_order_relaxed);
  }
  return s;
}

bool subinterpreter::end(std::chrono::milliseconds bound) {
  return core_ != nullptr && detail::end_core(core_, bound);
}

std::size_t cached_subinterpreter_states() noexcept {
  std::size_t n = 0;
  const detail::sub_table* t = detail::this_table();
  if (t == nullptr) return 0;
  for (const detail::sub_entry* e : t->by_index) n += e != nullptr && e->ts ? 1 : 0;
  return n;
}

// attach_scope on a handle (attach.hpp).
inline void attach_scope::attach_on(const subinterpreter& in, const source_site& site) noexcept {
  if (PYATTACH_LIKELY(in.record() != nullptr)) {
    if (PYATTACH_LIKELY(detail::scope_access::attach_sub_fast(*this, in.record().get(), site))) {
      return;
    }
    detail::scope_access::attach_sub_slow(*this, in.record(), site);
  } else {
    detail::scope_access::attach_main_from_handle(*this, site);
  }
}

attach_scope::attach_scope(const subinterpreter& in, source_site site) : site_(site) {
  attach_on(in, site_);
  if (kind_ == kind_none) throw attach_error(status_);
}

attach_scope::attach_scope(nothrow_t, const subinterpreter& in, source_site site) noexcept
    : site_(site) {
  attach_on(in, site_);
}


}  // namespace pyattach
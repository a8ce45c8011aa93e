// tests/compat/probe.cpp — compiled (-fsyntax-only, -Werror) by the `compat` tests against the
// shims in tests/compat/py314 and tests/compat/py315, and against the configured CPython itself.
//
// It checks that the shim selected the branch it claims to (PY_VERSION_HEX, PEP 788 or not),
// that the pre-3.15 PEP 788 types are empty and constant, and it spells out the gate's intended
// use of compat.hpp (the bind and entry sequences) so that those compile on every version.
// Never linked, never run.
#include <pyattach/pyattach.hpp>

#include <atomic>
#include <cstdint>
#include <type_traits>

#ifndef PYATTACH_EXPECT_VERSION_HEX
#error "define PYATTACH_EXPECT_VERSION_HEX (see tests/compat/CMakeLists.txt)"
#endif
#ifndef PYATTACH_EXPECT_PEP788
#error "define PYATTACH_EXPECT_PEP788 (see tests/compat/CMakeLists.txt)"
#endif

namespace compat = pyattach::detail::compat;

static_assert(PY_VERSION_HEX == PYATTACH_EXPECT_VERSION_HEX, "the shim did not take effect");
static_assert(compat::has_interpreter_guards == (PYATTACH_EXPECT_PEP788 != 0),
              "compat.hpp chose the wrong PEP 788 branch for this version");
static_assert(compat::finalizing_attach_behaviour[0] != '\0', "");

#if !PYATTACH_PEP788
// Before 3.15 the PEP 788 layer must cost nothing: empty types, constant answers.
static_assert(std::is_empty<compat::interpreter_view>::value, "");
static_assert(std::is_empty<compat::view_cell>::value, "");
static_assert(std::is_empty<compat::entry_guard>::value, "");
static_assert(static_cast<bool>(compat::entry_guard(compat::interpreter_view{})), "");
static_assert(compat::interpreter_view{}.valid(), "");
#else
static_assert(std::is_trivially_copyable<compat::interpreter_view>::value, "");
static_assert(sizeof(compat::interpreter_view) == sizeof(void*), "");
#endif
static_assert(!std::is_copy_constructible<compat::entry_guard>::value, "");
static_assert(!std::is_move_constructible<compat::entry_guard>::value, "");

namespace {

// The shape of pyattach's gate (include/pyattach/detail/slot.hpp), with the view added.
struct probe_gate {
  std::atomic<std::uint64_t> word{0};
  std::atomic<std::int64_t> inside{0};
  compat::view_cell view;
};
probe_gate g_probe;  // constant-initialized, like detail::g_gate

// Bind: publish this generation's view, then the word.
[[maybe_unused]] bool probe_bind(std::uint64_t bound) noexcept {
  const compat::interpreter_view view = compat::open_main_view();
  if (!view.valid()) return false;
  compat::interpreter_view previous = g_probe.view.exchange(view);
  (void)previous;  // leaked on purpose (a late thread may still read it); close_view is for tests
  g_probe.word.store(bound, std::memory_order_seq_cst);
  return true;
}

// Entry: view after the word, pass, confirm, guard, attach, close the guard.
[[maybe_unused]] bool probe_enter(PyThreadState* ts, std::uint64_t w) noexcept {
  const compat::interpreter_view view = g_probe.view.load();
  g_probe.inside.fetch_add(1, std::memory_order_seq_cst);
  if (g_probe.word.load(std::memory_order_seq_cst) != w) {
    g_probe.inside.fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }
  compat::entry_guard guard(view);
  if (!guard) {
    g_probe.inside.fetch_sub(1, std::memory_order_seq_cst);
    return false;  // refused: finalizing
  }
  if (ts != nullptr) {
    PyEval_RestoreThread(ts);
  } else {
    PyGILState_Ensure();
  }
  guard.close();
  return true;
}

[[maybe_unused]] void probe_retire() noexcept {
  compat::interpreter_view view = g_probe.view.exchange(compat::interpreter_view{});
  compat::close_view(view);
}

[[maybe_unused]] bool probe_state() noexcept {
  return compat::current_state_unchecked() != nullptr || compat::runtime_is_finalizing() ||
         compat::threading_keeps_stale_dummy_threads || compat::current_state_is_per_thread;
}

}  // namespace

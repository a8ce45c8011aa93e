// src/diagnostics.cpp — misuse reports and the replaceable handler.
#include "pyattach/diagnostics.hpp"

#include <cxxabi.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "internal.hpp"

namespace pyattach {

namespace {
std::atomic<misuse_handler> g_handler{nullptr};  // nullptr: default_misuse_handler
std::atomic<std::uint64_t> g_count{0};
// -1: not decided yet (read PYATTACH_ON_MISUSE at first use); else a misuse_action.
std::atomic<int> g_action{-1};

}  // namespace

std::string detail::site_text(const source_site& site) {
  return std::string(site.file) + ":" + std::to_string(site.line) + " in " + site.function;
}

const char* to_string(misuse_kind kind) noexcept {
  switch (kind) {
    case misuse_kind::double_release: return "double_release";
    case misuse_kind::wrong_thread: return "wrong_thread";
    case misuse_kind::out_of_order: return "out_of_order";
    case misuse_kind::detach_without_attach: return "detach_without_attach";
    case misuse_kind::release_while_attached: return "release_while_attached";
    case misuse_kind::other_interpreter: return "other_interpreter";
    case misuse_kind::scope_outlived_interpreter: return "scope_outlived_interpreter";
    case misuse_kind::scope_outlived_thread: return "scope_outlived_thread";
    case misuse_kind::python_without_state: return "python_without_state";
    case misuse_kind::pool_call_from_worker: return "pool_call_from_worker";
  }
  return "unknown";
}

misuse_handler set_misuse_handler(misuse_handler handler) noexcept {
  return g_handler.exchange(handler);
}

void set_misuse_action(misuse_action action) noexcept {
  g_action.store(static_cast<int>(action), std::memory_order_relaxed);
}

misuse_action current_misuse_action() noexcept {
  int a = g_action.load(std::memory_order_relaxed);
  if (a < 0) {
    const char* v = std::getenv("PYATTACH_ON_MISUSE");
    const int from_env = static_cast<int>(v != nullptr && std::strcmp(v, "abort") == 0
                                              ? misuse_action::abort
                                              : misuse_action::report);
    g_action.compare_exchange_strong(a, from_env, std::memory_order_relaxed);  // a call wins
    a = g_action.load(std::memory_order_relaxed);
  }
  return static_cast<misuse_action>(a);
}

void default_misuse_handler(const misuse_report& report) noexcept {
  std::fprintf(stderr, "%s\n", report.message.c_str());
  std::fflush(stderr);
  if (current_misuse_action() == misuse_action::abort) std::abort();
}

std::uint64_t misuse_count() noexcept { return g_count.load(std::memory_order_relaxed); }

namespace detail {

std::string describe_code_address(void* address) {
  if (address == nullptr) return "an unknown place";
  Dl_info info{};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%p", address);
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return std::string("code at ") + buf;
  std::string where = "code at ";
  const auto offset = static_cast<unsigned long>(static_cast<char*>(address) -
                                                 static_cast<char*>(info.dli_fbase));
  if (info.dli_sname != nullptr) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> demangled(
        abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status), std::free);
    where = "code in ";
    where += status == 0 ? demangled.get() : info.dli_sname;
    where += " ";
  }
  std::snprintf(buf, sizeof buf, "0x%lx", offset);
  // The offset is what `addr2line -f -C -e <file> <offset>` turns into a source line.
  return where + "(" + info.dli_fname + "+" + buf + ")";
}

void report_misuse(const misuse_details& d) noexcept {
  try {
    misuse_report r;
    r.kind = d.kind;
    r.made_at = d.made_at;
    r.misused_at = d.misused_site ? site_text(*d.misused_site) : describe_code_address(d.misused_code);
    r.other = d.other;
    r.made_on_thread = d.made_on_thread;
    r.misused_on_thread = this_os_tid();
    const std::string made = site_text(d.made_at);
    std::string text;
    switch (d.kind) {
      case misuse_kind::double_release:
        text = std::string(d.what) + " made at " + made + " was released again at " +
               r.misused_at + "; the second release was ignored";
        break;
      case misuse_kind::wrong_thread:
        text = std::string(d.what) + " made at " + made + " on thread " +
               std::to_string(r.made_on_thread) + " was ended at " + r.misused_at +
               " on thread " + std::to_string(r.misused_on_thread) +
               "; skipped (only the thread that attached may detach)";
        break;
      case misuse_kind::out_of_order:
        text = std::string(d.what) + " made at " + made + " was ended at " + r.misused_at +
               " while " + r.other + " still open; its end is deferred until they end";
        break;
      case misuse_kind::detach_without_attach:
        text = std::string(d.what) + " made at " + made +
               " on a thread that is not attached; nothing was detached";
        break;
      case misuse_kind::release_while_attached:
        text = std::string(d.what) + " called at " + r.misused_at + " while " + r.other +
               " open on this thread (the outermost made at " + made +
               "); the thread state was kept";
        break;
      case misuse_kind::other_interpreter:
        text = std::string(d.what) + " made at " + made + " was refused: " + r.other +
               " (attached at " + r.misused_at + ")";
        break;
      case misuse_kind::scope_outlived_interpreter:
        text = std::string(d.what) + " made at " + made + " ended at " + r.misused_at +
               " after " + r.other + "; CPython was not called for it";
        break;
      case misuse_kind::python_without_state:
        text = std::string("Python is about to be called at ") + r.misused_at +
               " on a thread with no attached thread state (" + r.other + "; its last pyattach "
               "scope was made at " + made + "); open a pyattach::attach_scope first";
        break;
      case misuse_kind::scope_outlived_thread:
        // made_at: the outermost open scope; other: how many, and what pyattach did instead.
        text = "thread " + std::to_string(r.made_on_thread) + " exited while " + r.other +
               " (the outermost made at " + made + ")";
        break;
      case misuse_kind::pool_call_from_worker:
        // made_at: where the pool was made; other: which call, on which of its workers.
        text = r.other + ", called at " + r.misused_at + " (pool made at " + made +
               "), would wait for itself; refused with pool_error(called_from_worker)";
        break;
    }
    r.message = std::string("pyattach: misuse: ") + to_string(d.kind) + ": " + text;
    g_count.fetch_add(1, std::memory_order_relaxed);
    trace_instant(std::string("misuse: ") + to_string(d.kind), r.message);
    misuse_handler h = g_handler.load();
    (h != nullptr ? h : default_misuse_handler)(r);
  } catch (...) {
    // Out of memory while describing misuse: say the least, never throw out of a destructor.
    std::fputs("pyattach: misuse (details unavailable)\n", stderr);
  }
}

}  // namespace detail
}  // namespace pyattach

// src/clock.cpp — observation's clock (pyattach/observe.hpp): the TSC where the kernel trusts
// it, else CLOCK_MONOTONIC, and the calibration that turns ticks into nanoseconds.
#include <ctime>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "observe_internal.hpp"

namespace pyattach::detail {

// The TSC where the kernel itself uses it as its clocksource: Linux switches away from the TSC
// when it finds it unstable or unsynchronized across CPUs, so "tsc" there means invariant and
// synchronized, hence monotonic per thread and comparable across threads (the trace needs both).
// lfence first: rdtsc is not ordered after the instructions before it (Intel SDM, RDTSC), and a
// timestamp taken right after PyEval_RestoreThread must not be read before the GIL was taken.
// Cost, measured with callgrind (Debian 3.11, the metrics row of bench/attach_alternatives.cpp,
// three reads per pair): 612 instructions per pair with the TSC, 669 with PYATTACH_CLOCK set,
// so clock_gettime through the vDSO costs about 19 instructions more per read than the ~7 of
// lfence+rdtsc with its branch. The fallback is CLOCK_MONOTONIC in nanoseconds.
namespace {
std::once_flag g_clock_once;

bool kernel_uses_tsc() {
#if defined(__x86_64__) || defined(__i386__)
  std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string name;
  // PYATTACH_CLOCK=monotonic forces the fallback (tests, and machines where it is wanted).
  return f && (f >> name) && name == "tsc" && std::getenv("PYATTACH_CLOCK") == nullptr;
#else
  return false;
#endif
}
}  // namespace

std::atomic<bool> g_obs_tsc{false};
std::uint64_t g_tick0 = 0;  // ticks and CLOCK_MONOTONIC ns read together at clock_init
std::uint64_t g_ns0 = 0;

std::uint64_t obs_monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

namespace {
inline std::uint64_t monotonic_ns() noexcept { return obs_monotonic_ns(); }

// Reads a tick and a CLOCK_MONOTONIC time as close together as it can (the pair with the
// shortest bracket of three tries).
void tick_pair(std::uint64_t& tick, std::uint64_t& ns) noexcept {
  std::uint64_t best = ~std::uint64_t{0};
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t a = monotonic_ns();
    const std::uint64_t t = ticks();
    const std::uint64_t b = monotonic_ns();
    if (b - a < best) {
      best = b - a;
      tick = t;
      ns = a + (b - a) / 2;
    }
  }
}
}  // namespace

void clock_init() {
  std::call_once(g_clock_once, [] {
    g_obs_tsc.store(kernel_uses_tsc(), std::memory_order_relaxed);
    tick_pair(g_tick0, g_ns0);
  });
}

// Nanoseconds per tick, from the interval since clock_init (at least 5 ms: waits for the rest
// the first time, so that a snapshot right after enabling is still within 0.01%).
double ns_per_tick() noexcept {
  if (!g_obs_tsc.load(std::memory_order_relaxed)) return 1.0;
  std::uint64_t t = 0, n = 0;
  tick_pair(t, n);
  if (n - g_ns0 < 5000000) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(5000000 - (n - g_ns0)));
    tick_pair(t, n);
  }
  return static_cast<double>(n - g_ns0) / static_cast<double>(t - g_tick0);
}

}  // namespace pyattach::detail

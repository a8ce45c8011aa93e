// demo_main.cpp — pyattach-demo: runs each seed scenario, and scenario 8 (Python in parallel on
// sub-interpreters), in up to three variants (raw C API; pyattach scopes on Boost.Asio pools;
// pyattach::thread_pool, for scenarios 2–6 and 8), each in a
// child process with a timeout, judges what the child observed, and prints a table or JSON.
//
//   pyattach-demo [--json] [--scenario N] [--trace DIR]   the driver
//   pyattach-demo --child N raw|pyattach|pool             one run (what the driver spawns)
//
// --trace DIR: each child writes a pyattach timeline trace, DIR/scenario<N>-<variant>.json (the
// pyattach and pool children through PYATTACH_TRACE; the raw ones mark their C API calls by
// hand, scenarios_raw.cpp); the driver checks each with tools/trace_check.py and draws one PNG
// per scenario with tools/timeline.py, DIR/scenario<N>.png: raw above pyattach above pool.
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "demo.hpp"

namespace demo {
namespace {

constexpr int kChildTimeoutMs = 8000;
constexpr int kWatchdogMs = 6000;
constexpr int kToolTimeoutMs = 60000;  // a trace check, or drawing one scenario's timeline

struct observations {
  std::vector<std::pair<std::string, std::string>> items;
  // The last value observed for key, or "".
  std::string get(const std::string& key) const {
    for (auto it = items.rbegin(); it != items.rend(); ++it) {
      if (it->first == key) return it->second;
    }
    return "";
  }
  bool has(const std::string& key) const {
    for (const auto& kv : items) {
      if (kv.first == key) return true;
    }
    return false;
  }
  // A measured duration, or nullopt when it was "blocked ..." or missing.
  std::optional<double> ms(const std::string& key) const {
    const std::string v = get(key);
    if (v.empty() || !(isdigit(static_cast<unsigned char>(v[0])))) return std::nullopt;
    return std::strtod(v.c_str(), nullptr);
  }
};

struct row {
  int scenario = 0;
  std::string variant;
  std::string expected;
  std::string observed;
  std::string verdict;
  bool correct = false;  // pyattach and pool rows: the verdict is "correct"
  child_result child;
  observations obs;
  // --trace only:
  std::string trace;        // the file the child was asked to write
  std::string trace_check;  // "ok", or why not (missing, or tools/trace_check.py's problems)
  std::string timeline;     // the scenario's PNG, if it was drawn
};

// ---- reading the child's fate -----------------------------------------------------------------

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string fate(const child_result& c, const observations& o) {
  if (c.spawn_failed) return "spawn failed";
  if (c.timed_out) return "TIMEOUT";
  if (c.signal != 0) return signal_name(c.signal);
  if (c.exit_code == 124 && o.has("watchdog")) {
    return "watchdog " + o.get("watchdog") + " (exit 124)";
  }
  return "exit " + std::to_string(c.exit_code);
}

bool exited_ok(const child_result& c) {
  return !c.spawn_failed && !c.timed_out && c.signal == 0 && c.exit_code == 0;
}

bool crashed(const child_result& c) { return !c.timed_out && c.signal != 0; }

// The first "Fatal Python error: ..." line of the child's stderr, shortened.
std::string fatal_error(const child_result& c) {
  const size_t at = c.err.find("Fatal Python error:");
  if (at == std::string::npos) return "";
  std::string line = c.err.substr(at + 20, c.err.find('\n', at) - at - 20);
  if (line.size() > 60) line = line.substr(0, 57) + "...";
  return line;
}

// ---- judging ----------------------------------------------------------------------------------

// Prompt: the other thread ran Python within a third of the idle window it was measured in.
bool prompt(std::optional<double> wait, std::optional<double> window) {
  return wait && window && *wait <= *window / 3;
}

// Stalled: it waited (nearly) the whole window, or never got in.
bool stalled(std::optional<double> wait, std::optional<double> window) {
  return !wait || (window && *wait >= 0.8 * *window);
}

std::string ms_text(const observations& o, const std::string& key) {
  const std::string v = o.get(key);
  if (v.empty()) return "?";
  return o.ms(key) ? v + " ms" : v;
}

std::string name_text(const std::string& v) {
  if (v.rfind("AttributeError", 0) == 0) return "AttributeError";
  return v.empty() ? "?" : v;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// What python/cpython#130394's own script (a new threading.local() in each init) read back.
std::string issue_text(const observations& o) {
  if (!o.has("issue_local_in_release_default_pool")) return "";
  return "; #130394's script (local re-created per init): " +
         name_text(o.get("issue_local_in_release_default_pool")) + ", " +
         name_text(o.get("issue_local_in_release_custom_pool"));
}

void judge_raw(row& r) {
  const observations& o = r.obs;
  const child_result& c = r.child;
  bool shown = false;
  std::string t;
  switch (r.scenario) {
    case 1: {
      const bool held = stalled(o.ms("other_thread_wait_ms"), o.ms("sleep_ms"));
      shown = held || crashed(c);
      t = "C++ thread listed: " + o.get("cpp_thread_listed") + "; another thread waited " +
          ms_text(o, "other_thread_wait_ms") + " of a " + ms_text(o, "sleep_ms") +
          " sleep; Py_FinalizeEx: " + (crashed(c) ? fate(c, o) : o.get("finalize"));
      break;
    }
    case 2: {
      shown = stalled(o.ms("other_thread_wait_ms"), o.ms("idle_window_ms"));
      t = "other thread waited " + ms_text(o, "other_thread_wait_ms") + " of " +
          ms_text(o, "idle_window_ms") + " idle; states between: " +
          o.get("states_between_tasks") + "; worker listed after Release: " +
          o.get("worker_listed_after_release");
      break;
    }
    case 3:
    case 5: {
      const bool stall = stalled(o.ms("custom_init_wait_ms"), o.ms("idle_window_ms"));
      const std::string after = o.get("name_after_release_default_pool");
      shown = stall || starts_with(after, "AttributeError");
      t = "custom_pool waited " + ms_text(o, "custom_init_wait_ms") + " of " +
          ms_text(o, "idle_window_ms") + "; name after Release: " + name_text(after);
      break;
    }
    case 4: {
      const std::string d = o.get("name_in_release_default_pool");
      const std::string u = o.get("name_in_release_custom_pool");
      shown = (!d.empty() && d != "default_pool") || (!u.empty() && u != "custom_pool");
      t = "custom_pool waited " + ms_text(o, "custom_init_wait_ms") +
          "; names at RestoreThread: " + name_text(d) + ", " + name_text(u) + issue_text(o);
      break;
    }
    case 6: {
      const bool same_ok = o.get("releaser_same_thread") == "returned";
      const bool wrong_bad = crashed(c) || o.get("releaser_wrong_thread") != "returned";
      shown = same_ok && wrong_bad;
      const std::string fatal = fatal_error(c);
      t = std::string("same thread: ") + (same_ok ? "ok" : "failed") + "; other thread: " +
          (crashed(c) ? fate(c, o) : o.get("releaser_wrong_thread")) +
          (fatal.empty() ? "" : " (" + fatal + ")");
      break;
    }
    case 7: {
      shown = o.get("second_release") == "calling" && crashed(c);
      const std::string fatal = fatal_error(c);
      t = "second Release: " + (crashed(c) ? fate(c, o) : o.get("second_release")) +
          (fatal.empty() ? "" : " (" + fatal + ")");
      break;
    }
    case 8:
      shown = o.get("met") == "no";
      t = "both held a GIL at once: " + o.get("met") + "; both runs took " +
          ms_text(o, "together_ms") + ", one alone " + ms_text(o, "solo_ms") + " (" +
          o.get("speedup") + "x)";
      break;
  }
  if (!crashed(c)) t += "; " + fate(c, o);
  r.observed = t;
  r.verdict = shown ? "pitfall shown" : "pitfall not reproduced";
}

// What the pyattach and the pool variants must both show in scenarios 2–6 (judge_pool adds the
// pool's own checks). Returns whether it was shown; `t` receives what was observed.
bool attach_criteria(const row& r, std::string& t) {
  const observations& o = r.obs;
  switch (r.scenario) {
    case 2:
      t = "other thread waited " + ms_text(o, "other_thread_wait_ms") + " of " +
          ms_text(o, "idle_window_ms") + " idle; worker listed between: " +
          o.get("worker_listed_between_tasks") + " (" + o.get("states_before") + "->" +
          o.get("states_between_tasks") + " states); name: " +
          name_text(o.get("name_in_release_task"));
      return prompt(o.ms("other_thread_wait_ms"), o.ms("idle_window_ms")) &&
             o.get("worker_listed_between_tasks") == "yes" &&
             o.get("name_in_release_task") == "default_pool";
    case 3:
    case 4:
    case 5:
      t = "custom_pool waited " + ms_text(o, "custom_init_wait_ms") + " of " +
          ms_text(o, "idle_window_ms") + "; worker listed: " +
          o.get("worker_listed_while_idle") + "; names later: " +
          name_text(o.get("name_in_release_default_pool")) + ", " +
          name_text(o.get("name_in_release_custom_pool")) + ", " +
          name_text(o.get("name_after_release_default_pool")) + issue_text(o);
      return prompt(o.ms("custom_init_wait_ms"), o.ms("idle_window_ms")) &&
             o.get("worker_listed_while_idle") == "yes" &&
             o.get("name_in_release_default_pool") == "default_pool" &&
             o.get("name_in_release_custom_pool") == "custom_pool" &&
             o.get("name_after_release_default_pool") == "default_pool";
    case 6:
      t = "name in later task: " + name_text(o.get("name_in_later_task")) +
          "; custom_pool waited " + ms_text(o, "other_pool_wait_ms");
      return o.get("name_in_later_task") == "default_pool" &&
             prompt(o.ms("other_pool_wait_ms"), kWindowMs) && o.get("finalize") == "ok";
    case 8:
      // The speedup is shown, not judged: on a shared machine the other core may be busy. That
      // both threads held a GIL at the same moment is what one shared GIL cannot give.
      if (o.has("unavailable")) {
        t = "skipped: " + o.get("unavailable");
        return true;
      }
      t = "both held their interpreter's GIL at once: " + o.get("met") + "; both runs took " +
          ms_text(o, "together_ms") + ", one alone " + ms_text(o, "solo_ms") + " (" +
          o.get("speedup") + "x); states made: " + o.get("states_made") + " (one per thread)";
      return o.get("met") == "yes" && o.get("states_made") == "2" && o.get("ended") == "yes";
  }
  return false;
}

// A pyattach or pool row is correct if what it showed holds and the child exited 0.
void settle(row& r, bool ok, const std::string& t) {
  ok = ok && exited_ok(r.child);
  r.observed = t + "; " + fate(r.child, r.obs);
  r.correct = ok;
  r.verdict = ok ? "correct" : "NOT CORRECT";
}

void judge_pyattach(row& r) {
  const observations& o = r.obs;
  bool ok = false;
  std::string t;
  switch (r.scenario) {
    case 1:
      ok = o.get("cpp_thread_listed") == "no" && o.get("py_thread_listed") == "yes" &&
           prompt(o.ms("other_thread_wait_ms"), o.ms("sleep_ms")) && o.get("finalize") == "ok";
      t = "C++ thread listed: " + o.get("cpp_thread_listed") + "; another thread waited " +
          ms_text(o, "other_thread_wait_ms") + " of a " + ms_text(o, "sleep_ms") +
          " sleep; shutdown: " +
          (o.get("finalize") == "ok" ? "ok" : "?");
      break;
    case 2:
    case 3:
    case 4:
    case 5:
    case 8:
      ok = attach_criteria(r, t);
      break;
    case 6:
      ok = attach_criteria(r, t) && o.get("misuse") == "wrong_thread" &&
           prompt(o.ms("python_after_misuse_wait_ms"), kWindowMs);
      t += "; misuse: " + (o.has("misuse") ? o.get("misuse") : "none") +
           "; owner still attached after its next task: " +
           o.get("owner_attached_after_next_task") + "; another thread's wait for Python: " +
           ms_text(o, "python_after_misuse_wait_ms");
      break;
    case 7: {
      const std::string msg = o.get("misuse_message");
      const size_t first = msg.find("scenarios_pyattach.cpp:");
      const bool two_sites =
          first != std::string::npos && msg.find("scenarios_pyattach.cpp:", first + 1) !=
                                            std::string::npos;
      ok = o.get("misuse") == "double_release" && two_sites &&
           o.get("second_release") == "returned" &&
           o.get("name_in_later_task") == "default_pool" && o.get("finalize") == "ok";
      t = "misuse: " + (o.has("misuse") ? o.get("misuse") : "none") +
          (two_sites ? " (names both sites)" : "") + "; state kept: " +
          name_text(o.get("name_in_later_task"));
      break;
    }
  }
  settle(r, ok, t);
}

// The pool variant (scenarios 2–6): what the pyattach variant shows, plus the pool's own
// promises: workers named "<pool>-<index>" in Python (what py-spy and threading.enumerate()
// show) and in the thread report, idle workers detached, their states gone after shutdown(), C++
// tasks never attached, hooks that replace the seed's releaser (once each, on the worker, in
// order, attached as asked), and no misuse reported.
void judge_pool(row& r) {
  const observations& o = r.obs;
  std::string t;
  bool ok = attach_criteria(r, t) && o.get("misuse_count") == "0";
  switch (r.scenario) {
    case 2:
      ok = ok && o.get("worker_state_between_tasks") == "detached" &&
           o.get("worker_name_between_tasks") == "default_pool-0" &&
           o.get("thread_name_in_release_task") == "default_pool-0";
      t += "; idle worker " + o.get("worker_state_between_tasks") + ", Python name " +
           name_text(o.get("worker_name_between_tasks")) + " (later task: " +
           name_text(o.get("thread_name_in_release_task")) + ")";
      break;
    case 3:
    case 4:
    case 5:
      ok = ok && o.get("worker_state_while_idle") == "detached" &&
           o.get("worker_name_while_idle") == "default_pool-0" &&
           o.get("worker_pool_while_idle") == "default_pool" &&
           o.get("thread_name_custom_pool") == "custom_pool-0" &&
           !o.get("states_before").empty() &&
           o.get("states_after_shutdown") == o.get("states_before");
      t += "; Python names: " + name_text(o.get("worker_name_while_idle")) + ", " +
           name_text(o.get("thread_name_custom_pool")) + "; states after shutdown: " +
           o.get("states_after_shutdown") + " (before: " + o.get("states_before") + ")";
      if (r.scenario == 5) {
        ok = ok && o.get("attached_in_cpp_task") == "no" &&
             o.get("custom_ran_while_blocked") == "yes";
        t += "; C++ task attached: " + o.get("attached_in_cpp_task") +
             "; custom_pool ran while it blocked: " + o.get("custom_ran_while_blocked");
      }
      break;
    case 6:
      ok = ok && o.get("hook_order") == "start,task,stop" && o.get("hooks_on_worker") == "yes" &&
           o.get("start_hook_attach") == "attached" && o.get("stop_hook_attach") == "attached" &&
           o.get("thread_name_in_start_hook") == "default_pool-0" &&
           o.get("name_in_stop_hook") == "default_pool";
      t += "; on the worker, in order: " + o.get("hook_order") + " (" +
           (o.get("hooks_on_worker") == "yes" ? "one thread" : "NOT one worker thread") +
           "); stop hook read: " + name_text(o.get("name_in_stop_hook"));
      break;
    case 8:
      if (!o.has("unavailable")) {
        ok = ok && o.get("thread_names") == "pool_a-0,pool_b-0";
        t += "; Python names: " + o.get("thread_names");
      }
      break;
    default:
      ok = false;
  }
  settle(r, ok, t);
}

const char* expected_text(int n, const std::string& variant) {
  static const char* const texts[9][3] = {
      // pyattach, raw, pool
      {"", "", ""},
      {"C++ thread unlisted; others run Python at once during the sleep; shutdown exits 0",
       "C++ thread unlisted; others wait out the Python thread's sleep (GIL held); "
       "Py_FinalizeEx without RestoreThread crashes (3.9-3.12)",
       ""},
      {"worker keeps its state, not the GIL: another thread runs Python at once",
       "worker keeps its state AND the GIL: another thread waits the whole idle window",
       "as pyattach, with no scope in sight; the idle worker is detached and named "
       "default_pool-0 in Python"},
      {"pools never block each other; threading.local survives across tasks",
       "custom_pool waits for default_pool's release; threading.local gone after Release",
       "as pyattach; workers named default_pool-0 and custom_pool-0 in Python"},
      {"same as 3 (#130394's script still loses its local: it re-creates it; Python, not C API)",
       "no stall; threading.local may vanish before release (CPython #130394)",
       "same as 3 (#130394's script still loses its local, as with pyattach)"},
      {"custom_pool runs Python at once while default_pool blocks in a detach_scope",
       "custom_pool stalls while default_pool is blocked in C++ holding the GIL",
       "custom_pool runs Python at once while default_pool blocks in a C++-only submit() "
       "task: the pool never attaches it, so there is no GIL to forget to release"},
      {"state persists with no releaser; wrong-thread end reported as wrong_thread, no crash",
       "releaser works on the same thread; from another thread: fatal error",
       "releaser replaced by start/stop hooks: once each, on the worker, in order; the stop "
       "hook reads the start hook's threading.local"},
      {"double_release reported with both source lines; exit 0",
       "second PyGILState_Release crashes (SIGSEGV) or aborts",
       ""},
      {"an interpreter per pool thread, each with its own GIL: both run Python at once "
       "(CPython 3.12+)",
       "one GIL (PyGILState: the main interpreter only): the threads take turns, never both at "
       "once",
       "as pyattach, with pool_options::interpreter; workers named pool_a-0 and pool_b-0 there"},
  };
  const int column = variant == "pyattach" ? 0 : variant == "raw" ? 1 : 2;
  return texts[n][column];
}

// What each scenario's program does (scenarios_raw.cpp has them as raw C API code), shortened:
// the timelines' titles.
const char* scenario_title(int n) {
  static const char* const titles[9] = {
      "",
      "a thread runs Python in a loop and sleeps between prints; then shutdown",
      "a pool's init task attaches, a later task releases; idle in between",
      "two pools, each attaching in an init task and releasing in a later one",
      "as 3, handing over with PyEval_SaveThread / PyEval_RestoreThread",
      "as 3, with default_pool blocked in C++ after its init",
      "an init task returns a releaser that a later task calls",
      "the same attach released twice",
      "two pools run a CPU-bound Python task each (not a seed scenario: PEP 684)",
  };
  return titles[n];
}

// Scenarios the pool variant has (the others are not about pools).
bool has_pool_variant(int n) { return (n >= 2 && n <= 6) || n == 8; }

// trace_dir: --trace's directory, or "" without it.
row run_row(int n, const std::string& variant, const std::string& trace_dir) {
  row r;
  r.scenario = n;
  r.variant = variant;
  r.expected = expected_text(n, variant);
  std::vector<std::string> env;
  if (!trace_dir.empty()) {
    r.trace = trace_dir + "/scenario" + std::to_string(n) + "-" + variant + ".json";
    std::remove(r.trace.c_str());  // an earlier run's file would pass for this child's
    env.push_back("PYATTACH_TRACE=" + r.trace);
  }
  r.child = run_child({"--child", std::to_string(n), r.variant}, kChildTimeoutMs, env);
  r.obs.items = parse_observations(r.child.out);
  if (variant == "raw") {
    judge_raw(r);
  } else if (variant == "pyattach") {
    judge_pyattach(r);
  } else {
    judge_pool(r);
  }
  return r;
}

// ---- --trace: checking the traces, drawing the timelines ---------------------------------------

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

std::string tail(const std::string& s, size_t n) { return s.size() > n ? s.substr(s.size() - n) : s; }

// The Python that runs the tools: the one this binary embeds (CMake's Python_EXECUTABLE), or
// Debian's if that one is gone. trace_check.py needs only the standard library.
std::string tools_python() {
  return ::access(PYATTACH_DEMO_PYTHON, X_OK) == 0 ? PYATTACH_DEMO_PYTHON : "/usr/bin/python3";
}

// The first of the embedded Python and Debian's that imports matplotlib (timeline.py draws with
// it), or "" (and `why` says which were tried).
std::string python_with_matplotlib(std::string& why) {
  std::vector<std::string> tried;
  for (const char* python : {PYATTACH_DEMO_PYTHON, "/usr/bin/python3"}) {
    if (std::find(tried.begin(), tried.end(), python) != tried.end()) continue;
    tried.push_back(python);
    if (::access(python, X_OK) != 0) continue;
    if (exited_ok(run_program({python, "-c", "import matplotlib"}, kToolTimeoutMs))) return python;
  }
  why = "no matplotlib in ";
  for (size_t i = 0; i < tried.size(); ++i) why += (i ? " or " : "") + tried[i];
  return "";
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Checks the row's trace with tools/trace_check.py (the GIL overlap check included, raw too).
void check_trace(row& r, const std::string& python) {
  if (!exists(r.trace)) {
    r.trace_check = "missing (the child: " + fate(r.child, r.obs) + ")";
    return;
  }
  const child_result c =
      run_program({python, PYATTACH_TOOLS_DIR "/trace_check.py", r.trace}, kToolTimeoutMs);
  if (exited_ok(c)) {
    r.trace_check = "ok";
  } else if (c.exit_code == 1 && c.err.find(": not valid\n") != std::string::npos) {
    // "<file>: not valid", then one indented line per problem.
    const std::string problems = c.err.substr(c.err.find('\n') + 1);
    const long n = std::count(problems.begin(), problems.end(), '\n');
    std::string first = first_line(problems);
    first.erase(0, first.find_first_not_of(' '));
    r.trace_check = "NOT VALID: " + first + (n > 1 ? " (+" + std::to_string(n - 1) + " more)" : "");
  } else {
    r.trace_check = "NOT CHECKED: trace_check.py " + fate(c, observations{}) + ": " +
                    first_line(tail(c.err, 300));
  }
}

// A pyattach or pool row's trace must exist and pass; a raw one's result is only reported (the
// raw C API may well break the GIL invariant, or crash before writing).
bool trace_passes(const row& r) { return r.variant == "raw" || r.trace_check == "ok"; }

const char* panel_label(const std::string& variant) {
  return variant == "raw" ? "raw C API" : variant == "pyattach" ? "pyattach scopes"
                                                                : "pyattach::thread_pool";
}

// Draws scenario n's rows (raw, pyattach, pool: top to bottom) into trace_dir/scenario<n>.png.
// Returns "" or what went wrong; sets each row's timeline.
std::string draw_timeline(int n, std::vector<row*> rows, const std::string& trace_dir,
                          const std::string& python) {
  const std::string png = trace_dir + "/scenario" + std::to_string(n) + ".png";
  std::remove(png.c_str());
  std::string title = "Scenario " + std::to_string(n) + ": " + scenario_title(n);
  std::string missing;
  std::vector<std::string> panels;
  for (const row* r : rows) {
    if (exists(r->trace)) {
      panels.push_back(std::string(panel_label(r->variant)) + "=" + r->trace);
    } else {
      missing += (missing.empty() ? "" : ", ") + r->variant + " (" + fate(r->child, r->obs) + ")";
    }
  }
  if (panels.empty()) return "no trace to draw";
  if (!missing.empty()) title += "\nno trace from " + missing;
  std::vector<std::string> argv{python, PYATTACH_TOOLS_DIR "/timeline.py", "--out", png,
                                "--same-x", "--title", title};
  argv.insert(argv.end(), panels.begin(), panels.end());
  const child_result c = run_program(argv, kToolTimeoutMs);
  if (!exited_ok(c) || !exists(png)) {
    return "tools/timeline.py " + fate(c, observations{}) + ": " + first_line(tail(c.err, 300));
  }
  for (row* r : rows) r->timeline = png;
  return "";
}

// Checks every trace and draws every timeline; `report` receives what went where, a line each.
// Returns whether every pyattach and pool trace exists and passed.
bool finish_traces(std::vector<row>& rows, const std::string& trace_dir, std::string& report) {
  const std::string python = tools_python();
  bool ok = true;
  report = "traces in " + trace_dir + " (checked by tools/trace_check.py with " + python + "):\n";
  bool raw_overlap = false;
  for (row& r : rows) {
    check_trace(r, python);
    ok = ok && trace_passes(r);
    const bool raw_problem = r.variant == "raw" && r.trace_check != "ok";
    raw_overlap |= raw_problem && r.trace_check.find("GIL held by two threads") != std::string::npos;
    report += "  " + std::filesystem::path(r.trace).filename().string() + ": " + r.trace_check +
              (raw_problem ? " (raw C API: reported, not judged)" : "") + "\n";
  }
  if (raw_overlap) {
    report += "  (a raw trace's spans are marked around the C API calls: they cannot show CPython's "
              "eval loop handing the GIL to a waiting thread while the holder runs Python)\n";
  }
  std::string why;
  const std::string drawer = python_with_matplotlib(why);
  if (drawer.empty()) {
    report += "timelines skipped: " + why +
              " (Debian: python3-matplotlib; scripts/deps.sh installs it)\n";
    return ok;
  }
  report += "timelines (tools/timeline.py with " + drawer + "):\n";
  for (size_t i = 0; i < rows.size();) {
    const int n = rows[i].scenario;
    std::vector<row*> scenario;
    for (; i < rows.size() && rows[i].scenario == n; ++i) scenario.push_back(&rows[i]);
    const std::string error = draw_timeline(n, scenario, trace_dir, drawer);
    report += "  scenario" + std::to_string(n) + ".png: " + (error.empty() ? "drawn" : error) +
              "\n";
  }
  return ok;
}

// ---- output -----------------------------------------------------------------------------------

std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines;
  std::string line;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    std::string word = text.substr(pos, end - pos);
    pos = end + 1;
    while (word.size() > width) {  // a word longer than the column: cut it
      if (!line.empty()) lines.push_back(line), line.clear();
      lines.push_back(word.substr(0, width));
      word = word.substr(width);
    }
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      lines.push_back(line);
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

void print_table(const std::vector<row>& rows) {
  const size_t widths[5] = {2, 8, 30, 38, 12};
  auto print_cells = [&](const std::vector<std::string>& cells) {
    std::vector<std::vector<std::string>> wrapped;
    size_t height = 1;
    for (size_t i = 0; i < 5; ++i) {
      wrapped.push_back(wrap(cells[i], widths[i]));
      height = std::max(height, wrapped.back().size());
    }
    for (size_t l = 0; l < height; ++l) {
      std::string out;
      for (size_t i = 0; i < 5; ++i) {
        std::string cell = l < wrapped[i].size() ? wrapped[i][l] : "";
        cell.resize(widths[i], ' ');
        out += cell + (i + 1 < 5 ? "  " : "");
      }
      while (!out.empty() && out.back() == ' ') out.pop_back();
      std::printf("%s\n", out.c_str());
    }
  };
  print_cells({"#", "variant", "expected", "observed", "verdict"});
  std::printf("%s\n", std::string(98, '-').c_str());
  int last = 0;
  for (const row& r : rows) {
    if (last != 0 && r.scenario != last) std::printf("\n");
    last = r.scenario;
    print_cells({std::to_string(r.scenario), r.variant, r.expected, r.observed, r.verdict});
  }
}

// --json: one object per row, written by nlohmann::json (Debian's nlohmann-json3-dev), keys in
// insertion order.
void print_json(const std::vector<row>& rows, const std::string& python) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const row& r : rows) {
    const child_result& c = r.child;
    nlohmann::ordered_json j;
    j["scenario"] = r.scenario;
    j["variant"] = r.variant;
    j["python"] = python;
    j["expected"] = r.expected;
    j["observed"] = r.observed;
    j["verdict"] = r.verdict;
    j["exit"] = c.signal == 0 && !c.timed_out ? nlohmann::ordered_json(c.exit_code) : nullptr;
    j["signal"] = c.signal != 0 ? nlohmann::ordered_json(signal_name(c.signal)) : nullptr;
    j["timed_out"] = c.timed_out;
    j["elapsed_ms"] = c.elapsed_ms;
    j["observations"] = nlohmann::ordered_json::array();
    for (const auto& [key, value] : r.obs.items) j["observations"].push_back({key, value});
    j["stderr_tail"] = tail(c.err, 600);
    if (!r.trace.empty()) {
      j["trace"] = r.trace;
      j["trace_check"] = r.trace_check;
      j["timeline"] = r.timeline.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.timeline);
    }
    out.push_back(std::move(j));
  }
  // Invalid UTF-8 in a child's output is replaced, not thrown.
  std::printf("%s\n", out.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
}

// The CPython this binary runs against (Py_GetVersion is safe before Py_Initialize).
std::string python_version() {
  std::string v = Py_GetVersion();
  v = v.substr(0, v.find('\n'));
  while (!v.empty() && v.back() == ' ') v.pop_back();
  return v;
}

std::string libpython_path() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&Py_GetVersion), &info) != 0 && info.dli_fname) {
    return info.dli_fname;
  }
  return "?";
}

int usage() {
  std::fprintf(stderr,
               "usage: pyattach-demo [--json] [--scenario N] [--trace DIR]\n"
               "       pyattach-demo --child N raw|pyattach|pool\n");
  return 2;
}

int child_main(int n, const std::string& variant) {
  name_thread("main");
  arm_watchdog(kWatchdogMs);
  if (variant == "raw") return run_raw(n);
  if (variant == "pyattach") return run_pyattach(n);
  if (variant == "pool" && has_pool_variant(n)) return run_pool(n);
  return usage();
}

}  // namespace
}  // namespace demo

int main(int argc, char** argv) {
  using namespace demo;
  bool json = false;
  int only = 0;
  std::string trace_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--child" && i + 2 < argc) return child_main(std::atoi(argv[i + 1]), argv[i + 2]);
    if (a == "--json") {
      json = true;
    } else if (a == "--scenario" && i + 1 < argc) {
      only = std::atoi(argv[++i]);
      if (only < 1 || only > 8) return usage();
    } else if (a == "--trace" && i + 1 < argc) {
      trace_dir = argv[++i];
    } else {
      return usage();
    }
  }
  ::signal(SIGPIPE, SIG_IGN);
  if (!trace_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(trace_dir, ec);
    const std::filesystem::path abs = std::filesystem::absolute(trace_dir, ec);
    if (ec || !std::filesystem::is_directory(abs)) {
      std::fprintf(stderr, "pyattach-demo: --trace %s: not a directory I can make\n",
                   trace_dir.c_str());
      return 2;
    }
    trace_dir = abs.lexically_normal().string();
    while (trace_dir.size() > 1 && trace_dir.back() == '/') trace_dir.pop_back();
  }
  const std::string python = python_version();
  if (!json) {
    std::printf("pyattach-demo: eight scenarios in three variants (raw C API, pyattach scopes, "
                "pyattach::thread_pool for 2-6 and 8), each in a child process\n");
    std::printf("CPython %s\nlibpython: %s\n\n", python.c_str(), libpython_path().c_str());
    std::fflush(stdout);
  }
  std::vector<row> rows;
  for (int n = 1; n <= 8; ++n) {
    if (only != 0 && n != only) continue;
    rows.push_back(run_row(n, "raw", trace_dir));
    rows.push_back(run_row(n, "pyattach", trace_dir));
    if (has_pool_variant(n)) rows.push_back(run_row(n, "pool", trace_dir));
  }
  std::string trace_report;
  const bool traces_ok = trace_dir.empty() || finish_traces(rows, trace_dir, trace_report);
  bool all_correct = true;
  for (const row& r : rows) {
    if (r.variant != "raw") all_correct = all_correct && r.correct;
  }
  if (json) {
    print_json(rows, python);
    std::fputs(trace_report.c_str(), stderr);  // stdout is the rows' JSON
  } else {
    print_table(rows);
    std::printf("\n%s\n", all_correct ? "every pyattach and pool row is correct"
                                       : "SOME pyattach OR pool ROWS ARE NOT CORRECT");
    if (!trace_report.empty()) std::printf("\n%s", trace_report.c_str());
    if (!traces_ok) std::printf("SOME pyattach OR pool TRACES ARE MISSING OR NOT VALID\n");
  }
  return all_correct && traces_ok ? 0 : 1;
}

// demo_common.cpp — observation lines, timing, Python snippets, what the pyattach and pool
// variants share, and the child-process runner.
#include "demo.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include <pyattach/pyattach.hpp>

extern char** environ;

namespace demo {

namespace {
const auto g_start = std::chrono::steady_clock::now();
std::atomic<const char*> g_phase{"start"};

void write_all(int fd, const std::string& s) {
  const char* p = s.data();
  size_t left = s.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n <= 0) return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

// Runs Python statements in __main__. PRECONDITION: GIL held.
void py_exec(const std::string& code) {
  if (PyRun_SimpleString(code.c_str()) != 0) obs("python_error", code.substr(0, 60));
}
}  // namespace

void obs(const std::string& key, const std::string& value) {
  std::string line = "OBS " + key + "=" + value;
  for (char& c : line) {
    if (c == '\n') c = ' ';
  }
  std::fflush(stdout);  // keep C++ and Python prints before it in order
  write_all(1, line + "\n");
}

void obs(const std::string& key, double value) { obs(key, fmt_ms(value)); }

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - g_start)
      .count();
}

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

void sleep_until_ms(double t) {
  const double left = t - now_ms();
  if (left > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(left));
}

std::string fmt_ms(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", ms);
  return buf;
}

void set_phase(const char* phase) { g_phase.store(phase); }

void name_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

void arm_watchdog(int ms) {
  std::thread([ms] {
    sleep_ms(ms);
    obs("watchdog", std::string("fired during ") + g_phase.load());
    std::fflush(stdout);
    ::_exit(124);
  }).detach();
}

bool run_bounded(std::function<void()> fn, int bound_ms) {
  struct shared {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
  };
  auto s = std::make_shared<shared>();
  std::thread([s, fn = std::move(fn)] {
    fn();
    std::lock_guard<std::mutex> lock(s->m);
    s->done = true;
    s->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(s->m);
  return s->cv.wait_for(lock, std::chrono::milliseconds(bound_ms), [&] { return s->done; });
}

std::optional<double> wait_probe(const probe& p, int bound_ms) {
  const double deadline = now_ms() + bound_ms;
  while (now_ms() < deadline) {
    const double got = p.got.load();
    if (got >= 0) return got - p.asked;
    sleep_ms(1);
  }
  return std::nullopt;
}

std::string wait_text(const std::optional<double>& wait, int bound_ms) {
  return wait ? fmt_ms(*wait) : "blocked (>" + std::to_string(bound_ms) + " ms)";
}

std::string wait_text_since(double ran, double asked, int bound_ms) {
  return wait_text(ran >= 0 ? std::optional<double>(ran - asked) : std::nullopt, bound_ms);
}

unsigned long this_thread_ident() { return static_cast<unsigned long>(pthread_self()); }

printing_thread::printing_thread()
    : thread_([this] {
        name_thread("cpp thread");
        ident_ = this_thread_ident();
        while (!stop_) {
          std::printf("[C++] Hello from the long running cpp thread!\n");
          sleep_ms(kWindowMs / 3);
        }
      }) {}

void printing_thread::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void py_define_helpers() {
  py_exec(
      "import sys, threading\n"
      "thread_local = threading.local()\n"
      "def tl_set(v):\n"
      "    thread_local.name = v\n"
      "def tl_get_from(local):\n"
      "    try:\n"
      "        return local.name\n"
      "    except AttributeError as e:\n"
      "        return 'AttributeError: ' + str(e)\n"
      "def tl_get():\n"
      "    return tl_get_from(thread_local)\n");
}

void py_set_name(const std::string& name) { py_exec("tl_set('" + name + "')\n"); }

namespace {
std::string py_eval_str(const char* expr) {
  std::string out = "(python error)";
  PyObject* main = PyImport_AddModule("__main__");  // borrowed
  PyObject* globals = main ? PyModule_GetDict(main) : nullptr;  // borrowed
  PyObject* r = globals ? PyRun_String(expr, Py_eval_input, globals, globals) : nullptr;
  if (r != nullptr && PyUnicode_Check(r)) {
    if (const char* s = PyUnicode_AsUTF8(r)) out = s;
  }
  if (r == nullptr) PyErr_Clear();
  Py_XDECREF(r);
  return out;
}
}  // namespace

std::string py_get_name() { return py_eval_str("tl_get()"); }

void py_issue130394_init(const std::string& name) {
  py_exec("issue_local = threading.local()\nissue_local.name = '" + name + "'\n");
}

std::string py_issue130394_get() { return py_eval_str("tl_get_from(issue_local)"); }

std::string py_thread_name() {
  return py_eval_str("__import__('threading').current_thread().name");  // any interpreter
}

void py_print(const std::string& text) {
  py_exec("print(" + std::string("'") + text + "', flush=True)\n");
}

namespace {
struct cpu_run {
  double start = 0, end = 0;
};

// PRECONDITION: the calling thread holds a GIL.
cpu_run py_cpu_work() {
  py_exec(
      "if 'cpu_work' not in globals():\n"
      "    def cpu_work(n):\n"
      "        s = 0\n"
      "        for i in range(n):\n"
      "            s += i * i\n"
      "        return s\n");
  cpu_run r;
  r.start = now_ms();
  py_exec("cpu_work(1_500_000)\n");
  r.end = now_ms();
  return r;
}

// PRECONDITION: the calling thread holds a GIL.
bool meet_other(std::atomic<int>& arrived) {
  arrived.fetch_add(1);
  const double deadline = now_ms() + kBoundMs;
  while (arrived.load() < 2) {
    if (now_ms() > deadline) return false;
  }
  return true;
}
}  // namespace

void run_parallel_program(const attached_runner& run_attached) {
  cpu_run solo, a, b;
  run_attached(0, [&] { py_cpu_work(); }).wait();  // warm-up: CPython specializes the loop
  run_attached(1, [&] { py_cpu_work(); }).wait();
  run_attached(0, [&] { solo = py_cpu_work(); }).wait();
  std::future<void> fa = run_attached(0, [&] { a = py_cpu_work(); });
  std::future<void> fb = run_attached(1, [&] { b = py_cpu_work(); });
  fa.wait();
  fb.wait();
  std::atomic<int> arrived{0};
  std::atomic<bool> met_a{false}, met_b{false};
  std::future<void> ma = run_attached(0, [&] { met_a = meet_other(arrived); });
  std::future<void> mb = run_attached(1, [&] { met_b = meet_other(arrived); });
  ma.wait();
  mb.wait();
  const double solo_ms = solo.end - solo.start;
  const double together_ms = std::max(a.end, b.end) - std::min(a.start, b.start);
  obs("solo_ms", solo_ms);
  obs("together_ms", together_ms);
  char speedup[32];
  std::snprintf(speedup, sizeof speedup, "%.2f", together_ms > 0 ? 2 * solo_ms / together_ms : 0.0);
  obs("speedup", speedup);
  obs("met", met_a && met_b ? "yes" : "no");
}

void py_init_pool_thread(const std::string& pool_name, bool issue_script) {
  py_set_name(pool_name);
  if (issue_script) py_issue130394_init(pool_name);
  py_print("Hello from " + pool_name + " in init_python_thread");
}

void obs_names(const std::string& key, const std::string& pool_name, bool issue_script) {
  obs(key, py_get_name());
  if (issue_script) obs("issue_local_in_release_" + pool_name, py_issue130394_get());
}

std::vector<unsigned long> py_thread_state_idents() {
  std::vector<unsigned long> ids;
  for (PyThreadState* ts = PyInterpreterState_ThreadHead(PyInterpreterState_Main()); ts;
       ts = PyThreadState_Next(ts)) {
    ids.push_back(ts->thread_id);
  }
  return ids;
}

// ---- the pyattach and pool variants ------------------------------------------------------------

void set_name_in_python(pool& p, const char* name) {
  post_task(p, [name] {
    pyattach::attach_scope py;
    py_set_name(name);
  }).wait();
}

namespace {
// Misuse reports become observations (the handler must not call Python or pyattach).
void print_misuse(const pyattach::misuse_report& r) noexcept {
  obs("misuse", pyattach::to_string(r.kind));
  obs("misuse_message", r.message);
}
}  // namespace

void pyattach_setup() {
  pyattach::set_misuse_handler(print_misuse);
  pyattach::attach_scope py;
  py_define_helpers();
}

int pyattach_finish(std::optional<pyattach::interpreter>& interp) {
  set_phase("~interpreter");
  interp.reset();
  obs("finalize", "ok");
  obs("misuse_count", std::to_string(pyattach::misuse_count()));
  return 0;
}

std::shared_ptr<probe> new_probe() {
  auto p = std::make_shared<probe>();
  p->asked = now_ms();
  return p;
}

double probe_python() {
  const double got = now_ms();
  py_print("Hello from the other thread while the worker is idle");
  return got;
}

std::shared_ptr<probe> start_thread_probe() {
  auto p = new_probe();
  std::thread([p] {
    name_thread("probe");
    double got = -1;
    {
      pyattach::attach_scope py;
      got = probe_python();
    }
    pyattach::release_thread_state();  // gone before the probe reports: the counts are exact
    p->got = got;
  }).detach();
  return p;
}

void obs_report(const std::string& phase, unsigned long worker) {
  const pyattach::thread_report r = pyattach::make_thread_report();
  if (!r.interpreter_available) {
    obs("states_" + phase, "unavailable");
    return;
  }
  obs("states_" + phase, std::to_string(r.thread_states));
  if (worker == 0) return;
  const pyattach::thread_info* w = nullptr;
  for (const auto& t : r.threads) {
    if (t.has_thread_state && t.ident == worker) w = &t;
  }
  obs("worker_listed_" + phase, w ? "yes" : "no");
  if (w == nullptr) return;
  obs("worker_state_" + phase, pyattach::to_string(w->state));
  if (!w->python_name.empty()) obs("worker_name_" + phase, w->python_name);
  if (!w->pool.empty()) obs("worker_pool_" + phase, w->pool);
}

void obs_state_count(const std::string& phase) {
  const auto n = pyattach::count_thread_states();
  obs("states_" + phase, n ? std::to_string(*n) : "unavailable");
}

// ---- parent side ------------------------------------------------------------------------------

namespace {
// environ with `env` ("NAME=value") replacing or adding to it; the pointers live as long as env
// and environ do.
std::vector<char*> environment_with(const std::vector<std::string>& env) {
  std::vector<char*> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    const size_t name_len = eq ? static_cast<size_t>(eq - *e) + 1 : std::strlen(*e);
    bool replaced = false;
    for (const std::string& v : env) replaced |= v.compare(0, name_len, *e, name_len) == 0;
    if (!replaced) out.push_back(*e);
  }
  for (const std::string& v : env) out.push_back(const_cast<char*>(v.c_str()));
  out.push_back(nullptr);
  return out;
}
}  // namespace

child_result run_child(const std::vector<std::string>& args, int timeout_ms,
                       const std::vector<std::string>& env) {
  std::vector<std::string> argv{"/proc/self/exe"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, timeout_ms, env);
}

child_result run_program(const std::vector<std::string>& argv_in, int timeout_ms,
                         const std::vector<std::string>& env) {
  child_result r;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    r.spawn_failed = true;
    return r;
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    r.spawn_failed = true;
    return r;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  std::vector<char*> argv;
  for (const std::string& a : argv_in) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp = environment_with(env);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    r.spawn_failed = true;
    return r;
  }

  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    const int left = timeout_ms - static_cast<int>(elapsed());
    if (left <= 0) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    if (::poll(fds, 2, left) < 0) continue;  // EINTR: try again
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  // Pipes closed: the child is gone or about to be; still bound the wait.
  int status = 0;
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0) {
      status = 0;
      break;
    }
    if (elapsed() > timeout_ms && !r.timed_out) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
    }
    ::usleep(2000);
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.elapsed_ms = elapsed();
  return r;
}

std::vector<std::pair<std::string, std::string>> parse_observations(const std::string& out) {
  std::vector<std::pair<std::string, std::string>> obs;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t end = out.find('\n', pos);
    if (end == std::string::npos) end = out.size();
    const std::string line = out.substr(pos, end - pos);
    pos = end + 1;
    // A Python print may share a line with an OBS line if it was cut by a crash: search for it.
    const size_t at = line.find("OBS ");
    if (at == std::string::npos) continue;
    const std::string kv = line.substr(at + 4);
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    obs.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return obs;
}

}  // namespace demo

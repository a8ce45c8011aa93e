// tests/cpp/child_process.cpp — the child-process harness (see child_process.hpp).
#include "child_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

extern char** environ;

namespace testutil {

namespace {
constexpr const char* k_child_flag = "--pyattach-child=";

std::map<std::string, child_case_fn>& cases() {
  static std::map<std::string, child_case_fn> m;
  return m;
}
std::set<std::string>& uses() {
  static std::set<std::string> s;
  return s;
}
}  // namespace

bool register_child_case(const char* name, child_case_fn fn) {
  if (!cases().emplace(name, fn).second) {
    std::fprintf(stderr, "child case registered twice: %s\n", name);
    std::abort();
  }
  return true;
}

child_case_use declare_child_case_use(const char* name) {
  uses().insert(name);
  return child_case_use{name};
}

const std::map<std::string, child_case_fn>& registered_child_cases() { return cases(); }
const std::set<std::string>& used_child_cases() { return uses(); }

int& child_failures() {
  static int n = 0;
  return n;
}

std::size_t count_occurrences(const std::string& haystack, const std::string& needle) {
  if (needle.empty()) return 0;
  std::size_t n = 0;
  for (std::size_t p = haystack.find(needle); p != std::string::npos;
       p = haystack.find(needle, p + needle.size())) {
    ++n;
  }
  return n;
}

std::string child_result::describe() const {
  std::string s;
  if (!started) {
    s = "child did not start";
  } else if (timed_out) {
    s = "child TIMED OUT and was killed (SIGKILL)";
  } else if (term_signal != 0) {
    s = std::string("child killed by signal ") + std::to_string(term_signal) + " (" +
        strsignal(term_signal) + ")";
  } else {
    s = "child exited with status " + std::to_string(exit_code);
  }
  s += " after " + std::to_string(seconds) + " s\n--- child stdout ---\n" + out +
       "--- child stderr ---\n" + err + "--- end ---";
  return s;
}

child_result run_child(const child_case_use& use, const child_options& options) {
  child_result r;
  if (cases().count(use.name) == 0) {
    r.err = std::string("no child case named ") + use.name;
    return r;
  }

  // Everything the child needs is prepared before spawning (the parent has threads).
  std::vector<std::string> arg_storage{"/proc/self/exe", std::string(k_child_flag) + use.name};
  for (const auto& a : options.args) arg_storage.push_back(a);
  std::vector<char*> argv;
  for (auto& a : arg_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    // A misuse policy or close bound inherited from the caller would change what the case does.
    if (key == "PYATTACH_ON_MISUSE" || key == "PYATTACH_CLOSE_TIMEOUT_MS") continue;
    bool overridden = false;
    for (const auto& [k, v] : options.env) overridden = overridden || k == key;
    if (!overridden) env_storage.push_back(kv);
  }
  for (const auto& [k, v] : options.env) env_storage.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return r;
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return r;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  pid_t pid = -1;
  const auto start = std::chrono::steady_clock::now();
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    r.err = std::string("posix_spawn failed: ") + std::strerror(rc);
    return r;
  }
  r.started = true;

  const auto deadline = start + options.timeout;
  int fds[2] = {out_pipe[0], err_pipe[0]};
  std::string* sinks[2] = {&r.out, &r.err};
  bool open[2] = {true, true};
  bool reaped = false;
  int status = 0;
  char buf[4096];
  for (;;) {
    if (!reaped) {
      const pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) reaped = true;
    }
    if (reaped && !open[0] && !open[1]) break;
    const auto now = std::chrono::steady_clock::now();
    if (!reaped && now >= deadline) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      reaped = true;
      // Drain what it wrote before it was killed.
      for (int i = 0; i < 2; ++i) {
        if (!open[i]) continue;
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        ssize_t n;
        while ((n = read(fds[i], buf, sizeof buf)) > 0) sinks[i]->append(buf, static_cast<size_t>(n));
        open[i] = false;
      }
      break;
    }
    pollfd p[2];
    int np = 0;
    int which[2];
    for (int i = 0; i < 2; ++i) {
      if (open[i]) {
        p[np] = pollfd{fds[i], POLLIN, 0};
        which[np++] = i;
      }
    }
    if (np == 0) {
      // Both pipes closed but the child has not been reaped yet.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      continue;
    }
    const int ready = poll(p, static_cast<nfds_t>(np), 20);
    if (ready < 0 && errno != EINTR) break;
    for (int k = 0; k < np; ++k) {
      if (p[k].revents == 0) continue;
      const int i = which[k];
      const ssize_t n = read(fds[i], buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        open[i] = false;
      }
    }
  }
  close(out_pipe[0]);
  close(err_pipe[0]);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.term_signal = WTERMSIG(status);
  return r;
}

bool dispatch_child_case(int argc, char** argv, int* rc) {
  if (argc < 2 || std::strncmp(argv[1], k_child_flag, std::strlen(k_child_flag)) != 0) {
    return false;
  }
  const std::string name = argv[1] + std::strlen(k_child_flag);
  auto it = cases().find(name);
  if (it == cases().end()) {
    std::fprintf(stderr, "unknown child case: %s\n", name.c_str());
    *rc = 127;
    return true;
  }
  // Line-buffered: a case that aborts or is killed still delivers what it printed.
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::vector<std::string> args(argv + 2, argv + argc);
  *rc = it->second(args);
  std::fflush(stdout);
  std::fflush(stderr);
  return true;
}

}  // namespace testutil

// src/fork.cpp — keeping pyattach's records right across fork().
#include "pyattach/fork.hpp"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <mutex>

#include "internal.hpp"

namespace pyattach {
namespace detail {

namespace {
// The forking thread's tid in the parent, for the child (which gives that thread a new one).
// Protected by the two locks before_fork takes: written after taking them, read in the child
// before releasing them, so concurrent forks do not mix their values.
std::uint64_t g_forking_tid = 0;

// Run around every fork() in the process (pthread_atfork). The locks are taken in prepare so
// that no other thread is inside a registry or gate transition at the moment of the fork; the
// child's only thread (the forking one) then owns them and unlocks them.
void before_fork() {
  gate_transition_mutex().lock();
  registry().mutex.lock();
  g_forking_tid = this_os_tid();  // gettid: a plain syscall, safe in a prepare handler
}

void after_fork_in_parent() {
  registry().mutex.unlock();
  gate_transition_mutex().unlock();
}

void after_fork_in_child() {
  // Only this thread exists now. Drop the other threads' slots: their threads are gone and
  // their thread states are CPython's to delete (PyOS_AfterFork_Child) or forget; never touch
  // them. Freeing our own slot memory is safe: glibc's fork keeps malloc usable in the child.
  slot* const mine = tls_slot;
  auto& slots = registry().slots;
  for (slot* s : slots) {
    if (s != mine) delete s;
  }
  slots.clear();
  if (mine != nullptr) {
    slots.push_back(mine);  // no allocation: capacity is kept
    // Its thread has a new OS id here; the thread report and the misuse and closer messages
    // name it by this one. Read by others only under the registry mutex, which this thread holds.
    mine->os_tid = this_os_tid();
  }

  // The gate: only this thread's passes are still held. A closer that was waiting in another
  // thread is gone: finish its transition (the interpreter is on its way out in the parent's
  // view too).
  // (This slot's passes stay counted in it; the other threads' one-off passes are gone.)
  const std::uint64_t w = g_gate.word.load();
  g_gate.inside.store(0);
  if ((w & 3) == phase_closing) g_gate.word.store(gate_word(w >> 2, phase_closed));

  // The embedding helper finalizes only on its creating thread, known by tid: this thread has a
  // new one now. It stays the creator if it was; otherwise no thread here is (interpreter.cpp).
  interpreter_after_fork_in_child(g_forking_tid);
  forget_pools_in_forked_child();

  registry().mutex.unlock();
  gate_transition_mutex().unlock();
}
}  // namespace

void install_fork_handlers() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    if (pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child) != 0) {
      std::fputs("pyattach: pthread_atfork failed; forking with attached threads is unsafe\n",
                 stderr);
    }
  });
}

}  // namespace detail

pid_t fork_process(source_site site) {
  attach_scope py(site);  // PyOS_BeforeFork and friends need the GIL (as os.fork holds it)
  // What os.fork() does (Modules/posixmodule.c, 3.9–3.13): take the import lock and the
  // runtime's locks, fork, then re-create the GIL and delete the other threads' states in the
  // child, or release the locks in the parent.
  PyOS_BeforeFork();
  const pid_t pid = ::fork();
  if (pid == 0) {
    PyOS_AfterFork_Child();
  } else {
    const int saved_errno = errno;
    PyOS_AfterFork_Parent();
    errno = saved_errno;
  }
  return pid;
}

}  // namespace pyattach

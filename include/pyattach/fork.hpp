// pyattach/fork.hpp — forking a process in which native threads are attached.
//
// What happens at fork, for any fork() in the process (pyattach registers pthread_atfork
// handlers when it is first used):
// - Only the forking thread exists in the child. pyattach drops every other thread's record
//   there without touching that thread's thread state (it belongs to a thread that is gone;
//   CPython deletes or forgets it), and the gate counts only the forking thread's passes.
// - The child can attach new threads and use the interpreter IF CPython itself was told about
//   the fork: fork through os.fork() or through fork_process() below. Both hold the GIL across
//   fork() and run PyOS_AfterFork_Child in the child, which re-creates the GIL, deletes the other
//   threads' states and makes the forking thread CPython's main thread
//   (_PyRuntimeState_ReInitThreads sets runtime->main_thread to it, 3.9–3.13; threading's
//   _after_fork makes it threading.main_thread()).
// - How the child ends depends on which thread forked it:
//   - Forked by the thread that created the pyattach::interpreter: that thread is still its
//     creator in the child (pyattach re-records its new OS thread id at fork), so destroying the
//     interpreter there finalizes CPython as in the parent.
//   - Forked by any other thread (a thread_pool task, a std::thread): no thread of the child is
//     the creator. The child may attach threads and use Python, then must end with _exit() or
//     std::_Exit() (flush sys.stdout/sys.stderr first if Python wrote to them) or exec, the way
//     multiprocessing's fork children end with os._exit. It must not finalize: the interpreter
//     object lives on the creator's stack, which has no thread in the child (glibc may give it to
//     a new thread), and PyOS_AfterFork_Child deleted the creator's thread state, which the
//     destructor would need. If the child reaches the object anyway (a heap or static one), its
//     destructor reports to stderr and does not finalize, on every thread. Do not call
//     Py_FinalizeEx there either: pyattach supports finalizing only through the interpreter's
//     creator. A child forked inside a thread_pool task must not return from the task (the
//     worker would wait for tasks for ever): end it inside the task.
// - In any child: the parent's other threads are gone, and so are a thread_pool's workers. Never
//   use or destroy a thread_pool there (its destructor joins workers that do not exist), so end
//   the child with _exit()/std::_Exit() rather than by unwinding the frames that own one.
//   pyattach forgets the parent's pools in the child (without touching them: a vanished worker
//   may have held one of their locks), so finalizing there does not wait for their workers.
// - NOT safe: a raw fork() from C++ that did not go through fork_process(). If another thread
//   held the GIL at that moment, it is held forever in the child and any attach there blocks.
//   After a raw fork() the child may only call async-signal-safe functions, exec or _exit (the
//   POSIX rule for a multithreaded process); pyattach's own handlers follow that rule.
// - Also not safe in any child: using a thread state, scope or object that another thread of
//   the parent was using; locks other threads held at fork() stay held (yours and CPython's).
#pragma once

#include <sys/types.h>

#include "pyattach/diagnostics.hpp"

namespace pyattach {

// Forks like os.fork(): attaches the calling thread (throws attach_error if that is refused),
// calls PyOS_BeforeFork(), fork(), then PyOS_AfterFork_Child() in the child or
// PyOS_AfterFork_Parent() in the parent, and ends the attachment again. Returns fork()'s result:
// 0 in the child, the child's pid in the parent, -1 with errno set if fork() failed.
// PRECONDITION: none beyond attaching; any thread may call it (the child's only thread is then
// the caller). PRECONDITION in the child: if the caller is not the pyattach::interpreter's
// creating thread, the child never finalizes and ends with _exit()/std::_Exit() or exec (above).
// Thread-safety: like fork() itself.
pid_t fork_process(source_site site = source_site::current());

}  // namespace pyattach

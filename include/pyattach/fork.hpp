// pyattach/fork.hpp — forking a process in which native threads are attached.
//
// What happens at fork, for any fork() in the process (pyattach registers pthread_atfork
// handlers when it is first used):
// - Only the forking thread exists in the child. pyattach drops every other thread's record
//   there without touching that thread's thread state (it belongs to a thread that is gone;
//   CPython deletes or forgets it), and the gate counts only the forking thread's passes.
// - The child can attach new threads and use the interpreter (including pyattach::interpreter's
//   destructor) IF CPython itself was told about the fork: fork through os.fork() or through
//   fork_process() below. Both hold the GIL across fork() and run PyOS_AfterFork_Child in the
//   child, which re-creates the GIL and deletes the other threads' states (3.9–3.13).
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
// the caller). Thread-safety: like fork() itself.
pid_t fork_process(source_site site = source_site::current());

}  // namespace pyattach

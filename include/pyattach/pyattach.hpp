// pyattach/pyattach.hpp — everything pyattach offers, in one include.
//
//   attach.hpp       attach_scope, try_attach, detach_scope, release_thread_state
//   interpreter.hpp  interpreter (embedding helper), the gate (close_gate, phases)
//   pool.hpp         thread_pool: named workers that keep their thread state, detached when idle
//   report.hpp       make_thread_report: every thread state, joined with pyattach's records
//   observe.hpp      metrics (GIL wait, hold, detached time per thread and pool) and a trace
//   diagnostics.hpp  misuse kinds, reports and the replaceable handler
//   fork.hpp         fork_process: fork like os.fork(); what is safe in the child
#pragma once

#include "pyattach/attach.hpp"
#include "pyattach/diagnostics.hpp"
#include "pyattach/fork.hpp"
#include "pyattach/interpreter.hpp"
#include "pyattach/observe.hpp"
#include "pyattach/pool.hpp"
#include "pyattach/report.hpp"
#include "pyattach/subinterpreter.hpp"

#define PYATTACH_VERSION_MAJOR 0
#define PYATTACH_VERSION_MINOR 1
#define PYATTACH_VERSION_PATCH 0

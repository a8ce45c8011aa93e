"""pyattach: native threads that run Python correctly and fast.

    from pyattach import ThreadPoolExecutor   # a drop-in for concurrent.futures'

pyattach.threads() lists the process's threads as pyattach sees them, pyattach.stats() the
executors' counters, and ``python -m pyattach`` prints both for a small run.

Who holds the GIL, who waits for it and for how long (include/pyattach/observe.hpp):

    pyattach.set_metrics(True)          # or PYATTACH_METRICS=1 in the environment
    ...
    pyattach.metrics()                  # one dict per thread: attaches, wait/attached/detached
    pyattach.pool_metrics()             # the same summed per executor
    print(pyattach.metrics_text())      # a readable table

    with pyattach.trace("run.json"):    # or PYATTACH_TRACE=run.json: written at exit
        ...                             # Chrome trace-event JSON: Perfetto, chrome://tracing

Both see what this package's copy of pyattach does: its executors' workers, and any thread
whose GIL its native code takes or gives back. A C++ extension module that links pyattach statically keeps its own records, which
neither sees (observe.hpp, "Scope"). What is counted: every time pyattach takes the GIL for a
thread and gives it back (a worker attaches once per batch of tasks); "attached" runs from the
attach to the release, so it includes what CPython's eval loop lends to other threads meanwhile
(the switch interval, time.sleep, blocking I/O).
"""

import contextlib
import os
from typing import NamedTuple

from . import _core
from ._executor import ThreadPoolExecutor

__all__ = [
    "ThreadPoolExecutor", "ThreadInfo", "threads", "stats",
    "set_metrics", "metrics_enabled", "reset_metrics", "metrics", "pool_metrics", "metrics_text",
    "trace", "Trace", "TraceResult", "start_trace", "trace_running", "flush_trace", "stop_trace",
]
__version__ = "0.1.0"


class ThreadInfo(NamedTuple):
    """One thread state, as pyattach's thread report sees it (include/pyattach/report.hpp): a
    thread with states in several interpreters has one record per state."""

    name: str               # threading's name for it ("" if threading has no entry)
    ident: int              # threading.get_ident()
    native_id: int          # the kernel's thread id (threading.get_native_id(), py-spy, top)
    pool: str               # the executor (thread name prefix) it is a worker of, or ""
    state: str              # "attached", "waiting" (for the GIL), "detached" or "parked"
    scopes: int             # times pyattach attached it (a worker: once per batch of tasks)
    has_thread_state: bool  # in the interpreter's list of thread states (what py-spy walks)
    made_by_pyattach: bool  # pyattach created its thread state (a worker's persistent one)
    is_caller: bool         # the thread that called threads()
    interpreter: int        # the interpreter of this thread state: its id, 0 for the main one


def threads():
    """Every thread of the main interpreter, every thread state pyattach holds in a sub-interpreter
    (made by C++ code through pyattach::subinterpreter, CPython 3.12+), and every thread pyattach
    knows, as ThreadInfo records.

    Covers pyattach's own threads (this package's executors); C++ extension modules that link
    pyattach statically keep their own records, which this report does not see.
    """
    return [ThreadInfo(*t) for t in _core.thread_report()]


def stats():
    """One dict per live executor: name, max_workers, submitted, completed, failed, cancelled,
    queued, running, shutdown, broken, and workers (name, native_id, tasks, attaches: one per
    batch of tasks run under one attach, busy_seconds)."""
    return _core.stats()


# ---- metrics ----------------------------------------------------------------------------------

def set_metrics(on):
    """Switches GIL metrics on or off for every thread (off by default; PYATTACH_METRICS=1 in the
    environment switches them on at import). Off, the figures stop and keep their values."""
    _core.set_metrics(bool(on))


def metrics_enabled():
    """Whether GIL metrics are on."""
    return _core.metrics_enabled()


def reset_metrics():
    """Zeroes every figure and forgets the threads that have exited."""
    _core.reset_metrics()


def metrics():
    """One dict per thread that pyattach has observed (live threads, then one record per pool for
    its exited workers and one for other exited threads): name (a label from the OS thread name,
    which the kernel cuts to 15 characters, e.g. "measured_0 (tid 1234)"), native_id (0 for an exited-threads record), ident
    (threading.get_ident()), pool (the executor's thread name prefix, or ""), alive, attaches (times
    pyattach took the GIL for it at an outermost attach: a worker's batches of tasks), and three
    dicts of durations in seconds: "wait" (asking for the GIL -> holding it, for every take),
    "attached" (holding it -> releasing it or entering a detach scope) and "detached" (inside a
    detach scope: blocking C++ without the GIL). Each has count, total_s, mean_s, p50_s, p90_s,
    p99_s, max_s, and buckets: (upper bound in seconds, count) for every non-empty log-scale bucket
    (4 per power of two; a quantile is the upper bound of its bucket, never above max_s).
    "interpreters" splits the attaches and the total wait and attached times by interpreter: one
    dict (interpreter: its id, 0 for the main one; attaches, wait_s, attached_s) per interpreter
    the thread took the GIL of, the main one first.

    Covers this package's copy of pyattach only (see the module's documentation). Each figure
    is exact; figures of a thread that is busy meanwhile may be a few events apart.
    """
    return _core.metrics()["threads"]


def pool_metrics():
    """One dict per executor seen among metrics()' threads, its workers' figures summed (exited
    workers included): name (the thread name prefix), workers (live workers with records),
    attaches, and "wait", "attached", "detached" as in metrics()."""
    return _core.metrics()["pools"]


def metrics_text():
    """metrics() and pool_metrics() as a readable table (durations in milliseconds)."""
    return _core.metrics_text()


# ---- trace ------------------------------------------------------------------------------------

class TraceResult(NamedTuple):
    """What flush_trace() and stop_trace() did."""

    ok: bool      # the file was written
    error: str    # why not ("" if ok)
    events: int   # events written (a span counts its begin and its end)
    dropped: int  # events dropped because a thread's buffer was full


def start_trace(events_per_thread=65536):
    """Starts a trace: each thread records into its own buffer of events_per_thread events (24
    bytes each); when it is full, further events are dropped and counted. Raises RuntimeError if a
    trace is running already (PYATTACH_TRACE's included). Prefer ``with trace(path):``."""
    if not _core.start_trace(events_per_thread):
        raise RuntimeError("a pyattach trace is already running")


def trace_running():
    """Whether a trace is running."""
    return _core.trace_running()


def flush_trace(path):
    """Writes what the running trace recorded so far to path (Chrome trace-event JSON); the trace
    goes on. Returns a TraceResult (ok False and error if nothing was written)."""
    return TraceResult(*_core.flush_trace(os.fspath(path)))


def stop_trace(path):
    """Writes the trace like flush_trace() and ends it. Returns a TraceResult."""
    return TraceResult(*_core.stop_trace(os.fspath(path)))


class Trace:
    """What ``with trace(path) as t:`` gives: the path, and after the block the written file's
    events and dropped counts (None until then)."""

    __slots__ = ("path", "events", "dropped")

    def __init__(self, path):
        self.path = path
        self.events = None
        self.dropped = None

    def __repr__(self):
        return "Trace(path=%r, events=%r, dropped=%r)" % (self.path, self.events, self.dropped)


@contextlib.contextmanager
def trace(path, events_per_thread=65536):
    """Traces the block: starts a trace on entry and writes it to path on exit, also when the block
    raises. The file is Chrome trace-event JSON (open it in https://ui.perfetto.dev or
    chrome://tracing): per thread, spans for waiting for the GIL, attached and detached, the
    executors' tasks (args pool, worker, task), and thread names.

    Raises RuntimeError on entry if a trace is running already, and on exit if the file could not
    be written (chained to the block's exception, if any). Covers the threads of this package's
    copy of pyattach only (see the module's documentation).
    """
    recording = Trace(os.fspath(path))
    start_trace(events_per_thread)
    try:
        yield recording
    finally:
        result = stop_trace(recording.path)
        recording.events, recording.dropped = result.events, result.dropped
        if not result.ok:
            raise RuntimeError("pyattach trace not written to %s: %s" % (recording.path,
                                                                         result.error))

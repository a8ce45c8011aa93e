"""pyattach: native threads that run Python correctly and fast.

    from pyattach import ThreadPoolExecutor   # a drop-in for concurrent.futures'

pyattach.threads() lists the process's threads as pyattach sees them, pyattach.stats() the
executors' counters, and ``python -m pyattach`` prints both for a small run.
"""

from typing import NamedTuple

from . import _core
from ._executor import ThreadPoolExecutor

__all__ = ["ThreadPoolExecutor", "ThreadInfo", "threads", "stats"]
__version__ = "0.1.0"


class ThreadInfo(NamedTuple):
    """One thread, as pyattach's thread report sees it (include/pyattach/report.hpp)."""

    name: str               # threading's name for it ("" if threading has no entry)
    ident: int              # threading.get_ident()
    native_id: int          # the kernel's thread id (threading.get_native_id(), py-spy, top)
    pool: str               # the executor (thread name prefix) it is a worker of, or ""
    state: str              # "attached", "waiting" (for the GIL), "detached" or "parked"
    scopes: int             # times pyattach attached it (a worker: once per batch of tasks)
    has_thread_state: bool  # in the interpreter's list of thread states (what py-spy walks)
    made_by_pyattach: bool  # pyattach created its thread state (a worker's persistent one)
    is_caller: bool         # the thread that called threads()


def threads():
    """Every thread of the interpreter and every thread pyattach knows, as ThreadInfo records.

    Covers pyattach's own threads (this package's executors); C++ extension modules that link
    pyattach statically keep their own records, which this report does not see.
    """
    return [ThreadInfo(*t) for t in _core.thread_report()]


def stats():
    """One dict per live executor: name, max_workers, submitted, completed, failed, cancelled,
    queued, running, shutdown, broken, and workers (name, native_id, tasks, attaches,
    busy_seconds)."""
    return _core.stats()

"""pyattach.ThreadPoolExecutor: concurrent.futures.ThreadPoolExecutor's interface and behaviour,
on C++ workers that keep one Python thread state each (pyattach::thread_pool).

What matches the standard executor (and tests/python/test_executor.py runs against both):
the constructor and its defaults and errors, submit/map/shutdown and the context manager, real
concurrent.futures.Future objects, exceptions with their tracebacks, the initializer and
BrokenThreadPool, worker names ``<prefix>_<M>`` (default prefix ``ThreadPoolExecutor-<N>``),
workers started on demand, threading.local and contextvars per worker for its whole life, and
interpreter exit: queued work runs before the interpreter finalizes, later submits raise.

What differs: a worker is a native thread, so threading lists it as a _DummyThread (daemon) once
it ran a task; its OS name is set too (the kernel keeps 15 characters: the prefix is shortened so
that ``_<M>`` stays visible); threading.settrace/setprofile do not reach the workers; in a fork()
child an executor of the parent refuses work with RuntimeError instead of hanging (make a new one).
"""

import itertools
import os
import threading
from concurrent.futures import _base

from . import _core


def _default_max_workers():
    # The running CPython's own default (concurrent/futures/thread.py): 3.13 counts the CPUs this
    # process may use, older versions all CPUs.
    count = os.process_cpu_count() if hasattr(os, "process_cpu_count") else os.cpu_count()
    return min(32, (count or 1) + 4)


def _init_worker(initializer, initargs):
    # Runs on a worker before its first item. The standard executor logs a failing initializer
    # this way (concurrent/futures/thread.py, _worker) and then marks the pool broken, which the
    # native part does when this returns False.
    try:
        initializer(*initargs)
    except BaseException:
        _base.LOGGER.critical("Exception in initializer:", exc_info=True)
        return False
    return True


class ThreadPoolExecutor(_base.Executor):
    """An Executor that runs calls on a pool of native worker threads.

    A drop-in for concurrent.futures.ThreadPoolExecutor: same constructor, methods and behaviour
    (see the module's documentation for the few differences).
    """

    # Numbers the default thread name prefixes, as concurrent.futures does for its own.
    _counter = itertools.count().__next__

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        if max_workers is None:
            max_workers = _default_max_workers()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix or ("ThreadPoolExecutor-%d" % self._counter())
        self._initializer = initializer
        self._initargs = initargs
        init_worker = None
        if initializer is not None:
            def init_worker(initializer=initializer, initargs=initargs):
                return _init_worker(initializer, initargs)
        self._core = _core.Executor(max_workers, self._thread_name_prefix, init_worker)
        if type(self).submit is ThreadPoolExecutor.submit:
            # The native submit itself, bound: one call per submit instead of two. A subclass
            # that overrides submit keeps its own.
            self.submit = self._core.submit

    def submit(self, fn, /, *args, **kwargs):
        return self._core.submit(fn, *args, **kwargs)

    submit.__doc__ = _base.Executor.submit.__doc__

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._core.shutdown(wait, cancel_futures)

    shutdown.__doc__ = _base.Executor.shutdown.__doc__


# Interpreter exit, as concurrent.futures does it: threading's exit hooks run in
# threading._shutdown(), which Py_FinalizeEx calls before atexit callbacks and before pyattach's
# gate closes; from then on submits raise, and queued work runs to completion before the join.
threading._register_atexit(_core.shutdown_all)
# In a fork() child the workers do not exist: the parent's executors refuse work there.
os.register_at_fork(after_in_child=_core.after_fork_in_child)

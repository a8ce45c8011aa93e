"""pyattach.ThreadPoolExecutor: concurrent.futures.ThreadPoolExecutor's interface and behaviour,
on C++ workers that keep one Python thread state each (pyattach::thread_pool).

The specification is the standard class's own test suite: tests/python/test_cpython_suite.py runs
CPython's ThreadPoolExecutor tests of the running version against this class. What matches: the
constructor and its defaults and errors, submit/map/shutdown and the context manager, real
concurrent.futures.Future objects, exceptions with their tracebacks, the initializer and
BrokenThreadPool, workers started on demand by the submit that needs one (which waits for it, and
leaves it running that item, as the standard submit does), worker names ``<prefix>_<M>``,
threading.local and contextvars per worker for its whole life, interpreter exit (queued work runs
before the interpreter finalizes, later submits raise), and what programs read of the standard
object: ``_threads`` (threading.Thread objects: join, is_alive, name, ident, native_id, daemon),
``_max_workers``, ``_thread_name_prefix``, ``_broken``, ``_shutdown``, ``_work_queue`` (qsize,
empty, get_nowait), ``_initializer``/``_initargs`` (up to 3.13) and, from 3.14, ``BROKEN``,
``prepare_context`` and its ``**ctxkwargs``.

threading.settrace/setprofile hooks reach the workers, as they reach new threading.Threads.

What differs (docs/executor.md): the OS name keeps 15 characters, so the prefix is shortened to
keep ``_<M>``; in a fork() child an executor of the parent refuses work with RuntimeError instead
of hanging; the workers' thread objects are _DummyThread subclasses (native threads, not started
by threading).
"""

import _thread
import itertools
import os
import queue
import sys
import threading
import weakref
from concurrent.futures import _base
from concurrent.futures import thread as _std

from . import _core

# 3.14 made the standard class extensible: prepare_context(initializer, initargs, **ctxkwargs)
# returns the per-worker context factory and the task resolver (concurrent/futures/thread.py).
_HAS_CONTEXTS = hasattr(_std, "WorkerContext")


def _default_max_workers():
    # The running CPython's own default (concurrent/futures/thread.py): 3.13 counts the CPUs this
    # process may use, older versions all CPUs.
    count = os.process_cpu_count() if hasattr(os, "process_cpu_count") else os.cpu_count()
    return min(32, (count or 1) + 4)


# ---- workers as threading sees them -------------------------------------------------------------

class _EndOfThread:
    """Held in a threading.local on its worker: CPython drops it when it clears the worker's
    thread state (pyattach does that on the worker as it exits), which marks the worker ended."""

    __slots__ = ("lock",)

    def __init__(self, lock):
        self.lock = lock

    def __del__(self):
        if self.lock.locked():  # unlocked only by the fork handler below
            self.lock.release()


_end_of_thread = threading.local()


class _Worker(threading._DummyThread):
    """A worker, as threading.current_thread() on it and executor._threads show it.

    A foreign thread gets a _DummyThread, which refuses join() and is a daemon; the standard
    executor's workers are joinable and non-daemon. This keeps _DummyThread's bookkeeping (the
    threading._active entry, dropped when the thread state goes; a fork() child's view) and
    answers is_alive() and join() from a lock that the worker holds until its thread state is
    cleared, which is when the standard worker's own lock is released too (up to 3.12; 3.13+
    joins the OS thread, a few microseconds later).
    """

    _all = weakref.WeakSet()  # for the fork handler

    def __init__(self, name):
        # On the worker itself: _DummyThread records this thread's ident and native id.
        threading._DummyThread.__init__(self)
        self._name = name  # not the property: from 3.14 its setter also renames the OS thread
        self._daemonic = False
        self._alive = _thread.allocate_lock()
        self._alive.acquire()
        _end_of_thread.token = _EndOfThread(self._alive)
        _Worker._all.add(self)
        # What threading.Thread does on a new thread before its target runs (_bootstrap_inner):
        # the hooks of threading.settrace() and threading.setprofile() reach the workers too.
        if threading._trace_hook:
            sys.settrace(threading._trace_hook)
        if threading._profile_hook:
            sys.setprofile(threading._profile_hook)

    def is_alive(self):
        return self._alive.locked()

    def join(self, timeout=None):
        if self is threading.current_thread():
            raise RuntimeError("cannot join current thread")
        if timeout is None:
            got = self._alive.acquire()
        else:
            got = self._alive.acquire(timeout=max(timeout, 0))
        if got:
            self._alive.release()

    @classmethod
    def _forget_after_fork(cls):
        # In a fork() child only the forking thread exists; threading ends the others' records
        # the same way (threading._after_fork).
        current = threading.current_thread()
        for worker in list(cls._all):
            if worker is not current:
                worker._alive._at_fork_reinit()


def _on_worker_start(threads, name):
    # The native start hook calls this first on each new worker (python/src/executor.cpp).
    threads.add(_Worker(name))


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


# 3.14+, a subclass's own prepare_context: each worker makes its context and runs tasks in it.
_worker_context = threading.local()


def _init_context(create_context):
    try:
        ctx = create_context()
        _worker_context.ctx = ctx
        ctx.initialize()
    except BaseException:
        _base.LOGGER.critical("Exception in initializer:", exc_info=True)
        return False
    return True


def _run_in_context(task):
    return _worker_context.ctx.run(task)


def _fini_context():
    ctx = getattr(_worker_context, "ctx", None)
    if ctx is not None:
        del _worker_context.ctx
        ctx.finalize()


class _WorkQueue:
    """What programs read of the standard executor's _work_queue: the items no worker took."""

    def __init__(self, core):
        self._core = core

    def qsize(self):
        return self._core.queued()

    def empty(self):
        return self._core.queued() == 0

    def get_nowait(self):
        item = self._core.take_queued()
        if item is None:
            raise queue.Empty
        future, fn, args, kwargs = item
        if _HAS_CONTEXTS:
            return _std._WorkItem(future, (fn, args, kwargs))
        return _std._WorkItem(future, fn, args, kwargs)

    def get(self, block=True, timeout=None):
        """Only without waiting (no worker ever puts an item back): get_nowait()."""
        return self.get_nowait()


class ThreadPoolExecutor(_base.Executor):
    """An Executor that runs calls on a pool of native worker threads.

    A drop-in for concurrent.futures.ThreadPoolExecutor: same constructor, methods and behaviour
    (see the module's documentation for the few differences).
    """

    # Numbers the default thread name prefixes, as concurrent.futures does for its own.
    _counter = itertools.count().__next__

    if _HAS_CONTEXTS:
        BROKEN = _std.BrokenThreadPool

        @classmethod
        def prepare_context(cls, initializer, initargs):
            return _std.WorkerContext.prepare(initializer, initargs)

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=(),
                 **ctxkwargs):
        if ctxkwargs and not _HAS_CONTEXTS:
            name = next(iter(ctxkwargs))
            raise TypeError(f"__init__() got an unexpected keyword argument '{name}'")
        if max_workers is None:
            max_workers = _default_max_workers()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        init_worker = fini_worker = None
        if _HAS_CONTEXTS:
            # As the standard __init__: prepare_context checks the initializer.
            (self._create_worker_context,
             self._resolve_work_item_task) = type(self).prepare_context(initializer, initargs,
                                                                        **ctxkwargs)
            custom = type(self).prepare_context.__func__ is not \
                ThreadPoolExecutor.prepare_context.__func__
            if custom:
                init_worker = lambda create=self._create_worker_context: _init_context(create)
                fini_worker = _fini_context
        else:
            if initializer is not None and not callable(initializer):
                raise TypeError("initializer must be a callable")
            self._initializer = initializer
            self._initargs = initargs
            custom = False
        if initializer is not None and not custom:
            init_worker = lambda initializer=initializer, initargs=initargs: _init_worker(
                initializer, initargs)
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix or ("ThreadPoolExecutor-%d" % self._counter())
        self._threads = set()
        self._core = _core.Executor(max_workers, self._thread_name_prefix,
                                    lambda name, threads=self._threads: _on_worker_start(threads, name),
                                    init_worker, fini_worker)
        self._work_queue = _WorkQueue(self._core)
        if custom:
            self.submit = self._submit_in_context
        elif type(self).submit is ThreadPoolExecutor.submit:
            # The native submit itself, bound: one call per submit instead of two. A subclass
            # that overrides submit keeps its own.
            self.submit = self._core.submit

    @property
    def _broken(self):
        return self._core.broken

    @property
    def _shutdown(self):
        return self._core.shut_down

    def submit(self, fn, /, *args, **kwargs):
        return self._core.submit(fn, *args, **kwargs)

    submit.__doc__ = _base.Executor.submit.__doc__

    def _submit_in_context(self, fn, /, *args, **kwargs):
        return self._core.submit(_run_in_context, self._resolve_work_item_task(fn, args, kwargs))

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._core.shutdown(wait, cancel_futures)

    shutdown.__doc__ = _base.Executor.shutdown.__doc__


# Interpreter exit, as concurrent.futures does it: threading's exit hooks run in
# threading._shutdown(), which Py_FinalizeEx calls before atexit callbacks and before pyattach's
# gate closes; from then on submits raise, and queued work runs to completion before the join.
threading._register_atexit(_core.shutdown_all)
# In a fork() child the workers do not exist: the parent's executors refuse work there, and
# their thread objects are no longer alive.
os.register_at_fork(after_in_child=_core.after_fork_in_child)
os.register_at_fork(after_in_child=_Worker._forget_after_fork)

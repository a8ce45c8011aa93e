"""pyattach.ThreadPoolExecutor as a drop-in for concurrent.futures.ThreadPoolExecutor.

Every behaviour test runs twice: on the standard executor ("std") and on pyattach's
("pyattach"). The std leg is the control: it shows the test states what the standard library
actually does on the running interpreter, so a pass on the pyattach leg means "behaves like the
standard one here", not "behaves like the test author thought". Where the standard library's
behaviour differs between versions, the expected value is taken from std on the running version.

pyattach's workers are C++ threads (pyattach::thread_pool), each keeping one Python thread state;
a few tests check that the pyattach leg really runs on such threads (a re-export of the standard
class would otherwise pass everything).

Cases that can hang or crash the process (interpreter exit, garbage collection at exit, atexit,
fork) and the thread-count case run in child processes with a deadline (harness.run_python;
the scripts are in executor_cases.py).

If ``import pyattach`` fails, the pyattach leg fails (the test legs install the package); run
``-k std`` to check the standard library alone. PYATTACH_EXECUTOR_EXIT_RUNS (default 50) sets
the runs of the exit-with-work-in-flight case.
"""

import concurrent.futures as cf
import contextvars
import json
import logging
import os
import random
import re
import sys
import threading
import time
import traceback
from concurrent.futures.thread import BrokenThreadPool

import pytest

import executor_cases as cases
import harness

KINDS = ("std", "pyattach")
WAIT = 10.0  # bound on any wait that should end at once: a broken executor fails, never hangs
EXIT_RUNS = int(os.environ.get("PYATTACH_EXECUTOR_EXIT_RUNS", "50"))
CHILD_DEADLINE = 60  # a clean child ends in well under a second


def import_pyattach():
    try:
        import pyattach
    except ImportError as e:
        error = e
    else:
        return pyattach
    # Not a skip: the test legs install the package, so a missing module is a failed build.
    pytest.fail(f"import pyattach failed under {sys.executable} ({error!r}): pip install the "
                "package at the repository root into this venv first (the test legs do)",
                pytrace=False)


@pytest.fixture(params=KINDS)
def kind(request):
    if request.param == "pyattach":
        import_pyattach()
    return request.param


@pytest.fixture
def Executor(kind):
    if kind == "std":
        return cf.ThreadPoolExecutor
    cls = import_pyattach().ThreadPoolExecutor
    assert cls is not cf.ThreadPoolExecutor, "pyattach.ThreadPoolExecutor is the standard class"
    return cls


@pytest.fixture
def make(Executor):
    """Makes executors of the class under test and shuts them all down (waiting) at the end, so
    no test leaves workers behind for the next one. Tasks that block wait on events with a bound,
    so a teardown never hangs."""
    made = []

    def new(*args, **kwargs):
        ex = Executor(*args, **kwargs)
        made.append(ex)
        return ex

    yield new
    for ex in made:
        ex.shutdown(wait=True)


def until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def default_max_workers():
    if sys.version_info >= (3, 13):
        return min(32, (os.process_cpu_count() or 1) + 4)
    return min(32, (os.cpu_count() or 1) + 4)


class Held:
    """Holds one worker of `ex` busy, so that what is submitted next queues: a task that sets
    `started` and returns "first" once `release` is set (or after WAIT). `future` is its future;
    the constructor returns once the task runs."""

    def __init__(self, ex):
        self.started = threading.Event()
        self.release = threading.Event()

        def first():
            self.started.set()
            self.release.wait(WAIT)
            return "first"

        self.future = ex.submit(first)
        assert self.started.wait(WAIT)


def settle_concurrency(ex, expected, extra=2):
    """Submits expected + extra tasks that block until released, waits until `expected` of them
    run at once and a little longer for more to start, releases them all, and returns the most
    that ran at once: the executor's effective max_workers when it is `expected`."""
    release = threading.Event()
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def task():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(WAIT)
        with lock:
            running[0] -= 1

    fs = [ex.submit(task) for _ in range(expected + extra)]
    until(lambda: peak[0] >= expected)
    time.sleep(0.2)  # room for a worker too many to start
    release.set()
    for f in fs:
        f.result(timeout=WAIT)
    return peak[0]


def comm_of(native_id):
    with open(f"/proc/self/task/{native_id}/comm") as f:
        return f.read().rstrip("\n")


def shortened(name):
    """pyattach's OS thread name: the Python name cut to 15 characters, keeping the "_M" suffix."""
    suffix = "_" + name.rsplit("_", 1)[1]
    return name if len(name) <= 15 else name[:15 - len(suffix)] + suffix


# --- 0. the class under test is what it claims to be -------------------------------------------

def test_executor_class_and_worker_threads(kind, Executor, make):
    # A re-export or thin subclass of the standard executor would pass every drop-in test below;
    # the pyattach leg must run its tasks on pyattach's C++ workers, which Python sees as
    # _DummyThread objects, and which pyattach.threads() lists as its own.
    assert issubclass(Executor, cf.Executor)
    ex = make(2)

    def where():
        t = threading.current_thread()
        return type(t), t.name, threading.get_ident(), threading.get_native_id()

    cls, name, ident, native_id = ex.submit(where).result(timeout=WAIT)
    assert ident != threading.get_ident()
    if kind == "std":
        assert cls is threading.Thread
        return
    assert issubclass(cls, threading._DummyThread), f"task ran on a {cls}, not a native thread"
    pyattach = import_pyattach()
    infos = [t for t in pyattach.threads() if t.native_id == native_id]
    assert len(infos) == 1, f"worker {native_id} not in pyattach.threads(): {pyattach.threads()}"
    info = infos[0]
    assert info.made_by_pyattach and info.has_thread_state and info.pool, info
    assert info.name == name, info
    executors = [s for s in pyattach.stats() if native_id in [w["native_id"] for w in s["workers"]]]
    assert len(executors) == 1, pyattach.stats()
    assert executors[0]["completed"] >= 1, executors[0]


# --- 1. constructor ----------------------------------------------------------------------------

def test_default_max_workers(kind, Executor, make):
    expected = default_max_workers()
    if kind == "std":
        # The control: the formula is the running CPython's default.
        assert cf.ThreadPoolExecutor()._max_workers == expected
    ex = make()
    # Behaviour, not an attribute: with more tasks than workers, exactly max_workers run at once.
    assert settle_concurrency(ex, expected) == expected


def test_explicit_max_workers_bounds_concurrency(Executor, make):
    assert settle_concurrency(make(3), 3, extra=3) == 3
    assert settle_concurrency(make(1), 1, extra=3) == 1


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_max_workers_not_positive(Executor, bad):
    with pytest.raises(ValueError) as e:
        Executor(bad)
    assert str(e.value) == "max_workers must be greater than 0"
    with pytest.raises(ValueError) as e:
        Executor(max_workers=bad)
    assert str(e.value) == "max_workers must be greater than 0"


@pytest.mark.parametrize("bad", [3, "init", object()])
def test_initializer_not_callable(Executor, bad):
    with pytest.raises(TypeError) as e:
        Executor(2, initializer=bad)
    assert str(e.value) == "initializer must be a callable"


def test_constructor_keywords(Executor, make):
    # The standard signature, by keyword: (max_workers, thread_name_prefix, initializer, initargs).
    seen = []
    ex = make(max_workers=1, thread_name_prefix="kw", initializer=seen.append, initargs=("x",))
    assert ex.submit(lambda: threading.current_thread().name).result(timeout=WAIT) == "kw_0"
    assert seen == ["x"]


# --- 2. futures --------------------------------------------------------------------------------

def test_submit_returns_a_real_future(Executor, make):
    ex = make(2)
    f = ex.submit(divmod, 17, 5)
    assert type(f) is cf.Future
    assert f.result(timeout=WAIT) == (3, 2)
    assert f.done() and not f.cancelled() and not f.running() and f.exception() is None
    # submit(fn, /, *args, **kwargs): a keyword named "fn" goes to the function.
    assert ex.submit(dict, fn=1, timeout=2).result(timeout=WAIT) == {"fn": 1, "timeout": 2}


def test_submit_not_callable_fails_in_the_future(Executor, make):
    # The standard executor does not check fn: the call fails in the worker, on the future.
    f = make(1).submit(3)
    assert isinstance(f.exception(timeout=WAIT), TypeError)


def test_wait_and_as_completed(Executor, make):
    ex = make(4)
    release = threading.Event()
    blocked = ex.submit(release.wait, WAIT)
    quick = [ex.submit(time.sleep, 0.001 * (i % 5)) for i in range(20)]

    done, not_done = cf.wait([blocked] + quick, timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    assert done and blocked in not_done
    done, not_done = cf.wait(quick, timeout=WAIT)
    assert done == set(quick) and not not_done
    done, not_done = cf.wait([blocked], timeout=0.05)
    assert not done and not_done == {blocked}

    seen = []
    release.set()
    for f in cf.as_completed([blocked] + quick, timeout=WAIT):
        seen.append(f)
    assert len(seen) == 21 and set(seen) == set(quick) | {blocked}
    assert blocked.result() is True


def test_done_callback(Executor, make):
    ex = make(1)
    release = threading.Event()
    f = ex.submit(lambda: release.wait(WAIT) and "value")
    calls = []
    f.add_done_callback(lambda fut: calls.append((fut, threading.get_ident())))
    time.sleep(0.05)
    assert calls == [], "callback ran before the task finished"
    release.set()
    assert f.result(timeout=WAIT) == "value"
    assert until(lambda: calls)
    time.sleep(0.05)
    assert len(calls) == 1 and calls[0][0] is f

    # Added after completion: runs at once, on the adding thread, before add_done_callback returns.
    late = []
    f.add_done_callback(lambda fut: late.append((fut, threading.get_ident())))
    assert late == [(f, threading.get_ident())]
    assert len(calls) == 1


def test_cancel_queued_future(Executor, make):
    ex = make(1)
    held = Held(ex)
    f1 = held.future
    ran = []
    f2 = ex.submit(ran.append, "second")
    assert f1.running() and not f2.running() and not f2.done()
    assert not f1.cancel(), "a running future was cancelled"
    assert f2.cancel() is True
    assert f2.cancelled() and f2.done()
    held.release.set()
    assert f1.result(timeout=WAIT) == "first"
    # The worker must skip the cancelled item: it must run the next one, and never the cancelled.
    assert ex.submit(ran.append, "third").result(timeout=WAIT) is None
    ex.shutdown(wait=True)
    assert ran == ["third"]
    with pytest.raises(cf.CancelledError):
        f2.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        f2.exception(timeout=0)


def test_result_timeout(Executor, make):
    ex = make(1)
    release = threading.Event()
    f = ex.submit(release.wait, WAIT)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.05)
    assert not f.done()
    release.set()
    assert f.result(timeout=WAIT) is True


# --- 3. exceptions -----------------------------------------------------------------------------

def failing_task(holder):
    e = ValueError("from the task")
    holder.append(e)
    raise e


def test_exception_is_the_raised_object(Executor, make):
    ex = make(2)
    holder = []
    f = ex.submit(failing_task, holder)
    exc = f.exception(timeout=WAIT)
    assert exc is holder[0]
    with pytest.raises(ValueError) as info:
        f.result(timeout=0)
    assert info.value is holder[0]
    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert "failing_task" in names, names


class CustomBase(BaseException):
    pass


def raise_base(cls, holder):
    holder.append(threading.get_native_id())
    raise cls("from the task")


@pytest.mark.parametrize("cls", [KeyboardInterrupt, SystemExit, CustomBase],
                         ids=["KeyboardInterrupt", "SystemExit", "custom"])
def test_base_exceptions_land_on_the_future(Executor, make, cls):
    ex = make(1)
    holder = []
    f = ex.submit(raise_base, cls, holder)
    exc = f.exception(timeout=WAIT)
    assert type(exc) is cls and exc.args == ("from the task",)
    with pytest.raises(cls):
        f.result(timeout=0)
    # The worker survived: the single worker runs the next task (same OS thread).
    assert ex.submit(threading.get_native_id).result(timeout=WAIT) == holder[0]
    assert ex.submit(pow, 2, 10).result(timeout=WAIT) == 1024


# --- 4. map ------------------------------------------------------------------------------------

def test_map_order(Executor, make):
    ex = make(4)
    rng = random.Random(4)
    delays = [rng.uniform(0, 0.004) for _ in range(60)]

    def task(i, d):
        time.sleep(d)
        return i * 10

    assert list(ex.map(task, range(60), delays)) == [i * 10 for i in range(60)]
    assert list(ex.map(pow, [2, 3, 4], [5, 6])) == [32, 729]  # zips, shortest wins


def test_map_submits_eagerly(Executor, make):
    # Executor.map submits every call when called, before the iterator is consumed.
    ex = make(2)
    ran = []
    it = ex.map(ran.append, range(5))
    assert until(lambda: len(ran) == 5)
    assert list(it) == [None] * 5


def test_map_timeout(Executor, make):
    ex = make(1)
    release = threading.Event()
    it = ex.map(lambda x: release.wait(WAIT) and x, [1, 2], timeout=0.1)
    with pytest.raises(cf.TimeoutError):  # a map that waited for the task would return 1
        next(it)
    release.set()


def test_map_chunksize_accepted(Executor, make):
    ex = make(3)
    assert list(ex.map(abs, range(-50, 0), chunksize=7)) == list(range(50, 0, -1))
    assert list(ex.map(abs, range(-5, 0), timeout=WAIT, chunksize=1)) == [5, 4, 3, 2, 1]


def test_map_exception_reraised_when_iterating(Executor, make):
    ex = make(2)

    def task(x):
        if x == 2:
            raise ValueError("two")
        return x

    it = ex.map(task, [1, 2, 3])
    assert next(it) == 1
    with pytest.raises(ValueError, match="two"):
        next(it)


def test_map_empty(Executor, make):
    ex = make(2)
    assert list(ex.map(abs, [])) == []
    assert list(ex.map(pow, [], [])) == []
    assert list(ex.map(pow, [1, 2], [])) == []


# --- 5. shutdown -------------------------------------------------------------------------------

def test_shutdown_wait_waits_for_running_and_queued(Executor, make):
    ex = make(2)
    ran = []

    def task(i):
        time.sleep(0.05)
        ran.append(i)

    fs = [ex.submit(task, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert sorted(ran) == list(range(6))
    assert all(f.done() and not f.cancelled() for f in fs)
    ex.shutdown(wait=True)  # again: a no-op


def test_shutdown_nowait_returns_while_running(Executor, make):
    ex = make(1)
    held = Held(ex)
    queued = ex.submit(pow, 3, 3)
    ex.shutdown(wait=False)
    assert not held.future.done()  # it ends only after release: shutdown did not wait for it
    held.release.set()
    assert held.future.result(timeout=WAIT) == "first"
    assert queued.result(timeout=WAIT) == 27  # without cancel_futures, queued work still runs


@pytest.mark.parametrize("wait", [False, True], ids=["nowait", "wait"])
def test_shutdown_cancel_futures(Executor, make, wait):
    ex = make(1)
    held = Held(ex)
    f1 = held.future
    ran = []
    queued = [ex.submit(ran.append, i) for i in range(5)]
    if wait:
        timer = threading.Timer(0.2, held.release.set)
        timer.start()
        ex.shutdown(wait=True, cancel_futures=True)
        timer.join()
        assert f1.done()
    else:
        ex.shutdown(wait=False, cancel_futures=True)
        held.release.set()
    assert f1.result(timeout=WAIT) == "first"
    assert all(f.cancelled() for f in queued)
    ex.shutdown(wait=True)
    assert ran == []


def test_submit_after_shutdown(Executor, make):
    ex = make(2)
    assert ex.submit(int, "5").result(timeout=WAIT) == 5
    ex.shutdown()
    with pytest.raises(RuntimeError) as e:
        ex.submit(int, "6")
    assert str(e.value) == "cannot schedule new futures after shutdown"
    with pytest.raises(RuntimeError):
        ex.map(abs, [1])
    # Never started: shut down right away.
    ex2 = make(2)
    ex2.shutdown(wait=False)
    with pytest.raises(RuntimeError) as e:
        ex2.submit(int, "6")
    assert str(e.value) == "cannot schedule new futures after shutdown"


def test_context_manager(Executor):
    ran = []

    def task(i):
        time.sleep(0.02)
        ran.append(i)

    with Executor(2) as ex:
        assert isinstance(ex, Executor)
        fs = [ex.submit(task, i) for i in range(6)]
    assert sorted(ran) == list(range(6)) and all(f.done() for f in fs)
    with pytest.raises(RuntimeError):
        ex.submit(task, 7)


# --- 6. initializer ----------------------------------------------------------------------------

def test_initializer_once_per_worker(Executor, make):
    inits = []

    def init(a, b):
        inits.append((a, b, threading.get_ident(), threading.get_native_id()))

    ex = make(3, initializer=init, initargs=("a", 2))
    release = threading.Event()
    started = []

    def task():
        started.append(1)
        release.wait(WAIT)
        return threading.get_ident(), threading.get_native_id()

    fs = [ex.submit(task) for _ in range(3)]
    assert until(lambda: len(started) == 3), "three blocking tasks did not run at once"
    release.set()
    workers = {f.result(timeout=WAIT) for f in fs}
    assert len(workers) == 3
    more = {ex.submit(lambda: (threading.get_ident(), threading.get_native_id())).result(timeout=WAIT)
            for _ in range(20)}
    assert more <= workers
    assert len(inits) == 3, inits
    assert all(a == "a" and b == 2 for a, b, _, _ in inits)
    assert {(i, n) for _, _, i, n in inits} == workers  # ran on the workers themselves
    assert threading.get_ident() not in {i for _, _, i, _ in inits}


def test_initializer_failure_breaks_the_pool(Executor, make, caplog):
    def init():
        raise ZeroDivisionError("init failed")

    caplog.set_level(logging.CRITICAL, logger="concurrent.futures")
    ex = make(1, initializer=init)
    f = ex.submit(pow, 2, 2)
    exc = f.exception(timeout=WAIT)
    assert isinstance(exc, BrokenThreadPool), repr(exc)
    assert str(exc) == "A thread initializer failed, the thread pool is not usable anymore"
    with pytest.raises(BrokenThreadPool):
        f.result(timeout=0)
    with pytest.raises(BrokenThreadPool):
        ex.submit(pow, 3, 3)
    records = [r for r in caplog.records
               if r.name == "concurrent.futures" and r.getMessage() == "Exception in initializer:"]
    assert len(records) == 1, [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0].levelno == logging.CRITICAL
    assert records[0].exc_info and records[0].exc_info[0] is ZeroDivisionError


# --- 7. names ----------------------------------------------------------------------------------

def test_default_thread_name(Executor, make):
    ex = make(2)
    name = ex.submit(lambda: threading.current_thread().name).result(timeout=WAIT)
    assert re.fullmatch(r"ThreadPoolExecutor-\d+_\d+", name), name
    assert name.endswith("_0"), name


def test_prefix_thread_name_and_enumerate(Executor, make):
    ex = make(2, thread_name_prefix="pfx")
    release = threading.Event()
    started = threading.Event()

    def task():
        started.set()
        release.wait(WAIT)
        return threading.current_thread().name, threading.get_ident()

    f = ex.submit(task)
    assert started.wait(WAIT)
    listed = {t.name: t.ident for t in threading.enumerate()}
    release.set()
    name, ident = f.result(timeout=WAIT)
    assert name == "pfx_0"
    assert listed.get("pfx_0") == ident, f"pfx_0 not in threading.enumerate(): {sorted(listed)}"


@pytest.mark.parametrize("prefix", ["", "pfx", "a-rather-long-thread-name-prefix"],
                         ids=["default", "short", "long"])
def test_os_thread_name(kind, make, prefix):
    # 12 workers at once, so the suffixes run to two digits (_10, _11).
    n = 12
    ex = make(n, thread_name_prefix=prefix)
    release = threading.Event()
    seen = []

    def task():
        me = threading.get_native_id()
        seen.append((threading.current_thread().name, me, comm_of(me)))
        release.wait(WAIT)

    fs = [ex.submit(task) for _ in range(n)]
    started = until(lambda: len(seen) == n)
    release.set()
    for f in fs:
        f.result(timeout=WAIT)
    assert started, f"only {len(seen)} of {n} workers ran at once"
    main_comm = comm_of(threading.get_native_id())
    want_prefix = prefix or "ThreadPoolExecutor-"
    assert sorted(int(name.rsplit("_", 1)[1]) for name, _, _ in seen) == list(range(n))
    for name, native_id, comm in seen:
        assert name.startswith(want_prefix), name
        if kind == "pyattach":
            assert comm == shortened(name), (name, comm)
        elif sys.version_info >= (3, 14):
            # CPython 3.14 names OS threads after the Python name, truncated to 15 bytes.
            assert comm and name.startswith(comm), (name, comm)
        else:
            # CPython before 3.14 sets no OS thread name: the thread keeps the process's.
            assert comm == main_comm, (name, comm)
    assert shortened("ThreadPoolExecutor-3_0") == "ThreadPoolExe_0"  # the rule itself
    assert shortened("a-rather-long-thread-name-prefix_11") == "a-rather-lon_11"


# --- 8. thread state kept per worker: threading.local and contextvars -------------------------

def test_threading_local_persists_on_the_worker(Executor, make):
    ex = make(1)
    local = threading.local()

    def task():
        local.n = getattr(local, "n", 0) + 1
        return local.n, threading.get_native_id()

    fs = [ex.submit(task) for _ in range(1000)]
    got = [f.result(timeout=WAIT) for f in fs]
    assert [n for n, _ in got] == list(range(1, 1001))
    assert len({tid for _, tid in got}) == 1
    assert getattr(local, "n", None) is None  # the submitting thread's own local is untouched


CV = contextvars.ContextVar("test_executor_cv", default="unset")


def context_scenario(executor_class):
    """(what a task sees of a var the submitter set, what a task sees of a var the previous task
    on the same single worker set); the submitter's own value is restored after."""
    token = CV.set("submitter")
    try:
        with executor_class(1) as ex:
            from_submitter = ex.submit(CV.get).result(timeout=WAIT)
            ex.submit(CV.set, "task-1").result(timeout=WAIT)
            from_previous_task = ex.submit(CV.get).result(timeout=WAIT)
        assert CV.get() == "submitter"
    finally:
        CV.reset(token)
    return from_submitter, from_previous_task


def test_contextvars_as_in_the_standard(Executor):
    expected = context_scenario(cf.ThreadPoolExecutor)
    if (3, 9) <= sys.version_info < (3, 14):
        # Checked on 3.9, 3.11 and 3.13: each worker thread has its own context, which its tasks
        # share; nothing of the submitter's context is copied.
        assert expected == ("unset", "task-1")
    assert context_scenario(Executor) == expected


# --- 9. lazy start -----------------------------------------------------------------------------

def test_lazy_start_and_idle_reuse(kind):
    out = harness.run_python(cases.script(kind, cases.LAZY_START), timeout=CHILD_DEADLINE)
    assert out.kind == "clean", out.describe()
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["constructed"] == r["before"], f"constructing started threads: {r}"
    ids = set(r["ids"])
    assert r["main"] not in ids
    # Every OS thread added since construction is a worker that ran a task.
    assert r["after_tasks"] - r["before"][0] == len(ids), r
    if kind == "pyattach":
        assert len(ids) == 1, f"50 sequential tasks used {len(ids)} workers"
    else:
        # The standard executor reuses an idle worker (its idle semaphore), one worker in every
        # run seen here; the semaphore is released just after the result is set, so a GIL switch
        # in between could start a second worker: allow that, not more.
        assert len(ids) <= 2, f"50 sequential tasks used {len(ids)} workers"


# --- 10. stress --------------------------------------------------------------------------------

class Boom(BaseException):
    pass


def stress_task(i, what):
    if what == 1:
        raise ValueError(i)
    if what == 2:
        raise Boom(i)
    return i


def test_stress_every_future_done_once(kind, make):
    n = 100_000 if kind == "pyattach" else 20_000
    rng = random.Random(10)
    whats = [rng.choice((0, 0, 1, 2)) for _ in range(n)]
    calls = [[] for _ in range(n)]
    ex = make(4)
    t0 = time.monotonic()
    fs = []
    for i, what in enumerate(whats):
        f = ex.submit(stress_task, i, what)
        f.add_done_callback(calls[i].append)  # list.append is atomic: one entry per call
        fs.append(f)
    done, not_done = cf.wait(fs, timeout=90)
    assert not not_done, f"{len(not_done)} futures not done after 90 s"
    ex.shutdown(wait=True)  # the workers have returned: every callback has run
    seconds = time.monotonic() - t0
    bad = []
    for i, (f, what) in enumerate(zip(fs, whats)):
        if len(calls[i]) != 1 or calls[i][0] is not f:
            bad.append(f"future {i}: {len(calls[i])} callback calls")
        elif f.cancelled():
            bad.append(f"future {i}: cancelled")
        elif what == 0:
            if f.exception() is not None or f.result() != i:
                bad.append(f"future {i}: {f.exception()!r}")
        else:
            e = f.exception()
            if type(e) is not (ValueError if what == 1 else Boom) or e.args != (i,):
                bad.append(f"future {i}: {e!r} for what={what}")
        if len(bad) >= 10:
            break
    assert not bad, "\n".join(bad)
    assert whats.count(0) and whats.count(1) and whats.count(2)
    print(f"stress {kind}: {n} tasks in {seconds:.1f} s")


# --- 11. interpreter exit (children) -----------------------------------------------------------

def markers_check(n):
    def check(outcome):
        done = sorted(int(m) for m in re.findall(r"^done (\d+)$", outcome.stdout, re.M))
        if f"submitted {n}" not in outcome.stdout:
            return "the script did not finish submitting"
        if done != list(range(n)):
            missing = sorted(set(range(n)) - set(done))
            return f"{len(done)} of {n} tasks ran (missing {missing[:10]}...)"
        return ""
    return check


@pytest.mark.parametrize("variant", ["global", "global-default-workers", "del"])
def test_exit_runs_every_submitted_task(kind, variant):
    n = 200
    body = cases.EXIT_AFTER_DEL if variant == "del" else cases.EXIT_WITH_WORK
    workers = "" if variant == "global-default-workers" else 4
    out = harness.run_python(cases.script(kind, body, n=n, max_workers=workers),
                             timeout=CHILD_DEADLINE, check=markers_check(n))
    assert out.kind == "clean", out.describe()


def test_del_with_work_queued_completes_futures(kind):
    out = harness.run_python(cases.script(kind, cases.DEL_THEN_WAIT, n=200, max_workers=3),
                             timeout=CHILD_DEADLINE)
    assert out.kind == "clean", out.describe()
    assert out.stdout.split() == ["done", "200", "not_done", "0", "cancelled", "0", "ok", "True"], \
        out.describe()


def atexit_lines(kind):
    out = harness.run_python(cases.script(kind, cases.ATEXIT_SUBMIT), timeout=CHILD_DEADLINE)
    assert out.kind == "clean", out.describe()
    return out.stdout.strip().splitlines(), out


def test_submit_from_atexit_refused(kind):
    # The standard executor's exit hook runs before atexit callbacks (threading's own exit hooks),
    # so every submit from an atexit callback raises RuntimeError, with one of two messages: an
    # executor whose workers ran has been flagged shut down by them on their way out ("after
    # shutdown"); a new or never-started one meets only the module's flag ("after interpreter
    # shutdown"). Same on 3.9, 3.11 and 3.13; the pyattach leg compares with std on the running
    # version.
    std_lines, std_out = atexit_lines("std")
    after_shutdown = "RuntimeError: cannot schedule new futures after shutdown"
    after_interpreter = "RuntimeError: cannot schedule new futures after interpreter shutdown"
    assert std_lines == [
        "main done",
        f"registered-after-start -> {after_shutdown}",
        f"never-started -> {after_interpreter}",
        f"new-executor -> {after_interpreter}",
        f"registered-before-import -> {after_shutdown}",
    ], std_out.describe()
    if kind == "pyattach":
        lines, out = atexit_lines(kind)
        assert lines == std_lines, out.describe()


def test_exit_with_work_in_flight_many_runs(kind):
    # The exit race of the executor: EXIT_RUNS processes end 0-20 ms after submitting 200 tasks
    # to 4 workers, two processes at a time. Every run must end by itself, with status 0 and
    # every task run.
    n = 200
    code = cases.script(kind, cases.EXIT_WITH_WORK, n=n, max_workers=4)
    rng = random.Random(f"exit-{kind}")
    delays = [0.0 if i % 4 == 0 else rng.uniform(0, 0.020) for i in range(EXIT_RUNS)]
    check = markers_check(n)
    with cf.ThreadPoolExecutor(2) as runner:
        outcomes = list(runner.map(
            lambda d: harness.run_python(code, timeout=CHILD_DEADLINE, args=[f"{d:.4f}"],
                                         check=check), delays))
    counts = {k: sum(o.kind == k for o in outcomes) for k in ("clean", "abort", "crash", "hang",
                                                               "wrong")}
    slowest = max(o.seconds for o in outcomes)
    print(f"executor exit race {kind}: {EXIT_RUNS} runs {counts} slowest {slowest:.2f} s")
    failures = [f"run {i} (sleep {d * 1000:.1f} ms): {o.describe()}"
                for i, (d, o) in enumerate(zip(delays, outcomes)) if o.kind != "clean"][:3]
    assert counts["clean"] == EXIT_RUNS, f"{counts}\n\n" + "\n\n".join(failures)


# --- 12. fork (children) -----------------------------------------------------------------------

@pytest.mark.parametrize("busy", ["idle", "busy"])
def test_fork_with_live_executor(kind, busy):
    out = harness.run_python(cases.script(kind, cases.FORK, busy=busy), timeout=CHILD_DEADLINE)
    assert out.kind == "clean", out.describe()
    lines = out.stdout.split("\n")
    assert "child exit 0" in lines, out.describe()
    assert "parent ok" in lines, out.describe()


# --- 13. what programs read of the standard object ---------------------------------------------

def test_worker_threads_as_threading_sees_them(make):
    # executor._threads: one threading.Thread per started worker, there when the submit that
    # started it returns, joinable, not a daemon, and the thread its tasks see as current.
    ex = make(3, thread_name_prefix="Seen")
    release = threading.Event()

    def task():
        t = threading.current_thread()
        release.wait(WAIT)
        return t, threading.get_ident(), threading.get_native_id()

    fs = [ex.submit(task) for _ in range(3)]
    threads = set(ex._threads)
    assert len(threads) == 3
    assert sorted(t.name for t in threads) == ["Seen_0", "Seen_1", "Seen_2"]
    assert all(t.is_alive() and not t.daemon for t in threads), [(t, t.daemon) for t in threads]
    release.set()
    seen = [f.result(timeout=WAIT) for f in fs]
    for current, ident, native_id in seen:
        assert current in threads
        assert (current.ident, current.native_id) == (ident, native_id)
    for t in threads:
        t.join(0)  # a timeout that ends at once, on a live thread: returns, nothing raised
    ex.shutdown(wait=True)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert set(threading.enumerate()).isdisjoint(threads)


def test_worker_cannot_join_itself(make):
    ex = make(1)

    def join_self():
        with pytest.raises(RuntimeError, match="cannot join current thread"):
            threading.current_thread().join()
        return True

    assert ex.submit(join_self).result(timeout=WAIT)


def test_private_state_as_the_standard_object_has_it(make):
    ex = make(1, thread_name_prefix="Priv")
    assert (ex._max_workers, ex._thread_name_prefix, ex._broken, ex._shutdown) == (1, "Priv", False, False)
    if sys.version_info < (3, 14):
        init = make(1, initializer=print, initargs=("x",))
        assert (init._initializer, init._initargs) == (print, ("x",))
    else:
        assert ex.BROKEN is BrokenThreadPool
        assert callable(ex._create_worker_context) and callable(ex._resolve_work_item_task)
    # _work_queue: the items no worker has taken, which a program may count or take back.
    release = threading.Event()
    first = ex.submit(release.wait, WAIT)
    assert until(first.running)
    queued = [ex.submit(pow, 2, i) for i in range(3)]
    assert ex._work_queue.qsize() == 3 and not ex._work_queue.empty()
    item = ex._work_queue.get_nowait()
    assert item.future is queued[0]
    assert ex._work_queue.qsize() == 2
    release.set()
    assert first.result(timeout=WAIT) is True
    assert [f.result(timeout=WAIT) for f in queued[1:]] == [2, 4]
    assert not queued[0].done()  # taken off the queue: nobody runs it now
    import queue
    with pytest.raises(queue.Empty):
        ex._work_queue.get_nowait()
    ex.shutdown(wait=True)
    assert ex._shutdown is True


def test_broken_holds_the_message(make):
    def fail():
        raise ValueError("no")

    ex = make(1, initializer=fail)
    f = ex.submit(pow, 2, 2)
    with pytest.raises(BrokenThreadPool):
        f.result(timeout=WAIT)
    assert until(lambda: ex._broken)
    assert ex._broken == "A thread initializer failed, the thread pool is not usable anymore"


def test_submit_that_starts_a_worker_leaves_it_that_item(make):
    # concurrent.futures' submit waits for the thread it starts, which takes the oldest queued
    # item: cancelling everything right after never cancels that one (CPython's own
    # test_cancel_futures relies on it).
    ex = make(1)
    fs = [ex.submit(time.sleep, 0.05) for _ in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert not fs[0].cancelled() and fs[0].done()
    assert all(f.cancelled() for f in fs[2:])


@pytest.mark.skipif(sys.version_info < (3, 14), reason="prepare_context is new in 3.14")
def test_prepare_context_of_a_subclass(Executor, kind):
    # 3.14's extension point: a subclass's per-worker context initializes on each worker, runs
    # every task of that worker, and finalizes when the worker leaves.
    events = []

    class Context:
        def __init__(self, tag):
            self.tag = tag

        def initialize(self):
            events.append(("init", threading.get_ident()))

        def finalize(self):
            events.append(("fini", threading.get_ident()))

        def run(self, task):
            fn, args = task
            return (self.tag, fn(*args))

    class Sub(Executor):
        @classmethod
        def prepare_context(cls, initializer, initargs, *, tag):
            return (lambda: Context(tag)), (lambda fn, args, kwargs: (fn, args))

    ex = Sub(2, tag="T")
    assert [f.result(timeout=WAIT) for f in [ex.submit(pow, 3, 2), ex.submit(abs, -4)]] == [
        ("T", 9), ("T", 4)]
    ex.shutdown(wait=True)
    inits = [e for e in events if e[0] == "init"]
    finis = [e for e in events if e[0] == "fini"]
    assert inits and sorted(i for _, i in inits) == sorted(i for _, i in finis), events


@pytest.mark.parametrize("which", ["settrace", "setprofile"])
def test_threading_hooks_reach_workers(make, which):
    # threading.settrace/setprofile install their function on each thread threading starts
    # afterwards; the standard executor's workers are such threads.
    seen = []

    def hook(frame, event, arg):
        if frame.f_code.co_name == "traced_task":
            seen.append(event)
        return None

    def traced_task():
        return 42

    getattr(threading, which)(hook)
    try:
        ex = make(1)
        assert ex.submit(traced_task).result(timeout=WAIT) == 42
    finally:
        getattr(threading, which)(None)
    assert "call" in seen, seen

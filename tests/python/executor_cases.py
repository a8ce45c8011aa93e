"""Child-process scripts for test_executor.py: the executor cases that can hang or crash (exit,
garbage collection at exit, atexit, fork) and the ones that need a fresh process (thread counts).

Each script is run by harness.run_python with a deadline. ``script(kind, body)`` puts in front of
the body (or where it says ``$preamble``) an import that binds ``ThreadPoolExecutor`` to the class
under test: the standard library's for kind "std", pyattach's for kind "pyattach". The bodies are
plain code with ``string.Template`` $-placeholders (no str.format braces to escape).

Task output goes through os.write(1, ...): one write(2) per marker line, so lines printed by
several workers at once never interleave (print() makes two writes: the text, then the newline).
"""

import string
import textwrap

PREAMBLE = {
    "std": "from concurrent.futures import ThreadPoolExecutor\n",
    "pyattach": "from pyattach import ThreadPoolExecutor\n",
}


def script(kind, body, **subst):
    """The body with its $-placeholders filled in; the import of the class under test goes where
    the body says $preamble, or in front of it."""
    body = textwrap.dedent(body)
    if "$preamble" not in body:
        body = "$preamble\n" + body
    subst = {k: str(v) for k, v in subst.items()}
    return string.Template(body).substitute(preamble=PREAMBLE[kind], **subst)


# Submits $n tasks (each sleeps 1 ms, then writes "done <i>") and ends without shutdown(): the
# interpreter's exit has to run every submitted task, as the standard executor's exit hook does
# (it joins its workers, which drain their queue first). $ending is how the script ends:
# END_AFTER_DELAY or END_AFTER_DEL.
EXIT_WITH_WORK_BODY = """
import gc, os, sys, time
N = $n
def task(i):
    time.sleep(0.001)
    os.write(1, b"done %d\\n" % i)
ex = ThreadPoolExecutor($max_workers)
for i in range(N):
    ex.submit(task, i)
os.write(1, b"submitted %d\\n" % N)
$ending
"""
# argv[1]: seconds to sleep before the end (0 = end at once, with nearly all the work queued).
END_AFTER_DELAY = """delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
if delay:
    time.sleep(delay)"""
# The executor dropped (its last reference deleted, then a collection) while work is still
# queued, and the process ending at once.
END_AFTER_DEL = """del ex
gc.collect()"""
EXIT_WITH_WORK = EXIT_WITH_WORK_BODY.replace("$ending", END_AFTER_DELAY)
EXIT_AFTER_DEL = EXIT_WITH_WORK_BODY.replace("$ending", END_AFTER_DEL)

# The executor dropped with work queued, and the futures waited for before the end: every one
# completes (none is cancelled or left pending) though no one holds the executor any more.
DEL_THEN_WAIT = """
import concurrent.futures as cf, gc, os, time
N = $n
def task(i):
    time.sleep(0.001)
    return i
ex = ThreadPoolExecutor($max_workers)
fs = [ex.submit(task, i) for i in range(N)]
del ex
gc.collect()
done, not_done = cf.wait(fs, timeout=30)
results = [f.result() for f in fs if f.done() and not f.cancelled()]
print("done", len(done), "not_done", len(not_done),
      "cancelled", sum(f.cancelled() for f in fs), "ok", results == list(range(N)))
"""

# submit() from atexit callbacks (they run last registered, first run): to an executor whose
# workers started, from a callback registered before the executor class was imported and from one
# registered after the workers started; to an executor made but never used (no workers); and to a
# new executor made inside the callback. Each writes what submit() did.
ATEXIT_SUBMIT = """
import atexit, os

def attempt(label, make):
    try:
        ex = make()
        f = ex.submit(int, "7")
        what = "submitted: result %r" % (f.result(timeout=10),)
    except BaseException as e:
        what = "%s: %s" % (type(e).__name__, e)
    os.write(1, ("%s -> %s\\n" % (label, what)).encode())

atexit.register(lambda: attempt("registered-before-import", lambda: EX))
$preamble
EX = ThreadPoolExecutor(2)
assert EX.submit(int, "1").result(timeout=10) == 1
UNUSED = ThreadPoolExecutor(2)
atexit.register(lambda: attempt("new-executor", lambda: ThreadPoolExecutor(1)))
atexit.register(lambda: attempt("never-started", lambda: UNUSED))
atexit.register(lambda: attempt("registered-after-start", lambda: EX))
os.write(1, b"main done\\n")
"""

# Fork with a live executor (its workers started, idle or busy in tasks at the fork). The child
# makes a new executor, runs 10 tasks through it, shuts it down and reports through its exit
# status (0: right results; 7: wrong results or an exception). The parent waits for the child
# with its own deadline (a hung child is killed: status "hung"), then checks that its executor
# still runs tasks.
FORK = """
import os, sys, threading, time
BUSY = "$busy" == "busy"
ex = ThreadPoolExecutor(4)
release = threading.Event()
started = []
if BUSY:
    def blocker(i):
        started.append(i)
        release.wait(20)
        return i
    busy = [ex.submit(blocker, i) for i in range(4)]
    deadline = time.monotonic() + 10
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(started) == 4, started
else:
    fs = [ex.submit(time.sleep, 0.005) for _ in range(8)]
    for f in fs:
        f.result(timeout=10)

pid = os.fork()
if pid == 0:
    status = 7
    try:
        # The parent's workers do not exist here, and their thread objects say so.
        alive = [t.name for t in ex._threads if t.is_alive()]
        if alive:
            raise AssertionError("parent's workers alive in the child: %r" % (alive,))
        with ThreadPoolExecutor(2) as ex2:
            fs2 = [ex2.submit(pow, i, 2) for i in range(10)]
            got = [f.result(timeout=10) for f in fs2]
        if got == [i * i for i in range(10)]:
            status = 0
        else:
            os.write(2, ("child: wrong results %r\\n" % (got,)).encode())
    except BaseException as e:
        os.write(2, ("child: %s: %s\\n" % (type(e).__name__, e)).encode())
    os._exit(status)

deadline = time.monotonic() + 20
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung")
        sys.exit(3)
    time.sleep(0.005)
if os.WIFEXITED(status):
    print("child exit", os.WEXITSTATUS(status))
else:
    print("child signal", os.WTERMSIG(status))
release.set()
if BUSY:
    assert [f.result(timeout=10) for f in busy] == [0, 1, 2, 3]
assert ex.submit(pow, 6, 2).result(timeout=10) == 36
assert sorted(ex.map(abs, range(-20, 0))) == list(range(1, 21))
ex.shutdown(wait=True)
print("parent ok")
"""

# Thread counts around construction and 50 sequential submit+result calls on an 8-worker
# executor, in a fresh process (no other test's threads coming or going). Prints one JSON line.
LAZY_START = """
import json, os, threading
def os_threads():
    return len(os.listdir("/proc/self/task"))
before = (os_threads(), threading.active_count())
ex = ThreadPoolExecutor(8)
constructed = (os_threads(), threading.active_count())
ids = [ex.submit(threading.get_native_id).result(timeout=10) for _ in range(50)]
after_tasks = os_threads()
ex.shutdown(wait=True)
print(json.dumps({"before": before, "constructed": constructed,
                  "after_tasks": after_tasks, "ids": ids,
                  "main": threading.get_native_id()}))
"""

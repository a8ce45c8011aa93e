"""CPython's own ThreadPoolExecutor tests, run against pyattach.ThreadPoolExecutor.

The specification a user holds a drop-in to is the standard class's own test suite. This module
finds that suite for the running interpreter, runs each of its thread-pool test classes in a child
process twice, once as shipped and once with ``concurrent.futures.ThreadPoolExecutor`` replaced
by pyattach's class, and reports each test's outcome in both runs
(tests/python/test_cpython_suite.py turns that into pass/fail, and prints the table).

The swap: a ``.pth`` file in the venv's site-packages (``install_swap``) replaces the class at
start-up in every process that has ``PYATTACH_SWAP_EXECUTOR=1`` in its environment, and puts
the suite first on sys.path when ``PYATTACH_CPYTHON_SUITE_PATH`` names it. Several tests run
their code in ``python -I`` subprocesses (interpreter exit, ``del`` of an executor) that import
the test package: ``-I`` ignores ``PYTHONPATH``, but still reads site-packages and keeps the
environment, so those subprocesses find the suite and test pyattach's class too.

Where the suite comes from (``find_suite``), first found wins:
  1. the interpreter's own ``lib/python3.X/test`` (pyenv's builds, when complete);
  2. Debian's ``libpython3.X-testsuite`` (``/usr/lib/python3.X/test``: the host's CPython, and
     3.13-3.15 in the sid root), for the same minor version, used with this interpreter's
     standard library (Debian's suite of a 3.11 patch release runs on pyenv's 3.11.7);
  3. none for this minor version (3.12: no Debian release ships it, and pyenv's 3.12.1 here has
     no test_concurrent_futures): the suite of the next minor version found by 1-2 or in a
     sibling pyenv install, said so in the table. The comparison stays fair, since the standard
     class runs the same tests.

Run as a script, it is the child: ``python cpython_suite.py MODULE CLASS OUTFILE [TEST...]``
runs one test class (or those of its tests) and appends one JSON line per finished test to
OUTFILE, so that a run killed at its deadline still tells which tests finished and which one was
running.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

SWAP_ENV = "PYATTACH_SWAP_EXECUTOR"
PATH_ENV = "PYATTACH_CPYTHON_SUITE_PATH"
PTH_NAME = "pyattach_swap_executor.pth"
# One line: .pth files run lines that start with "import" (site.py; 3.15 still does, PEP 829
# announces their end for 3.18, with .start files as the replacement).
PTH_LINE = (f'import os, sys; os.environ.get("{PATH_ENV}") and sys.path.insert(0, '
            f'os.environ["{PATH_ENV}"]); os.environ.get("{SWAP_ENV}") == "1" and exec('
            '"import concurrent.futures, pyattach\\n'
            'concurrent.futures.ThreadPoolExecutor = pyattach.ThreadPoolExecutor")\n')
DEADLINE = 180.0  # seconds per class and run (the slowest class takes ~15 s here)


def install_swap():
    """Writes the swap's .pth file into this interpreter's site-packages (idempotent)."""
    path = os.path.join(sysconfig.get_path("purelib"), PTH_NAME)
    try:
        with open(path) as f:
            if f.read() == PTH_LINE:
                return path
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(PTH_LINE)
    return path


def _suite_in(lib_dir):
    for name in ("test_concurrent_futures", "test_concurrent_futures.py"):
        if os.path.exists(os.path.join(lib_dir, "test", name)):
            return os.path.join(lib_dir, "test")
    return None


def _candidates(minor):
    own = sysconfig.get_path("stdlib")  # the base interpreter's, also from a venv
    if minor == sys.version_info[:2]:
        yield own
    yield "/usr/lib/python%d.%d" % minor
    if minor != sys.version_info[:2]:
        # Sibling installs: pyenv's versions/<version>/lib/python3.X.
        yield from sorted(glob.glob(os.path.join(os.path.dirname(sys.base_prefix), "*", "lib",
                                                 "python%d.%d" % minor)), reverse=True)


def find_suite():
    """(path of the ``test`` package, its version "3.X", note) or (None, None, why)."""
    here = sys.version_info[:2]
    for minor in [here] + [(3, m) for m in range(here[1] + 1, 20)]:
        for lib in _candidates(minor):
            suite = _suite_in(lib)
            if suite is None:
                continue
            note = "" if minor == here else (
                "no %d.%d suite on this machine: %d.%d's" % (here + minor))
            return suite, "%d.%d" % minor, note
    return None, None, "no test_concurrent_futures for %d.%d or later on this machine" % here


def thread_pool_classes(suite):
    """[(module, class)] of every ThreadPool* test class in the suite, in file order.

    Found by importing the suite in a child: up to 3.11 some classes are made at import time
    (create_executor_tests), so reading the files would miss them.
    """
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--list"],
                         env=_path_env(suite, False), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("cannot list the suite's classes:\n" + out.stdout + out.stderr)
    return [tuple(pair) for pair in json.loads(out.stdout.splitlines()[-1])]


def _path_env(suite, swap):
    """The child's environment: the suite importable as ``test``, the swap on or off."""
    env = dict(os.environ)
    env.pop(SWAP_ENV, None)
    env.pop(PATH_ENV, None)
    if swap:
        env[SWAP_ENV] = "1"
    own = _suite_in(sysconfig.get_path("stdlib"))
    if own is None or os.path.realpath(own) != os.path.realpath(suite):
        # A directory whose only entry is `test`, the suite: first on sys.path, it shadows the
        # interpreter's own (possibly partial) `test` package. Kept for the session.
        link_dir = os.path.join(tempfile.gettempdir(), "pyattach-cpython-suite-%d" % os.getpid())
        os.makedirs(link_dir, exist_ok=True)
        link = os.path.join(link_dir, "test")
        if not os.path.islink(link):
            os.symlink(suite, link)
        env[PATH_ENV] = link_dir
    return env


def start_class(suite, module, cls, swap, out_dir, only=()):
    """Starts the child for one class (or only the named tests of it) and run; returns
    (process, outfile, start time)."""
    out = os.path.join(out_dir, "%s.%s.%s%s.jsonl" % (module, cls, "pyattach" if swap else "std",
                                                      ".rerun" if only else ""))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), module, cls, out, *only],
                            env=_path_env(suite, swap), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, out, time.monotonic()


def finish_class(proc, out, started, deadline=DEADLINE):
    """Waits for a child; returns {test: outcome}, the run's status and its output.

    Outcomes: ok, fail, error, skip (reason), xfail, xpass, as unittest reports them; a test that
    was running at the deadline is "hang"; a child that died, or ended before finishing its
    tests, leaves the rest "not run".
    """
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline - (time.monotonic() - started)))
        status = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and the subprocesses it started
        output, _ = proc.communicate()
        status = "hang"
    results, running = {}, None
    try:
        with open(out) as f:
            for line in f:
                rec = json.loads(line)
                if rec["outcome"] == "start":
                    running = rec["test"]
                else:
                    results[rec["test"]] = rec["outcome"]
                    running = None if running == rec["test"] else running
    except FileNotFoundError:
        pass
    if running is not None and running not in results:
        results[running] = "hang" if status == "hang" else "not run"
    return results, status, output


# ---- the child -----------------------------------------------------------------------------------

def _child(module, cls, out, *only):
    import importlib
    import unittest

    log = open(out, "a", buffering=1)

    def record(test, outcome):
        log.write(json.dumps({"test": test.id().rsplit(".", 1)[-1], "outcome": outcome}) + "\n")

    class Recorder(unittest.TextTestResult):
        def startTest(self, test):
            record(test, "start")
            super().startTest(test)

        def addSuccess(self, test):
            super().addSuccess(test)
            record(test, "ok")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            record(test, "fail")

        def addError(self, test, err):
            super().addError(test, err)
            if isinstance(test, unittest.TestCase):  # not a class or module fixture
                record(test, "error")

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            record(test, "skip: " + reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            record(test, "xfail")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            record(test, "xpass")

    if os.environ.get(SWAP_ENV) == "1":
        import concurrent.futures
        import pyattach
        if concurrent.futures.ThreadPoolExecutor is not pyattach.ThreadPoolExecutor:
            sys.exit("cpython_suite: the swap did not happen (is %s installed?)" % PTH_NAME)
    mod = importlib.import_module(module)
    case = getattr(mod, cls)
    if only:
        tests = unittest.TestSuite([case(name) for name in only])
    else:
        tests = unittest.TestSuite([unittest.defaultTestLoader.loadTestsFromTestCase(case)])
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Recorder).run(tests)
    sys.exit(0 if result.wasSuccessful() else 1)


def _list():
    import importlib
    import pkgutil
    import unittest

    import test.test_concurrent_futures as top
    modules = [top]
    if hasattr(top, "__path__"):  # 3.12+: a package of test_*.py modules
        modules = [importlib.import_module(top.__name__ + "." + m.name)
                   for m in pkgutil.iter_modules(top.__path__) if m.name.startswith("test_")]
    found = []
    for mod in modules:
        for name, obj in vars(mod).items():
            if (name.startswith("ThreadPool") and isinstance(obj, type)
                    and issubclass(obj, unittest.TestCase) and obj.__module__ == mod.__name__):
                found.append((mod.__name__, name))
    print(json.dumps(found))


if __name__ == "__main__":
    # The suite first on sys.path, whether or not the venv has the swap's .pth yet (the .pth is
    # what reaches the tests' own `python -I` subprocesses).
    if os.environ.get(PATH_ENV) and os.environ[PATH_ENV] not in sys.path:
        sys.path.insert(0, os.environ[PATH_ENV])
    if sys.argv[1:] == ["--list"]:
        _list()
    else:
        _child(*sys.argv[1:])

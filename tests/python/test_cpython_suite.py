"""CPython's own ThreadPoolExecutor tests pass on pyattach.ThreadPoolExecutor.

For each thread-pool test class of the running interpreter's CPython test suite
(cpython_suite.py finds it, and says where from), one pytest case runs the class twice in child
processes with a deadline, with the standard class and with pyattach's swapped in, and fails if
pyattach's class does not pass a test that the standard class passes. Tests that the standard
class does not pass either are counted, not held against it. A test that pyattach's class fails
runs once more on its own, as CPython's own runner re-runs failed tests (regrtest --rerun): the
machine is shared, and some of these tests measure time. A pass then counts, and the table shows
it (rerun=N); every rerun's first failure is kept in the log.
The per-class table is printed at the end of the run (conftest.py) and by scripts/test.sh.
"""

import collections
import tempfile

import pytest

import conftest
import cpython_suite
import harness

SUITE, SUITE_VERSION, SUITE_NOTE = cpython_suite.find_suite()
CLASSES = cpython_suite.thread_pool_classes(SUITE) if SUITE else []


@pytest.fixture(scope="module")
def out_dir():
    cpython_suite.install_swap()  # before any class runs: its subprocesses need it
    with tempfile.TemporaryDirectory(prefix="pyattach-cpython-suite-") as d:
        yield d


def test_suite_found():
    assert SUITE is not None, (
        f"{SUITE_NOTE}: install Debian's libpython3.X-testsuite (scripts/deps.sh does)")
    assert CLASSES, f"no ThreadPool* test class in {SUITE}"


@pytest.mark.parametrize("module,cls", CLASSES, ids=[c for _, c in CLASSES])
def test_cpython_class(module, cls, out_dir):
    # Both runs at once: the tests mostly sleep and wait, and the leg has two cores.
    started = {swap: cpython_suite.start_class(SUITE, module, cls, swap, out_dir)
               for swap in (False, True)}
    (std, std_status, std_out), (ours, our_status, our_out) = (
        cpython_suite.finish_class(*started[swap]) for swap in (False, True))
    assert std, f"the standard run of {cls} reported no test (status {std_status}):\n{std_out[-3000:]}"
    lost = {t: ours.get(t, "not run") for t, o in std.items() if o == "ok" and ours.get(t) != "ok"}
    reran = collections.Counter()
    if lost:
        print(f"{cls}: failed first, run again alone: {lost}\n{our_out[-6000:]}")
        again, our_status, our_out = cpython_suite.finish_class(
            *cpython_suite.start_class(SUITE, module, cls, True, out_dir, only=sorted(lost)))
        for t, o in again.items():
            if o == "ok":
                ours[t] = "ok"
                reran["rerun"] += 1
        lost = {t: ours.get(t, "not run") for t in lost if ours.get(t) != "ok"}
    counts = lambda r: collections.Counter(o.split(":")[0] for o in r.values())
    conftest.CPYTHON_SUITE.append((harness.interpreter_label(), SUITE_VERSION, SUITE_NOTE, cls,
                                   len(std), counts(std), counts(ours) + reran))
    assert not lost, (
        f"pyattach's class fails tests the standard class passes ({SUITE} {module}.{cls}; "
        f"run status {our_status}): {lost}\n--- pyattach run's output (tail)\n{our_out[-6000:]}")

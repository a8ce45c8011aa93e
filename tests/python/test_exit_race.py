"""The exit race: import, start detached native threads that attach in a loop, exit.

Each run is its own process: ``import`` the example, start 4 detached std::threads that loop
"attach_scope(nothrow) -> call a Python function -> end the scope" until an attach is refused,
and let the script end at once ("now") or after a random 0-20 ms sleep ("0-20ms"). Python then
finalizes while the threads are attaching. Variants: the loop as it is ("plain"), its body inside
``try {} catch (...) {}`` ("catch_all") and behind a noexcept function ("noexcept") -- the two
shapes in which a thread that CPython ends with pthread_exit aborts the whole process.

A run is clean when the process exits with status 0 and the example's exit report (written
after Py_FinalizeEx) shows every thread either refused with attach_status finalizing/finalized
or still in C++: none left inside an attach or inside Python, which is where a thread that
CPython ended stays.

Runs per (flavour, variant, exit): PYATTACH_EXIT_RUNS (default 10; the long mode is 100 or
more). With PYATTACH_EXIT_RUNS >= 50 the raw-API variant (PyGILState_Ensure/Release, no
pyattach) runs too, as a positive control: its threads are ended inside CPython, which the
report must show, and it crashes now and then; it is counted in the table but asserts only that
the harness saw the loss.
"""

import os
import random

import pytest

import conftest
import harness

RUNS = int(os.environ.get("PYATTACH_EXIT_RUNS", "10"))
LONG = RUNS >= 50
THREADS = 4
# A clean exit takes well under a second; the deadline only has to tell a hang from a slow run
# on a loaded machine (the gate's close bound is 2 s, the report settles within 0.5 s).
DEADLINE = 60

CHILD = """
import sys, time
import {module} as m
def work():
    return sum(range(50))
m.start_background_threads(work, {threads}, "{variant}")
delay = float(sys.argv[1])
if delay:
    time.sleep(delay)
"""


def lost_threads(report):
    return report["in_attach"] + report["in_python"]


def check_run(outcome):
    report = outcome.exit_report()
    if report is None:
        return "no exit report (the process ended before its C-level exit handler ran)"
    if lost_threads(report):
        return (f"{lost_threads(report)} thread(s) lost inside CPython "
                f"(in_attach={report['in_attach']} in_python={report['in_python']})")
    refused_ok = report["refused_finalizing"] + report["refused_finalized"]
    if report["exited"] != refused_ok:
        return f"threads refused with an unexpected status: {report}"
    if report["threads"] != THREADS:
        return f"expected {THREADS} threads, report says {report['threads']}"
    if harness.MISUSE in outcome.stderr:
        return "pyattach reported misuse"
    return ""


def run_race(flavour, variant, timing, runs):
    counts = {k: 0 for k in conftest.KINDS}
    counts["runs"] = 0
    counts["lost"] = 0
    failures = []
    rng = random.Random(f"{flavour}-{variant}-{timing}")
    code = CHILD.format(module=harness.MODULES[flavour], threads=THREADS, variant=variant)
    for i in range(runs):
        delay = 0.0 if timing == "now" else rng.uniform(0.0, 0.020)
        out = harness.run_python(code, timeout=DEADLINE, args=[f"{delay:.4f}"], check=check_run)
        counts["runs"] += 1
        counts[out.kind] += 1
        report = out.exit_report()
        if report is not None:
            counts["lost"] += lost_threads(report)
        if out.kind != "clean" and len(failures) < 3:
            failures.append(f"run {i} (sleep {delay * 1000:.1f} ms): {out.describe()}")
    conftest.EXIT_RACE[(flavour, variant, timing)] = counts
    return counts, failures


@pytest.mark.parametrize("timing", ["now", "0-20ms"])
@pytest.mark.parametrize("variant", ["plain", "catch_all", "noexcept"])
def test_exit_race(flavour, variant, timing):
    counts, failures = run_race(flavour, variant, timing, RUNS)
    summary = ", ".join(f"{k} {counts[k]}" for k in ("runs",) + conftest.KINDS + ("lost",))
    assert counts["clean"] == counts["runs"], summary + "\n\n" + "\n\n".join(failures)


@pytest.mark.skipif(not LONG, reason="raw-API positive control: long mode only (PYATTACH_EXIT_RUNS >= 50)")
@pytest.mark.parametrize("timing", ["now", "0-20ms"])
def test_exit_race_raw_api_control(flavour, timing):
    # Without pyattach, threads attaching at exit are ended inside CPython (pthread_exit) or
    # crash the process: the harness must see that in (almost) every run, or the pyattach rows
    # above prove nothing.
    runs = max(10, RUNS // 5)
    counts, failures = run_race(flavour, "raw", timing, runs)
    seen = counts["runs"] - counts["clean"]
    assert seen >= runs // 2, f"the raw API looked clean in {counts['clean']} of {runs} runs"

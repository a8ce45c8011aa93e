"""The package's metrics and trace (pyattach.metrics(), pool_metrics(), trace(); observe.hpp):
their figures against what the executor did, and every trace through tools/trace_check.py.

Metrics and traces are process-wide switches, so each case runs in its own child (harness.py)
with PYATTACH_METRICS and PYATTACH_TRACE cleared unless the case sets them; the child asserts and
prints one JSON line for the checks that need the parent (the trace checker).
"""

import json
import os
import sys

import pytest

import harness

TOOLS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                      os.pardir, "tools"))
sys.path.insert(0, TOOLS)

import trace_check  # noqa: E402  (found through TOOLS)

# A child's environment: neither switch on unless the case says so.
QUIET = {"PYATTACH_METRICS": "0", "PYATTACH_TRACE": ""}


@pytest.fixture(scope="module", autouse=True)
def installed():
    import importlib.util
    if importlib.util.find_spec("pyattach") is None:
        # Not a skip: every pytest leg installs the package (scripts/test.sh: pip install .).
        pytest.fail("pyattach is not installed in this interpreter: pip install . first")


def run_child(code, env=None, args=()):
    out = harness.run_python(code, timeout=60, env=dict(QUIET, **(env or {})), args=args)
    assert out.kind == "clean", out.describe()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def checked(path):
    """trace_check's Result for the file, asserting that it has no problems."""
    assert os.path.exists(path), path
    result = trace_check.check(path)
    assert result.problems == [], "\n".join(result.problems)
    return result


# Helpers shared by the children: a task that holds the GIL (a busy loop in Python) and the
# executor's workers as stats() sees them.
CHILD_HELPERS = """
import json, sys, threading, time
import pyattach

def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return threading.current_thread().name

def workers(prefix):
    return [s for s in pyattach.stats() if s["name"] == prefix][0]["workers"]
"""

# For the children whose traces are checked: trace_check verifies that no two threads' attached
# spans overlap, but CPython's eval loop hands the GIL to a thread that waited a switch interval
# inside the holder's attach, where pyattach cannot see it (observe.hpp). A long interval keeps
# these runs to the hand-overs pyattach makes (tests/cpp/test_observe.cpp does the same); the
# tasks never block in Python either (busy loops, no sleep).
NO_SWITCH = """
sys.setswitchinterval(100.0)
"""


def test_metrics_are_off_by_default_and_count_what_the_executor_did():
    run_child(CHILD_HELPERS + """
assert not pyattach.metrics_enabled()
with pyattach.ThreadPoolExecutor(2, thread_name_prefix="unmeasured") as ex:
    list(ex.map(abs, range(20)))
assert not [t for t in pyattach.metrics() if t["pool"] == "unmeasured" and t["attaches"]]
assert not [p for p in pyattach.pool_metrics() if p["attaches"]]

pyattach.set_metrics(True)
assert pyattach.metrics_enabled()
ex = pyattach.ThreadPoolExecutor(2, thread_name_prefix="measured")
futures = [ex.submit(pow, 2, i) for i in range(200)]
futures += [ex.submit(busy, 0.02)]
futures += [ex.submit(time.sleep, 0.001) for _ in range(5)]
for f in futures:
    f.result(timeout=30)
# A snapshot from a worker (the call gives the GIL up inside the worker's attach) lists it.
me = ex.submit(lambda: (threading.get_native_id(), pyattach.metrics())).result(timeout=30)
listed = [t for t in me[1] if t["native_id"] == me[0]]
assert len(listed) == 1 and listed[0]["pool"] == "measured" and listed[0]["alive"], listed
live = {t["native_id"]: t for t in pyattach.metrics() if t["pool"] == "measured"}
for w in workers("measured"):
    if w["attaches"]:
        t = live[w["native_id"]]
        assert t["alive"] and t["ident"] > 0 and t["name"].startswith("measured_"), t

ex.shutdown()  # every attach ended: the figures are final (the workers' are summed on exit)
threads = [t for t in pyattach.metrics() if t["pool"] == "measured"]
expected = sum(w["attaches"] for w in workers("measured"))
assert expected >= 1 and sum(t["attaches"] for t in threads) == expected, (threads, expected)
pool = [p for p in pyattach.pool_metrics() if p["name"] == "measured"]
assert len(pool) == 1 and pool[0]["attaches"] == expected, pool
pool = pool[0]
assert pool["wait"]["count"] >= pool["attaches"], pool
assert pool["attached"]["count"] >= pool["attaches"], pool
# The busy task held the GIL for 20 ms inside one attach.
assert pool["attached"]["max_s"] >= 0.02, pool["attached"]
assert max(t["attached"]["max_s"] for t in threads) >= 0.02, threads
for record in threads + [pool]:
    for kind in ("wait", "attached", "detached"):
        h = record[kind]
        assert 0 <= h["p50_s"] <= h["p90_s"] <= h["p99_s"] <= h["max_s"], (kind, h)
        assert sum(n for _, n in h["buckets"]) == h["count"], (kind, h)
        # mean() is total / count in whole nanoseconds
        assert abs(h["mean_s"] * h["count"] - h["total_s"]) <= h["count"] * 1e-9, h
        uppers = [u for u, _ in h["buckets"]]
        assert uppers == sorted(uppers) and (not uppers or uppers[-1] >= h["max_s"]), (kind, h)
assert "pool measured" in pyattach.metrics_text()
# By interpreter: all in the main one (id 0), so its row is the thread's totals.
for t in [t for t in threads if t["wait"]["count"]]:
    assert [i["interpreter"] for i in t["interpreters"]] == [0], t["interpreters"]
    main = t["interpreters"][0]
    assert main["attaches"] == t["attaches"], (main, t["attaches"])
    assert abs(main["wait_s"] - t["wait"]["total_s"]) < 1e-8, (main, t["wait"])
    assert abs(main["attached_s"] - t["attached"]["total_s"]) < 1e-8, (main, t["attached"])
assert "in interpreter" not in pyattach.metrics_text()

pyattach.reset_metrics()
assert not [t for t in pyattach.metrics() if t["pool"] == "measured" and t["attaches"]]
pyattach.set_metrics(False)
assert not pyattach.metrics_enabled()
""")


TRACE_CHILD = CHILD_HELPERS + NO_SWITCH + """
path, flushed = sys.argv[1], sys.argv[2]
# A prefix longer than the kernel's 15 characters: the OS name is shortened, so the full name in
# the trace's thread names can only come from threading.
prefix = "observed-workers"
ex = pyattach.ThreadPoolExecutor(2, thread_name_prefix=prefix)
with pyattach.trace(path) as t:
    assert pyattach.trace_running()
    futures = [ex.submit(busy, 0.0005) for _ in range(60)]
    names = {f.result(timeout=30) for f in futures}
    tids = {w["native_id"]: w["name"] for w in workers(prefix)}
    partial = pyattach.flush_trace(flushed)  # the workers are alive: threading names them
    assert partial.ok and partial.events > 0, partial
    assert t.events is None
    ex.shutdown()  # every attach ended before the trace is written
assert not pyattach.trace_running()
assert t.events > 0 and t.dropped == 0, t
attaches = {w["native_id"]: w["attaches"] for w in workers(prefix)}
print(json.dumps({"names": sorted(names), "tids": tids, "attaches": attaches, "prefix": prefix}))
"""


def test_trace_block_writes_a_valid_trace_of_the_executors_workers(tmp_path):
    path, flushed = tmp_path / "trace.json", tmp_path / "flushed.json"
    info = run_child(TRACE_CHILD, args=(path, flushed))
    result = checked(str(path))
    attaches = {int(tid): n for tid, n in info["attaches"].items()}
    assert sum(attaches.values()) >= 1, info
    for tid, n in attaches.items():
        spans = result.spans.get(tid, {})
        assert spans.get(trace_check.ATTACHED, 0) == n, (tid, n, dict(spans))
        if n == 0:
            continue
        tasks = [s for s in result.span_list[tid] if s.name == "task"]
        assert tasks, (tid, dict(spans))
        worker = info["tids"][str(tid)]
        for s in tasks:
            assert s.args["pool"] == info["prefix"] and s.args["worker"] == worker, s
            assert isinstance(s.args["task"], int) and s.args["task"] >= 1, s
    # The tasks ran under their workers' threading names. In the flush (workers alive), each
    # worker that had run one by then carries that name (its OS name is shortened); a worker that
    # was still waiting for its first attach has no threading entry yet.
    assert info["names"] and set(info["names"]) <= set(info["tids"].values()), info
    partial = checked(str(flushed))
    for tid, name in info["tids"].items():
        if name in info["names"]:
            label = partial.thread_names.get(int(tid), "")
            assert "[python: %s]" % name in label, (name, partial.thread_names)


def test_trace_is_written_when_the_block_raises_and_does_not_nest(tmp_path):
    path, nested = tmp_path / "raised.json", tmp_path / "nested.json"
    run_child(CHILD_HELPERS + NO_SWITCH + """
path, nested, missing = sys.argv[1], sys.argv[2], sys.argv[3]
ex = pyattach.ThreadPoolExecutor(2, thread_name_prefix="raising")
try:
    with pyattach.trace(path):
        list(ex.map(busy, [0.0001] * 10))
        try:
            with pyattach.trace(nested):
                raise AssertionError("a nested trace started")
        except RuntimeError as e:
            assert "already running" in str(e), e
        try:
            pyattach.start_trace()
            raise AssertionError("start_trace started a second trace")
        except RuntimeError:
            pass
        # From a worker: the write gives the GIL up inside the worker's attach and takes it back.
        assert ex.submit(pyattach.flush_trace, nested).result(timeout=30).ok
        raise KeyError("the block's own")
except KeyError as e:
    assert e.args == ("the block's own",), e
assert not pyattach.trace_running()
r = pyattach.stop_trace(path + ".again")
assert not r.ok and r.error and r.events == 0, r
# A file that cannot be written: RuntimeError, and the trace ended all the same.
try:
    with pyattach.trace(missing) as t:
        pass
    raise AssertionError("no error for an unwritable path")
except RuntimeError as e:
    assert missing in str(e), e
assert not pyattach.trace_running() and t.events == 0
ex.shutdown()
""", args=(path, nested, tmp_path / "no-such-dir" / "x.json"))
    result = checked(str(path))
    assert result.totals["task"] >= 1 and result.totals[trace_check.ATTACHED] >= 1, result.totals
    checked(str(nested))
    assert not os.path.exists(str(path) + ".again")


def test_environment_switches_metrics_on_and_writes_the_trace_at_exit(tmp_path):
    path = tmp_path / "env.json"
    info = run_child(CHILD_HELPERS + NO_SWITCH + """
on_at_import = pyattach.metrics_enabled()
tracing_at_import = pyattach.trace_running()
try:
    with pyattach.trace(sys.argv[1] + ".other"):
        pass
    nested = False
except RuntimeError:
    nested = True
with pyattach.ThreadPoolExecutor(2, thread_name_prefix="from-env") as ex:
    list(ex.map(busy, [0.0002] * 20))
pool = [p for p in pyattach.pool_metrics() if p["name"] == "from-env"]
print(json.dumps({"metrics": on_at_import, "tracing": tracing_at_import, "nested": nested,
                  "attaches": pool[0]["attaches"] if pool else 0}))
""", env={"PYATTACH_METRICS": "1", "PYATTACH_TRACE": str(path)}, args=(path,))
    assert info["metrics"] and info["tracing"] and info["nested"], info
    assert info["attaches"] >= 1, info
    result = checked(str(path))  # written when the interpreter ended
    assert result.totals["task"] >= 1 and result.totals[trace_check.ATTACHED] >= 1, result.totals
    assert not os.path.exists(str(path) + ".other")

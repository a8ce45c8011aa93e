"""tools/trace_check.py and tools/timeline.py on small synthetic traces.

Nothing here needs the example module. The renderer's test skips where matplotlib is missing
(the pytest legs' venvs); run it with Debian's /usr/bin/python3 to really draw.
"""

import json
import os
import struct
import subprocess
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "tools")
sys.path.insert(0, os.path.normpath(TOOLS))

import trace_check  # noqa: E402  (found through TOOLS)

from trace_check import ATTACHED, DETACHED, WAITING  # noqa: E402

PID = 100
MAIN, WORKER, TASKS = 1, 2, 3
NAMES = {MAIN: "MainThread", WORKER: "p_0 [python: p]", TASKS: "tasks"}
CATS = {ATTACHED: "gil", WAITING: "gil", DETACHED: "gil", "task": "pool"}


def ev(ph, name, tid, ts, **extra):
    e = {"name": name, "cat": CATS.get(name, "pyattach"), "ph": ph, "pid": PID, "tid": tid,
         "ts": ts}
    e.update(extra)
    return e


def span(tid, name, start, end, inner=(), **extra):
    """B, the events of the spans inside, E."""
    return [ev("B", name, tid, start, **extra), *inner, ev("E", name, tid, end)]


def main_thread():
    # held 1..3 and 6..10: a detach scope ends by waiting for the GIL again
    return (span(MAIN, WAITING, 0, 1)
            + span(MAIN, ATTACHED, 1, 10, span(MAIN, DETACHED, 3, 5) + span(MAIN, WAITING, 5, 6)
                   + [ev("i", "gate closing", MAIN, 9, s="g")]))


def worker(attach_at=10, detached_first=False):
    """A pool worker running two Python tasks under one attach: held attach_at..18 and 20..22.
    detached_first: the attach starts with a detach scope that lasts until 10."""
    first = []
    if detached_first:
        first = span(WORKER, DETACHED, attach_at, 9.5) + span(WORKER, WAITING, 9.5, 10)
    body = (first + span(WORKER, "task", 10, 14, args={"pool": "p", "worker": "p_0", "task": 1})
            + span(WORKER, "task", 14, 18, args={"pool": "p", "worker": "p_0", "task": 2})
            + span(WORKER, DETACHED, 18, 19) + span(WORKER, WAITING, 19, 20))
    return span(WORKER, WAITING, 2, attach_at) + span(WORKER, ATTACHED, attach_at, 22, body)


def tasks_thread():
    """Two tasks that attach: held 22..30, then 33..40, closed by the writer (args open)."""
    return (span(TASKS, "task", 20, 31, span(TASKS, WAITING, 20, 22) + span(TASKS, ATTACHED, 22, 30)
                 + [ev("i", "misuse: double_release", TASKS, 30.5, s="t", cat="misuse",
                       args={"message": "released twice"})])
            + [ev("B", "task", TASKS, 32), ev("B", ATTACHED, TASKS, 33),
               ev("E", ATTACHED, TASKS, 40, args={"open": True}),
               ev("E", "task", TASKS, 40, args={"open": True})])


def make_trace(*threads):
    """The threads' events interleaved by ts (stable: each thread keeps its order), after the
    metadata, as the writer may emit them."""
    events = sorted((e for t in threads for e in t), key=lambda e: e["ts"])
    meta = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": "test"}}]
    meta += [{"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}}
             for tid, name in NAMES.items()]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"pyattach": {"clock": "tsc", "dropped": 0, "threads": []}}}


def valid_trace():
    return make_trace(main_thread(), worker(), tasks_thread())


def overlap_trace():
    # the worker attaches at 8, while the main thread holds the GIL until 10
    return make_trace(main_thread(), worker(attach_at=8), tasks_thread())


def test_valid_trace_passes_with_counts_and_held_intervals():
    result = trace_check.check(valid_trace())
    assert result.problems == []
    assert result.spans[MAIN][ATTACHED] == 1
    assert result.spans[MAIN][WAITING] == 2
    assert result.spans[MAIN][DETACHED] == 1
    assert result.spans[WORKER]["task"] == 2
    assert result.spans[TASKS]["task"] == 2
    assert result.totals[ATTACHED] == 4
    assert result.totals["task"] == 4
    assert result.totals[WAITING] == 5
    # held ends touching the next thread's start (10, 22) are allowed
    assert result.held[MAIN] == [(1, 3), (6, 10)]
    assert result.held[WORKER] == [(10, 18), (20, 22)]
    assert result.held[TASKS] == [(22, 30), (33, 40)]
    assert list(result.spans) == [MAIN, WORKER, TASKS]  # process_name's tid 0 is no thread
    assert result.thread_names[WORKER] == "p_0 [python: p]"
    assert result.process_names == {PID: "test"}
    assert [i.name for i in result.instants[TASKS]] == ["misuse: double_release"]
    assert (result.first_ts, result.last_ts) == (0, 40)


def test_threads_grouped_instead_of_interleaved_pass():
    trace = valid_trace()
    timed = [e for e in trace["traceEvents"] if e["ph"] != "M"]
    timed.sort(key=lambda e: e["tid"])  # stable: one thread after another, each in time order
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e["ph"] == "M"] + timed
    assert trace_check.check(trace).problems == []


def test_overlapping_held_intervals_are_reported():
    result = trace_check.check(overlap_trace())
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert "GIL held by two threads at once" in problem
    assert "tid 1 (MainThread)" in problem and "tid 2 (p_0 [python: p])" in problem
    assert "overlapping 2.000 us" in problem


def test_overlap_inside_a_nested_detached_span_is_accepted():
    # the worker's attach starts at 8 as above, but it is detached (then waiting) until 10
    result = trace_check.check(make_trace(main_thread(), worker(attach_at=8, detached_first=True),
                                          tasks_thread()))
    assert result.problems == []
    assert result.held[WORKER] == [(10, 18), (20, 22)]


def sub_interpreter_thread(tid, interp, gil, start):
    """A thread in a scope of the main interpreter that swaps in sub-interpreter `interp` (the
    writer's args: interp, gil) from start + 2 to start + 8: the main attached span ends at the swap
    and a new one begins once the main state is current again."""
    args = {"args": {"interp": interp, "gil": gil}}
    return (span(tid, ATTACHED, start, start + 1)
            + span(tid, WAITING, start + 1, start + 2, **args)
            + span(tid, ATTACHED, start + 2, start + 8, **args)
            + span(tid, WAITING, start + 8, start + 9) + span(tid, ATTACHED, start + 9, start + 10))


def test_gils_of_different_interpreters_may_be_held_at_once():
    # WORKER holds interpreter 3's own GIL over 12..18 while TASKS holds interpreter 4's over 13..19
    result = trace_check.check(make_trace(sub_interpreter_thread(WORKER, 3, 3, 10),
                                          sub_interpreter_thread(TASKS, 4, 4, 11)))
    assert result.problems == []
    assert result.held_by_gil[WORKER] == {0: [(10, 11), (19, 20)], 3: [(12, 18)]}
    assert result.held[WORKER] == [(10, 11), (12, 18), (19, 20)]


def test_the_same_gil_held_at_once_is_reported_with_its_interpreter():
    result = trace_check.check(make_trace(sub_interpreter_thread(WORKER, 3, 3, 10),
                                          sub_interpreter_thread(TASKS, 3, 3, 11)))
    assert len(result.problems) == 1
    assert "GIL of interpreter 3 held by two threads at once" in result.problems[0]
    assert "overlapping 5.000 us" in result.problems[0]
    # an interpreter that shares the main GIL (gil 0) overlaps the main interpreter's holders
    result = trace_check.check(make_trace(sub_interpreter_thread(WORKER, 3, 0, 10),
                                          span(TASKS, ATTACHED, 14, 15)))
    assert len(result.problems) == 1
    assert "GIL held by two threads at once" in result.problems[0]
    # while the main state is swapped out, another thread may hold the main GIL
    result = trace_check.check(make_trace(sub_interpreter_thread(WORKER, 3, 3, 10),
                                          span(TASKS, ATTACHED, 11, 19)))
    assert result.problems == []


def test_no_gil_build_skips_the_overlap_check():
    result = trace_check.check(overlap_trace(), gil_build=False)
    assert result.problems == []
    assert result.held[WORKER][0] == (8, 18)



def test_complete_events_count_and_hold_the_gil():
    # X spans nest where they appear in the file, like B/E ones
    trace = make_trace(span(MAIN, ATTACHED, 0, 10, [ev("X", DETACHED, MAIN, 2, dur=3)]),
                       [ev("X", ATTACHED, WORKER, 4, dur=2), ev("X", ATTACHED, WORKER, 10, dur=2)])
    result = trace_check.check(trace)
    assert result.spans[WORKER][ATTACHED] == 2 and result.totals[DETACHED] == 1
    assert result.held[MAIN] == [(0, 2), (5, 10)]
    assert len(result.problems) == 1 and "overlapping 1.000 us" in result.problems[0]

def events_of(trace, tid, ph, name):
    return [e for e in trace["traceEvents"] if (e["tid"], e["ph"], e["name"]) == (tid, ph, name)]


def unmatched_e(trace):
    trace["traceEvents"].append(ev("E", ATTACHED, TASKS, 41))


def unclosed_b(trace):
    trace["traceEvents"].append(ev("B", ATTACHED, TASKS, 41))


def name_mismatch(trace):
    events_of(trace, MAIN, "E", DETACHED)[0]["name"] = "task"


def ts_backwards(trace):
    events_of(trace, MAIN, "E", WAITING)[1]["ts"] = 4  # after its B at 5


def no_tid(trace):
    del events_of(trace, WORKER, "B", "task")[0]["tid"]


def no_ts(trace):
    del events_of(trace, MAIN, "B", ATTACHED)[0]["ts"]


def bad_phase(trace):
    trace["traceEvents"][-1]["ph"] = "Z"


def x_without_dur(trace):
    trace["traceEvents"].append(ev("X", "work", TASKS, 41))


def bad_scope(trace):
    events_of(trace, MAIN, "i", "gate closing")[0]["s"] = "x"


@pytest.mark.parametrize("mutate, expected", [
    (unmatched_e, "E with no open B"),
    (unclosed_b, "B 'attached' at 41 is never closed"),
    (name_mismatch, "E closes 'task' but the innermost open span is 'detached (blocking C++)'"),
    (ts_backwards, "ts 4 is before the thread's previous event at 5"),
    (no_tid, "missing or wrong tid (an int)"),
    (no_ts, "missing or wrong ts (a number >= 0)"),
    (bad_phase, "missing or wrong ph"),
    (x_without_dur, "missing or wrong dur"),
    (bad_scope, "missing or wrong s (g, p or t)"),
])
def test_each_check_fires(mutate, expected):
    trace = valid_trace()
    mutate(trace)
    problems = trace_check.check(trace).problems
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("trace", [[], {"events": []}, {"traceEvents": {}}])
def test_top_level_must_be_an_object_with_a_trace_events_list(trace):
    assert trace_check.check(trace).problems == [
        "the top level is not an object with a traceEvents list"]


def test_problems_of_one_kind_are_capped():
    trace = valid_trace()
    trace["traceEvents"] += [ev("E", ATTACHED, TASKS, 41)] * 100
    problems = trace_check.check(trace).problems
    n = trace_check.MAX_PER_KIND
    assert len(problems) == n + 1
    assert problems[-1] == f"... and {100 - n} more nesting problems (100 in all)"


def test_a_path_is_read(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(valid_trace()))
    assert trace_check.check(path).problems == []
    assert trace_check.check(str(path)).totals[ATTACHED] == 4
    path.write_text("{not json")
    assert trace_check.check(path).problems[0].startswith("cannot read the trace:")


def run_check(*args):
    return subprocess.run([sys.executable, os.path.join(TOOLS, "trace_check.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_command_line_exit_status(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(valid_trace()))
    bad.write_text(json.dumps(overlap_trace()))
    run = run_check(str(good))
    assert run.returncode == 0, run.stderr
    assert "ok" in run.stdout
    run = run_check(str(bad))
    assert run.returncode == 1
    assert "GIL held by two threads at once" in run.stderr
    assert run_check(str(bad), "--no-gil-check").returncode == 0


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_timeline_renders_two_panels(tmp_path):
    pytest.importorskip("matplotlib")
    import timeline

    path = tmp_path / "pyattach.json"
    path.write_text(json.dumps(valid_trace()))
    out = tmp_path / "timeline.png"
    timeline.render([("raw C API", overlap_trace()), ("pyattach", path)], str(out),
                    title="Scenario: two panels")
    width, height = png_size(out)
    assert width == 1400
    assert 500 <= height <= 1200  # a legend row and two panels of three lanes
    assert out.stat().st_size > 20000


def test_timeline_panel_arguments(tmp_path):
    import timeline  # imports matplotlib only when it draws

    assert timeline.parse_panel("raw C API=a/raw.json") == ("raw C API", "a/raw.json")
    assert timeline.parse_panel("a/raw.json") == ("raw.json", "a/raw.json")
    odd = tmp_path / "x=1.json"
    odd.write_text("{}")
    assert timeline.parse_panel(str(odd)) == ("x=1.json", str(odd))

#!/usr/bin/env python3
"""tools/trace_check.py — checks a pyattach timeline trace (Chrome trace-event JSON).

Reads the JSON the library's trace writer emits (the format Perfetto's UI and chrome://tracing
open): {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {"pyattach": {...}}}, ts in
microseconds, one OS thread per tid. The spans that matter for the GIL, per thread:

  "waiting for the GIL"      B/E   the thread asked for the GIL and does not have it yet
  "attached"                 B/E   the thread is attached: it holds the GIL, except inside
  "detached (blocking C++)"  B/E   ... these two kinds of nested span
  "task"                     B/E   a pool task (contains attached spans, or is inside one)

The GIL invariant: a thread *holds* a GIL wherever the innermost open span among attached,
waiting and detached is an `attached` one (so an attached span minus its nested waiting and
detached spans); on a GIL build the held intervals of different threads in the same GIL never
overlap (touching, end == start, is fine). Which GIL: the attached span's args "gil" (the
interpreter whose GIL it is: a sub-interpreter with its own GIL names itself, one that shares the
main interpreter's names 0); a span without it holds the main interpreter's, 0. Sub-interpreters
with their own GIL run at once, so only the same GIL's intervals are compared. On a
free-threaded build several threads are attached at once, so that check is off there
(gil_build=False, --no-gil-check).

Other checks: the event fields and their types, each thread's ts non-decreasing in file order,
and B/E nesting like a stack per thread (an E closes the innermost open B of the same name).

  python tools/trace_check.py FILE [--no-gil-check]     exit 1 and the problems if any

As a module: check(trace_or_path, gil_build=True) -> Result; tools/timeline.py draws from the
same Result (its span lists and held intervals).
"""

import argparse
import collections
import json
import math
import os
import sys

ATTACHED = "attached"
WAITING = "waiting for the GIL"
DETACHED = "detached (blocking C++)"
GIL_SPANS = (ATTACHED, WAITING, DETACHED)

PHASES = {"B", "E", "X", "i", "I", "M", "C"}
PLAIN_PHASES = {"B", "E", "M", "C"}  # the phases with no field of their own
INSTANT_SCOPES = {"g", "p", "t"}
# Problems of one kind past this many are counted, not listed: a broken 1 M-event trace would
# otherwise print a million lines.
MAX_PER_KIND = 20

Span = collections.namedtuple("Span", "name cat start end depth args")
Instant = collections.namedtuple("Instant", "name cat ts scope args")


class Result:
    """What check() found.

    problems      readable strings; empty means the trace is valid
    spans         {tid: Counter(name -> closed spans)}, every thread seen, in first-seen order
    totals        Counter(name -> closed spans) over all threads
    held          {tid: [(start, end)]} the GIL-held intervals (any GIL), µs, sorted
    held_by_gil   {tid: {gil: [(start, end)]}} the same by GIL (0: the main interpreter's)
    span_list     {tid: [Span]} the closed spans (B/E pairs and X), in the order they opened
    instants      {tid: [Instant]}
    thread_names  {tid: name} from thread_name metadata
    process_names {pid: name} from process_name metadata
    pids          {tid: pid}
    first_ts, last_ts   the earliest and latest ts of any timed event (None if there is none)
    events        number of events; dropped: otherData.pyattach.dropped (0 if absent)
    """

    def __init__(self):
        self.problems = []
        self.spans = {}
        self.totals = collections.Counter()
        self.held = {}
        self.held_by_gil = {}
        self.span_list = {}
        self.instants = {}
        self.thread_names = {}
        self.process_names = {}
        self.pids = {}
        self.first_ts = None
        self.last_ts = None
        self.events = 0
        self.dropped = 0

    def thread_label(self, tid):
        name = self.thread_names.get(tid)
        return f"tid {tid} ({name})" if name else f"tid {tid}"

    def _thread(self, tid):
        if tid not in self.spans:
            self.spans[tid] = collections.Counter()
            self.span_list[tid] = []
            self.instants[tid] = []
            self.held[tid] = []
            self.held_by_gil[tid] = {}


class _Problems:
    """Collects problems, listing at most MAX_PER_KIND of each kind."""

    def __init__(self):
        self.lines = []
        self.counts = collections.Counter()

    def add(self, kind, message):
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.lines.append(message)

    def finish(self):
        for kind, n in self.counts.items():
            if n > MAX_PER_KIND:
                self.lines.append(f"... and {n - MAX_PER_KIND} more {kind} problems ({n} in all)")
        return self.lines


def _is_time(v):
    """A number >= 0 (type(): JSON's true is a bool, which is an int), not inf or nan."""
    return type(v) in (int, float) and 0 <= v < math.inf


def _bad_fields(ev):
    """The fields of one event that are missing or wrong, as readable strings."""
    ph = ev.get("ph")
    bad = []
    if type(ev.get("name")) is not str:
        bad.append("name (a string)")
    if ph not in PHASES:
        bad.append("ph (one of %s)" % " ".join(sorted(PHASES)))
    for key in ("pid", "tid"):
        if type(ev.get(key)) is not int:
            bad.append(f"{key} (an int)")
    if ph != "M" and not _is_time(ev.get("ts")):
        bad.append("ts (a number >= 0)")
    if ph == "X" and not _is_time(ev.get("dur")):
        bad.append("dur (a number >= 0)")
    if ph in ("i", "I") and "s" in ev and ev["s"] not in INSTANT_SCOPES:
        bad.append("s (g, p or t)")
    return bad


def _where(index, ev):
    return f"event {index} ({ev.get('name')!r}, ph {ev.get('ph')}, tid {ev.get('tid')})"


def load(trace):
    """The trace as a dict: `trace` itself, or the JSON read from the path it names."""
    if isinstance(trace, (str, os.PathLike)):
        with open(trace, encoding="utf-8") as f:
            return json.load(f)
    return trace


def check(trace, gil_build=True):
    """Checks a parsed trace (or the path of one); returns a Result."""
    result = Result()
    problems = _Problems()
    try:
        trace = load(trace)
    except (OSError, ValueError) as e:
        result.problems = [f"cannot read the trace: {e}"]
        return result
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        result.problems = ["the top level is not an object with a traceEvents list"]
        return result
    other = trace.get("otherData")
    if isinstance(other, dict) and isinstance(other.get("pyattach"), dict):
        dropped = other["pyattach"].get("dropped", 0)
        result.dropped = dropped if type(dropped) is int else 0

    events = trace["traceEvents"]
    result.events = len(events)
    last_ts = {}  # tid -> ts of its latest timed event, for the order check
    stacks = {}  # tid -> [[name, cat, start, args]] the open B spans, innermost last
    first, last = math.inf, -math.inf  # the trace's extent
    for index, ev in enumerate(events):
        if not isinstance(ev, dict):
            problems.add("format", f"event {index}: not an object")
            continue
        name, ph, pid, tid = ev.get("name"), ev.get("ph"), ev.get("pid"), ev.get("tid")
        ts = ev.get("ts")
        # The common case in one expression (this loop may see a million events); _bad_fields
        # says what is wrong, and checks X's dur and the instants' scope.
        if not (ph in PLAIN_PHASES and type(name) is str and type(pid) is int
                and type(tid) is int and (ph == "M" or _is_time(ts))):
            bad = _bad_fields(ev)
            if bad:
                problems.add("format", f"{_where(index, ev)}: missing or wrong " + ", ".join(bad))
                continue
        args = ev.get("args")
        if ph == "M" and name != "thread_name":
            # process_name and the like: tid 0 is no thread
            if name == "process_name" and isinstance(args, dict):
                result.process_names[pid] = args.get("name")
            continue
        stack = stacks.get(tid)
        if stack is None:
            stack = stacks[tid] = []
            result._thread(tid)
            result.pids[tid] = pid
        elif result.pids[tid] != pid:
            problems.add("format", f"{_where(index, ev)}: tid {tid} also appears in pid "
                                   f"{result.pids[tid]} (threads are told apart by tid)")
        if ph == "M":
            if isinstance(args, dict) and isinstance(args.get("name"), str):
                result.thread_names[tid] = args["name"]
            continue

        previous = last_ts.get(tid)
        if previous is not None and ts < previous:
            problems.add("order", f"{_where(index, ev)}: ts {ts} is before the thread's previous "
                                  f"event at {previous} (a thread's events must be in time order)")
        else:
            last_ts[tid] = ts
        if ts < first:
            first = ts
        end = ts + ev["dur"] if ph == "X" else ts
        if end > last:
            last = end
        if ph == "B":
            stack.append([name, ev.get("cat", ""), ts, args])
        elif ph == "E":
            if not stack:
                problems.add("nesting", f"{_where(index, ev)}: E with no open B")
                continue
            if stack[-1][0] != name:
                problems.add("nesting", f"{_where(index, ev)}: E closes {name!r} but the innermost "
                                        f"open span is {stack[-1][0]!r}")
                if name not in [s[0] for s in stack]:
                    continue
                # Recover as if the spans above the named one had been closed: drop them.
                while stack[-1][0] != name:
                    stack.pop()
            sname, scat, start, sargs = stack.pop()
            result.span_list[tid].append(Span(sname, scat, start, ts, len(stack), sargs))
        elif ph == "X":
            result.span_list[tid].append(Span(name, ev.get("cat", ""), ts, ts + ev["dur"],
                                              len(stack), args))
        elif ph in ("i", "I"):
            result.instants[tid].append(Instant(name, ev.get("cat", ""), ts, ev.get("s", "t"),
                                                args))

    for tid, stack in stacks.items():
        for sname, _, start, _ in stack:
            problems.add("nesting", f"{result.thread_label(tid)}: B {sname!r} at {start} is never "
                                    "closed")
    for tid, spans in result.span_list.items():
        # B/E spans were appended as they closed; the renderer and readers want opening order.
        spans.sort(key=lambda s: (s.start, s.depth))
        result.spans[tid].update(s.name for s in spans)
        result.totals.update(result.spans[tid])
        result.held_by_gil[tid] = held_by_gil(spans)
        result.held[tid] = sorted(i for intervals in result.held_by_gil[tid].values()
                                  for i in intervals)
    if first <= last:
        result.first_ts, result.last_ts = first, last
    if gil_build:
        _check_overlaps(result, problems)
    result.problems = problems.finish()
    return result


def gil_of(args):
    """The GIL a span's args name (trace_writer.cpp: "gil"); 0, the main interpreter's, if none."""
    gil = args.get("gil", 0) if isinstance(args, dict) else 0
    return gil if type(gil) is int else 0


def held_intervals(spans):
    """[(start, end)] where the innermost open span among attached/waiting/detached is attached."""
    return sorted(i for intervals in held_by_gil(spans).values() for i in intervals)


def held_by_gil(spans):
    """{gil: [(start, end)]}: where the innermost open span among attached/waiting/detached is an
    attached span of that GIL (gil_of its args).

    A sweep over the span boundaries in time order; at equal times closes come before opens (so a
    detached span ending where a waiting one starts leaves no gap), opens outermost first and
    closes innermost first. Zero-length spans change nothing and are left out.
    """
    bounds = []
    for s in spans:
        if s.name in GIL_SPANS and s.end > s.start:
            gil = gil_of(s.args)
            bounds.append((s.start, 1, s.depth, s.name, gil))
            bounds.append((s.end, 0, -s.depth, s.name, gil))
    bounds.sort()
    held = {}
    active = {}  # depth -> (name, gil) of the open GIL span at that depth
    holding, since = None, None  # the GIL held since `since`
    for t, opening, depth, name, gil in bounds:
        if opening:
            active[depth] = (name, gil)
        elif active.get(-depth) == (name, gil):
            del active[-depth]
        inner = active[max(active)] if active else None
        now = inner[1] if inner is not None and inner[0] == ATTACHED else None
        if now != holding:
            if holding is not None and t > since:
                held.setdefault(holding, []).append((since, t))
            holding, since = now, t
    return held


def _check_overlaps(result, problems):
    """Held intervals of one GIL of different threads (of one process) must not overlap: sort all
    of them by start and sweep, remembering the interval that reaches furthest. One thread's own
    held intervals are disjoint, so an interval starting before that end overlaps another
    thread's."""
    by_gil = collections.defaultdict(list)
    for tid, gils in result.held_by_gil.items():
        for gil, intervals in gils.items():
            for start, end in intervals:
                by_gil[result.pids[tid], gil].append((start, end, tid))
    for (_, gil), intervals in by_gil.items():
        which = "GIL" if gil == 0 else f"GIL of interpreter {gil}"
        intervals.sort()
        far = None  # (end, start, tid) of the interval reaching furthest so far
        for start, end, tid in intervals:
            if far is not None and start < far[0]:
                f_end, f_start, f_tid = far
                origin = result.first_ts or 0
                problems.add("GIL overlap",
                             f"{which} held by two threads at once: "
                             f"{result.thread_label(f_tid)} held "
                             f"it {f_start:.3f}..{f_end:.3f} us and {result.thread_label(tid)} "
                             f"{start:.3f}..{end:.3f} us, overlapping "
                             f"{min(end, f_end) - start:.3f} us from "
                             f"{(start - origin) / 1000:.3f} ms into the trace")
            if far is None or end > far[0]:
                far = (end, start, tid)


def summary(result):
    """A few lines describing a valid trace, for the command line."""
    lines = [f"{result.events} events, {len(result.spans)} threads"]
    if result.first_ts is not None:
        lines[0] += f", {(result.last_ts - result.first_ts) / 1000:.3f} ms"
    lines.append("spans: " + ", ".join(f"{n} {name!r}" for name, n in result.totals.most_common()))
    for tid in result.spans:
        held = sum(e - s for s, e in result.held[tid]) / 1000
        lines.append(f"  {result.thread_label(tid)}: GIL held {held:.3f} ms in "
                     f"{len(result.held[tid])} intervals")
    if result.dropped:
        lines.append(f"note: the writer dropped {result.dropped} events (otherData.pyattach)")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace", help="the trace JSON file")
    ap.add_argument("--no-gil-check", action="store_true",
                    help="a free-threaded build: several threads may be attached at once")
    args = ap.parse_args(argv)
    result = check(args.trace, gil_build=not args.no_gil_check)
    if result.problems:
        print(f"{args.trace}: not valid", file=sys.stderr)
        for line in result.problems:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"{args.trace}: ok")
    for line in summary(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

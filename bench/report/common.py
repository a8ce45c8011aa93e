"""What the report's parts share: the alternatives and workloads it knows, small helpers,
and the formatting of figures and verdicts."""

import json
import os
import subprocess


ALTERNATIVES = [
    ("gilstate_per_call", "per-call `PyGILState_Ensure`/`Release`"),
    ("gilstate_pinned", "pinned outer `PyGILState_Ensure` + inner pairs"),
    ("floor", "**floor**: persistent `PyThreadState`, `PyEval_RestoreThread`/`SaveThread`"),
    ("floor_pep788", "floor + a PEP 788 guard around each attach (3.15+ only)"),
    ("pybind11_per_call", "pybind11 `gil_scoped_acquire` per call"),
    ("pybind11_inc_ref", "pybind11 `gil_scoped_acquire`, state pinned by `inc_ref()`"),
    ("pyattach", "pyattach `attach_scope`"),
    ("pyattach_metrics", "pyattach `attach_scope`, metrics on (`set_metrics(true)`)"),
    ("pyattach_traced", "pyattach `attach_scope`, a trace running (`start_trace()`)"),
    ("pyattach_nested", "pyattach nested `attach_scope` (inside an outer one)"),
    ("pyattach_detach", "pyattach `detach_scope` inside an `attach_scope`"),
    ("body_only", "reference: the body alone, attached throughout (no attach per iteration)"),
]


WORKLOADS = [
    ("empty", "empty body"),
    ("call", "one call of a Python function returning `None`"),
    ("local", "read + set a `threading.local` attribute"),
]


COUNTED_WORKLOADS = ["empty", "call"]


HANDOFF = ["gilstate_per_call", "floor", "pyattach"]


# The two-thread contention case: its rows and the counters kept from its aggregates.
CONTEND = ["floor", "pyattach"]


CONTEND_COUNTERS = ("ns_per_pair", "tsc_per_pair", "b_share", "tsc_ghz")


# The fast path per pyattach function: the rows, empty body, and their names.
FAST_PATH = [
    ("floor", "**floor**: persistent state, `PyEval_RestoreThread`/`SaveThread`"),
    ("pyattach", "pyattach `attach_scope`: attach + detach"),
    ("pyattach_nested", "pyattach nested `attach_scope` (already attached)"),
    ("pyattach_detach", "pyattach `detach_scope` inside an `attach_scope`"),
]


# Which of them claim to keep the thread's state (and so its threading.local data).
KEEPS_STATE = {a: a not in ("gilstate_per_call", "pybind11_per_call") for a, _ in ALTERNATIVES}


# The pyattach lines worth annotating, and the floor to read them against.
ANNOTATED = ["pyattach/empty", "pyattach_nested/empty", "pyattach_detach/empty", "floor/empty"]


# pyattach_pool_bench's rows (pool_alternatives.cpp), in table order, and the no-op row each
# Python row is read against (the same pool's own C++ tasks).
POOL_NOOP = [
    ("asio_post", "`boost::asio::thread_pool(2)` + `boost::asio::post`"),
    ("pyattach_post", "`pyattach::thread_pool` (2 workers) + `post`"),
    ("pyattach_submit", "`pyattach::thread_pool` (2 workers) + `submit`, every future kept, then `get()`"),
]


POOL_PYTHON = [
    ("asio_gilstate", "asio(2) + `PyGILState_Ensure`/`Release` per task", "asio_post"),
    ("asio_floor", "asio(2) + persistent per-thread `PyThreadState` (`thread_local`), "
                   "`PyEval_RestoreThread`/`SaveThread` per task", "asio_post"),
    ("pyattach_post_python", "`pyattach::thread_pool` (2) + `post_python`", "pyattach_post"),
    ("pyattach_submit_python", "`pyattach::thread_pool` (2) + `submit_python`, futures",
     "pyattach_submit"),
    ("pyattach_post_python_unbatched", "`pyattach::thread_pool` (2) + `post_python`, "
     "`batch_python = false` (one attach per task)", "pyattach_post"),
]


# Latency rows, and the asio row with the same kind of task each is read against.
POOL_LATENCY = [
    ("asio_post", "asio(2) + `post`, C++ task", "asio_post"),
    ("pyattach_post", "`pyattach::thread_pool` + `post`, C++ task", "asio_post"),
    ("asio_floor", "asio(2) + persistent state, Python task", "asio_floor"),
    ("pyattach_post_python", "`pyattach::thread_pool` + `post_python`, Python task", "asio_floor"),
]


def read_json(path):
    """The parsed JSON file, or None if it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path, default=""):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return default


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def tiered(x, tiers):
    """x formatted by the first (lower bound, format) of tiers that it reaches; "—" for None."""
    if x is None:
        return "—"
    return next(fmt(x) for bound, fmt in tiers if x >= bound)


def ns(x):
    return tiered(x, [(100, "{:,.0f}".format), (10, "{:.1f}".format),
                      (float("-inf"), "{:.2f}".format)])


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    return f"{r:,.0f}×" if r >= 100 else f"{r:.2f}×"


def met(ok):
    return "**met**" if ok else "**missed**"


def table_head(*columns):
    """A Markdown table's two head lines; a column named ">name" is right-aligned."""
    return ["| " + " | ".join(c.lstrip(">") for c in columns) + " |",
            "|" + "".join("---:|" if c.startswith(">") else "---|" for c in columns)]


def per_leg_targets(title, legs, report):
    """Runs report(leg) -> (body, verdicts) on every leg. Returns the lines of the targets across
    legs under the heading `title`, and the legs' bodies."""
    bodies, verdict_rows = [], []
    for leg in legs:
        body, verdicts = report(leg)
        bodies.append(body)
        verdict_rows.append((leg, verdicts))
    return [title, ""] + targets_table(verdict_rows), bodies


def verdict_table(title, verdicts):
    """One leg's targets, [(name, ok, figures)], as a Markdown table under `title`."""
    lines = [title, "", "| target | verdict | figures |", "|---|---|---|"]
    lines += [f"| {name} | {met(ok)} | {figures} |" for name, ok, figures in verdicts]
    return lines + [""]


def targets_table(verdict_rows):
    """The targets across interpreters, [(leg, verdicts)], as a Markdown table: one row a target
    (in the order they first appear), one column a leg."""
    names = []
    for _, verdicts in verdict_rows:
        names += [v[0] for v in verdicts if v[0] not in names]
    lines = ["| target | " + " | ".join(leg["name"] for leg, _ in verdict_rows) + " |",
             "|---|" + "---|" * len(verdict_rows)]
    for name in names:
        cells = []
        for _, verdicts in verdict_rows:
            v = next((x for x in verdicts if x[0] == name), None)
            cells.append("—" if v is None else f"{'met' if v[1] else 'MISSED'}: {v[2]}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def machine():
    model, cores = "?", 0
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name") and model == "?":
            model = line.split(":", 1)[1].strip()
        if line.startswith("processor"):
            cores += 1
    mem = "?"
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    return model, cores, os.uname().release, mem


def tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip() \
            .splitlines()[0]
    except (OSError, IndexError):
        return "?"

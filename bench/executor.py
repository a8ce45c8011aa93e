"""bench/executor.py — pyattach.ThreadPoolExecutor against concurrent.futures.ThreadPoolExecutor,
in one process, on one interpreter, interleaved (std, pyattach, std, pyattach, ...) so that the
machine's drift hits both alike. A benchmark, not a test: it prints figures and ratios and fails
only if a run fails.

Cases, for 1, 2 and 4 workers:
  submit   N trivial tasks (`lambda x: x`) submitted, then every result() taken: tasks/s
  map      list(ex.map(f, range(N))): tasks/s
  sleep0   N tasks calling time.sleep(0) (releases the GIL), submit + result: tasks/s
  sha256   N tasks hashing 64 KiB with hashlib (a C call that releases the GIL): tasks/s
  latency  idle submit→start: the workers idle for 2 ms, then one task records when it starts;
           median and p90 over the samples, in µs
  future_floor_us  no executor: one thread makes N Futures, sets each running and gives it its
           result, then takes every result, in µs per task (the same figure in every row: the bound any executor
           returning concurrent.futures.Future objects cannot beat on one GIL)
  wake_floor_us  no executor: a plain thread blocked on a lock, released after 2 ms idle: the
           median time until it runs Python (waking a sleeping thread and handing it the GIL)

Usage (the interpreter must have pyattach installed: scripts/bench-executor.sh does that):
  python bench/executor.py --json OUT.json [--repeats 5] [--tasks 20000] [--samples 400]
"""

import argparse
import concurrent.futures
import hashlib
import json
import platform
import statistics
import sys
import time

import pyattach

EXECUTORS = [("std", concurrent.futures.ThreadPoolExecutor), ("pyattach", pyattach.ThreadPoolExecutor)]
BLOB = b"x" * 65536


def trivial(x):
    return x


def sleep0(x):
    time.sleep(0)
    return x


def sha256(x):
    return hashlib.sha256(BLOB).digest()


def throughput_submit(ex, fn, n):
    t0 = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - t0)


def throughput_map(ex, fn, n):
    t0 = time.perf_counter()
    for _ in ex.map(fn, range(n)):
        pass
    return n / (time.perf_counter() - t0)


def latency(ex, samples):
    starts = []

    def record():
        starts.append(time.perf_counter_ns())

    out = []
    for _ in range(samples):
        time.sleep(0.002)  # the workers go idle (blocked waiting for work)
        t0 = time.perf_counter_ns()
        ex.submit(record).result()
        out.append((starts[-1] - t0) / 1000.0)
    out.sort()
    return {"median": statistics.median(out), "p90": out[int(len(out) * 0.9)]}


def future_floor(n):
    """What the Future bookkeeping alone costs one thread, per task, in the submit case's pattern
    (N futures made and kept, each set running and given its result, then every result taken):
    what any executor that returns concurrent.futures.Future objects pays, whatever runs the
    task. µs per task."""
    future = concurrent.futures.Future
    t0 = time.perf_counter()
    futures = [future() for _ in range(n)]
    for i, f in enumerate(futures):
        f.set_running_or_notify_cancel()
        f.set_result(i)
    for f in futures:
        f.result()
    return (time.perf_counter() - t0) / n * 1e6


def wake_floor(samples):
    """No executor: a plain thread blocked on a lock (idle, like a worker), released by the main
    thread, which then waits for it as result() would; the time from release to the thread
    running Python, median in µs. The part of idle latency that waking a sleeping thread and
    handing it the GIL costs, whoever's thread it is."""
    import threading
    go, done = threading.Lock(), threading.Lock()
    go.acquire()
    done.acquire()
    starts = []

    def sleeper():
        for _ in range(samples):
            go.acquire()
            starts.append(time.perf_counter_ns())
            done.release()

    t = threading.Thread(target=sleeper)
    t.start()
    out = []
    for _ in range(samples):
        time.sleep(0.002)
        t0 = time.perf_counter_ns()
        go.release()
        done.acquire()
        out.append((starts[-1] - t0) / 1000.0)
    t.join()
    return statistics.median(out)


def run(args):
    cases = {
        "submit": lambda ex: throughput_submit(ex, trivial, args.tasks),
        "map": lambda ex: throughput_map(ex, trivial, args.tasks),
        "sleep0": lambda ex: throughput_submit(ex, sleep0, args.tasks // 4),
        "sha256": lambda ex: throughput_submit(ex, sha256, args.tasks // 20),
    }
    results = {}  # (case, workers, executor) -> list of figures
    for workers in (1, 2, 4):
        for _ in range(args.repeats):
            for name, cls in EXECUTORS:
                with cls(max_workers=workers) as ex:
                    throughput_submit(ex, trivial, 2000)  # warm: start every worker
                    for case, fn in cases.items():
                        results.setdefault((case, workers, name), []).append(fn(ex))
                    lat = latency(ex, args.samples // args.repeats)
                    results.setdefault(("latency_median", workers, name), []).append(lat["median"])
                    results.setdefault(("latency_p90", workers, name), []).append(lat["p90"])
    floor = [future_floor(args.tasks) for _ in range(args.repeats)]
    wake = [wake_floor(args.samples // args.repeats) for _ in range(args.repeats)]
    for workers in (1, 2, 4):
        for name, _ in EXECUTORS:
            results[("future_floor_us", workers, name)] = floor
            results[("wake_floor_us", workers, name)] = wake
    rows = []
    for (case, workers, name), values in sorted(results.items()):
        rows.append({"case": case, "workers": workers, "executor": name,
                     "median": statistics.median(values), "min": min(values),
                     "max": max(values), "runs": len(values)})
    return rows


CASES = ("submit", "map", "sleep0", "sha256", "latency_median", "latency_p90")


def table(rows):
    """A plain-text table: the median of each figure, and pyattach's over std's."""
    by = {(r["case"], r["workers"], r["executor"]): r["median"] for r in rows}
    lines = ["%-15s %7s %12s %12s %7s  %s" % ("case", "workers", "std", "pyattach", "ratio", "unit")]
    for case in CASES:
        unit = "µs" if case.startswith("latency") else "tasks/s"
        for workers in (1, 2, 4):
            s, p = by[(case, workers, "std")], by[(case, workers, "pyattach")]
            lines.append("%-15s %7d %12.1f %12.1f %6.2fx  %s" % (case, workers, s, p, p / s, unit))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=400)
    args = ap.parse_args()
    rows = run(args)
    print(table(rows))
    with open(args.json, "w") as f:
        json.dump({"python": sys.executable, "version": platform.python_version(),
                   "repeats": args.repeats, "tasks": args.tasks, "samples": args.samples,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

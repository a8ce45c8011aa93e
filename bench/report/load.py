"""Reading Google Benchmark's JSON: the wall-time results (wall.json) and the pools' (pool.json)."""

import os
import re

from .callgrind import load_pool_counted
from .common import CONTEND_COUNTERS, median, read_json


def load_wall(path):
    """{(kind, alt, workload): {"median","min","max","states","kept","error","reps"}}"""
    data = read_json(path)
    if data is None:
        return {}, {}
    out = {}
    for b in data.get("benchmarks", []):
        run = b.get("run_name", b["name"])
        parts = run.split("/")
        if parts[-1] == "real_time":
            parts = parts[:-1]
        # per-benchmark settings in the name (contend/<alt>/min_time:0.200): not part of the key
        parts = [p for p in parts if not re.match(r"^(min_time|iterations|repeats):", p)]
        if parts[0] == "attach" and len(parts) == 3:
            key = ("attach", parts[1], parts[2])
        elif parts[0] == "handoff" and len(parts) == 2:
            key = ("handoff", parts[1], "call")
        elif parts[0] == "contend" and len(parts) == 2:
            key = ("contend", parts[1], "empty")
        else:
            continue
        entry = out.setdefault(key, {"error": None, "reps": 0})
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
        if b.get("error_occurred"):
            entry["error"] = b.get("error_message", "error")
            continue
        if b.get("run_type") == "iteration":
            entry["reps"] += 1
        elif b.get("run_type") == "aggregate" and b.get("aggregate_name") in ("median", "min", "max"):
            entry[b["aggregate_name"]] = b["real_time"] * scale
            for counter in CONTEND_COUNTERS:
                if counter in b:
                    entry.setdefault(counter, {})[b["aggregate_name"]] = b[counter]
            if b["aggregate_name"] == "median":
                entry["states"] = b.get("states_per_iter")
                entry["kept"] = b.get("kept")
    return out, data.get("context", {})


def load_pool(path):
    """{(group, alt): {...}}: throughput rows ("noop", "python") with rates = items_per_second per
    repetition and median/min/max of them; latency rows with the percentiles; "error" if a run
    failed. And the run's context. ({}, {}) if there is no file."""
    data = read_json(path)
    if data is None:
        return {}, {}
    out = {}
    families = [b.get("family_index", 0) for b in data.get("benchmarks", [])
                if b.get("run_type") == "iteration"]
    # Run with --benchmark_enable_random_interleaving: the repetitions' order is not by row.
    data.setdefault("context", {})["interleaved"] = families != sorted(families)
    for b in data.get("benchmarks", []):
        parts = b.get("run_name", b["name"]).split("/")
        if parts[0] != "pool" or len(parts) < 3 or b.get("run_type") != "iteration":
            continue
        entry = out.setdefault((parts[1], parts[2]), {"error": None, "rates": []})
        if b.get("error_occurred"):
            entry["error"] = b.get("error_message", "error")
            continue
        if parts[1] == "latency":
            for k in ("min", "median", "p90", "p99", "max"):
                entry[k] = b.get(f"latency_{k}_ns")
            entry["probes"] = b.get("probes")
        elif parts[1] in ("gilwait", "gilwait_capi"):
            for k in ("median", "p90", "p99", "max"):
                entry[k] = b.get(f"wait_{k}_ns")
            entry["probes"] = b.get("probes")
            entry["tasks"] = b.get("tasks")
            entry["interval"] = b.get("switch_interval_ns")
        else:
            entry["rates"].append(b.get("items_per_second"))
            entry["tasks"] = b.get("tasks")
            entry.setdefault("states_warmup", []).append(b.get("states_warmup"))
            entry.setdefault("states_measured", []).append(b.get("states_measured"))
    for (group, _), entry in out.items():
        rates = [r for r in entry["rates"] if r is not None]
        if group in ("noop", "python") and rates:
            entry["median"], entry["min"], entry["max"] = median(rates), min(rates), max(rates)
    out.update(load_pool_counted(os.path.dirname(path)))
    return out, data.get("context", {})

"""The Pools section: pyattach_pool_bench's throughput, latency, GIL waits and instructions
per Python task, against the hand-written asio pools."""

from .common import POOL_LATENCY, POOL_NOOP, POOL_PYTHON, per_leg_targets, ratio, table_head, tiered, verdict_table


def rate(x):
    return tiered(x, [(1e6, lambda v: f"{v / 1e6:.2f} M"), (1e3, lambda v: f"{v / 1e3:.1f} k"),
                      (float("-inf"), "{:.0f}".format)])


# The Python-task rows' descriptions, by alternative.
POOL_TEXT = {alt: text for alt, text, _ in POOL_PYTHON}


def table_row(lead, e, cells):
    """A Markdown row: the lead cells, then `cells`, or, if the run `e` failed, its error and as
    many empty cells."""
    if e.get("error"):
        return "| " + " | ".join(lead + [f"error: {e['error']}"]) + " |" + " |" * (len(cells) - 1)
    return "| " + " | ".join(lead + cells) + " |"


def us(x):
    return "—" if x is None else f"{x / 1e3:,.1f}"


def states_text(values):
    vals = sorted({int(v) for v in values if v is not None})
    return "/".join(f"{v:,}" for v in vals) or "—"


def pool_verdicts(pool):
    """The pool's first targets for one leg (throughput, latency, GIL waits): [(name, ok, figures)]."""
    def med(group, alt):
        e = pool.get((group, alt), {})
        return None if e.get("error") else e.get("median")

    verdicts = []
    a, p, sub = med("noop", "asio_post"), med("noop", "pyattach_post"), med("noop", "pyattach_submit")
    if a and p:
        extra = f"; `submit` with futures: {rate(sub)}/s, {sub / a:.2f}×" if sub else ""
        verdicts.append(("pool no-op throughput ≥ 1.0× asio's (same run, medians)", p / a >= 1.0,
                         f"`post` {rate(p)}/s vs asio {rate(a)}/s: {p / a:.2f}×{extra}"))
    pp, sp = med("python", "pyattach_post_python"), med("python", "pyattach_submit_python")
    if pp and p:
        extra = (f"; `submit_python` vs `submit`: {rate(sp)}/s vs {rate(sub)}/s, {sp / sub:.2f}×"
                 if sp and sub else "")
        verdicts.append(("Python-task throughput ≥ 0.9× the pool's own no-op throughput (medians)",
                         pp / p >= 0.9,
                         f"`post_python` {rate(pp)}/s vs `post` {rate(p)}/s: {pp / p:.2f}×{extra}"))
    return verdicts


def pool_part2_verdicts(pool):
    """The targets added with batching, for one leg: [(name, ok, figures)]."""
    def med(group, alt):
        e = pool.get((group, alt), {})
        return None if e.get("error") else e.get("median")

    verdicts = []
    fl, pp, sp = (med("python", "asio_floor"), med("python", "pyattach_post_python"),
                  med("python", "pyattach_submit_python"))
    if fl and pp:
        verdicts.append(("`post_python` wall throughput ≥ 1.0× asio + persistent state (2 workers, "
                         "trivial Python call, medians)", pp / fl >= 1.0,
                         f"{rate(pp)}/s vs {rate(fl)}/s: {pp / fl:.2f}×"))
    cf, cp = (pool.get(("counted", "asio_floor"), {}).get("ir_per_task"),
              pool.get(("counted", "pyattach_post_python"), {}).get("ir_per_task"))
    if cf and cp:
        verdicts.append(("`post_python` instructions per task ≤ 1.0× asio + persistent state's "
                         "(callgrind, every thread)", cp / cf <= 1.0,
                         f"{cp:,.0f} vs {cf:,.0f}: {cp / cf:.2f}×"))
    if pp and sp:
        verdicts.append(("`submit_python` wall throughput ≥ 0.9× `post_python` (medians)",
                         sp / pp >= 0.9, f"{rate(sp)}/s vs {rate(pp)}/s: {sp / pp:.2f}×"))
    for group, what in (("gilwait", "trivial Python call"), ("gilwait_capi", "C-API-only task")):
        e = pool.get((group, "pyattach_post_python"), {})
        b = pool.get((group, "asio_floor"), {})
        u = pool.get((group, "pyattach_post_python_unbatched"), {})
        if e.get("error") or not e.get("interval") or e.get("p99") is None:
            continue
        iv = e["interval"]
        verdicts.append((f"another thread's GIL wait while the pool runs {what}s ≤ the switch "
                         f"interval (p99 of the probes)", e["p99"] <= iv,
                         f"p99 {e['p99'] / 1e6:.2f} ms (max {e['max'] / 1e6:.2f}, median "
                         f"{e['median'] / 1e6:.3f}) vs {iv / 1e6:.1f} ms; asio + state: p99 "
                         f"{(b.get('p99') or 0) / 1e6:.2f} ms (max {(b.get('max') or 0) / 1e6:.2f}); "
                         f"`batch_python = false`: p99 {(u.get('p99') or 0) / 1e6:.2f} ms (max "
                         f"{(u.get('max') or 0) / 1e6:.2f})"))
    return verdicts


def pool_report(leg):
    """Markdown lines for one interpreter's pool benchmarks, and its target verdicts."""
    pool, ctx = leg["pool"], leg["pool_context"]
    version = ctx.get("python_version", "?").split(" ")[0]
    lines = [f"### {leg['name']}: CPython {version} (`{leg['python']}`)", ""]
    reps = max((len(e["rates"]) for k, e in pool.items() if k[0] in ("noop", "python")), default=0)

    def noop_median(alt):
        e = pool.get(("noop", alt), {})
        return None if e.get("error") else e.get("median")

    asio = noop_median("asio_post")
    lines.append(f"C++ no-op tasks ({int(float(ctx.get('noop_tasks', 0))):,} per repetition, "
                 f"{ctx.get('workers', '?')} workers), tasks per second: median (min–max) over "
                 f"{reps} repetitions; × asio = median ÷ asio's median in this run:")
    lines.append("")
    lines += table_head("pool", ">tasks/s", ">× asio", "thread states: pool + warm-up / measured run")
    for alt, text in POOL_NOOP:
        e = pool.get(("noop", alt), {})
        lines.append(table_row([text], e, [
            f"{rate(e.get('median'))} ({rate(e.get('min'))}–{rate(e.get('max'))})",
            ratio(e.get('median'), asio),
            f"{states_text(e.get('states_warmup', []))} / {states_text(e.get('states_measured', []))}"]))
    lines.append("")

    floor = pool.get(("python", "asio_floor"), {}).get("median")
    lines.append(f"Tasks calling a Python function that returns `None` "
                 f"({int(float(ctx.get('python_tasks', 0))):,} per repetition), tasks per second: "
                 f"median (min–max); × asio = ÷ asio's no-op median; × asio + state = ÷ the "
                 f"asio + persistent state row; × own no-op = ÷ the same pool's no-op median "
                 f"(asio's rows: asio `post`):")
    lines.append("")
    lines.append("| pool | tasks/s | × asio | × asio + state | × own no-op | thread states: pool + "
                 "warm-up / measured run (per task) |")
    lines.append("|---|---:|---:|---:|---:|---|")
    for alt, text, own in POOL_PYTHON:
        e = pool.get(("python", alt), {})
        m = e.get("median")
        measured = [v for v in e.get("states_measured", []) if v is not None]
        per_task = (f" ({max(measured) / e['tasks']:g} per task)"
                    if measured and e.get("tasks") else "")
        lines.append(table_row([text], e, [
            f"{rate(m)} ({rate(e.get('min'))}–{rate(e.get('max'))})",
            ratio(m, asio), ratio(m, floor), ratio(m, noop_median(own)),
            f"{states_text(e.get('states_warmup', []))} / {states_text(measured)}{per_task}"]))
    lines.append("")

    probes = next((int(e["probes"]) for k, e in pool.items()
                   if k[0] == "latency" and e.get("probes")), 0)
    lines.append(f"Submit→start latency on an idle pool ({probes:,} probes, one run; the submitter "
                 "sleeps 1 ms before each; latency = the task's first `steady_clock` reading − the "
                 "reading just before the submit; a Python task's start is after its attach), µs; "
                 "× asio = ÷ asio's figure for the same kind of task (C++: `post`; Python: "
                 "+ persistent state):")
    lines.append("")
    lines += table_head("pool, task", ">median", ">p90", ">p99", ">max", ">× asio (median)", ">× asio (p90)")
    for alt, text, base in POOL_LATENCY:
        e = pool.get(("latency", alt), {})
        b = pool.get(("latency", base), {})
        lines.append(table_row([text], e, [
            us(e.get('median')), us(e.get('p90')), us(e.get('p99')), us(e.get('max')),
            ratio(e.get('median'), b.get('median')), ratio(e.get('p90'), b.get('p90'))]))
    lines.append("")

    counted = [(alt, pool[("counted", alt)]) for alt in
               ("asio_floor", "pyattach_post_python", "pyattach_submit_python",
                "pyattach_post_python_unbatched")
               if ("counted", alt) in pool]
    if counted:
        base = pool.get(("counted", "asio_floor"), {}).get("ir_per_task")
        lines.append(f"Instructions per Python task (callgrind, `pyattach_pool_bench --callgrind "
                     f"{counted[0][1].get('tasks') or '?'}`: a fresh pool, its warm-up, then the "
                     "tasks submitted and awaited with every thread counted: the submitter's "
                     "submits and wait, the workers' attaches, calls and bookkeeping; "
                     "× asio + state = ÷ that row):")
        lines.append("")
        lines += table_head("pool", ">instructions per task", ">× asio + state", "status")
        for alt, e in counted:
            per = e.get("ir_per_task")
            lines.append(f"| {POOL_TEXT.get(alt, alt)} | {'—' if per is None else f'{per:,.0f}'} | "
                         f"{ratio(per, base)} | {e.get('status')} |")
        lines.append("")
    gil = [(g, alt) for g in ("gilwait", "gilwait_capi")
           for alt in ("asio_floor", "pyattach_post_python_unbatched", "pyattach_post_python")
           if (g, alt) in pool]
    if gil:
        e0 = pool[gil[0]]
        iv = e0.get("interval") or 0
        lines.append(f"Another thread's wait for the GIL while the pool runs a stream of Python tasks "
                     f"(a prober thread with its own state sleeps 1 ms detached, then attaches, "
                     f"{int(e0.get('probes') or 0):,} times; the submitter keeps up to 4,096 tasks "
                     f"queued), ms; sys.getswitchinterval() = {iv / 1e6:g} ms. C-API-only tasks run "
                     "no bytecode, so CPython's drop request is never honoured inside them:")
        lines.append("")
        lines += table_head("tasks", "pool", ">median", ">p90", ">p99", ">max", ">tasks run meanwhile")
        for g, alt in gil:
            e = pool[(g, alt)]
            what = "trivial Python call" if g == "gilwait" else "C API only"
            ms = lambda x: "—" if x is None else f"{x / 1e6:.3f}"
            lines.append(table_row([what, POOL_TEXT.get(alt, alt)], e, [
                ms(e.get('median')), ms(e.get('p90')), ms(e.get('p99')), ms(e.get('max')),
                f"{int(e.get('tasks') or 0):,}"]))
        lines.append("")

    verdicts = pool_verdicts(pool) + pool_part2_verdicts(pool)
    lines += verdict_table("Targets (wall medians and instruction counts of this run, never asserted):",
                           verdicts)
    return lines, verdicts


def pools_section(legs):
    """The whole "Pools" section: method, targets across interpreters, then one block per leg."""
    legs = [leg for leg in legs if leg["pool"]]
    if not legs:
        return []
    ctx = legs[0]["pool_context"]
    out = ["## Pools: `pyattach::thread_pool` against `boost::asio::thread_pool`", ""]
    out.append(f"- Binary: `pyattach_pool_bench` (bench/pool_alternatives.cpp), built with the "
               f"same Release flags, Boost {ctx.get('boost_version', '?').replace('_', '.')}. Every "
               f"pool has {ctx.get('workers', '?')} workers; the submitter is the main thread "
               "(it embeds CPython with `pyattach::interpreter` and is detached while it submits).")
    out.append("- Each repetition makes a fresh pool, warms it up (one task on each worker, held at "
               "a barrier until both run; a Python pool's workers make their thread states here), "
               "then times one batch: submit every task, then wait for all (asio `join()`, the "
               "pool's `wait()`, or every future's `get()`). Making the pool, the warm-up and its "
               "destruction are outside the timing."
               + (" The repetitions of all rows ran interleaved in random order "
                  "(`--benchmark_enable_random_interleaving`), so a burst of load from other work "
                  "lands on several rows rather than on one." if ctx.get("interleaved") else ""))
    out.append("- Every task counts itself (a per-thread counter on its own cache line, read "
               "after the wait): a lost or duplicated task, a Python call that raised, pool stats "
               "that disagree, or a thread state made where the alternative keeps one, fails the "
               "run (shown as an error below). Thread states are counted with CPython's creation "
               "counter, as above: *pool + warm-up* from before the pool was made to after its "
               "warm-up, *measured run* around the timed batch.")
    out.append("- How to read the throughput: one submitter posts as fast as it can, so when the "
               "workers keep up, a row's rate is its submit path's rate; Python tasks also depend "
               "on whether both workers are busy (trading the GIL on every task) or one drains the "
               "queue alone, so their repetitions can differ several-fold (see min–max).")
    out.append("- 2 cores shared with other work: three busy threads (submitter + 2 workers) "
               "on 2 cores, so these wall figures are noisy; read ratios within one table.")
    out.append("")
    targets, bodies = per_leg_targets("### Pool targets, per interpreter", legs, pool_report)
    out += targets
    out += [
        "Notes on the pool targets (found while building batching, Debian 3.11; the "
        "figures above are this run's):",
        "",
        "- **`submit_python` ≥ 0.9× `post_python`.** A `submit` allocates the task, the promise's "
        "shared state and its result on the submitter and frees them on a worker. That "
        "cross-thread pattern defeats glibc's per-thread cache: in a callgrind dump of "
        "`submit_python` (20,000 tasks) `malloc`/`free` and their internals took about 890 "
        "instructions per task, of about 2,100; `std::promise::set_value` adds a `pthread_once`. "
        "Removing it needs a pool-owned allocation for the task and the promise state (the state "
        "must outlive the pool when a future does: shared ownership of the allocator), or a "
        "future type of the pool's own instead of `std::future` (an API change); neither is done.",
        "- **Another thread's GIL wait ≤ the switch interval.** CPython's GIL is not handed over "
        "in order: a worker that ends a batch and takes its next task takes the GIL back before "
        "the waiter it woke gets to run, and each change of hands restarts that waiter's wait "
        "for its drop request. With the batch bounded by the whole interval and no pause, the "
        "prober's p99 was 6–17 ms here; a 100 µs bound with a yield still 5–14 ms. So a batch "
        "that ends on its bound pauses 50 µs, detached, and the bound is half the interval "
        "(the woken waiter may be the pool's other worker, whose batch then runs first). "
        "`pool_options::batch_python = false` attaches per task.",
        "",
    ]
    for body in bodies:
        out += body
    return out

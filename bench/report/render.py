"""The Markdown for each interpreter: targets and verdicts, the tables, the fast-path and
observability sections, and the source annotation."""

import sys

from .callgrind import COLUMNS, annotated_lines, attribution, breakdown
from .common import ALTERNATIVES, ANNOTATED, CONTEND, COUNTED_WORKLOADS, FAST_PATH, HANDOFF, WORKLOADS, met, ns, ratio, verdict_table


def leg_report(leg):
    """Markdown lines for one interpreter, and its target verdicts."""
    wall, counted, ctx = leg["wall"], leg["counted"], leg["context"]
    lines = []
    version = ctx.get("python_version", "?").split(" ")[0]
    lines.append(f"### {leg['name']}: CPython {version} (`{leg['python']}`)")
    lines.append("")
    if leg["status"] != "ok":
        lines.append(f"Run status: **{leg['status']}**")
        lines.append("")

    # Instruction counts.
    lines.append(f"Instructions per iteration (callgrind, {leg['iterations']:,} iterations after "
                 "warm-up, collected only around the loop; nothing subtracted, so the loop's own "
                 "increment and branch are in every figure: `body_only`/empty shows how much):")
    lines.append("")
    lines.append("| alternative | empty | × floor | call | × floor | thread states per iteration "
                 "(empty / call) |")
    lines.append("|---|---:|---:|---:|---:|---|")
    floor = {w: counted.get(("floor", w), {}).get("ir_per_iter") for w in COUNTED_WORKLOADS}
    for alt, text in ALTERNATIVES:
        if not any((alt, w) in counted for w in COUNTED_WORKLOADS):
            continue  # not built for this interpreter (floor_pep788 before 3.15)
        cells = []
        states = []
        for w in COUNTED_WORKLOADS:
            c = counted.get((alt, w), {})
            ir = c.get("ir_per_iter")
            cells += [f"{ir:,.1f}" if ir is not None else "—",
                      ratio(ir, floor[w]) if alt != "body_only" else ""]
            st = c.get("states")
            n = c.get("iterations")
            states.append(f"{st / n:g}" if st is not None and n else "—")
            if c.get("status", "ok") != "ok":
                states[-1] += f" ({c['status']})"
        lines.append(f"| {text} | " + " | ".join(cells) + " | " + " / ".join(states) + " |")
    lines.append("")

    # Wall time.
    lines.append("Wall time per iteration, ns: median (min–max) over "
                 f"{leg['repetitions']} repetitions; × floor = median ÷ the floor's median "
                 "for the same workload in this run:")
    lines.append("")
    head = "| alternative |"
    rule = "|---|"
    for _, wtext in WORKLOADS:
        head += f" {wtext} | × floor |"
        rule += "---:|---:|"
    head += " states / iter | `threading.local` kept |"
    rule += "---:|---|"
    lines.append(head)
    lines.append(rule)
    wfloor = {w: wall.get(("attach", "floor", w), {}).get("median") for w, _ in WORKLOADS}
    for alt, text in ALTERNATIVES:
        if not any(("attach", alt, w) in wall for w, _ in WORKLOADS):
            continue  # not built for this interpreter (floor_pep788 before 3.15)
        row = f"| {text} |"
        states = []
        for w, _ in WORKLOADS:
            e = wall.get(("attach", alt, w), {})
            if e.get("error"):
                row += f" error: {e['error']} | |"
            else:
                row += (f" {ns(e.get('median'))} ({ns(e.get('min'))}–{ns(e.get('max'))}) | "
                        f"{ratio(e.get('median'), wfloor[w]) if alt != 'body_only' else ''} |")
            if e.get("states") is not None:
                states.append(f"{e['states']:g}")
        kept = wall.get(("attach", alt, "local"), {})
        if kept.get("error"):
            kept_text = "error"
        elif kept.get("kept") is None:
            kept_text = "—"
        else:
            kept_text = "yes" if kept["kept"] >= 1.0 else ("no" if kept["kept"] == 0 else
                                                           f"partly ({kept['kept']:.0%})")
        row += f" {'/'.join(sorted(set(states))) or '—'} | {kept_text} |"
        lines.append(row)
    lines.append("")

    # Hand-off.
    lines.append("GIL hand-off (two native threads take turns: attach, call, pass the turn, "
                 "detach; one iteration = one round = two calls, two hand-offs), ns:")
    lines.append("")
    lines.append("| alternative | median (min–max) | × floor | thread states per round |")
    lines.append("|---|---:|---:|---:|")
    hfloor = wall.get(("handoff", "floor", "call"), {}).get("median")
    for alt in HANDOFF:
        e = wall.get(("handoff", alt, "call"), {})
        text = dict(ALTERNATIVES)[alt]
        if e.get("error"):
            lines.append(f"| {text} | error: {e['error']} | | |")
            continue
        st = e.get("states")
        lines.append(f"| {text} | {ns(e.get('median'))} ({ns(e.get('min'))}–{ns(e.get('max'))}) "
                     f"| {ratio(e.get('median'), hfloor)} | {'—' if st is None else f'{st:g}'} |")
    lines.append("")

    lines += contend_table(leg)

    # Targets.
    def ir(alt, w):
        return counted.get((alt, w), {}).get("ir_per_iter")

    def wmed(alt, w):
        return wall.get(("attach", alt, w), {}).get("median")

    verdicts = []
    p, f = ir("pyattach", "empty"), ir("floor", "empty")
    if p and f:
        verdicts.append(("attach+detach ≤ 1.05× the floor (instructions, empty body)",
                         p / f <= 1.05, f"{p:,.1f} vs {f:,.1f}: {p / f:.3f}×; ≤ 1.05× allows "
                         f"{1.05 * f:,.1f}, so {max(0.0, p - 1.05 * f):,.1f} over"))
    n = ir("pyattach_nested", "empty")
    if n:
        # ≤ 15 at first; ≤ 20 once the gate's misuse checks had to stay on the nested path.
        verdicts.append(("nested attach when already attached ≤ 20 instructions", n <= 20,
                         f"{n:,.1f} per nested pair (incl. the loop's "
                         f"{ir('body_only', 'empty') or 0:,.1f})"))
    d = ir("pyattach_detach", "empty")
    if d and f:
        verdicts.append(("detach_scope inside a scope ≤ 1.10× the floor (instructions, empty body)",
                         d / f <= 1.10, f"{d:,.1f} vs {f:,.1f}: {d / f:.3f}×; ≤ 1.10× allows "
                         f"{1.10 * f:,.1f}, so {max(0.0, d - 1.10 * f):,.1f} over"))
    pc, pa, pf = wmed("gilstate_per_call", "call"), wmed("pyattach", "call"), wmed("floor", "call")
    if pc and pa and pf:
        # Compared with the floor in the same run, not with a fixed factor: even the floor is
        # 2–110× faster than per-call PyGILState here, depending on how much a fresh thread state
        # costs on that version, so "≥ 300× faster" was out of reach for any design.
        verdicts.append(("trivial call: speed-up over per-call PyGILState ≥ 0.95× the floor's "
                         "(wall, same run)",
                         (pc / pa) >= 0.95 * (pc / pf),
                         f"pyattach {pc / pa:,.1f}× ({ns(pa)} ns), floor {pc / pf:,.1f}× "
                         f"({ns(pf)} ns), per-call PyGILState {ns(pc)} ns: "
                         f"{(pc / pa) / (pc / pf):.2f} of the floor's"))
    pci, pai, pfi = ir("gilstate_per_call", "call"), ir("pyattach", "call"), ir("floor", "call")
    if pci and pai:
        floor_text = f"; the floor itself: {pci / pfi:.2f}×" if pfi else ""
        verdicts.append(("trivial call ≥ 2.5× fewer instructions than per-call PyGILState",
                         pci / pai >= 2.5, f"{pci:,.1f} vs {pai:,.1f}: {pci / pai:.2f}×{floor_text}"))
    states = []
    for alt in ("pyattach", "pyattach_nested", "pyattach_detach"):
        for w in COUNTED_WORKLOADS:
            c = counted.get((alt, w), {})
            if c.get("states") is not None:
                states.append(c["states"])
        for w, _ in WORKLOADS:
            e = wall.get(("attach", alt, w), {})
            if e.get("states") is not None:
                states.append(e["states"])
    for key in (("handoff", "pyattach", "call"), ("contend", "pyattach", "empty")):
        h = wall.get(key, {}).get("states")
        if h is not None:
            states.append(h)
    if states:
        verdicts.append(("zero thread states created per iteration after warm-up",
                         all(s == 0 for s in states),
                         f"{len(states)} pyattach runs, max {max(states):g} per iteration"))
    lines += verdict_table("Targets:", verdicts)
    return lines, verdicts


def contend_table(leg):
    """The two-thread contention rows of one leg (wall.json's contend/<alt>), as Markdown."""
    wall = leg["wall"]
    if not any(("contend", a, "empty") in wall for a in CONTEND):
        return []
    rows = {a: wall.get(("contend", a, "empty"), {}) for a in CONTEND}

    def med(e, counter, agg="median"):
        return (e.get(counter) or {}).get(agg)

    ghz = next((med(e, "tsc_ghz") for e in rows.values() if med(e, "tsc_ghz")), None)
    lines = ["Two threads at once (two native threads attach + detach in a loop, body empty, both "
             "for the whole window; per pair = the window ÷ the pairs both threads completed in "
             f"it; median (min–max) over {leg['repetitions']} repetitions; cycles = time-stamp "
             "counter ticks (`__rdtsc`), the TSC's fixed nominal rate"
             + (f", {ghz:.2f} GHz here" if ghz else "") + ", not the core's own clock):", ""]
    lines.append("| alternative | cycles per pair | × floor | ns per pair | × floor | "
                 "thread B's share of the pairs | thread states per pair |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    f = rows["floor"]
    for alt in CONTEND:
        e = rows[alt]
        text = dict(ALTERNATIVES)[alt]
        if e.get("error"):
            lines.append(f"| {text} | error: {e['error']} | | | | | |")
            continue
        c, n = med(e, "tsc_per_pair"), med(e, "ns_per_pair")
        share = med(e, "b_share")
        st = e.get("states")
        lines.append(
            f"| {text} | {ns(c)} ({ns(med(e, 'tsc_per_pair', 'min'))}–"
            f"{ns(med(e, 'tsc_per_pair', 'max'))}) | {ratio(c, med(f, 'tsc_per_pair'))} | "
            f"{ns(n)} ({ns(med(e, 'ns_per_pair', 'min'))}–{ns(med(e, 'ns_per_pair', 'max'))}) | "
            f"{ratio(n, med(f, 'ns_per_pair'))} | {'—' if share is None else f'{share:.0%}'} | "
            f"{'—' if st is None else f'{st:g}'} |")
    lines.append("")
    return lines


def leg_breakdowns(leg):
    """{alt: (n, total, cols, detail)} for the FAST_PATH rows (empty body), computed once."""
    if "breakdowns" not in leg:
        leg["breakdowns"] = {}
        for alt, _ in FAST_PATH:
            c = leg["counted"].get((alt, "empty"), {})
            if "dump" not in c or not c.get("iterations"):
                continue
            try:
                total, cols, detail = breakdown(c["dump"])
            except (OSError, ValueError, IndexError) as e:
                print(f"report: no breakdown of {c['dump']}: {e}", file=sys.stderr)
                continue
            leg["breakdowns"][alt] = (c["iterations"], total, cols, detail)
    return leg["breakdowns"]


FAST_PATH_COLUMNS = {"cpython": "CPython", "entry": "inline, entry", "exit": "inline, exit",
                     "ool": "out of line", "loop": "other / loop"}


def fast_path_leg(leg):
    """One interpreter's table: where each fast-path row's instructions go, per pair."""
    version = leg["context"].get("python_version", "?").split(" ")[0]
    lines = [f"### Fast path: {leg['name']} (CPython {version})", ""]
    bds = leg_breakdowns(leg)
    if not bds:
        return lines + ["No callgrind dumps for these rows.", ""]
    lines.append("| per pair, instructions | CPython: `PyEval_RestoreThread` + `SaveThread` | "
                 "pyattach inline, entry | pyattach inline, exit | pyattach out of line "
                 "(entry / exit) | other / loop | total | × floor | pyattach's own |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ftotal = bds.get("floor", (1, None))[1]
    fn_ = bds.get("floor", (1,))[0]
    floor_pp = ftotal / fn_ if ftotal else None
    for alt, text in FAST_PATH:
        if alt not in bds:
            continue
        n, total, cols, detail = bds[alt]
        rt = detail.get(("cpython", "PyEval_RestoreThread"), 0) / n
        st = detail.get(("cpython", "PyEval_SaveThread"), 0) / n
        cp = f"{rt:,.1f} + {st:,.1f} = {cols['cpython'] / n:,.1f}" if cols["cpython"] else "0"
        own = (cols["entry"] + cols["exit"] + cols["ool"]) / n
        ool = (f"{cols['ool'] / n:,.1f} ({cols['ool:entry'] / n:,.1f} / {cols['ool:exit'] / n:,.1f})"
               if cols["ool"] else "0")
        lines.append(f"| {text} | {cp} | {cols['entry'] / n:,.1f} | {cols['exit'] / n:,.1f} | "
                     f"{ool} | {cols['loop'] / n:,.1f} | {total / n:,.1f} | "
                     f"{ratio(total / n, floor_pp)} | {own:,.1f} |")
    lines.append("")
    lines.append(f"<details><summary>{leg['name']}: per pyattach function, instructions per pair"
                 "</summary>")
    lines.append("")
    lines.append("`A › B`: B inlined into A (B the innermost pyattach function defined in "
                 "attach.hpp at those instructions); `A → B()`: an out-of-line call; `→ name`: a "
                 "call out of pyattach (CPython other than the pair, libc), counted with the caller.")
    lines.append("")
    lines.append("| row | column | pyattach function | per pair |")
    lines.append("|---|---|---|---:|")
    order = {c: i for i, c in enumerate(COLUMNS)}
    for alt, _ in FAST_PATH:
        if alt not in bds:
            continue
        n, _, _, detail = bds[alt]
        for (col, key), v in sorted(detail.items(), key=lambda kv: (order[kv[0][0]], -kv[1])):
            if v / n < 0.05:
                continue
            lines.append(f"| {alt} | {FAST_PATH_COLUMNS[col]} | {key} | {v / n:,.1f} |")
    lines.append("")
    lines.append("</details>")
    lines.append("")
    return lines


def remaining_instructions_text():
    """What the instructions above the floor are, and what removing each would cost.

    Counted by hand in the disassembly of the Debian 3.11 Release build of the commit that
    wrote this text (objdump -d of the attach+detach loop in pyattach_bench); the tables below
    are measured on every run. Keep this text true to include/pyattach/attach.hpp."""
    return [
        "### What pyattach adds to the pair, and what removing it would cost",
        "",
        "The inline attach and its end, instruction by instruction (x86-64, Debian 3.11 build; "
        "the two calls and the loop are the floor's too):",
        "",
        "| instructions | what | needed for | cost of removing it |",
        "|---:|---|---|---|",
        "| 7 | the call site: 3 stores into the scope, 4 to copy it to the slot (outermost scope) "
        "| misuse reports with both sites; `expect_attached()` names the last scope's site | a "
        "one-word site (a pointer to `std::source_location`'s static record) needs C++20 in every "
        "translation unit, the library's included (it is built as C++17): 2 instead of 7 |",
        "| 5 (3.11), 20 (3.12, 3.13) | asking CPython for the current thread state (the call: 3 "
        "on 3.11, 18 on 3.12 and 3.13, in the tables below), and the compare | a state attached by other code (a raw `PyGILState_Ensure`, "
        "`Py_BEGIN_ALLOW_THREADS` inside a scope, a sub-interpreter) must not be attached again "
        "(deadlock) | nothing cheaper is exported: 3.12+ reads a thread-local through "
        "`__tls_get_addr` inside libpython |",
        "| 6 | slot, null check, one compare of the gate word with `slot::fast_word` "
        "(generation, open gate, a state pyattach made, barrier mode) | the gate | — |",
        "| 3 | the second read of the gate word after storing the pass | the store-then-check "
        "protocol; without it a closer can miss an attacher | none: the closer's membarrier "
        "already replaced the fence and the atomic read-modify-writes |",
        "| 3 + 3 | depth check; pass and phase stores (waiting, attached) | passes for the closer; "
        "the thread report's waiting/attached state | the phase stores (3) would go with the "
        "report's `waiting`/`attached` distinction |",
        "| 3 | the per-thread count of outermost attaches | `threads()` / thread report `scopes` | "
        "only by dropping that column (or moving it behind the metrics switch) |",
        "| 5 | depth, restored level, owner, level, kind | ending scopes out of order and on "
        "the wrong thread | the misuse reports |",
        "| 10 | end: kind, owner, depth, lost re-attach | wrong-thread, out-of-order, double "
        "release and lost re-attach reports | those reports |",
        "| 3 | end: the gate word again | a scope that outlived its interpreter must not call "
        "CPython | crashes at exit |",
        "| 4 | end: depth, restored level, phase, pass | the closer's count; the report | — |",
        "",
        "These rows sum to 52 on 3.11; the breakdown below gives pyattach 63 there (jumps between "
        "the inlined blocks and register moves make the rest) and 78 on 3.12 and 3.13, where "
        "the current-state call is 15 longer. The target, 1.05× the floor, allows about 20: it "
        "would take dropping the source sites, the thread report's phase and count, and some "
        "misuse detection, which the design keeps (docs/design.md, invariant 6). A nested scope spends the same kinds of "
        "instructions (site, current state, checks) without the pair; `detach_scope` adds a "
        "variable-shift mask update (about 9) that out-of-order and wrong-thread ends of detach "
        "scopes need.",
        "",
    ]


def fast_path_section(legs):
    """The fast path per pyattach function, and the two-thread case, per leg."""
    out = ["## The fast path per pyattach function", ""]
    out.append("Callgrind's dump of each row (empty body, the same runs as the instruction "
               "counts above), split by who spends the instructions, per attach + detach pair: "
               "**CPython** = `PyEval_RestoreThread` and `PyEval_SaveThread`, inclusive (the floor "
               "makes no other call); **pyattach inline, entry / exit** = pyattach code inlined "
               "into the loop from a constructor (`attach_scope()`, `attach_fast`, "
               "`detach_scope()`, ...) or a destructor (`~attach_scope`, ...), with whatever it "
               "calls besides the pair; **out of line** = pyattach functions the compiler did not "
               "inline, inclusive but for the pair, split by the side that called them; **other / "
               "loop** = the measuring loop (see `body_only`/empty) and anything else. How: every "
               "cost line's instruction address is looked up in the binary's debug info "
               "(`addr2line -i`: the functions inlined there), and grouped by pyattach's function "
               "names, so the split follows the code as it changes (no line numbers).")
    out.append("")
    out += remaining_instructions_text()
    for leg in legs:
        out += fast_path_leg(leg)
    rows = []
    for leg in legs:
        w = leg["wall"]
        f = w.get(("contend", "floor", "empty"), {})
        p = w.get(("contend", "pyattach", "empty"), {})
        fc, pc = (f.get("tsc_per_pair") or {}).get("median"), (p.get("tsc_per_pair") or {}).get("median")
        fn_, pn = (f.get("ns_per_pair") or {}).get("median"), (p.get("ns_per_pair") or {}).get("median")
        if fn_ or pn:
            rows.append(f"| {leg['name']} | {ns(fc)} | {ns(pc)} | {ratio(pc, fc)} | {ns(fn_)} | "
                        f"{ns(pn)} | {ratio(pn, fn_)} |")
    if rows:
        out.append("### Two threads attaching at once, per interpreter")
        out.append("")
        out.append("Medians over the repetitions (each leg's section has min–max and how evenly the "
                   "GIL was shared); cycles = TSC ticks (`__rdtsc`) at the TSC's nominal rate; "
                   "wall time, so noisy on this shared machine:")
        out.append("")
        out.append("| interpreter | floor, cycles per pair | pyattach, cycles per pair | × floor | "
                   "floor, ns per pair | pyattach, ns per pair | × floor |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        out += rows
        out.append("")
    return out


# Instructions per attach+detach before the observation branch was added (the figures of the
# clean-clone run of 51aeb51, docs/benchmarks.md there; callgrind counts do not depend on the
# machine's load), to measure what the branch costs when metrics and tracing are off.
BEFORE_OBSERVE = {"debian-3.11": 465, "pyenv-3.9.18": 460, "pyenv-3.10.13": 461,
                  "pyenv-3.11.7": 479, "pyenv-3.12.1": 591, "pyenv-3.13.0": 574}


def observability_section(legs):
    """What metrics and tracing cost per attach + detach pair, per interpreter."""
    out = ["## What metrics and tracing cost", ""]
    out.append("Instructions per `attach_scope` attach + detach, empty body (the counted runs "
               "above): **off** = the default (one branch on the thread's observe byte in the "
               "inline attach); **metrics** = `set_metrics(true)` (three clock reads, two "
               "histogram updates, the observed attach and end taken out of line); **trace** = "
               "`start_trace()` with room for every event (four events per pair; metrics off). "
               "**before** = the same row before the branch existed (the clean-clone run of "
               "51aeb51), so *off − before* is what observation costs when it is off. Targets: "
               "off ≤ before + 3, metrics ≤ off × 1.10.")
    out.append("")
    out.append("| interpreter | floor | before | off | off − before | metrics | × off | "
               "trace | × off |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for leg in legs:
        c = leg["counted"]

        def ir(alt):
            return c.get((alt, "empty"), {}).get("ir_per_iter")

        floor, off, met_, tr = ir("floor"), ir("pyattach"), ir("pyattach_metrics"), ir("pyattach_traced")
        before = BEFORE_OBSERVE.get(leg["name"])
        if off is None:
            continue
        # Callgrind's figures per pair carry the loop's fraction of a one-off: whole instructions.
        delta = round(off - before) if before is not None else None
        out.append(f"| {leg['name']} | {ns(floor)} | {ns(before)} | {ns(off)} | "
                   f"{'' if delta is None else f'{delta:+.0f}'} | {ns(met_)} | {ratio(met_, off)} | "
                   f"{ns(tr)} | {ratio(tr, off)} |")
        if delta is not None and met_ is not None:
            verdicts.append((leg["name"], delta, met_ / off))
    out.append("")
    for name, delta, m in verdicts:
        out.append(f"- {name}: off costs {delta:+.0f} instructions per pair: {met(delta <= 3)}; "
                   f"metrics on: {m:.2f}× off: {met(m <= 1.10)}.")
    out.append("")
    return out


def where_it_goes(leg, with_lines):
    """Annotated evidence: where pyattach's instructions go on this leg (source lines: if asked)."""
    lines = [f"#### {leg['name']}: callgrind_annotate on the pyattach rows (empty body)", ""]
    lines.append("Self instructions per iteration by where the code lives "
                 "(callgrind_annotate's file:function list, summed):")
    lines.append("")
    lines.append("| row | total | pyattach | harness | CPython | libc, libstdc++, other |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for label in ANNOTATED:
        alt, w = label.split("/")
        c = leg["counted"].get((alt, w), {})
        if "dump" not in c or not c.get("iterations"):
            continue
        total, b = attribution(c["dump"])
        n = c["iterations"]
        lines.append(f"| {label} | {total / n:,.1f} | {b['pyattach (include/, src/)'] / n:,.1f} | "
                     f"{b['benchmark harness (bench/)'] / n:,.1f} | "
                     f"{b['CPython (libpython)'] / n:,.1f} | "
                     f"{(b['libc / libstdc++'] + b['other']) / n:,.1f} |")
    lines.append("")
    for label in ANNOTATED[:3] if with_lines else []:
        alt, w = label.split("/")
        c = leg["counted"].get((alt, w), {})
        if "dump" not in c:
            continue
        n = c["iterations"]
        lines.append(f"<details><summary>{label}: pyattach's source lines, instructions for "
                     f"{n:,} iterations (divide by {n:,})</summary>")
        lines.append("")
        lines.append("```")
        lines += annotated_lines(c["dump"], ("attach.hpp", "slot.hpp", "compat.hpp",
                                             "attach.cpp"))
        lines.append("```")
        lines.append("</details>")
        lines.append("")
    return lines

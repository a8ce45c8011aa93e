"""pybind11's and nanobind's GIL guards mixed with pyattach's scopes on one native thread.

A program is run on a fresh native thread by the example's mix_guards(): A = pyattach
attach_scope, G = the binding's gil_scoped_acquire, D = pyattach detach_scope, R = the binding's
gil_scoped_release, C = call into Python and probe; "X(...)" holds guard X around "...".
Every nesting order of up to four guards is generated (a release-type guard only where the
thread is attached), with a C at each attached level before and after the guards inside it,
plus every pair of such chains run one after the other on the same thread (which library made
the thread's state first matters). Expected for each: at every C exactly one thread state of the
interpreter belongs to the thread, no misuse report, no Python error, and after the thread exits
none of its states is left. When pyattach made the thread's state first (the program starts
with A), the binding's guards reuse it: one distinct state for the whole program.
"""

import json

import pytest

import harness

ACQUIRE, RELEASE = "AG", "DR"


def chains(max_len):
    """Every sequence of guards of length 1..max_len; releases only while attached."""
    out = []

    def extend(prefix, attached):
        if prefix:
            out.append(prefix)
        if len(prefix) == max_len:
            return
        for g in ACQUIRE:
            extend(prefix + g, True)
        if attached:
            for g in RELEASE:
                extend(prefix + g, False)

    extend("", False)
    return out


def render(chain):
    """'ARG' -> 'A(C R(G(C)) C)': the guards nested, a C before and after each attached body."""
    def level(i, attached):
        if i == len(chain):
            return "C" if attached else ""
        g = chain[i]
        inner_attached = g in ACQUIRE
        inner = level(i + 1, inner_attached)
        body = f"{g}({inner})" if inner else g
        return f"C {body} C" if attached else body

    return level(0, False)


def programs():
    singles = [render(c) for c in chains(4)]
    pairs = [render(a) + " " + render(b) for a in chains(2) for b in chains(2)]
    return singles + pairs


def count_calls(program):
    return program.count("C")


CHILD = """
import json, sys, threading
import {module} as m
local = threading.local()
def fn():
    local.n = getattr(local, "n", 0) + 1
for program in json.loads(sys.argv[1]):
    print(json.dumps(m.mix_guards(fn, program)), flush=True)
print(json.dumps({{"misuse_total": m.misuse_count()}}))
"""


def test_program_generator_covers_every_order():
    # The generator itself: each library's acquire inside the other's, each library's release
    # between them (both ways), and each library making the thread's first state.
    ps = set(programs())
    for p in ("A(C G(C) C)", "G(C A(C) C)", "A(C R(G(C)) C)", "A(C D(G(C)) C)",
              "G(C D(A(C)) C)", "G(C R(A(C)) C)", "A(C R(A(C)) C)", "G(C D(G(C)) C)",
              "G(C) A(C)", "A(C) G(C)", "G(C A(C) C) A(C)", "A(C R C) G(C D C)"):
        assert p in ps, p
    assert len(ps) == 214


def test_guards_mixed_in_every_order(flavour):
    progs = programs()
    code = CHILD.format(module=harness.MODULES[flavour])
    out = harness.run_python(code, timeout=300, args=[json.dumps(progs)])
    done = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    results = [d for d in done if "program" in d]
    if out.kind != "clean":
        last = results[-1]["program"] if results else "(none)"
        pytest.fail(f"after {len(results)} of {len(progs)} programs (last finished: {last!r}): "
                    + out.describe())
    assert len(results) == len(progs), out.describe()
    bad = []
    for r in results:
        p = r["program"]
        problems = []
        if r["calls"] != count_calls(p) or r["not_attached"]:
            problems.append(f"calls {r['calls']}/{count_calls(p)}, {r['not_attached']} not attached")
        if r["calls"] and (r["max_states"] != 1 or r["min_states"] != 1):
            problems.append(f"thread states of this thread at a call: {r['min_states']}..{r['max_states']}")
        if r["states_after_exit"]:
            problems.append(f"{r['states_after_exit']} state(s) left after the thread exited")
        if r["misuse_reports"]:
            problems.append(f"{r['misuse_reports']} misuse report(s)")
        if r["python_error"]:
            problems.append("Python error: " + r["python_error"])
        if p.startswith("A") and r["distinct_states"] != 1:
            problems.append(f"{r['distinct_states']} distinct states although pyattach's came first")
        if problems:
            bad.append(f"{p}: " + "; ".join(problems))
    assert not bad, f"{len(bad)} of {len(results)} programs failed:\n" + "\n".join(bad[:40])
    assert harness.MISUSE not in out.stderr, out.describe()

"""pytest wiring: the flavour parameter, and the exit-race table printed at the end of the run.

The suite tests the installed example (examples/extension, ``pip install``ed into the venv that
runs pytest); scripts/test.sh builds and installs it per interpreter. Nothing here imports the
example into the pytest process: every case runs in a child (harness.py).
"""

import importlib.util
import os

import pytest

import harness

# (flavour, variant, timing) -> {"runs": n, "clean": n, ...}; filled by test_exit_race.py.
EXIT_RACE = {}
# (interpreter, suite version, note, class, tests, standard outcomes, pyattach outcomes), each a
# Counter of ok/fail/error/skip/hang/...; filled by test_cpython_suite.py.
CPYTHON_SUITE = []
KINDS = ("clean", "abort", "crash", "hang", "wrong")


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    module = harness.MODULES[request.param]
    if importlib.util.find_spec(module) is None:
        # Not a skip: the leg installs the example, so a missing module is a failed build.
        pytest.fail(f"{module} is not installed in {os.path.dirname(os.__file__)}: "
                    "pip install ./examples/extension first (scripts/test.sh does)")
    return request.param


def exit_race_rows():
    rows = []
    for (flav, variant, timing), counts in sorted(EXIT_RACE.items()):
        rows.append((harness.interpreter_label(), flav, variant, timing, counts))
    return rows


def pytest_terminal_summary(terminalreporter):
    cpython_suite_summary(terminalreporter)
    rows = exit_race_rows()
    if not rows:
        return
    tr = terminalreporter
    tr.section("exit race: import, start native threads, exit")
    header = ("interpreter", "flavour", "variant", "exit", "runs") + KINDS[1:] + ("clean", "lost threads")
    widths = (16, 9, 10, 10, 5, 6, 7, 5, 5, 5, 12)
    fmt = " ".join("%%-%ds" % w for w in widths)
    tr.write_line(fmt % header)
    for interp, flav, variant, timing, c in rows:
        tr.write_line(fmt % (interp, flav, variant, timing, c["runs"], c["abort"], c["crash"],
                             c["hang"], c["wrong"], c["clean"], c["lost"]))
    # One machine-readable line per row, for scripts/test.sh's summary.
    for interp, flav, variant, timing, c in rows:
        tr.write_line("exit-race-row: %s %s %s %s runs=%d clean=%d aborts=%d crashes=%d hangs=%d "
                      "wrong=%d lost=%d" % (interp, flav, variant, timing, c["runs"], c["clean"],
                                            c["abort"], c["crash"], c["hang"], c["wrong"], c["lost"]))


def _outcomes(counts):
    return " ".join("%s=%d" % kv for kv in sorted(counts.items())) or "-"


def cpython_suite_summary(tr):
    if not CPYTHON_SUITE:
        return
    tr.section("CPython's ThreadPoolExecutor tests: standard class vs pyattach's")
    fmt = "%-16s %-5s %-34s %5s  %-24s %s"
    tr.write_line(fmt % ("interpreter", "suite", "class", "tests", "standard", "pyattach"))
    for interp, version, note, cls, n, std, ours in CPYTHON_SUITE:
        tr.write_line(fmt % (interp, version, cls, n, _outcomes(std), _outcomes(ours)))
    for note in sorted({row[2] for row in CPYTHON_SUITE if row[2]}):
        tr.write_line("note: " + note)
    # One machine-readable line per row, for scripts/test.sh's summary.
    for interp, version, note, cls, n, std, ours in CPYTHON_SUITE:
        tr.write_line("cpython-suite-row: %s %s %s %d std:%s pyattach:%s" % (
            interp, version, cls, n, ",".join("%s=%d" % kv for kv in sorted(std.items())),
            ",".join("%s=%d" % kv for kv in sorted(ours.items()))))

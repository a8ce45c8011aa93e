"""Child-process harness for pyattach's Python-side tests.

Every case that can crash, abort or hang runs in its own ``python`` process with a deadline,
and its end is classified as one of:

    clean   exit status 0 and the case's own checks passed
    abort   ended by SIGABRT (std::terminate, abort(), a CPython fatal error)
    crash   ended by any other signal (SIGSEGV, SIGBUS, ...)
    hang    still running at the deadline (killed)
    wrong   exited by itself, but with a non-zero status or output that fails the checks

The interpreter is the one running pytest (``sys.executable``): each leg of scripts/test.sh
runs this suite under its own venv.
"""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

FLAVOURS = ("pybind11", "nanobind")
MODULES = {"pybind11": "pyattach_example.with_pybind11", "nanobind": "pyattach_example.with_nanobind"}

EXIT_LINE = re.compile(r"^pyattach-example-exit: (.*)$", re.M)
MISUSE = "pyattach: misuse:"


@dataclasses.dataclass
class Outcome:
    kind: str  # clean, abort, crash, hang, wrong
    returncode: object  # int, or None after a hang
    stdout: str
    stderr: str
    seconds: float
    why: str = ""  # for "wrong": which check failed

    def exit_report(self):
        """The example's exit report (PYATTACH_EXAMPLE_EXIT_REPORT=1) as a dict, or None."""
        m = EXIT_LINE.findall(self.stderr)
        if not m:
            return None
        out = {}
        for field in m[-1].split():
            key, _, value = field.partition("=")
            out[key] = int(value) if value.lstrip("-").isdigit() else value
        return out

    def describe(self):
        tail = lambda s: "\n".join(s.strip().splitlines()[-25:])
        return (
            f"{self.kind} (status {self.returncode}, {self.seconds:.2f} s){': ' + self.why if self.why else ''}\n"
            f"--- stdout\n{tail(self.stdout)}\n--- stderr\n{tail(self.stderr)}"
        )


def signal_name(returncode):
    try:
        return signal.Signals(-returncode).name
    except (ValueError, TypeError):
        return str(returncode)


def run_python(code, timeout=60.0, env=None, args=(), python=None, check=None):
    """Runs ``python -c code`` in a child process and classifies how it ended.

    ``check(outcome)`` may return a reason string to mark an otherwise clean run "wrong".
    The child starts in a temporary directory (nothing of the source tree on sys.path) with
    PYATTACH_EXAMPLE_EXIT_REPORT=1 and faulthandler off (it would only add output: the
    signal is re-raised either way).
    """
    child_env = dict(os.environ)
    child_env.pop("PYTHONFAULTHANDLER", None)
    child_env["PYATTACH_EXAMPLE_EXIT_REPORT"] = "1"
    child_env["PYTHONDONTWRITEBYTECODE"] = "1"
    if env:
        child_env.update(env)
    cmd = [python or sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyattach-child-") as cwd:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The whole process group: a hung child must not outlive the test.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            return Outcome("hang", None, out, err, time.monotonic() - start,
                           f"no exit within {timeout:.0f} s")
    seconds = time.monotonic() - start
    rc = proc.returncode
    if rc < 0:
        kind = "abort" if -rc == signal.SIGABRT else "crash"
        return Outcome(kind, rc, out, err, seconds, signal_name(rc))
    outcome = Outcome("clean", rc, out, err, seconds)
    if rc != 0:
        outcome.kind, outcome.why = "wrong", f"exit status {rc}"
        return outcome
    if check is not None:
        why = check(outcome)
        if why:
            outcome.kind, outcome.why = "wrong", why
    return outcome


def interpreter_label():
    """A short name for the interpreter running the tests, e.g. 'debian-3.11.2' or 'pyenv-3.12.1'."""
    v = "%d.%d.%d" % sys.version_info[:3]
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if "/.pyenv/" in base or "/pyenv/" in base:
        return f"pyenv-{v}"
    if base.startswith("/usr/bin/"):
        return f"debian-{v}"
    return f"python-{v}"

"""Positive controls: the harness must classify a deliberate abort, segfault, hang and bad exit.

If these fail, no "0 aborts, 0 crashes, 0 hangs" elsewhere in this suite means anything.
"""

import harness


def test_clean_exit_is_clean():
    out = harness.run_python("print('ok')", timeout=30)
    assert out.kind == "clean", out.describe()
    assert out.stdout.strip() == "ok"


def test_abort_is_abort():
    out = harness.run_python("import os; os.abort()", timeout=30)
    assert out.kind == "abort", out.describe()


def test_segfault_is_crash():
    out = harness.run_python("import ctypes; ctypes.string_at(0)", timeout=30)
    assert out.kind == "crash", out.describe()
    assert out.why == "SIGSEGV", out.describe()


def test_hang_is_hang():
    # A hang with a live native thread too: the whole process group is killed at the deadline.
    out = harness.run_python(
        """
        import threading, time
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        time.sleep(600)
        """,
        timeout=2,
    )
    assert out.kind == "hang", out.describe()
    assert out.seconds < 20


def test_nonzero_exit_is_wrong():
    out = harness.run_python("import sys; sys.exit(3)", timeout=30)
    assert out.kind == "wrong" and out.returncode == 3, out.describe()


def test_failed_check_is_wrong():
    out = harness.run_python("print('no')", timeout=30, check=lambda o: "said no" if "no" in o.stdout else "")
    assert out.kind == "wrong" and out.why == "said no", out.describe()


def test_exit_report_is_parsed(flavour):
    # The example's exit report, written after Py_FinalizeEx, reaches the harness.
    out = harness.run_python(f"import {harness.MODULES[flavour]}", timeout=30)
    assert out.kind == "clean", out.describe()
    report = out.exit_report()
    assert report is not None, out.describe()
    assert report["flavour"] == flavour
    assert report["threads"] == 0 and report["in_attach"] == 0

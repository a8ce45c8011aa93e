"""Interpreter exit with pyattach in an extension module: binding at import, the module's pool,
and native threads that first attach while atexit callbacks run.

pyattach binds its gate when the module is loaded and registers its close hook with atexit
right after the import (interpreter.hpp, "Binding"). atexit runs callbacks last-in first-out, so:
- a callback registered AFTER the import runs BEFORE pyattach's hook: the gate is still open,
  the module's pool still runs, and new native threads attach normally;
- a callback registered BEFORE the import runs AFTER the hook: the gate is closed and every
  native attach is refused with attach_status::finalizing -- a clean refusal, never a crash.
"""

import harness


def check_ok(outcome):
    return "" if outcome.stdout.strip().endswith("OK") else "the child did not print OK"


def test_import_binds_the_gate(flavour):
    # Nothing but the import: no scope, no pool, no pyattach call. The gate must be open, so
    # that a native thread started next can never be the first to touch the interpreter.
    code = f"""
        import {harness.MODULES[flavour]} as m
        print(m.gate_phase())
    """
    out = harness.run_python(code, timeout=60)
    assert out.kind == "clean", out.describe()
    assert out.stdout.split() == ["open"], out.describe()
    report = out.exit_report()
    assert report is not None and report["gate"] == "unbound", out.describe()  # after Py_FinalizeEx


def test_module_pool_alive_at_exit(flavour):
    # 200 tasks of 5 ms each on the module's 2-worker pool, and exit at once. The gate stops the
    # pool before closing: running tasks finish, queued ones are refused with
    # pool_error(finalizing); the module writes no atexit code and joins nothing itself.
    code = f"""
        import time
        import {harness.MODULES[flavour]} as m
        assert m.pool_post(lambda: time.sleep(0.005), 200) == 200
        time.sleep(0.02)
    """

    def check(o):
        r = o.exit_report()
        if r is None:
            return "no exit report"
        if r["pool_posted"] != 200 or r["pool_post_refused"]:
            return f"posting failed: {r}"
        if r["pool_ran"] != r["pool_finished"]:
            return f"a task was cut short: {r}"
        if r["pool_finished"] + r["pool_refused"] != 200:
            return f"tasks unaccounted for: {r}"
        if r["pool_python_errors"] or r["pool_other_errors"]:
            return f"unexpected task errors: {r}"
        if r["pool_refused"] == 0:
            return f"exit waited for every queued task instead of refusing them: {r}"
        return ""

    out = harness.run_python(code, timeout=60, check=check)
    assert out.kind == "clean", out.describe()
    assert harness.MISUSE not in out.stderr, out.describe()


# The daemon thread's detach_scope holds a gate pass, so the closer waits for it; if it
# ends after the close, the thread is parked instead of re-taking the GIL while Py_FinalizeEx runs
# (before, CPython ended it with pthread_exit and the forced unwind through the scope's noexcept
# destructor aborted about 6 of 10 runs on every interpreter here).
def test_daemon_thread_waiting_on_pool_at_exit(flavour):
    # A daemon Python thread blocked in pool_map (GIL released in a detach_scope) when the
    # interpreter exits: the pool is stopped under it; it must neither crash nor hang the exit.
    code = f"""
        import threading, time
        import {harness.MODULES[flavour]} as m
        def waiter():
            try:
                m.pool_map(lambda x: time.sleep(0.005) or x, range(400))
            except RuntimeError:
                pass
        threading.Thread(target=waiter, daemon=True).start()
        time.sleep(0.05)
    """
    outcomes = [harness.run_python(code, timeout=60) for _ in range(10)]
    bad = [o for o in outcomes if o.kind != "clean" or harness.MISUSE in o.stderr]
    assert not bad, f"{len(bad)} of 10 runs failed; first: " + bad[0].describe()


def test_atexit_callback_registered_after_import_can_use_native_threads(flavour):
    # Runs before pyattach's hook: four brand-new native threads make their first attach while
    # atexit callbacks run, and the pool still works.
    code = f"""
        import atexit
        import {harness.MODULES[flavour]} as m
        def at_exit():
            r = m.call_from_threads(lambda i, j: i * 1000 + j, 4, 500)
            assert r == [[i * 1000 + j for j in range(500)] for i in range(4)]
            assert m.pool_map(lambda x: -x, range(100)) == [-x for x in range(100)]
            print("phase", m.gate_phase())
            print("OK")
        atexit.register(at_exit)
    """
    out = harness.run_python(code, timeout=120, check=check_ok)
    assert out.kind == "clean", out.describe()
    assert "phase open" in out.stdout, out.describe()
    assert harness.MISUSE not in out.stderr, out.describe()


def test_atexit_callback_registered_before_import_is_refused_cleanly(flavour):
    # Runs after pyattach's hook closed the gate: native threads are refused with
    # attach_status::finalizing (raised to Python as RuntimeError), the pool refuses work, and
    # detached threads started now leave at their first attach. No crash, no hang.
    code = f"""
        import atexit, sys
        def at_exit():
            print("phase", m.gate_phase())
            try:
                m.call_from_threads(lambda i, j: j, 4, 10)
                print("threads: attached")
            except RuntimeError as e:
                print("threads:", e)
            try:
                m.pool_map(lambda x: x, range(10))
                print("pool: ran")
            except RuntimeError as e:
                print("pool:", e)
            m.start_background_threads(lambda: None, 4, "noexcept")
            print("OK")
        atexit.register(at_exit)
        import {harness.MODULES[flavour]} as m
    """
    out = harness.run_python(code, timeout=120, check=check_ok)
    assert out.kind == "clean", out.describe()
    assert "phase closed" in out.stdout, out.describe()
    assert "threads: attach refused: finalizing" in out.stdout, out.describe()
    assert "pool: pool_error(finalizing)" in out.stdout, out.describe()
    report = out.exit_report()
    assert report is not None, out.describe()
    assert report["in_attach"] == 0 and report["in_python"] == 0, report
    assert report["refused_finalizing"] + report["refused_finalized"] == 4, report
    assert report["iterations"] == 0, report
    assert harness.MISUSE not in out.stderr, out.describe()

"""The example module runs a pool of native threads on an interpreter that Python made.

CPython 3.14+ (concurrent.interpreters): the pool's tasks run in that interpreter, on the
workers' own states there, and the interpreter's close closes pyattach's gate on it. Before 3.12
there are no such interpreters: the call raises RuntimeError.
"""

import sys

import pytest

import harness


def check_ok(outcome):
    return "" if outcome.stdout.strip().endswith("OK") else "the child did not print OK"


@pytest.mark.skipif(sys.version_info < (3, 14), reason="concurrent.interpreters: 3.14+")
def test_pool_on_an_interpreter_from_concurrent_interpreters(flavour):
    code = f"""
        from concurrent import interpreters
        import {harness.MODULES[flavour]} as m
        interp = interpreters.create()
        task = (
            "import threading\\n"
            "n = globals().get('n', 0) + 1\\n"
            "result = (threading.current_thread().name, sum(range(1000)))\\n"
        )
        out = m.run_on_interpreter(interp.id, task, 8, 2)
        assert len(out) == 8, out
        values = [eval(r) for r in out]
        assert {{v[1] for v in values}} == {{499500}}, values
        # The workers named themselves in that interpreter.
        assert {{v[0] for v in values}} <= {{"interp_pool-0", "interp_pool-1"}}, values
        # The tasks' globals are the interpreter's __main__: 8 runs counted there, none here.
        interp.exec("assert n == 8, n")
        assert "n" not in globals()
        # A Python error in a task reaches the caller.
        try:
            m.run_on_interpreter(interp.id, "raise KeyError('in the sub-interpreter')", 1, 1)
        except RuntimeError as e:
            assert "KeyError" in str(e) and "in the sub-interpreter" in str(e), e
        else:
            raise AssertionError("the task's error was lost")
        # Python ends it: pyattach's callback there closes its gate; the id is then unknown.
        interp.close()
        try:
            m.run_on_interpreter(interp.id, "result = 1", 1, 1)
        except RuntimeError as e:
            assert "no interpreter has id" in str(e), e
        else:
            raise AssertionError("an ended interpreter was used")
        assert m.misuse_count() == 0
        print("OK")
    """
    out = harness.run_python(code, timeout=120, check=check_ok)
    assert out.kind == "clean", out.describe()
    assert harness.MISUSE not in out.stderr, out.describe()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="refused before 3.12 only")
def test_refused_before_312(flavour):
    code = f"""
        import {harness.MODULES[flavour]} as m
        try:
            m.run_on_interpreter(1, "result = 1", 1, 1)
        except RuntimeError as e:
            assert "needs CPython 3.12+" in str(e), e
            print("OK")
    """
    out = harness.run_python(code, timeout=60, check=check_ok)
    assert out.kind == "clean", out.describe()

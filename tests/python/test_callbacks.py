"""Native threads and a thread_pool calling back into Python return correct results.

Callbacks from 4 native threads x 2,000 calls, and 2,000 pool tasks.
"""

import harness


def check_ok(outcome):
    return "" if outcome.stdout.strip().endswith("OK") else "the child did not print OK"


def test_callbacks_from_four_native_threads(flavour):
    # Each call is its own attach_scope. A threading.local counter that reaches 2,000 on every
    # thread proves each native thread kept one thread state across its 2,000 scopes.
    code = f"""
        import threading
        import {harness.MODULES[flavour]} as m
        local = threading.local()
        def fn(i, j):
            local.n = getattr(local, "n", 0) + 1
            return (i, j, local.n, threading.get_ident())
        results = m.call_from_threads(fn, 4, 2000)
        assert len(results) == 4, len(results)
        idents = set()
        for i, per_thread in enumerate(results):
            assert len(per_thread) == 2000, (i, len(per_thread))
            assert [r[:3] for r in per_thread] == [(i, j, j + 1) for j in range(2000)], i
            ids = {{r[3] for r in per_thread}}
            assert len(ids) == 1, ("thread", i, "changed identity", ids)
            idents |= ids
        assert len(idents) == 4 and threading.get_ident() not in idents, idents
        assert m.misuse_count() == 0
        print("OK")
    """
    out = harness.run_python(code, timeout=180, check=check_ok)
    assert out.kind == "clean", out.describe()
    assert harness.MISUSE not in out.stderr, out.describe()


def test_exception_in_callback_reaches_caller(flavour):
    code = f"""
        import {harness.MODULES[flavour]} as m
        def fn(i, j):
            if i == 2 and j == 7:
                raise ValueError("boom at 2/7")
            return j
        try:
            m.call_from_threads(fn, 4, 50)
        except ValueError as e:
            assert "boom at 2/7" in str(e), e
            print("OK")
    """
    out = harness.run_python(code, timeout=120, check=check_ok)
    assert out.kind == "clean", out.describe()


def test_pool_map_two_thousand_tasks(flavour):
    code = f"""
        import threading
        import {harness.MODULES[flavour]} as m
        names = set()
        def square(x):
            names.add(threading.current_thread().name)
            return x * x
        items = list(range(2000))
        assert m.pool_map(square, items) == [x * x for x in items]
        # The workers are named in Python, and only they ran the tasks.
        assert names <= {{"example_pool-0", "example_pool-1"}} and names, names
        stats = m.pool_stats()
        assert stats["completed"] == 2000 and stats["failed"] == 0, stats
        assert stats["workers"] == ["example_pool-0", "example_pool-1"], stats
        # A Python exception in a task arrives as RuntimeError naming it.
        def bad(x):
            if x == 3:
                raise KeyError("three")
            return x
        try:
            m.pool_map(bad, range(10))
        except RuntimeError as e:
            assert "KeyError" in str(e) and "three" in str(e), e
        else:
            raise AssertionError("no exception")
        assert m.misuse_count() == 0
        print("OK")
    """
    out = harness.run_python(code, timeout=180, check=check_ok)
    assert out.kind == "clean", out.describe()
    report = out.exit_report()
    assert report is not None, out.describe()
    assert harness.MISUSE not in out.stderr, out.describe()

"""The pyattach package beyond its executor: what native tools see of the workers (py-spy),
pyattach.threads() and stats(), ``python -m pyattach``, the type stub, and module-safe linking.

The executor's drop-in behaviour is test_executor.py's. Cases that keep a process alive for a
tool, or that could hang, run in a child with a deadline.
"""

import ast
import importlib.util
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import harness


@pytest.fixture(scope="module")
def pyattach():
    if importlib.util.find_spec("pyattach") is None:
        # Not a skip: every pytest leg installs the package (scripts/test.sh: pip install .).
        pytest.fail("pyattach is not installed in this interpreter: pip install . first")
    import pyattach as module
    return module


# A child with an executor whose two workers are inside a task (blocked in a Python function
# with a recognisable name), and two native threads that call Python through per-call
# PyGILState_Ensure/Release every 200 ms and sit in C++ in between (the control). It prints one
# JSON line when all of them are where the test wants them, then waits to be killed.
PYSPY_CHILD = """
import json, os, sys, threading, time
import pyattach
from pyattach_example import with_nanobind as example

inside = threading.Barrier(3)
release = threading.Event()
raw_tids = set()

def inside_task_marker(i):
    inside.wait(timeout=30)
    release.wait(timeout=60)
    return i

def raw_callback():
    raw_tids.add(threading.get_native_id())

ex = pyattach.ThreadPoolExecutor(2, thread_name_prefix="spyme")
futures = [ex.submit(inside_task_marker, i) for i in range(2)]
inside.wait(timeout=30)
example.start_paced_threads(raw_callback, 2, True, 200)
deadline = time.monotonic() + 10
while len(raw_tids) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.05)  # the raw threads are back in C++, between calls
workers = [t.native_id for t in pyattach.threads() if t.pool == "spyme"]
print(json.dumps({"pid": os.getpid(), "workers": workers, "raw": sorted(raw_tids)}), flush=True)
sys.stdin.readline()  # the test closes stdin when done
release.set()
os._exit(0)
"""


def pyspy_executable():
    found = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(found):
        pytest.fail("py-spy is not installed (requirements/python-test.txt pins it)")
    return found


def test_pyspy_dump_shows_each_worker_by_name_with_its_python_stack(pyattach):
    pyspy = pyspy_executable()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PYSPY_CHILD)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, start_new_session=True)
    try:
        line = child.stdout.readline()
        assert line, "the child ended early:\n" + child.stderr.read()
        info = json.loads(line)
        assert len(info["workers"]) == 2 and len(info["raw"]) == 2, info
        dump = subprocess.run([pyspy, "dump", "--pid", str(info["pid"])], capture_output=True,
                              text=True, timeout=60)
        assert dump.returncode == 0, dump.stderr
        out = dump.stdout
        print("workers", info["workers"], "raw PyGILState threads", info["raw"])  # pytest -s
        print(out)
    finally:
        try:
            child.stdin.close()
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    # "Thread <native id> (<state>): "<name>"" followed by its frames, innermost first.
    blocks = {}
    current = None
    for text in out.splitlines():
        if text.startswith("Thread "):
            tid = int(text.split()[1], 0)
            current = blocks.setdefault(tid, [text])
        elif current is not None:
            current.append(text)
    for index, tid in enumerate(sorted(info["workers"])):
        assert tid in blocks, f"worker {tid} missing from py-spy's dump:\n{out}"
        header, frames = blocks[tid][0], blocks[tid][1:]
        assert '"spyme_' in header, f"worker {tid} not under its name: {header}"
        assert any("inside_task_marker" in f for f in frames), \
            f"worker {tid} without its Python stack:\n" + "\n".join(blocks[tid])
    names = sorted(blocks[tid][0].split('"')[1] for tid in info["workers"])
    assert names == ["spyme_0", "spyme_1"], names
    # The control: per-call PyGILState threads have no thread state between calls.
    for tid in info["raw"]:
        assert tid not in blocks, f"raw PyGILState thread {tid} listed by py-spy:\n{out}"


def test_threads_lists_workers_with_their_pool_and_attachment(pyattach):
    ex = pyattach.ThreadPoolExecutor(2, thread_name_prefix="report")
    try:
        inside = ex.submit(pyattach.threads).result(timeout=30)
        me = [t for t in inside if t.is_caller]
        assert len(me) == 1
        me = me[0]
        assert me.pool == "report" and me.state == "attached" and me.made_by_pyattach
        assert me.name.startswith("report_") and me.has_thread_state and me.scopes >= 1
        outside = pyattach.threads()
        worker = [t for t in outside if t.native_id == me.native_id]
        assert len(worker) == 1 and worker[0].state == "detached" and not worker[0].is_caller
        main = [t for t in outside if t.is_caller]
        assert len(main) == 1 and main[0].native_id == __import__("threading").get_native_id()
        assert main[0].pool == "" and main[0].state == "attached"
        # This package makes no sub-interpreter: every state is the main interpreter's (id 0).
        assert [t.interpreter for t in inside + outside] == [0] * len(inside + outside)
    finally:
        ex.shutdown()


def test_stats_count_what_each_executor_did(pyattach):
    import threading
    gate = threading.Event()
    ex = pyattach.ThreadPoolExecutor(1, thread_name_prefix="counted")
    try:
        def fail():
            raise ValueError("no")
        ok = [ex.submit(pow, 2, i) for i in range(10)]
        bad = [ex.submit(fail) for _ in range(3)]
        for f in ok + bad:
            f.exception(timeout=30)
        started = threading.Event()

        def block():
            started.set()
            return gate.wait(30)
        blocker = ex.submit(block)
        assert started.wait(30)
        queued = [ex.submit(int) for _ in range(4)]
        queued[0].cancel()
        mine = [s for s in pyattach.stats() if s["name"] == "counted"]
        assert len(mine) == 1
        s = mine[0]
        assert (s["submitted"], s["completed"], s["failed"]) == (18, 10, 3), s
        assert s["queued"] == 4 and s["running"] == 1 and s["max_workers"] == 1, s
        gate.set()
        blocker.result(timeout=30)
        ex.shutdown()
        s = [s for s in pyattach.stats() if s["name"] == "counted"][0]
        assert (s["completed"], s["failed"], s["cancelled"], s["queued"]) == (14, 3, 1, 0), s
        assert [w["name"] for w in s["workers"]] == ["counted_0"]
        assert s["workers"][0]["tasks"] == 17 and s["workers"][0]["native_id"] > 0, s
        assert 1 <= s["workers"][0]["attaches"] <= 17, s
    finally:
        gate.set()
        ex.shutdown()
    del ex
    assert not [s for s in pyattach.stats() if s["name"] == "counted"]


def test_python_dash_m_pyattach_runs_a_small_report(pyattach):
    out = harness.run_python("import runpy; runpy.run_module('pyattach', run_name='__main__')",
                             timeout=60)
    assert out.kind == "clean", out.describe()
    assert "pyattach-demo_0" in out.stdout and "pyattach-demo_1" in out.stdout, out.stdout
    assert "attached" in out.stdout and out.stdout.rstrip().endswith("ok"), out.stdout
    assert "GIL metrics of its workers: " in out.stdout, out.stdout


def test_the_stub_declares_the_runtime_api(pyattach):
    stub_path = os.path.join(os.path.dirname(pyattach.__file__), "__init__.pyi")
    tree = ast.parse(open(stub_path).read())
    declared = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared[node.name] = node
    assert set(pyattach.__all__) <= set(declared), set(pyattach.__all__) - set(declared)
    # The executor's signatures: the stub's parameters are the runtime's, in order and kind.
    stub_cls = declared["ThreadPoolExecutor"]
    for method in stub_cls.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        runtime = inspect.signature(getattr(pyattach.ThreadPoolExecutor, method.name))
        a = method.args
        stub_params = ([p.arg for p in a.posonlyargs + a.args] +
                       (["*" + a.vararg.arg] if a.vararg else []) +
                       [p.arg for p in a.kwonlyargs] + (["**" + a.kwarg.arg] if a.kwarg else []))
        run_params = [("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD
                       else "") + p.name for p in runtime.parameters.values()]
        assert stub_params == run_params, (method.name, stub_params, run_params)
    fields = [n.target.id for n in declared["ThreadInfo"].body if isinstance(n, ast.AnnAssign)]
    assert tuple(fields) == pyattach.ThreadInfo._fields
    assert os.path.exists(os.path.join(os.path.dirname(pyattach.__file__), "_core.pyi"))
    assert os.path.exists(os.path.join(os.path.dirname(pyattach.__file__), "py.typed"))


def test_the_extension_does_not_link_libpython(pyattach):
    core = pyattach._core.__file__
    needed = subprocess.run(["readelf", "-d", core], capture_output=True, text=True, check=True)
    libs = [line.split("[")[1].rstrip("]") for line in needed.stdout.splitlines()
            if "(NEEDED)" in line]
    assert libs and not [lib for lib in libs if lib.startswith("libpython")], libs

"""The example's modules link pyattach without libpython (pyattach::module).

An extension module gets the C API from the python that imports it. If it carried a
`NEEDED libpython3.X.so` (what linking pyattach::pyattach / Python::Python did), Debian's
python3.11 -- which has libpython linked statically into the executable -- would load a second
CPython beside its own, and where no libpython*.so exists (manylinux images, a Debian system
without libpython3.11) the import would fail.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

import harness


def module_path(flavour):
    spec = importlib.util.find_spec(harness.MODULES[flavour])
    assert spec is not None and spec.origin, f"{harness.MODULES[flavour]} is not installed"
    return spec.origin


def dynamic_section(path):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.fail("readelf (binutils) is not installed: scripts/deps.sh installs it")
    return subprocess.run([readelf, "-d", path], check=True, capture_output=True, text=True).stdout


def test_no_libpython_needed(flavour):
    path = module_path(flavour)
    dyn = dynamic_section(path)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    assert needed, dyn  # the parse works: a C++ module needs libstdc++ at least
    assert not [n for n in needed if n.startswith("libpython")], f"{path}:\n{dyn}"
    # No run path into the machine that built it either (pyenv's lib dir, a build tree).
    assert not re.search(r"\((RPATH|RUNPATH)\)", dyn), f"{path}:\n{dyn}"


MAPS_CHILD = """
import sys
def libpythons():
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f if "libpython" in line.split()[-1]})
before = libpythons()
import %s
after = libpythons()
print("before", before)
print("after", after)
"""


def test_import_maps_no_new_libpython(flavour):
    # Whatever the interpreter links (pyenv: its own libpython; Debian: none), importing the
    # module must not bring a libpython in.
    out = harness.run_python(MAPS_CHILD % harness.MODULES[flavour], timeout=60)
    assert out.kind == "clean", out.describe()
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["before"] == lines["after"], out.describe()


def interpreter_is_static():
    """True if this python maps no libpython of its own (Debian's /usr/bin/python3.x)."""
    with open("/proc/self/maps") as f:
        return not any("libpython" in line for line in f)


static_only = pytest.mark.skipif(
    not interpreter_is_static(),
    reason="this python links a shared libpython itself; the check is for a statically linked one "
    "(the Debian CPython legs: the host's and sid's)",
)


@static_only
def test_static_python_maps_no_libpython(flavour):
    out = harness.run_python(MAPS_CHILD % harness.MODULES[flavour], timeout=60)
    assert out.kind == "clean", out.describe()
    assert "after []" in out.stdout, out.describe()


HIDE = r"""
set -e
for f in /usr/lib/*/libpython3*.so* /usr/lib/libpython3*.so* /usr/local/lib/libpython3*.so*; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then mount --bind /dev/null "$f"; fi
done
exec "$@"
"""


@static_only
def test_loads_with_every_libpython_hidden(flavour):
    # In a private mount namespace every libpython3*.so* file is replaced by /dev/null (as on a
    # system where none is installed); the module must import and work anyway. The control: a
    # dlopen of libpython in the same namespace fails.
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0 or os.geteuid() != 0:
        pytest.skip("needs root and unshare --mount to hide libpython (not available here)")
    v = "%d.%d" % sys.version_info[:2]
    code = f"""
import ctypes
try:
    ctypes.CDLL("libpython{v}.so.1.0")
    print("control: libpython loadable")
except OSError as e:
    print("control: hidden")
import {harness.MODULES[flavour]} as m
print(m.call_from_threads(lambda i, j: i + j, 2, 3))
"""
    r = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", HIDE, "sh",
                        sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "control: hidden" in r.stdout, r.stdout + r.stderr
    assert "[[0, 1, 2], [1, 2, 3]]" in r.stdout, r.stdout + r.stderr

#!/usr/bin/env bash
# Makes (or reuses) a virtual environment for one CPython with requirements/python-test.txt
# installed, and prints its directory on stdout (progress goes to stderr).
#   bash scripts/venv.sh /usr/bin/python3.11 [name]   ->  build/venv-<name>
# The name defaults to the interpreter's basename. A venv is rebuilt when the requirements
# change (their hash is kept in the venv) or when it is broken.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="$1"
name="${2:-$(basename "$python")}"
venv="$root/build/venv-$name"
req="$root/requirements/python-test.txt"
want="$(sha256sum "$req" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.splitlines()[0])')"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.pyattach-req" 2>/dev/null)" = "$want" ] &&
   "$venv/bin/python" -c 'import pytest, scikit_build_core' 2>/dev/null; then
  echo "$venv"
  exit 0
fi
echo "venv: making $venv for $python" >&2
rm -rf "$venv"
mkdir -p "$root/build"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
echo "$want" >"$venv/.pyattach-req"
echo "$venv"

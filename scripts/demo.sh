#!/usr/bin/env bash
# The main job: install what is needed, build, and run the eight scenarios side by side
# (raw C API, pyattach scopes, pyattach::thread_pool). Extra arguments go to pyattach-demo (e.g. --json,
# --scenario 3, --trace DIR: a timeline trace per scenario and variant, and a PNG per scenario).
# PYATTACH_PYTHON=/path/to/python3.X chooses another CPython (default: the host's Debian CPython,
# found by scripts/interpreters.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/interpreters.sh"
bash "$root/scripts/deps.sh"
python="${PYATTACH_PYTHON:-$(debian_python)}"
build="$root/build/demo-$(basename "$python")"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYATTACH_PYTHON="$python" \
  -DPYATTACH_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target pyattach-demo >/dev/null
exec "$build/examples/scenarios/pyattach-demo" "$@"

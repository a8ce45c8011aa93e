#!/usr/bin/env bash
# pyattach.ThreadPoolExecutor against concurrent.futures.ThreadPoolExecutor, on every CPython
# scripts/interpreters.sh finds but the debug build (the host's Debian CPython, pyenv's, sid's 3.14
# and 3.15 in the sid root): for each, the pytest venv (scripts/venv.sh), the package pip-installed
# from this checkout, then bench/executor.py (both executors in one process, interleaved); then
# bench/executor_report.py writes docs/benchmarks-executor.md and its chart (the host's Debian
# CPython with python3-matplotlib). A benchmark, not a test: it fails only if a build or a run
# fails. Do not run it while other work loads the machine.
#   PYATTACH_BENCH_LEGS="debian-3.11 sid-3.15"   only those legs
#   PYATTACH_EXECUTOR_BENCH_ARGS="--repeats 5 --tasks 20000 --samples 400"   bench/executor.py's
set -uo pipefail
source "$(dirname "$0")/common.sh"  # root, jobs, scripts/interpreters.sh's functions
prepare_host
mapfile -t legs < <(interpreter_legs debian pyenv sid)
failed=0
results=()
for leg in "${legs[@]}"; do
  IFS=: read -r name python where <<<"$leg"
  if [ -n "${PYATTACH_BENCH_LEGS:-}" ] && [[ " $PYATTACH_BENCH_LEGS " != *" $name "* ]]; then
    continue
  fi
  echo "=== $name ($python)"
  out="$root/build/bench-executor-$name"
  mkdir -p "$out"
  if ! venv="$(in_root "$where" bash "$root/scripts/venv.sh" "$python" "$name" 2>"$out/venv.log")" ||
     ! pip_install "$where" "$venv" "$root/build/pkg-$name" "$root" >"$out/pip.log" 2>&1; then
    tail -20 "$out/venv.log" "$out/pip.log" 2>/dev/null
    failed=1
    continue
  fi
  # shellcheck disable=SC2086  # the arguments are meant to split
  if ! in_root "$where" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$out" "$venv/bin/python" \
          "$root/bench/executor.py" --json "$out/executor.json" ${PYATTACH_EXECUTOR_BENCH_ARGS:-}; then
    failed=1
    continue
  fi
  results+=("$out/executor.json")
done
if [ ${#results[@]} -eq 0 ]; then
  echo "bench-executor: nothing ran"
  exit 1
fi
"$(debian_python)" "$root/bench/executor_report.py" --out "$root/docs/benchmarks-executor.md" \
  --chart "$root/docs/benchmarks-executor.png" "${results[@]}" || failed=1
exit "$failed"

#!/usr/bin/env bash
# pyattach.ThreadPoolExecutor against concurrent.futures.ThreadPoolExecutor, on Debian's python3.11
# and every pyenv CPython 3.9–3.13 present: for each, the pytest venv (scripts/venv.sh), the package
# pip-installed from this checkout, then bench/executor.py (both executors in one process,
# interleaved); then bench/executor_report.py writes docs/benchmarks-executor.md and its chart
# (Debian's /usr/bin/python3 with python3-matplotlib). A benchmark, not a test: it fails only if a
# build or a run fails. Do not run it while other work loads the machine.
#   PYATTACH_BENCH_LEGS="debian-3.11 pyenv-3.12.1"   only those legs
#   PYATTACH_EXECUTOR_BENCH_ARGS="--repeats 5 --tasks 20000 --samples 400"   bench/executor.py's
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh" || exit 1
legs=("debian-3.11:/usr/bin/python3.11")
pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
for minor in 9 10 11 12 13; do
  found=""
  for dir in "$pyenv_root"/versions/3."$minor".*; do
    [ -x "$dir/bin/python3.$minor" ] && found="$dir/bin/python3.$minor"
  done
  if [ -n "$found" ]; then
    legs+=("pyenv-$(basename "$(dirname "$(dirname "$found")")"):$found")
  else
    echo "bench-executor: no pyenv CPython 3.$minor under $pyenv_root/versions: skipped"
  fi
done
failed=0
results=()
for leg in "${legs[@]}"; do
  IFS=: read -r name python <<<"$leg"
  if [ -n "${PYATTACH_BENCH_LEGS:-}" ] && [[ " $PYATTACH_BENCH_LEGS " != *" $name "* ]]; then
    continue
  fi
  echo "=== $name ($python)"
  out="$root/build/bench-executor-$name"
  mkdir -p "$out"
  if ! venv="$(bash "$root/scripts/venv.sh" "$python" "$name" 2>"$out/venv.log")" ||
     ! CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/python" -m pip install \
         --no-build-isolation --no-deps --disable-pip-version-check \
         --config-settings=build-dir="$root/build/pkg-$name" "$root" >"$out/pip.log" 2>&1; then
    tail -20 "$out/venv.log" "$out/pip.log" 2>/dev/null
    failed=1
    continue
  fi
  # shellcheck disable=SC2086  # the arguments are meant to split
  if ! (cd "$out" && "$venv/bin/python" "$root/bench/executor.py" --json "$out/executor.json" \
          ${PYATTACH_EXECUTOR_BENCH_ARGS:-}); then
    failed=1
    continue
  fi
  results+=("$out/executor.json")
done
if [ ${#results[@]} -eq 0 ]; then
  echo "bench-executor: nothing ran"
  exit 1
fi
/usr/bin/python3 "$root/bench/executor_report.py" --out "$root/docs/benchmarks-executor.md" \
  --chart "$root/docs/benchmarks-executor.png" "${results[@]}" || failed=1
exit "$failed"

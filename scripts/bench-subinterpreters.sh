#!/usr/bin/env bash
# The sub-interpreter benchmarks (bench/subinterpreter_bench.cpp), on every CPython 3.12+ that
# scripts/interpreters.sh finds but the debug build (pyenv's 3.12 and 3.13, sid's 3.14 and 3.15
# in the sid root, the host's Debian CPython if it is 3.12+): build pyattach_subinterpreter_bench
# in Release (the same build directories as scripts/bench.sh, build/bench-<leg>), run the scaling
# repetitions (wall time: CPU-bound Python on two native threads, the main interpreter against
# one own-GIL interpreter each), count the instructions per switch between two interpreters under
# callgrind, and write docs/benchmarks-subinterpreters.md (bench/subinterpreter_report.py).
# A benchmark, not a test: it fails only if a build or a run fails. Do not run it while other
# work loads the machine: the scaling needs both cores.
#   PYATTACH_BENCH_LEGS="pyenv-3.12.1 sid-3.15"   only those legs
#   PYATTACH_SUB_BENCH_REPS (default 11), PYATTACH_SUB_BENCH_ROUNDS (default 20000)
set -uo pipefail
source "$(dirname "$0")/common.sh"  # root, jobs, scripts/interpreters.sh's functions
prepare_host
reps="${PYATTACH_SUB_BENCH_REPS:-11}"
rounds="${PYATTACH_SUB_BENCH_ROUNDS:-20000}"
bench_legs

# One leg (NAME PYTHON WHERE): build, run the scaling repetitions and the counted switches; adds
# its results directory to `results`. Returns 1 if a build or a run failed; skips before 3.12.
sub_leg() {
  local name="$1" python="$2" where="$3"
  local in=(in_root "$where") build="$root/build/bench-$name"
  local out="$build/results-subinterpreters" version
  version="$("${in[@]}" "$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  case "$version" in 3.9 | 3.10 | 3.11) return 0 ;; esac
  echo "=== $name ($python)"
  rm -rf "$out"
  mkdir -p "$out"
  bench_build "$where" "$python" "$build" "$out" pyattach_subinterpreter_bench || return 1
  local bin="$build/bench/pyattach_subinterpreter_bench"
  echo "$name" >"$out/leg"
  "${in[@]}" "$python" -c 'import sys; print(sys.version.split()[0])' >"$out/version"
  if ! "${in[@]}" timeout 600 "$bin" --scaling "$reps" >"$out/scaling.txt" 2>&1; then
    tail -n 10 "$out/scaling.txt"
    return 1
  fi
  if ! "${in[@]}" valgrind --tool=callgrind --instr-atstart=no \
         --callgrind-out-file="$out/callgrind.out" "$bin" --callgrind "$rounds" \
         >"$out/switch.txt" 2>"$out/callgrind.log"; then
    tail -n 10 "$out/callgrind.log"
    return 1
  fi
  grep "median_ratio" "$out/scaling.txt"
  results+=("$out")
}

failed=0
results=()
for leg in "${legs[@]}"; do
  IFS=: read -r name python where <<<"$leg"
  sub_leg "$name" "$python" "$where" || failed=1
done
if [ ${#results[@]} -eq 0 ]; then
  echo "bench-subinterpreters: nothing ran"
  exit 1
fi
"$(debian_python)" "$root/bench/subinterpreter_report.py" \
  --out "$root/docs/benchmarks-subinterpreters.md" "${results[@]}" || failed=1
exit "$failed"

#!/usr/bin/env bash
# The benchmarks, in one command: install what is needed, then for every CPython
# scripts/interpreters.sh finds but the debug build (the host's Debian CPython, pyenv's, sid's 3.14
# and 3.15 in the sid root), build pyattach_bench in Release (build/bench-<leg>), run the
# wall-time suite (Google Benchmark, repetitions with median/min/max; with it the two-thread
# contention case contend/<alt>: cycles and ns per pair while two threads attach at once) and the
# instruction counts (callgrind, collected only around each measured loop, with instruction
# addresses: the report splits the fast path's instructions per pyattach function by reading the
# binary's debug info with addr2line), and write docs/benchmarks.md and docs/benchmarks.png
# (bench/report, with the host's Debian CPython and python3-matplotlib).
# Each leg also builds and runs pyattach_pool_bench (pyattach::thread_pool against
# boost::asio::thread_pool: no-op and Python-task throughput, idle submit→start latency; the
# report's "Pools" section), with the same repetitions, and counts its instructions per Python
# task under callgrind.
# Benchmarks are not tests: nothing here fails on a timing; it fails if a build or a run fails.
#   PYATTACH_BENCH_LEGS="debian-3.11 sid-3.15"   only those legs (names as printed)
#   PYATTACH_BENCH_REPETITIONS (default 7), PYATTACH_BENCH_MIN_TIME (seconds per repetition,
#   default 0.05), PYATTACH_BENCH_CALLGRIND_ITERATIONS (default 20000)
set -uo pipefail
source "$(dirname "$0")/common.sh"  # root, jobs, scripts/interpreters.sh's functions
prepare_host
repetitions="${PYATTACH_BENCH_REPETITIONS:-7}"
min_time="${PYATTACH_BENCH_MIN_TIME:-0.05}"
iterations="${PYATTACH_BENCH_CALLGRIND_ITERATIONS:-20000}"
bench_legs

failed=0
result_dirs=()
for leg in "${legs[@]}"; do
  IFS=: read -r name python where <<<"$leg"
  in=(in_root "$where")  # the host, or the sid root
  build="$root/build/bench-$name"
  out="$build/results"
  echo "=== $name ($python)"
  start=$SECONDS
  rm -rf "$out"
  mkdir -p "$out"
  echo "$name" >"$out/leg"
  echo "$python" >"$out/python"
  if ! bench_build "$where" "$python" "$build" "$out" pyattach_bench pyattach_pool_bench; then
    echo "build failed" >"$out/status"
    failed=1
    continue
  fi
  built=$SECONDS
  bin="$build/bench/pyattach_bench"
  status="ok"
  if ! "${in[@]}" "$bin" --benchmark_repetitions="$repetitions" --benchmark_min_time="$min_time" \
         --benchmark_out="$out/wall.json" --benchmark_out_format=json >"$out/wall.txt" 2>&1; then
    grep -i "error" "$out/wall.txt" | head -10
    status="wall-time run reported errors (results/wall.txt)"
  fi
  walled=$SECONDS
  # The pools: every repetition is one fresh pool and one batch of tasks (fixed sizes, so
  # --benchmark_min_time does not apply); the latency probes run once. The repetitions of all
  # rows run interleaved in random order, so a burst of load from other work lands on several
  # rows instead of making one row look slow. A hung pool must not hang the whole script:
  # 20 minutes is many times what a leg takes.
  "${in[@]}" timeout 1200 "$build/bench/pyattach_pool_bench" --benchmark_repetitions="$repetitions" \
    --benchmark_enable_random_interleaving=true \
    --benchmark_out="$out/pool.json" --benchmark_out_format=json >"$out/pool.txt" 2>&1
  pool_rc=$?
  if [ "$pool_rc" -ne 0 ]; then
    grep -i "error" "$out/pool.txt" | head -10
    failure="pool run reported errors (results/pool.txt)"
    [ "$pool_rc" -eq 124 ] && failure="pool run timed out after 1200 s (results/pool.txt)"
    if [ "$status" = "ok" ]; then status="$failure"; else status="$status; $failure"; fi
  fi
  pooled=$SECONDS
  # --dump-instr/--dump-line: every cost line has its instruction address and source line (the
  # report looks the addresses up in this binary, which stays in $build/bench/ next to the dumps).
  if ! "${in[@]}" valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes --dump-line=yes \
         --callgrind-out-file="$out/callgrind.out" "$bin" --callgrind "$iterations" \
         >"$out/counted.tsv" 2>"$out/callgrind.log"; then
    tail -n 10 "$out/callgrind.log"
    failure="callgrind run failed (results/callgrind.log)"
    if [ "$status" = "ok" ]; then status="$failure"; else status="$status; $failure"; fi
  fi
  # The pools' instructions per Python task: every thread counted around each row's
  # batch of tasks; dumps pool.callgrind.out.N next to the attach ones.
  if ! "${in[@]}" valgrind --tool=callgrind --instr-atstart=no \
         --callgrind-out-file="$out/pool.callgrind.out" "$build/bench/pyattach_pool_bench" \
         --callgrind "$iterations" >"$out/pool-counted.tsv" 2>"$out/pool-callgrind.log"; then
    tail -n 10 "$out/pool-callgrind.log"
    failure="pool callgrind run failed (results/pool-callgrind.log)"
    if [ "$status" = "ok" ]; then status="$failure"; else status="$status; $failure"; fi
  fi
  echo "$status" >"$out/status"
  [ "$status" = "ok" ] || failed=1
  echo "status: $status; time: build $((built - start)) s, wall $((walled - built)) s," \
       "pools $((pooled - walled)) s, callgrind $((SECONDS - pooled)) s"
  result_dirs+=("$out")
done

if [ ${#result_dirs[@]} -eq 0 ]; then
  echo "bench: nothing ran"
  exit 1
fi
PYTHONPATH="$root/bench" "$(debian_python)" -m report --out "$root/docs/benchmarks.md" \
  --chart "$root/docs/benchmarks.png" "${result_dirs[@]}" || failed=1
exit "$failed"

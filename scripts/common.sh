# scripts/common.sh — what scripts/test.sh, bench.sh, bench-executor.sh and bench-subinterpreters.sh share: how they start
# and the steps more than one of them takes. Sourced after `set -uo pipefail`, never run:
#   source "$(dirname "$0")/common.sh"
# Sourcing it sets, and sources scripts/interpreters.sh (its functions: debian_python,
# interpreter_legs, in_root, release_roots ...):
#   root, pyattach_root      this checkout's directory
#   jobs                     parallel compile jobs (nproc)
# Functions:
#   prepare_host             unmounts the clone from the sid root at exit (release_roots), then
#                            installs what is needed (scripts/deps.sh); exits 1 if that fails
#   select_legs NAMES        keeps in the array `legs` ("name:..." entries) only the legs named in
#                            NAMES (space-separated), in legs' order; empty NAMES keeps them all
#   bench_legs               sets `legs` to the benchmark legs: every interpreter but the debug
#                            build, or those PYATTACH_BENCH_LEGS names
#   bench_build WHERE PYTHON BUILD_DIR LOG_DIR TARGET...
#                            configures BUILD_DIR (Release with -g, benchmarks only) for PYTHON and
#                            builds the TARGETs, in the sid root WHERE (empty: on the host); logs in
#                            LOG_DIR; on failure prints their tails and returns 1
#   pip_install ROOT VENV BUILD_DIR ARGS...
#                            pip install ARGS (a package of this checkout, and pip's own options)
#                            into VENV, in the sid root ROOT (empty: on the host), without build
#                            isolation or dependencies (the venv has them: scripts/venv.sh), built
#                            in BUILD_DIR (kept between runs: incremental) with $jobs compile jobs

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pyattach_root="$root"
source "$root/scripts/interpreters.sh"
jobs="$(nproc)"

prepare_host() {
  trap release_roots EXIT
  bash "$root/scripts/deps.sh" || exit 1
}

select_legs() {
  [ -n "$1" ] || return 0
  local leg want selected=()
  for leg in "${legs[@]}"; do
    for want in $1; do
      [ "${leg%%:*}" = "$want" ] && selected+=("$leg")
    done
  done
  legs=("${selected[@]}")
}

bench_legs() {
  mapfile -t legs < <(interpreter_legs debian pyenv sid)
  select_legs "${PYATTACH_BENCH_LEGS:-}"
}

# -g only adds debug info (callgrind_annotate's source lines, and the inline chains bench/report
# reads); the code is Release's -O3.
bench_build() {
  local where="$1" python="$2" build="$3" logs="$4"
  shift 4
  if ! in_root "$where" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-g \
         -DPYATTACH_PYTHON="$python" -DPYATTACH_BUILD_TESTS=OFF -DPYATTACH_BUILD_EXAMPLES=OFF \
         -DPYATTACH_BUILD_BENCH=ON >"$logs/configure.log" 2>&1 \
     || ! in_root "$where" cmake --build "$build" -j"$jobs" --target "$@" >"$logs/build.log" 2>&1; then
    tail -n 30 "$logs/configure.log" "$logs/build.log"
    return 1
  fi
}

pip_install() {
  local where="$1" venv="$2" build_dir="$3"
  shift 3
  CMAKE_BUILD_PARALLEL_LEVEL="$jobs" in_root "$where" "$venv/bin/python" -m pip install \
    --no-build-isolation --no-deps --disable-pip-version-check \
    --config-settings=build-dir="$build_dir" "$@"
}

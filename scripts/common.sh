# scripts/common.sh — what scripts/test.sh, bench.sh and bench-executor.sh share: how they start
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

pip_install() {
  local where="$1" venv="$2" build_dir="$3"
  shift 3
  CMAKE_BUILD_PARALLEL_LEVEL="$jobs" in_root "$where" "$venv/bin/python" -m pip install \
    --no-build-isolation --no-deps --disable-pip-version-check \
    --config-settings=build-dir="$build_dir" "$@"
}

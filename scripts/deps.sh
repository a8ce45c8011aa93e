#!/usr/bin/env bash
# Installs the Debian packages pyattach needs to build, test and run its demo on the host, for the
# host's own Debian CPython (3.11 on Debian 12, 3.13 on Debian 13: scripts/interpreters.sh finds
# it). As root: apt-get update + apt-get install. Otherwise: prints the sudo line and fails.
# The newer CPython releases run in a sid root with its own packages (scripts/sid-root.sh).
set -euo pipefail
source "$(dirname "$0")/interpreters.sh"

py="$(basename "$(debian_python)")"  # python3.X
if [ "$py" = "." ] || [ -z "$py" ]; then
  echo "deps: cannot tell which CPython this Debian ships (no /usr/bin/python3, apt knows no python3)" >&2
  exit 1
fi
packages=(
  build-essential cmake          # compiler and build system
  ccache                         # scripts/test.sh: legs that build the same sources share objects
  "$py-dev"                      # Debian's CPython with its embedding library
  "$py-venv"                     # venvs for the pytest legs and `pip install .` (scripts/venv.sh)
  "lib$py-testsuite"             # CPython's own tests: the executor is held to them (tests/python)
  libboost-dev                   # Boost.Asio thread pools (the seed's scenarios)
  nlohmann-json3-dev             # the scenario demo's --json output
  libgtest-dev libgmock-dev      # GoogleTest
  pybind11-dev                   # interop tests with pybind11's GIL guards
  libbenchmark-dev python3-matplotlib valgrind  # scripts/bench.sh: Google Benchmark, chart, callgrind
)
# Its Py_DEBUG build (aborts on thread-state misuse that release builds survive), where Debian
# ships one for this version: the test matrix has a leg for it then.
optional=("$py-dbg")

missing=()
for p in "${packages[@]}" "${optional[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# An optional package this release does not have is left out, not an error.
install=()
for p in "${missing[@]}"; do
  if [[ " ${optional[*]} " == *" $p "* ]] && [ -z "$(apt-cache policy "$p" 2>/dev/null | grep -E 'Candidate: [^(]')" ]; then
    echo "deps: $p is not available on this Debian release: no debug-build leg"
    continue
  fi
  install+=("$p")
done
[ ${#install[@]} -eq 0 ] && exit 0
echo "deps: installing ${install[*]}"
apt-get install -y -qq --no-install-recommends "${install[@]}" >/dev/null

#!/usr/bin/env bash
# Installs the Debian 12 packages pyattach needs to build, test and run its demo.
# As root: apt-get update + apt-get install. Otherwise: prints the sudo line and fails.
set -euo pipefail

packages=(
  build-essential cmake          # compiler and build system
  ccache                         # scripts/test.sh: legs that build the same sources share objects
  python3.11-dev                 # Debian's CPython 3.11 with its embedding library
  python3.11-dbg                 # its Py_DEBUG build: aborts on thread-state misuse release builds survive
  python3.11-venv                # venvs for the pytest legs and `pip install .` (scripts/venv.sh)
  libboost-dev                   # Boost.Asio thread pools (the seed's scenarios)
  libgtest-dev libgmock-dev      # GoogleTest
  pybind11-dev                   # interop tests with pybind11's GIL guards
  libbenchmark-dev python3-matplotlib valgrind  # scripts/bench.sh: Google Benchmark, chart, callgrind
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: missing Debian packages; run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

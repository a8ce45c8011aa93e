#!/usr/bin/env bash
# The whole test suite: install what is needed, then build and run every test against Debian's
# python3.11 and against every pyenv CPython 3.9–3.13 that is present (the version matrix).
# Prints which interpreters ran and a closing "N passed, N failed" line; fails if any test fails.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/deps.sh" || exit 1
jobs="$(nproc)"

# The interpreters: Debian's first (it also runs the CMake consumer tests), its Py_DEBUG build,
# then pyenv's.
legs=("debian-3.11:/usr/bin/python3.11" "debian-3.11-dbg:/usr/bin/python3.11-dbg")
pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
for minor in 9 10 11 12 13; do
  found=""
  for dir in "$pyenv_root"/versions/3."$minor".*; do
    [ -x "$dir/bin/python3.$minor" ] || continue
    ls "$dir"/lib/libpython3."$minor"*.so >/dev/null 2>&1 || continue  # needs a shared libpython
    found="$dir/bin/python3.$minor"
  done
  if [ -n "$found" ]; then
    legs+=("pyenv-$(basename "$(dirname "$(dirname "$found")")"):$found")
  else
    echo "matrix: no pyenv CPython 3.$minor with a shared libpython under $pyenv_root/versions: leg skipped"
  fi
done

mkdir -p "$root/build"
summary=()
total_pass=0
total_fail=0
for leg in "${legs[@]}"; do
  name="${leg%%:*}"
  python="${leg#*:}"
  build="$root/build/test-$name"
  echo "=== $name ($python)"
  labels=()
  [ "$name" = "debian-3.11" ] || labels=(-LE consumer)  # consumer builds: once is enough
  if ! cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DPYATTACH_PYTHON="$python" \
         >"$build.configure.log" 2>&1 \
     || ! cmake --build "$build" -j"$jobs" >"$build.build.log" 2>&1; then
    tail -30 "$build.configure.log" "$build.build.log" 2>/dev/null
    summary+=("$name: BUILD FAILED")
    total_fail=$((total_fail + 1))
    continue
  fi
  log="$build.ctest.log"
  ctest --test-dir "$build" -j"$jobs" --timeout 300 --output-on-failure "${labels[@]}" >"$log" 2>&1
  grep -E "^[0-9]+% tests passed|Failed|\*\*\*" "$log" | head -40
  line="$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -1)"
  pass="$(echo "$line" | sed -E 's/.*failed out of ([0-9]+).*/\1/')"
  fail="$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed.*/\1/')"
  if [ -z "$line" ]; then pass=0; fail=1; fi
  pass=$((pass - fail))
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  summary+=("$name: $pass passed, $fail failed")
done

echo
echo "=== version matrix"
for s in "${summary[@]}"; do echo "  $s"; done
echo "matrix: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]

#!/usr/bin/env bash
# The whole test suite: install what is needed, then build and run every test against every CPython
# scripts/interpreters.sh finds (the version matrix): the host's Debian CPython and its debug build,
# every pyenv CPython 3.9+ present, and the newest releases (3.14, 3.15) from Debian sid in a sid
# root (scripts/sid-root.sh, made once and kept outside the clone); then the Python-side suite
# (tests/python: the package, its executor held to CPython's own ThreadPoolExecutor tests, the
# extension-module examples, pip-installed, under pytest) on the same interpreters but the debug
# build; then the host's Debian CPython again with
# AddressSanitizer+UBSan and with ThreadSanitizer.
# Prints which legs ran (and which could not, and why) and a closing "N passed, N failed" line;
# fails if any test fails.
# PYATTACH_TEST_LEGS="asan-ubsan-3.11 tsan-3.11" (leg names, space-separated) runs only those legs;
# the pytest legs are named pytest-<interpreter leg>, e.g. "pytest-debian-3.11 pytest-sid-3.15".
# PYATTACH_EXIT_RUNS (default 10) sets the pytest legs' exit-race runs (tests/python/test_exit_race.py).
set -uo pipefail
source "$(dirname "$0")/common.sh"  # root, jobs, scripts/interpreters.sh's functions
prepare_host
# ccache, for every compile below (CMake 3.17+ takes CMAKE_CXX_COMPILER_LAUNCHER from the
# environment, pip's builds included): the CMake consumer tests and each pytest leg's two pip
# builds compile pyattach (and nanobind's runtime) with the same flags several times. The cache
# lives in this checkout's build/, so every clean clone starts empty; NOHASHDIR lets builds in
# different directories share objects (their debug info then names the first one's paths).
export CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_DIR="$root/build/ccache" CCACHE_BASEDIR="$root" \
  CCACHE_NOHASHDIR=1

# The legs, "name:python:sanitizers:root" (root: empty on the host, else the sid root the leg runs
# in). The host's Debian CPython first (it also runs the CMake consumer tests, the benchmark smoke
# run and the demo), its Py_DEBUG build, pyenv's, sid's, then the sanitizer builds (the slowest).
deb_minor="$(debian_minor)"
legs=()
pytest_legs=()
while IFS=: read -r name python where; do
  [ -n "$name" ] || continue
  legs+=("$name:$python::$where")
  # Not on the debug build: PyPI's pybind11/nanobind wheels and pip builds target release ABIs.
  case "$name" in *-dbg) ;; *) pytest_legs+=("pytest-$name:$python::$where") ;; esac
done < <(interpreter_legs)
for want in debian pyenv sid; do
  printf '%s\n' "${legs[@]}" | grep -q "^$want-" ||
    echo "matrix: no $want interpreter found: its legs are skipped (scripts/interpreters.sh)"
done
legs+=("${pytest_legs[@]}")

# Sanitizer legs: pyattach, the tests and the demo built with -DPYATTACH_SANITIZE (CMakeLists.txt)
# against the host's Debian CPython, whose libpython is not instrumented. The runtime options below are
# inherited by every process of the leg, including the test binary's child cases
# (--pyattach-child=NAME) and the demo's children, and reports go to stderr, which ctest shows
# (--output-on-failure) and the child harness captures into the failing test's message.
# A report ends the process with exit status 66 (halt_on_error, exitcode): a child case then fails
# its test (which expects 0, or SIGABRT, or its own status), and so does the parent test. Not
# abort_on_error: a SIGABRT would pass the tests that expect a deliberate abort.
legs+=("asan-ubsan-$deb_minor:$(debian_python):address,undefined:" "tsan-$deb_minor:$(debian_python):thread:")
sanitizers_dir="$root/tests/sanitizers"
# LeakSanitizer: CPython's own at-exit leaks are suppressed (only allocations made through
# libpython, see lsan.supp); print_suppressions=0 keeps the children's stderr free of the tally.
asan_env=(
  "ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=66:detect_stack_use_after_return=1:check_initialization_order=1:strict_string_checks=1"
  "LSAN_OPTIONS=suppressions=$sanitizers_dir/lsan.supp:print_suppressions=0"
  "UBSAN_OPTIONS=halt_on_error=1:abort_on_error=0:exitcode=66:print_stacktrace=1"
)
tsan_env=(
  "TSAN_OPTIONS=halt_on_error=1:abort_on_error=0:exitcode=66:second_deadlock_stack=1:suppressions=$sanitizers_dir/tsan.supp:print_suppressions=0"
)
# The stress tests shrink their own sizes when built with a sanitizer (tests/cpp/test_stress.cpp).
# Sanitizer runtimes of GCC 12 (LLVM 15's) need a narrower address-space layout than kernels with
# vm.mmap_rnd_bits=32 give: TSan then refuses to start ("FATAL: ThreadSanitizer: unexpected memory
# mapping"), and ASan hangs now and then (an endless "AddressSanitizer:DEADLYSIGNAL"), both seen
# here with mmap_rnd_bits=32 and fine with 28. So the sanitizer legs build and run with address
# randomization off (setarch -R: a personality flag, inherited by ctest and every child), which
# needs no root and leaves the machine's setting alone. The build is wrapped too: test discovery
# runs the test binary.
no_aslr=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
  no_aslr=(setarch "$(uname -m)" -R)
else
  echo "matrix: setarch -R is not permitted here: sanitizer legs run with address randomization on"
fi

select_legs "${PYATTACH_TEST_LEGS:-}"

mkdir -p "$root/build"
summary=()
exit_race_rows=()
cpython_rows=()
total_pass=0
total_fail=0

# A leg that could not run its tests: the end of LOG... (tail -n LINES), and MESSAGE in the summary.
leg_failed() {  # leg_failed LINES MESSAGE LOG...
  local lines="$1" message="$2"
  shift 2
  tail -n "$lines" "$@" 2>/dev/null
  summary+=("$message")
  total_fail=$((total_fail + 1))
}

# A pytest leg: the interpreter's venv (scripts/venv.sh: pinned pybind11, nanobind,
# scikit-build-core, ninja, cmake, pytest), `pip install` of examples/extension built against this
# checkout (not an installed pyattach) and of the pyattach package itself (pyproject.toml), each
# in a build directory kept between runs (incremental), then pytest on tests/python from outside
# the source tree. A failed venv or build fails the leg.
# A leg in the sid root runs every step there (in_root, scripts/interpreters.sh).
pytest_leg() {
  local name="$1" python="$2" where="$3"
  local short="${name#pytest-}"
  local log="$root/build/$name"
  local leg_start=$SECONDS venv
  local in=(in_root "$where")
  if ! venv="$("${in[@]}" bash "$root/scripts/venv.sh" "$python" "$short" 2>"$log.venv.log")"; then
    leg_failed 30 "$name: VENV FAILED ($log.venv.log)" "$log.venv.log"
    return
  fi
  if ! pip_install "$where" "$venv" "$root/build/ext-$short" \
         --config-settings=cmake.define.CMAKE_DISABLE_FIND_PACKAGE_pyattach=ON \
         "$root/examples/extension" >"$log.pip.log" 2>&1; then
    leg_failed 40 "$name: BUILD FAILED (pip install ./examples/extension, $log.pip.log)" \
      "$log.pip.log"
    return
  fi
  # The package itself (pyproject.toml at the root): what `pip install .` gives a user.
  if ! pip_install "$where" "$venv" "$root/build/pkg-$short" "$root" \
         >"$log.pip-package.log" 2>&1; then
    leg_failed 40 "$name: BUILD FAILED (pip install ., $log.pip-package.log)" "$log.pip-package.log"
    return
  fi
  local built=$SECONDS
  rm -f "$log.junit.xml"
  "${in[@]}" /bin/sh -c 'cd "$1/build" && shift && exec "$@"' sh "$root" "$venv/bin/python" \
    -m pytest "$root/tests/python" -p no:cacheprovider -q -rfEsx --junitxml="$log.junit.xml" \
    >"$log.pytest.log" 2>&1
  grep -E "^(FAILED|ERROR|SKIPPED|XFAIL|XPASS)|^[0-9]+ (passed|failed)|exit-race-row:|[0-9]+ (passed|failed).* in [0-9.]+s" \
    "$log.pytest.log" | grep -v -E "^(exit-race|cpython-suite)-row:" | head -40
  echo "time: venv+build $((built - leg_start)) s, pytest $((SECONDS - built)) s"
  # Counts from the JUnit report: passed, failed (failures, errors, strict XPASS), skipped, and
  # xfailed (expected failures, which JUnit files under skipped).
  local counts pass fail skip xfail
  counts="$("$(debian_python)" - "$log.junit.xml" <<'PY' 2>/dev/null
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = list(root.iter("testcase"))
kinds = [next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed") for case in cases]
xfail = sum(1 for case in cases for c in case if c.tag == "skipped" and c.get("type") == "pytest.xfail")
print(kinds.count("passed"), kinds.count("failure") + kinds.count("error"),
      kinds.count("skipped") - xfail, xfail)
PY
)"
  read -r pass fail skip xfail <<<"$counts"
  if [ -z "$pass" ] || [ "$((pass + fail))" -eq 0 ]; then  # no report, or no test ran
    tail -30 "$log.pytest.log"
    pass=0 fail=1 skip=0 xfail=0
  fi
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  summary+=("$name: $pass passed, $fail failed, $skip skipped, $xfail expected failures")
  while IFS= read -r row; do exit_race_rows+=("${row#exit-race-row: }"); done \
    < <(grep -E "^exit-race-row:" "$log.pytest.log")
  while IFS= read -r row; do cpython_rows+=("${row#cpython-suite-row: }"); done \
    < <(grep -E "^cpython-suite-row:" "$log.pytest.log")
}

for leg in "${legs[@]}"; do
  IFS=: read -r name python sanitize where <<<"$leg"
  build="$root/build/test-$name"
  echo "=== $name ($python${where:+ in $where})"
  case "$name" in
    pytest-*) pytest_leg "$name" "$python" "$where"; continue ;;
  esac
  primary="debian-$deb_minor"
  labels=()
  [ "$name" = "$primary" ] || labels=(-LE consumer)  # consumer builds: once is enough
  # The benchmark binary's smoke run (ctest -L bench) proves it still works: once is enough too
  # (scripts/bench.sh measures every interpreter).
  bench_flag=(-DPYATTACH_BUILD_BENCH=OFF)
  [ "$name" = "$primary" ] && bench_flag=(-DPYATTACH_BUILD_BENCH=ON)
  # The scenario demo (ctest -L demo) runs on the host's Debian CPython and under ASan/UBSan; the
  # other legs skip its build and run (the suite must stay under 45 minutes on 2 cores; the
  # library it exercises is tested on every leg by the unit tests).
  examples_flag=(-DPYATTACH_BUILD_EXAMPLES=OFF)
  case "$name" in "$primary" | asan-*) examples_flag=(-DPYATTACH_BUILD_EXAMPLES=ON) ;; esac
  # A sanitizer leg also never runs the consumer builds: they link the sanitized static library
  # into a project built without -fsanitize (undefined __asan_*/__tsan_* symbols).
  run=(in_root "$where")  # the host, or the sid root
  sanitize_flags=()
  if [ -n "$sanitize" ]; then
    sanitize_flags=(-DPYATTACH_SANITIZE="$sanitize")
    case "$sanitize" in
      *thread*) run=(env "${tsan_env[@]}" "${no_aslr[@]}") ;;
      *) run=(env "${asan_env[@]}" "${no_aslr[@]}") ;;
    esac
  fi
  leg_start=$SECONDS
  if ! in_root "$where" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DPYATTACH_PYTHON="$python" \
         "${bench_flag[@]}" "${examples_flag[@]}" "${sanitize_flags[@]}" >"$build.configure.log" 2>&1 \
     || ! "${run[@]}" cmake --build "$build" -j"$jobs" >"$build.build.log" 2>&1; then
    leg_failed 30 "$name: BUILD FAILED" "$build.configure.log" "$build.build.log"
    continue
  fi
  built=$SECONDS
  log="$build.ctest.log"
  "${run[@]}" ctest --test-dir "$build" -j"$jobs" --timeout 300 --output-on-failure "${labels[@]}" \
    >"$log" 2>&1
  grep -E "^[0-9]+% tests passed|Failed|\*\*\*" "$log" | head -40
  echo "time: build $((built - leg_start)) s, ctest $((SECONDS - built)) s"
  # ctest's closing line: "95% tests passed, 6 tests failed out of 125", or, from CMake 4's ctest
  # (pip's cmake, first on PATH here) when none failed, "100% tests passed out of 125".
  line="$(grep -E "tests passed(, [0-9]+ tests failed)? out of [0-9]+" "$log" | tail -1)"
  pass="$(echo "$line" | sed -E 's/.* out of ([0-9]+).*/\1/')"
  fail="$(echo "$line" | sed -nE 's/.* ([0-9]+) tests failed.*/\1/p')"
  fail="${fail:-0}"
  if [ -z "$line" ]; then pass=0; fail=1; fi
  pass=$((pass - fail))
  total_pass=$((total_pass + pass))
  total_fail=$((total_fail + fail))
  summary+=("$name: $pass passed, $fail failed")
done

echo
if [ "${#exit_race_rows[@]}" -gt 0 ]; then
  echo "=== exit race (tests/python/test_exit_race.py; PYATTACH_EXIT_RUNS=${PYATTACH_EXIT_RUNS:-10} per row)"
  printf '  %-16s %-9s %-10s %-7s %s\n' interpreter flavour variant exit counts
  for r in "${exit_race_rows[@]}"; do
    read -r interp flavour variant timing rest <<<"$r"
    printf '  %-16s %-9s %-10s %-7s %s\n' "$interp" "$flavour" "$variant" "$timing" "$rest"
  done
fi
if [ "${#cpython_rows[@]}" -gt 0 ]; then
  echo "=== CPython's own ThreadPoolExecutor tests (tests/python/test_cpython_suite.py): outcomes"
  printf '  %-16s %-5s %-34s %5s  %-22s %s\n' interpreter suite class tests standard pyattach
  for r in "${cpython_rows[@]}"; do
    read -r interp suite cls n std ours <<<"$r"
    printf '  %-16s %-5s %-34s %5s  %-22s %s\n' "$interp" "$suite" "$cls" "$n" "${std#std:}" "${ours#pyattach:}"
  done
fi
echo "=== version matrix"
for s in "${summary[@]}"; do echo "  $s"; done
echo "matrix: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]

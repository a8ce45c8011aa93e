#!/usr/bin/env bash
# Makes (or reuses) a Debian sid root holding the newest CPython releases Debian ships (sid's
# python3.14 and python3.15 binary packages) with a toolchain to build and test pyattach against
# them. They need sid's C library, so they run there, not on the host. Prints the root's directory
# on stdout (progress goes to stderr); fails with a message saying why when the root cannot be made.
#
#   bash scripts/sid-root.sh            make or reuse it; print its directory
# (scripts/interpreters.sh's in_root mounts what a leg needs inside it and runs commands there.)
#
# The root lives outside the clone (PYATTACH_SID_ROOT, default /var/cache/pyattach/sid-root) so
# that a second run, from any clone, does not pay for it again (about 2 minutes and 1.4 GB). It is
# built in a temporary directory and renamed when complete, so an interrupted run never leaves a
# half-made root that looks usable; packages added to the list below are installed into it.
# Needs root (debootstrap, chroot, mount): as in CI. Debian's mirror is the host's own (its apt
# sources); no source packages are needed.
set -euo pipefail
sid="${PYATTACH_SID_ROOT:-/var/cache/pyattach/sid-root}"
packages=(
  python3.14-dev python3.14-venv python3.15-dev python3.15-venv
  g++ cmake make ccache libgtest-dev libgmock-dev libboost-dev pybind11-dev
  ca-certificates
  libbenchmark-dev valgrind      # scripts/bench.sh
  libpython3.14-testsuite libpython3.15-testsuite  # CPython's own executor tests (tests/python)
)
want="$(printf '%s\n' "${packages[@]}" | sha256sum | cut -d' ' -f1)"
fail() { echo "sid-root: $*" >&2; exit 1; }

# Everything mounted under a directory (the clone bound by scripts/interpreters.sh's in_root
# included), deepest first: unmounted before the directory is ever removed.
unmount_all_under() {
  local m
  for m in $(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

enter() {
  # /proc inside the root for apt; in_root arranges the rest when a leg runs.
  mountpoint -q "$sid/proc" || mount -t proc proc "$sid/proc" ||
    fail "cannot mount proc in $sid"
}

if [ -f "$sid/.pyattach-packages" ] && [ -x "$sid/usr/bin/python3.14" ] &&
   [ -x "$sid/usr/bin/python3.15" ]; then
  if [ "$(cat "$sid/.pyattach-packages")" != "$want" ]; then
    # Made from an older package list: add what is missing instead of starting over.
    [ "$(id -u)" -eq 0 ] || fail "the sid root lacks packages and adding them needs root"
    echo "sid-root: adding packages to $sid" >&2
    enter
    chroot "$sid" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages[*]} && apt-get clean" \
      >>"$sid.log" 2>&1 || { tail -20 "$sid.log" >&2; fail "apt-get in the sid root failed (log: $sid.log)"; }
    echo "$want" >"$sid/.pyattach-packages"
  fi
  echo "$sid"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || fail "making the sid root needs root (debootstrap, chroot); run as root or set PYATTACH_SID_ROOT to an existing one"
if ! command -v debootstrap >/dev/null; then
  echo "sid-root: installing debootstrap" >&2
  mkdir -p "$(dirname "$sid")"
  log="$sid.debootstrap-install.log"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends debootstrap; }; } >"$log" 2>&1 ||
    { tail -20 "$log" >&2; fail "cannot install debootstrap (log: $log)"; }
fi
# The host's Debian mirror: the first non-security URI of its apt sources (deb822 or one-line).
mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
          sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' | grep -v security | head -1 || true)"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' |
            grep -v security | head -1 || true)"
fi
[ -n "$mirror" ] || fail "no Debian mirror found in the host's apt sources"

tmp="$sid.tmp"
unmount_all_under "$tmp"
rm -rf --one-file-system "$tmp"
mkdir -p "$(dirname "$sid")"
echo "sid-root: debootstrap sid from $mirror into $tmp (about a minute)" >&2
debootstrap --variant=minbase sid "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
  { tail -20 "$tmp.log" >&2; fail "debootstrap failed (log: $tmp.log)"; }
# The mirror's Release file may be older than its Valid-Until (a snapshot): accept it.
echo 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99pyattach"
mount -t proc proc "$tmp/proc"
trap 'umount "$tmp/proc" 2>/dev/null || true' EXIT
echo "sid-root: installing ${packages[*]} (about a minute)" >&2
if ! chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
       sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages[*]}" \
       >>"$tmp.log" 2>&1; then
  tail -20 "$tmp.log" >&2
  fail "apt-get in the sid root failed (log: $tmp.log)"
fi
# pip inside the root reaches PyPI with the host's certificate bundle.
cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/ca-certificates.crt"
umount "$tmp/proc"
trap - EXIT
apt_clean() { chroot "$tmp" apt-get clean >/dev/null 2>&1 || true; }
apt_clean
echo "$want" >"$tmp/.pyattach-packages"
if [ -d "$sid" ]; then
  unmount_all_under "$sid"
  rm -rf --one-file-system "$sid"
fi
mv "$tmp" "$sid"
mv "$tmp.log" "$sid.log"
echo "$sid"

# scripts/interpreters.sh — the one place that finds the CPython interpreters pyattach is built
# and tested against. Sourced by scripts/deps.sh and demo.sh, and through scripts/common.sh by
# test.sh, bench.sh and bench-executor.sh; nothing else names an interpreter version.
#
# What it finds (each "leg" is one interpreter, named as the scripts print it):
#   debian-3.X       the host's Debian CPython (whatever `python3` is on this release: 3.11 on
#                    Debian 12, 3.13 on Debian 13), /usr/bin/python3.X
#   debian-3.X-dbg   its Py_DEBUG build, /usr/bin/python3.X-dbg, when Debian ships one
#   pyenv-3.M.P      the newest pyenv CPython 3.9+ of each minor version with a shared libpython
#                    (an embedding test needs libpython), when pyenv is present
#   sid-3.14 ...     the CPython releases newer than the host's, as Debian sid's binary packages,
#                    run in a sid root (scripts/sid-root.sh): they need sid's C library
# Functions, for scripts that source this file:
#   debian_python            prints /usr/bin/python3.X for the host's Debian CPython (empty if
#                            neither /usr/bin/python3 nor apt knows one)
#   debian_minor             prints 3.X
#   interpreter_legs [kinds] prints "name:python:root" lines (root empty for the host's, the sid
#                            root's directory for sid-*); kinds: any of "debian dbg pyenv sid"
#                            (default all). The sid root is made on demand; when it cannot be,
#                            one line on stderr says why and the sid legs are left out.
#   sid_minors               the minor versions taken from sid (3.14 3.15)
#   in_root ROOT CMD...      runs CMD on the host (ROOT empty) or inside ROOT with a clean
#                            environment, the clone bind-mounted at the same path, /proc mounted
#   release_roots            unmounts the clone from the sid root (call from an EXIT trap)

pyattach_root="${pyattach_root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

# Debian's own CPython: /usr/bin/python3's target, or, on a host where it is not installed yet,
# the version the python3 package depends on.
debian_python() {
  local target
  if [ -x /usr/bin/python3 ]; then
    target="$(readlink -f /usr/bin/python3)"
    case "$target" in /usr/bin/python3.[0-9]*) echo "$target"; return ;; esac
  fi
  local minor
  minor="$(apt-cache depends python3 2>/dev/null | grep -oE 'python3\.[0-9]+' | head -1)"
  [ -n "$minor" ] && echo "/usr/bin/$minor"
}
debian_minor() { basename "$(debian_python)" | sed 's/^python//'; }

sid_minors() { echo "3.14 3.15"; }

interpreter_legs() {
  local kinds="${*:-debian dbg pyenv sid}"
  local deb minor
  deb="$(debian_python)"
  minor="$(debian_minor)"
  if [[ " $kinds " == *" debian "* ]] && [ -x "$deb" ]; then
    echo "debian-$minor:$deb:"
  fi
  if [[ " $kinds " == *" dbg "* ]] && [ -x "$deb-dbg" ]; then
    echo "debian-$minor-dbg:$deb-dbg:"
  fi
  if [[ " $kinds " == *" pyenv "* ]]; then
    local pyenv_root m dir found
    pyenv_root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for m in 9 10 11 12 13 14 15; do
      found=""
      for dir in "$pyenv_root"/versions/3."$m".*; do
        [ -x "$dir/bin/python3.$m" ] || continue
        ls "$dir"/lib/libpython3."$m"*.so >/dev/null 2>&1 || continue  # a shared libpython
        found="$dir/bin/python3.$m"
      done
      [ -n "$found" ] && echo "pyenv-$(basename "$(dirname "$(dirname "$found")")"):$found:"
    done
  fi
  if [[ " $kinds " == *" sid "* ]]; then
    local sid v
    if sid="$(bash "$pyattach_root/scripts/sid-root.sh")"; then
      for v in $(sid_minors); do
        [ -x "$sid/usr/bin/python$v" ] && echo "sid-$v:/usr/bin/python$v:$sid"
      done
    else
      echo "interpreters: no sid root, so no CPython $(sid_minors | tr ' ' '/') legs (see above)" >&2
    fi
  fi
}

# The sid root in_root mounts things in (scripts/sid-root.sh's default).
_pyattach_sid="${PYATTACH_SID_ROOT:-/var/cache/pyattach/sid-root}"
_mount_once() {  # _mount_once TARGET mount-args...
  local target="$1"
  shift
  mountpoint -q "$target" && return 0
  mkdir -p "$target"
  mount "$@" "$target"
}

in_root() {
  local root="$1"
  shift
  if [ -z "$root" ]; then
    "$@"
    return
  fi
  # The root bound onto itself first: a mount point, so that tests may make private mount
  # namespaces there (unshare --propagation private fails on a plain directory). Then the clone
  # at the same path inside the root, so that paths in build trees and logs mean the same thing
  # on both sides; /proc for the tests (/proc/self/task) and /dev/shm for semaphores.
  if ! mountpoint -q "$root"; then
    # What was mounted inside it before would be hidden under the bind: unmount it first.
    local m
    for m in $(awk -v d="$root" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m"
    done
    mount --bind "$root" "$root" || return 1
  fi
  _mount_once "$root/proc" -t proc proc || return 1
  _mount_once "$root/dev/shm" -t tmpfs tmpfs || return 1
  # A bind left by an interrupted run may show a clone since removed from this path: redo it.
  if mountpoint -q "$root$pyattach_root" &&
     [ "$(stat -c %d:%i "$pyattach_root")" != "$(stat -c %d:%i "$root$pyattach_root")" ]; then
    umount "$root$pyattach_root" 2>/dev/null || umount -l "$root$pyattach_root"
  fi
  _mount_once "$root$pyattach_root" --bind "$pyattach_root" || return 1
  # A clean environment but for pyattach's, ccache's, CMake's and the sanitizers' settings.
  local pass=()
  mapfile -t pass < <(env | grep -E '^(PYATTACH_|CCACHE_|CMAKE_|ASAN_|LSAN_|UBSAN_|TSAN_)')
  chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root \
    LANG=C.UTF-8 "${pass[@]}" "$@"
}

# Unmounts this clone from the sid root (in_root may have run in subshells, so it is found by
# path). The root's own mounts stay: another clone may be using them.
release_roots() {
  local m="$_pyattach_sid$pyattach_root"
  if mountpoint -q "$m" 2>/dev/null; then umount "$m" 2>/dev/null || umount -l "$m"; fi
}

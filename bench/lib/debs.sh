#!/bin/bash
# bench/lib/debs.sh — sourced by benchmarks: bench_need_debs PKG... installs the Debian packages
# that are missing (apt-get update once, then apt-get install), so a benchmark needs one command on
# a fresh machine. Returns non-zero when a package could not be installed (not root, no dpkg, apt
# failed); says which.

bench_need_debs() {
  local p missing=""
  command -v dpkg-query > /dev/null || { echo "bench: no dpkg here; needs: $*" >&2; return 1; }
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || { echo "bench: missing Debian packages:$missing (run as root to install them)" >&2; return 1; }
  echo "bench: installing:$missing" >&2
  # shellcheck disable=SC2086
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq > /dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing > /dev/null; }; then
    echo "bench: apt-get install failed for:$missing" >&2
    return 1
  fi
}

# bench_machine: one line naming the machine, for reports
bench_machine() {
  local cg
  if [ "$(stat -f -c %T /sys/fs/cgroup 2> /dev/null)" = cgroup2fs ]; then cg="cgroup v2"
  elif [ -d /sys/fs/cgroup/memory ]; then cg="cgroup v1 (memory controller)"
  else cg="cgroup unknown"; fi
  printf '%s CPUs (%s), %s GiB RAM, Linux %s, %s, %s\n' "$(nproc)" \
    "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
    "$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$cg" \
    "$(. /etc/os-release 2> /dev/null && echo "$PRETTY_NAME")"
}

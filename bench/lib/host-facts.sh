#!/bin/bash
# bench/lib/host-facts.sh: sourced by benchmarks for what they all need before measuring.
#   bench_need PKG...   installs the Debian packages that are missing (apt-get, as root)
#   bench_kechid        builds kechid (release, honouring CARGO_TARGET_DIR) and prints its path
#   bench_machine       prints the machine as "key: value" lines (date, kernel, nproc, memory,
#                       cgroup version, THP settings, ...), for the raw results and the report
# All three write progress to stderr and only their result to stdout.

bench_need() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  # The package lists may be stale or absent on a fresh machine: update once, then install.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /dev/null 2>&1 || {
    apt-get update -q > /dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  }
}

bench_kechid() {
  local target=${CARGO_TARGET_DIR:-$PWD/target}
  echo "building kechid (release) in $target" >&2
  cargo build --release --quiet --bin kechid >&2 || return 1
  echo "$target/release/kechid"
}

bench_machine() {
  local cg=v1
  [ "$(stat -f -c %T /sys/fs/cgroup 2> /dev/null)" = cgroup2fs ] && cg=v2
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "kernel: $(uname -r)"
  echo "os: $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
  echo "cpu: $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "swap: $(awk '/^SwapTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "cgroup: $cg"
  echo "thp_enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2> /dev/null)"
  echo "thp_defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag 2> /dev/null)"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

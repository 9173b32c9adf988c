#!/bin/bash
# sdbench.sh — what the benchmarks that run kechi under a real systemd share (bench/leaks,
# bench/cow). Sourced, not run. Builds on the system-test harness (tests/system/lib/scenario.sh
# and mem.sh): the same throwaway box, the same kechi install, the same wrk load generator.
#
#   bench_need WHAT=PKG...      installs the Debian packages whose WHAT is missing: a command,
#                               py:MODULE (Python) or pl:MODULE (Perl)
#   bench_build                 cargo build (debug) unless KECHI_BIN_DIR points at binaries
#   bench_up SUFFIX             boots the box, installs kechi, copies bench/lib/procmem.py in
#   bench_copy_in FILE          copies FILE to $BENCH_INSIDE/ in the box
#   bench_restart < TOML        a fresh kechi@demo with this config (stops the previous one first)
#   bench_sampler_start NAME    procmem.py for $KT_USER, every second, as unit kb-mem-NAME
#   bench_sampler_stop NAME F   stops it, copies its CSV to the host file F
#   bench_load_stop NAME        stops a load_start'ed wrk; sets LOAD_SERVED, LOAD_FAILED and
#                               LOAD_KINDS ("connect=.. read=.. write=.. timeout=.. non2xx=..")
#                               without counting as a test check: a benchmark records, not judges
#   bench_machine               one line: nproc, memory, kernel, cgroup version, date
# Needs root (the box); exits 77 with "SKIPPED (...)" where the machine cannot run it.

BENCH_ROOT=$(readlink -f "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../..")
# shellcheck source=tests/system/lib/scenario.sh
. "$BENCH_ROOT/tests/system/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$BENCH_ROOT/tests/system/lib/mem.sh"
BENCH_INSIDE=/usr/lib/kechi-bench

bench_need() {
  local spec cmd pkg missing=()
  for spec in "$@"; do
    cmd=${spec%%=*} pkg=${spec#*=}
    case "$cmd" in
      py:*) /usr/bin/python3 -c "import ${cmd#py:}" 2> /dev/null && continue ;;
      pl:*) perl -M"${cmd#pl:}" -e 1 2> /dev/null && continue ;;
      *) command -v "$cmd" > /dev/null && continue ;;
    esac
    missing+=("$pkg")
  done
  [ ${#missing[@]} = 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  { apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }; } > /dev/null \
    || { echo "apt-get install ${missing[*]} failed" >&2; exit 1; }
}

bench_build() {
  [ -n "${KECHI_BIN_DIR:-}" ] && return 0
  (cd "$BENCH_ROOT" && cargo build --quiet) || { echo "cargo build failed" >&2; exit 1; }
}

bench_up() {
  tgt_up "$1"
  kechi_install
  tgt_copy_in "$BENCH_ROOT/bench/lib/procmem.py" "$BENCH_INSIDE/procmem.py" || abort "copying procmem.py in"
}

bench_copy_in() { tgt_copy_in "$1" "$BENCH_INSIDE/$(basename "$1")" || abort "copying $1 in"; }

bench_restart() {
  local why
  tgt_run timeout 120 systemctl stop "kechi@$KT_APP" 2> /dev/null
  why=$(kt steady "$KT_APP" 0 0 "$KT_USER" 60) || abort "kechi@$KT_APP did not stop cleanly: $why"
  kechi_config
  kechi_start || abort "kechi@$KT_APP did not start"
}

bench_sampler_start() {
  tgt_run systemd-run --quiet --unit="kb-mem-$1" --collect --service-type=exec \
    /usr/bin/python3 "$BENCH_INSIDE/procmem.py" "$KT_USER" "/run/kb-mem-$1.csv" 1 \
    || abort "the memory sampler did not start"
}

bench_sampler_stop() {
  tgt_run systemctl stop "kb-mem-$1" 2> /dev/null
  tgt_run cat "/run/kb-mem-$1.csv" > "$2"
}

# shellcheck disable=SC2034  # LOAD_* are read by the benchmarks
bench_load_stop() {
  local out res kv requests=0 connect=0 read=0 write=0 timeout=0 hung=0 non2xx=0
  out=$(kt load-stop "$1" 2>&1)
  res=$(printf '%s\n' "$out" | sed -n 's/^result: //p' | tail -1)
  for kv in $res; do
    case "$kv" in
      requests=* | connect=* | read=* | write=* | timeout=* | hung=* | non2xx=*) printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
    esac
  done
  LOAD_SERVED=$requests
  LOAD_FAILED=$((connect + read + write + timeout + hung + non2xx))
  LOAD_KINDS="connect=$connect read=$read write=$write timeout=$timeout hung=$hung non2xx=$non2xx"
  printf '%s\n' "$out" | grep -E 'requests in|Requests/sec|Socket errors|Non-2xx|^hung: ' | sed 's/^/          | /'
}

bench_machine() {
  local cg
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then cg="cgroup v2"
  elif [ -d /sys/fs/cgroup/memory ]; then cg="cgroup v1 (memory controller)"
  else cg="cgroup unknown"; fi
  printf '%s CPUs, %s GiB RAM, kernel %s, %s, %s; %s\n' "$(nproc)" \
    "$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$cg" \
    "$(. /etc/os-release && echo "$PRETTY_NAME")" "$(date -u '+%Y-%m-%d %H:%M UTC')"
}

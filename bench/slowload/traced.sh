#!/bin/bash
# bench/slowload/traced.sh BIN_DIR OUT [PLAN]: one quick slowload run (run.sh --quick, PLAN default
# kechi-gunicorn) under `perf record -e sched:sched_switch -e sched:sched_wakeup` on every CPU, for
# sched_blame.py. Writes OUT/ (run.sh's output), OUT.perf.txt (the trace as text), OUT.offset
# (CLOCK_REALTIME - CLOCK_MONOTONIC, to put the trace's times beside the requests') and OUT.nsmap
# (host pid and box pid of each app-server process, read once a second with shell builtins only,
# so that the map costs the measured run next to nothing). Needs perf (Debian: linux-perf), root.
set -uo pipefail
[ $# -ge 2 ] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
HERE=$(dirname "$(readlink -f "$0")")
bin=$(readlink -f "$1") out=$2 plan=${3:-kechi-gunicorn}
stop=$(mktemp -u)
map() {
  while [ ! -e "$stop" ]; do
    for d in /proc/[0-9]*; do
      read -r c < "$d/comm" 2> /dev/null || continue
      case "$c" in gunicorn | perl | plackup | starlet* | kechid) ;; *) continue ;; esac
      while read -r k _ b; do [ "$k" = NSpid: ] && [ -n "$b" ] && echo "$c ${d#/proc/} $b"; done < "$d/status"
    done 2> /dev/null
    sleep 1
  done | sort -u > "$out.nsmap"
}
map &
mapper=$!
/usr/bin/python3 -c "import time; print(time.clock_gettime(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_MONOTONIC))" > "$out.offset"
perf record -q -a -k mono -e sched:sched_switch -e sched:sched_wakeup -o "$out.perf" -- \
  env KECHI_BIN_DIR="$bin" SLOWLOAD_PLAN="$plan" bash "$HERE/run.sh" --quick --out "$out" > "$out.log" 2>&1
rc=$?
touch "$stop"; wait "$mapper"; rm -f "$stop"
perf script -i "$out.perf" -F cpu,time,event,trace 2> /dev/null > "$out.perf.txt"
rm -f "$out.perf"
exit "$rc"

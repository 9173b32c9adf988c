#!/bin/bash
# bench/footprint/inside.sh — runs INSIDE the benchmark's box, installed there as
# /usr/lib/kechi-test/bench-footprint. One call answers one question.
#
#   mem PID            "RSS PSS USS" in KiB, from /proc/PID/smaps_rollup (USS = Private_Clean +
#                      Private_Dirty + Private_Hugetlb: the pages only this process maps)
#   cpu-ms PID         user + system CPU time the process has used so far, in ms (/proc/PID/stat)
#   threads PID        its thread count
#   uss-by-mapping PID "KiB,NAME" lines, largest first: the process's USS per mapped file, or
#                      [heap], [stack], [anon] (anonymous memory), from /proc/PID/smaps
#   count USER         how many processes USER runs
#   wait-count USER N SECS   until USER runs exactly N processes; exit 1 after SECS
set -uo pipefail

mem() {
  awk '$1 == "Rss:" { r = $2 } $1 == "Pss:" { p = $2 }
       $1 == "Private_Clean:" || $1 == "Private_Dirty:" || $1 == "Private_Hugetlb:" { u += $2 }
       END { if (r == "") exit 1; printf "%d %d %d\n", r, p, u }' "/proc/$1/smaps_rollup"
}

uss_by_mapping() {
  awk '$1 ~ /^[0-9a-f]+-[0-9a-f]+$/ { name = (NF >= 6 ? $6 : "[anon]"); next }
       $1 == "Private_Clean:" || $1 == "Private_Dirty:" || $1 == "Private_Hugetlb:" { u[name] += $2 }
       END { for (n in u) if (u[n] > 0) printf "%d,%s\n", u[n], n }' "/proc/$1/smaps" | sort -t, -k1,1nr
}

cpu_ms() {
  # fields 14 and 15 of /proc/PID/stat, after the command name (which may hold spaces)
  local hz
  hz=$(getconf CLK_TCK)
  sed 's/^.*) //' "/proc/$1/stat" | awk -v hz="$hz" '{ printf "%d\n", ($12 + $13) * 1000 / hz }'
}

count() { pgrep -u "$1" | grep -c .; }

wait_count() {
  local end=$((SECONDS + $3))
  until [ "$(count "$1")" = "$2" ]; do
    [ "$SECONDS" -lt "$end" ] || { echo "user $1 runs $(count "$1") processes, not $2" >&2; return 1; }
    sleep 0.2
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  mem) mem "$1" ;;
  cpu-ms) cpu_ms "$1" ;;
  uss-by-mapping) uss_by_mapping "$1" ;;
  threads) awk '$1 == "Threads:" { print $2 }' "/proc/$1/status" ;;
  count) count "$1" ;;
  wait-count) wait_count "$1" "$2" "$3" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac

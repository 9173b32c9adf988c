#!/bin/bash
# bench/sampling-scale/inside.sh — runs INSIDE the benchmark's box, installed there as
# /usr/lib/kechi-test/bench-sampling. One call answers one question about a running kechid.
#
#   opens PID SECS     what kechid opens, renames and statfs-es per second, by kind of file
#                      ("KIND PER_SECOND" lines), from strace over SECS seconds (strace slows
#                      kechid: counts only, no timing)
#   profile PID SECS   where kechid's CPU goes: perf samples over SECS seconds, as "SHARE NAME"
#                      lines, the share (percent of kechid's samples) spent under each kernel
#                      entry point kechid's sampling reaches (smaps_rollup, statm, cgroup files,
#                      opening files, ...), and "samples N"
#   app-mem USER       "PROCESSES RSS_KIB USS_KIB" summed over USER's processes (smaps_rollup)
set -uo pipefail

opens() {
  local out=/tmp/bench-sampling-strace.$$
  timeout -s INT "$2" strace -qq -f -e trace=openat,statfs,rename -p "$1" -o "$out" 2> /dev/null
  awk -v secs="$2" '
    /openat\(/ || /statfs\(/ || /rename\(/ {
      if (!match($0, /"[^"]*"/)) next
      p = substr($0, RSTART + 1, RLENGTH - 2); n = split(p, a, "/"); f = a[n]
      if ($0 ~ /statfs\(/) k = "statfs (temp dir size)"
      else if ($0 ~ /rename\(/) k = "rename (" (f ~ /prom/ ? "metrics file" : f) ")"
      else if (f == "statm" || f == "smaps_rollup" || f == "maps" || f == "status" || f == "stat") k = "/proc/PID/" f
      else if (p ~ /^\/proc\/[0-9]+\/task/) k = "/proc/PID/task/..."
      else if (p ~ /^\/sys\/fs\/cgroup/) k = "cgroup " f
      else if (p ~ /\.prom/) k = "metrics file"
      else k = p
      c[k]++
    }
    END { for (k in c) printf "%s\t%.1f\n", k, c[k] / secs }' "$out" | sort -t$'\t' -k2,2nr
  rm -f "$out"
}

profile() {
  local data=/tmp/bench-sampling-perf.$$
  perf record -q -F 997 -g -p "$1" -o "$data" -- sleep "$2" > /dev/null 2>&1 || { echo "perf failed" >&2; return 1; }
  perf report -i "$data" --stdio --children --sort sym -g none 2> /dev/null | awk '
    BEGIN {
      # entry points, in the order they are reported
      n = split("show_smaps_rollup proc_pid_statm cgroup_procs_show memcg_stat_show memory_stat_show mem_cgroup_read_u64 memory_current_read cgroup_seqfile_show do_sys_openat2 __x64_sys_statfs __x64_sys_rename do_exit ksys_write __x64_sys_close", e, " ")
    }
    /^# Samples:/ { samples = $3 }
    $1 ~ /%$/ && $2 ~ /%$/ {
      sym = $NF; pct = $1; sub(/%/, "", pct)
      for (i = 1; i <= n; i++) if (sym == e[i] && !(sym in got)) got[sym] = pct
    }
    END {
      for (i = 1; i <= n; i++) if (e[i] in got) printf "%s\t%s\n", got[e[i]], e[i]
      printf "samples\t%s\n", samples
    }'
  perf report -i "$data" --stdio --no-children --sort dso,sym -g none 2> /dev/null | grep -E '^ +[0-9.]+%' | head -n 15 \
    | sed 's/^ */self\t/' >&2
  rm -f "$data"
}

app_mem() {
  local p n=0 r=0 u=0 line
  for p in $(pgrep -u "$1"); do
    line=$(awk '$1 == "Rss:" { r = $2 } $1 == "Private_Clean:" || $1 == "Private_Dirty:" { u += $2 }
                END { if (r != "") print r, u }' "/proc/$p/smaps_rollup" 2> /dev/null) || continue
    [ -n "$line" ] || continue
    n=$((n + 1)) r=$((r + ${line% *})) u=$((u + ${line#* }))
  done
  echo "$n $r $u"
}

cmd=${1:-}
shift || true
case "$cmd" in
  opens) opens "$1" "$2" ;;
  profile) profile "$1" "$2" ;;
  app-mem) app_mem "$1" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac

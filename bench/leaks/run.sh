#!/bin/bash
# bench/leaks/run.sh [--quick]: a leaking app under four policies, under a real systemd (the
# test harness's box). Reproduces "a wiki's workers grew to 1.2 GB a day; hourly restarts fixed it".
#
# The app is tests/system/apps/mem_app.py (2 workers, each request keeps LEAK_KB KiB for good and
# takes DELAY_MS), under wrk (keep-alive) for DURATION seconds per policy: a base load of CONNS
# connections all along, and a traffic peak of PEAK_CONNS more during the middle third (the leak
# follows the traffic; a fixed recycling interval does not). Policies:
#   none    no recycling
#   age     periodic recycling, [recycle] max-age = MAX_AGE
#   memory  kechi's memory-triggered recycling, [memory] recycle-above = LIMIT (metric uss)
#   killer  an external RSS killer in the manner of puma_worker_killer (rss_killer.py): it polls
#           each worker's VmRSS every POLL s and sends SIGTERM past LIMIT; kechid sees the worker
#           exit and starts a new one (a crash restart)
# Memory is sampled every second from /proc/PID/smaps_rollup of every process of the app's user
# (bench/lib/procmem.py), the same way for every policy. Recycles come from kechid's journal
# (REASON=), kills from the killer's log, requests served and failed from wrk.
# Writes bench/results/leaks/{memory,summary}.csv, docs/benchmarks/leaks.md and leaks-*.png.
# Full: 300 s per policy (~25 min in all); --quick: 42 s per policy (under 5 minutes).
# Needs root; installs wrk and python3-matplotlib if missing.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=bench/lib/sdbench.sh
. "$HERE/../lib/sdbench.sh"

MODE=full
[ "${1:-}" = --quick ] && MODE=quick
if [ "$MODE" = quick ]; then
  DURATION=42 LEAK_KB=64 LIMIT_MB=100 MAX_AGE=20 POLL=2
else
  DURATION=300 LEAK_KB=16 LIMIT_MB=200 MAX_AGE=120 POLL=5
fi
DELAY_MS=20       # per request: one connection makes at most 50 requests/s
CONNS=4
PEAK_CONNS=8
WORKERS=2
POLICIES=${BENCH_LEAKS_POLICIES:-none age memory killer}
OUT=$BENCH_ROOT/bench/results/leaks

scenario bench-leaks "a leaking app under 4 policies ($MODE: ${DURATION}s each)"
bench_need wrk=wrk py:matplotlib=python3-matplotlib
bench_build
MACHINE=$(bench_machine)
bench_up bleaks
RAW=$(mktemp -d /tmp/bench-leaks.XXXXXX)  # raw samples; removed at exit with the box
box_on_exit "rm -rf '$RAW'"
bench_copy_in "$HERE/rss_killer.py"

config() {  # config POLICY: the app's TOML for that policy
  local mem="" rec=""
  case "$1" in
    age) rec="max-age = \"${MAX_AGE}s\"" ;;
    memory) mem=$(printf 'metric = "uss"\nrecycle-above = "%sM"' "$LIMIT_MB") ;;
  esac
  cat <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = $WORKERS
environment = { MEM_LEAK_KB = "$LEAK_KB", MEM_DELAY_MS = "$DELAY_MS" }

[memory]
max = "4G"
$mem

[recycle]
check-interval = "${POLL}s"
min-interval = "5s"
$rec

[ready]
mode = "notify"
timeout = "30s"

[stop]
timeout = "30s"
EOF
}

echo "policy,served,failed,failed_kinds,recycles,kills,crash_restarts,reasons" > "$RAW/summary.csv"
for p in $POLICIES; do
  say "policy $p: ${DURATION}s of wrk -c$CONNS -t2 (keep-alive), -c$PEAK_CONNS more in the middle third; $LEAK_KB KiB leaked per request"
  config "$p" | bench_restart
  kt wait-workers "$KT_APP" "$WORKERS" 1 60 > /dev/null || abort "policy $p: not $WORKERS workers within 60 s"
  cursor=$(journal_cursor)
  bench_sampler_start "$p"
  if [ "$p" = killer ]; then
    tgt_run systemd-run --quiet --unit=kb-killer --collect --service-type=exec /usr/bin/python3 \
      "$BENCH_INSIDE/rss_killer.py" "$KT_USER" mem_app.py "$LIMIT_MB" "$POLL" /run/kb-killer.csv \
      || abort "the killer did not start"
  fi
  kt load-start "$p" keepalive "http://$KT_LISTEN/" "$CONNS" 2 > /dev/null || abort "policy $p: wrk did not start"
  # the measurement window: load, sampling and the policy run in the box; the peak in its middle
  sleep $((DURATION / 3))
  kt load-start "$p-peak" keepalive "http://$KT_LISTEN/" "$PEAK_CONNS" 2 > /dev/null || abort "policy $p: peak wrk did not start"
  sleep $((DURATION / 3))
  bench_load_stop "$p-peak"
  peak_served=$LOAD_SERVED peak_failed=$LOAD_FAILED peak_kinds=$LOAD_KINDS
  sleep $((DURATION - 2 * (DURATION / 3)))
  bench_load_stop "$p"
  LOAD_SERVED=$((LOAD_SERVED + peak_served)) LOAD_FAILED=$((LOAD_FAILED + peak_failed))
  [ "$peak_failed" = 0 ] || LOAD_KINDS="base: $LOAD_KINDS; peak: $peak_kinds"
  bench_sampler_stop "$p" "$RAW/mem-$p.csv"
  kills=0
  if [ "$p" = killer ]; then
    tgt_run systemctl stop kb-killer 2> /dev/null
    tgt_run cat /run/kb-killer.csv > "$RAW/kills.csv"
    kills=$(($(wc -l < "$RAW/kills.csv") - 1))
  fi
  reasons=$(mem_journal "$cursor" | sed -n 's/^REASON=\([^ ]*\) .*/\1/p' | sort | uniq -c | awk '{ printf "%s%s=%s", s, $2, $1; s = " " }')
  recycles=$(mem_journal "$cursor" | grep -cE '^REASON=(age|memory) .*\| recycling worker')
  crashes=$(mem_journal "$cursor" | grep -c '^REASON=crash ')
  info "served $LOAD_SERVED, failed $LOAD_FAILED ($LOAD_KINDS); recycles $recycles, kills $kills; journal: ${reasons:-no REASON= record}"
  echo "$p,$LOAD_SERVED,$LOAD_FAILED,$LOAD_KINDS,$recycles,$kills,$crashes,$reasons" >> "$RAW/summary.csv"
done
tgt_run timeout 120 systemctl stop "kechi@$KT_APP" 2> /dev/null

say "report"
/usr/bin/python3 "$HERE/report.py" "$RAW" "$OUT" "$BENCH_ROOT/docs/benchmarks" \
  "mode=$MODE duration=$DURATION leak_kb=$LEAK_KB limit_mb=$LIMIT_MB max_age=$MAX_AGE poll=$POLL delay_ms=$DELAY_MS conns=$CONNS peak_conns=$PEAK_CONNS workers=$WORKERS" \
  "$MACHINE" || abort "report.py failed"
say "done: $OUT, docs/benchmarks/leaks.md"

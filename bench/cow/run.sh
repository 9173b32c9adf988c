#!/bin/bash
# bench/cow/run.sh [--quick]: copy-on-write decay of a preforking app, under a real systemd (the
# test harness's box). Reproduces "a Starlet box saw shared memory fall from 90% to 60%".
#
# The app is tests/system/apps/mem_big.psgi under `plackup -s Starlet --max-workers=4` (one kechi
# worker: a master and 4 children; --max-reqs-per-child=1000000 so that Starlet's own respawning
# stays out of the picture). The master builds a 2M-element array before it forks; every request
# (GET /visit?n=VISITS&ms=WORK_MS) takes references to VISITS random elements, which writes their
# reference counts and un-shares the pages they sit on, then sleeps WORK_MS (the rest of the
# work). wrk loads it for DURATION seconds per variant:
#   none       no memory policy
#   minshared  [memory] min-shared = MIN_SHARED%, child-signal = "TERM" (as an operator would
#              write the child-level policy)
#   childsig   [memory] recycle-above = (100 - MIN_SHARED)% of the fresh worker's RSS (metric uss,
#              the worker's total: the same point as min-shared, by private memory),
#              child-signal = "TERM": kechid signals the worker's largest child, Starlet forks a
#              fresh, fully shared one
# Every second, every process of the app's user is sampled from /proc/PID/smaps_rollup
# (bench/lib/procmem.py); a child's shared % is (RSS - USS) / RSS.
# Writes bench/results/cow/{shared,summary}.csv, docs/benchmarks/cow.md and cow-*.png.
# Full: 180 s per variant (~12 min in all); --quick: 45 s per variant (under 5 minutes).
# Needs root; installs wrk, starlet and python3-matplotlib if missing.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=bench/lib/sdbench.sh
. "$HERE/../lib/sdbench.sh"

MODE=full
[ "${1:-}" = --quick ] && MODE=quick
# quick: 3 times the visits per request, so that the decay fits in a quarter of the time
if [ "$MODE" = quick ]; then DURATION=45 POLL=2 VISITS=12; else DURATION=180 POLL=5 VISITS=4; fi
WORK_MS=20        # the rest of each request's work: 4 children serve at most 200 requests/s
MIN_SHARED=75
CHILDREN=4
CONNS=8
VARIANTS=${BENCH_COW_VARIANTS:-none minshared childsig}
OUT=$BENCH_ROOT/bench/results/cow

scenario bench-cow "copy-on-write decay of Starlet children, with and without kechi's child-level policy ($MODE: ${DURATION}s each)"
bench_need wrk=wrk pl:Plack::Handler::Starlet=starlet py:matplotlib=python3-matplotlib
bench_build
MACHINE=$(bench_machine)
bench_up bcow
RAW=$(mktemp -d /tmp/bench-cow.XXXXXX)  # raw samples; removed at exit with the box
box_on_exit "rm -rf '$RAW'"
mem_ready_init
ABOVE_MB=""

config() {  # config VARIANT: the app's TOML
  local mem=""
  case "$1" in
    minshared) mem=$(printf 'min-shared = "%s%%"\nchild-signal = "TERM"' "$MIN_SHARED") ;;
    childsig) mem=$(printf 'metric = "uss"\nrecycle-above = "%sM"\nchild-signal = "TERM"' "$ABOVE_MB") ;;
  esac
  cat <<EOF
command = ["/usr/bin/plackup", "-s", "Starlet", "-E", "deployment", "--max-workers=$CHILDREN", "--max-reqs-per-child=1000000", "$KT_INSIDE/mem_big.psgi"]
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 1

[memory]
max = "1G"
$mem

[recycle]
check-interval = "${POLL}s"
min-interval = "5s"

$MEM_READY
EOF
}

echo "variant,served,failed,failed_kinds,child_signals,worker_recycles,reasons,above_mb" > "$RAW/summary.csv"
for v in $VARIANTS; do
  say "variant $v: ${DURATION}s of wrk -c$CONNS -t2 on /visit?n=$VISITS&ms=$WORK_MS"
  if [ "$v" = childsig ] && [ -z "$ABOVE_MB" ]; then  # the fresh worker's RSS, from a run without policy
    config none | bench_restart
    kt steady "$KT_APP" 1 $((CHILDREN + 1)) "$KT_USER" 60 > /dev/null || abort "no steady worker"
    mem_status || abort "kechictl status: $MEM_STATUS"
    ABOVE_MB=$(($(mem_total "$MEM_STATUS" rss) * (100 - MIN_SHARED) / 100 >> 20))
  fi
  config "$v" | bench_restart
  why=$(kt steady "$KT_APP" 1 $((CHILDREN + 1)) "$KT_USER" 60) || abort "variant $v: not 1 worker of $((CHILDREN + 1)) processes: $why"
  if [ -z "$ABOVE_MB" ]; then
    mem_status || abort "kechictl status: $MEM_STATUS"
    ABOVE_MB=$(($(mem_total "$MEM_STATUS" rss) * (100 - MIN_SHARED) / 100 >> 20))
    info "fresh worker: RSS sum $(mib "$(mem_total "$MEM_STATUS" rss)"); childsig's recycle-above will be ${ABOVE_MB}M"
  fi
  cursor=$(journal_cursor)
  bench_sampler_start "$v"
  kt load-start "$v" keepalive "http://$KT_LISTEN/visit?n=$VISITS&ms=$WORK_MS" "$CONNS" 2 > /dev/null || abort "variant $v: wrk did not start"
  sleep "$DURATION"  # the measurement window: load, sampling and the policy run in the box
  bench_load_stop "$v"
  bench_sampler_stop "$v" "$RAW/mem-$v.csv"
  reasons=$(mem_journal "$cursor" | sed -n 's/^REASON=\([^ ]*\) .*/\1/p' | sort | uniq -c | awk '{ printf "%s%s=%s", s, $2, $1; s = " " }')
  signals=$(mem_journal "$cursor" | grep -c '^REASON=child-signal ')
  recycles=$(mem_journal "$cursor" | grep -cE '^REASON=[a-z-]+ .*\| recycling worker')
  info "served $LOAD_SERVED, failed $LOAD_FAILED ($LOAD_KINDS); child signals $signals, worker recycles $recycles; journal: ${reasons:-no REASON= record}"
  echo "$v,$LOAD_SERVED,$LOAD_FAILED,$LOAD_KINDS,$signals,$recycles,$reasons,$([ "$v" = childsig ] && echo "$ABOVE_MB")" >> "$RAW/summary.csv"
done
tgt_run timeout 120 systemctl stop "kechi@$KT_APP" 2> /dev/null

say "report"
/usr/bin/python3 "$HERE/report.py" "$RAW" "$OUT" "$BENCH_ROOT/docs/benchmarks" \
  "mode=$MODE duration=$DURATION visits=$VISITS work_ms=$WORK_MS min_shared=$MIN_SHARED above_mb=$ABOVE_MB children=$CHILDREN poll=$POLL conns=$CONNS" \
  "$MACHINE" || abort "report.py failed"
say "done: $OUT, docs/benchmarks/cow.md"

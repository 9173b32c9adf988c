#!/bin/bash
# bench/sampling-scale/run.sh [--quick] [--label NAME] [--plan "LAYOUT:POLICIES ..."] [--out DIR]
#
# What watching memory costs kechid with 200 worker processes at check-interval 1s: kechid's own
# CPU time per minute (utime + stime from /proc/PID/stat) while it supervises one app of W
# workers of P processes each (W x P = 200), every worker a prefork master and its children
# asleep (bench/sampling-scale/prefork.py: 4 MiB written by the master before forking, shared
# copy-on-write, 1 MiB written by each child), in a throwaway box with a real systemd
# (tests/system/lib/box.sh). The app's processes cost nothing once started, so kechid's CPU is
# its sampling (and whatever else it does each second). After each CPU measurement, what kechid
# opens per second (strace) and where its CPU goes (perf), outside the measured span.
#
# LAYOUT is WxP: 100x2 (100 workers of a master and one child), 40x5, 8x25 (200x1 is accepted,
# but kechid did not get 200 workers started here: see docs/benchmarks/sampling-scale.md). POLICIES:
#   off      no memory policy (check-interval 1s)
#   on       every memory policy, none near firing: metric uss, recycle-above 512M, app-budget
#            16G, min-shared 30%, child-signal TERM
#   near1    as on, but the first worker started holds 300 MiB more and recycle-above sits 32 MiB
#            above its USS: one worker near a threshold (it never fires)
#   nearall  as on, with app-budget 10% above the app's total USS: every worker near (never fires)
#
#   full (default)  plan "100x2:off 100x2:on 40x5:on 8x25:on 8x25:near1 8x25:nearall", settle
#                   10 s, measure 45 s; raw rows to bench/results/sampling-scale/LABEL.csv
#   --quick         plan "8x25:on", settle 5 s, measure 20 s; to --out (default
#                   /tmp/kechi-bench/sampling-scale)
#   --label NAME    the name of this run's rows (default: the kechid build's commit), so that two
#                   builds (before and after a change) can be compared: report.py reads every CSV
# kechid is the release build when there is one (target/release, or $KECHI_BIN_DIR). Needs root,
# and a machine whose PID 1 is not systemd (exit 77 otherwise); strace and perf for the
# breakdown (rows are still measured without them). Exit status 0 when every row was measured.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ROOT=$(readlink -f "$HERE/../..")
ARGS="$*"
# shellcheck source=tests/system/lib/scenario.sh
. "$ROOT/tests/system/lib/scenario.sh"
# shellcheck source=bench/lib/debs.sh
. "$ROOT/bench/lib/debs.sh"

quick=0 label="" plan="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --label) label=$2; shift ;;
    --plan) plan=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sampling-scale: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  SETTLE=5 SECS=20 BREAK_SECS=5 plan=${plan:-"8x25:on"} out=${out:-/tmp/kechi-bench/sampling-scale}
else
  SETTLE=10 SECS=45 BREAK_SECS=8
  plan=${plan:-"100x2:off 100x2:on 40x5:on 8x25:on 8x25:near1 8x25:nearall"}
  out=${out:-$ROOT/bench/results/sampling-scale}
fi

if [ -z "${KECHI_BIN_DIR:-}" ] && [ -x "${CARGO_TARGET_DIR:-$ROOT/target}/release/kechid" ]; then
  export KECHI_BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
[ -n "$label" ] || label=$(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo run)
[ "$(id -u)" = 0 ] || skip "needs root (it boots a systemd in a throwaway box)"
bench_need_debs python3 strace linux-perf > /dev/null 2>&1 || bench_need_debs python3 || exit 1
mkdir -p "$out"
CSV=$out/$label.csv
echo "label,layout,workers,procs_per_worker,policies,processes,app_rss_kib,app_uss_kib,cpu_ms,secs,cpu_ms_per_min,percent_of_core" > "$CSV"
BREAKDOWN=$out/$label-breakdown.txt
: > "$BREAKDOWN"
FP_IN=$KT_INSIDE/bench-footprint   # cpu-ms, count, wait-count (bench/footprint/inside.sh)
SS_IN=$KT_INSIDE/bench-sampling    # opens, profile, app-mem (bench/sampling-scale/inside.sh)

# config W P POLICIES [RECYCLE_ABOVE] [APP_BUDGET]: /etc/kechi/demo.toml
config() {
  local w=$1 p=$2 pol=$3 above=${4:-512M} budget=${5:-16G} grow="" mem=""
  [ "$pol" = near1 ] && grow=', PREFORK_GROW = "first:300"'
  [ "$pol" = off ] || mem="metric = \"uss\"
recycle-above = \"$above\"
app-budget = \"$budget\"
min-shared = \"30%\"
child-signal = \"TERM\""
  kechi_config > /dev/null <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/bench-prefork.py"]
user = "$KT_USER"
workers = $w
environment = { PREFORK_CHILDREN = "$((p - 1))", PREFORK_SHARED_MB = "4", PREFORK_PRIVATE_MB = "1"$grow }

[ready]
mode = "notify"
timeout = "120s"

[memory]
max = "2G"
$mem

[recycle]
check-interval = "1s"
EOF
}

start_app() {  # start_app W P: kechi@demo started, every process running, past start-up
  local n=$(($1 * $2)) t0=$SECONDS
  tgt_run timeout 600 systemctl start "kechi@$KT_APP" || { bad "kechi@$KT_APP did not start"; return 1; }
  tgt_run "$FP_IN" wait-count "$KT_USER" "$n" 180 || { bad "not $n app processes"; return 1; }
  info "$1 workers of $2 processes started in $((SECONDS - t0)) s"
}

stop_app() {
  tgt_run timeout 300 systemctl stop "kechi@$KT_APP" 2> /dev/null
  tgt_run "$FP_IN" wait-count "$KT_USER" 0 120 || bad "app processes left after stop"
}

# kib_of SIZE: "512M" -> KiB
status_json() { tgt_run kechictl status "$KT_APP" --json 2> /dev/null; }
# the app's total USS, or its largest worker's, in MiB, from kechictl status (full figures on
# demand)
uss_mib() {  # uss_mib all|max
  status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
uss = [w["memory"]["uss"] for w in s["workers"] if w.get("memory")]
print((sum(uss) if sys.argv[1] == "all" else max(uss)) >> 20)' "$1"
}

# measure LAYOUT POLICIES: one CSV row, and the breakdown
measure() {
  local layout=$1 pol=$2 w p pid c0 c1 t0 t1 row above=512M budget=16G mem u
  w=${layout%x*} p=${layout#*x}
  case "$pol" in
    near1 | nearall)
      # first the thresholds: the app's figures with every policy on and nothing near
      config "$w" "$p" "$pol"
      start_app "$w" "$p" || { stop_app; return 1; }
      sleep 3
      if [ "$pol" = near1 ]; then u=$(uss_mib max) && above="$((u + 32))M"; else u=$(uss_mib all) && budget="$((u * 11 / 10))M"; fi
      stop_app
      [ -n "$u" ] || { bad "$layout $pol: no USS from kechictl status"; return 1; }
      info "$layout $pol: USS $u MiB (the largest worker's, or all): recycle-above $above, app-budget $budget"
      ;;
  esac
  config "$w" "$p" "$pol" "$above" "$budget"
  start_app "$w" "$p" || { stop_app; return 1; }
  sleep "$SETTLE"
  pid=$(tgt_run systemctl show -p MainPID --value "kechi@$KT_APP.service")
  c0=$(tgt_run "$FP_IN" cpu-ms "$pid")
  t0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(tgt_run "$FP_IN" cpu-ms "$pid")
  t1=$(date +%s.%N)
  mem=$(tgt_run "$SS_IN" app-mem "$KT_USER")
  row=$(awk -v l="$label" -v lay="$layout" -v w="$w" -v p="$p" -v pol="$pol" -v m="$mem" \
    -v c=$((c1 - c0)) -v t0="$t0" -v t1="$t1" \
    'BEGIN { split(m, a, " "); d = t1 - t0
             printf "%s,%s,%d,%d,%s,%d,%d,%d,%d,%.1f,%.1f,%.3f\n", l, lay, w, p, pol, a[1], a[2], a[3], c, d, c * 60 / d, c * 100 / (d * 1000) }')
  echo "$row" >> "$CSV"
  info "$row"
  {
    echo "## $layout $pol ($row)"
    echo "# opened per second"
    tgt_run "$SS_IN" opens "$pid" "$BREAK_SECS"
    echo "# perf: share of kechid's CPU under each entry point (children), then the top self symbols"
    tgt_run "$SS_IN" profile "$pid" "$((BREAK_SECS * 2))" 2>&1
    echo
  } >> "$BREAKDOWN"
  stop_app
  ok "$layout $pol: $(echo "$row" | cut -d, -f11) ms of CPU a minute"
}

scenario bench-sampling-scale "kechid's CPU watching 200 worker processes at 1 Hz"
info "machine: $(bench_machine)"
info "kechid: $(kechi_bin_dir)/kechid, label $label"
tgt_up bsampling
kechi_install
tgt_copy_in "$ROOT/bench/footprint/inside.sh" "$FP_IN" || abort "copying the footprint helper in"
tgt_copy_in "$HERE/inside.sh" "$SS_IN" || abort "copying the benchmark helper in"
tgt_copy_in "$HERE/prefork.py" "$KT_INSIDE/bench-prefork.py" || abort "copying the worker in"
# 200 workers start in a minute or two on a busy machine (a scope and a Python each): more than
# the unit's default start timeout
printf '[Service]\nTimeoutStartSec=600\n' | tgt_write "/etc/systemd/system/kechi@$KT_APP.service.d/bench.conf"
tgt_run systemctl daemon-reload
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "kechi@$KT_APP.socket"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for c in $plan; do
  measure "${c%%:*}" "${c#*:}"
done
{
  echo "label: $label"
  echo "command: bench/run.sh sampling-scale${ARGS:+ $ARGS}"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(bench_machine)"
  echo "load average: $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "timing: settle ${SETTLE} s, measure ${SECS} s"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')"
  echo "kechid: $(kechi_bin_dir)/kechid, $(tgt_run kechid --version 2> /dev/null || echo '?')"
} > "$out/$label-meta.txt"
cat "$out/$label-meta.txt"
column -t -s, "$CSV"
# The report is rewritten only from the repository's own results (a full run without --out):
# a run into another directory is a trial, and its rows alone would replace the report's table.
if [ "$quick" = 0 ] && [ "$out" = "$ROOT/bench/results/sampling-scale" ]; then
  /usr/bin/python3 "$HERE/report.py" "$out" "$ROOT/docs/benchmarks/sampling-scale.md" && say "wrote docs/benchmarks/sampling-scale.md"
fi
finish

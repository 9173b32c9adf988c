#!/bin/bash
# bench/footprint/run.sh [--quick] [--kechi-only] [--out DIR]
#
# kechid's own memory and CPU, beside other supervisors keeping the same app running, all in one
# throwaway box with a real systemd (tests/system/lib/box.sh), one supervisor at a time:
#   part "peers"       kechid, supervisord, circusd, start_server, each supervising 8 processes of
#                      the hello app (bench/footprint/supervisors.sh); after a settling time, the
#                      supervisor's RSS, PSS and USS (/proc/PID/smaps_rollup, the median of one
#                      sample a second) and its CPU time per minute over the same span
#   part "monitoring"  kechid alone with 2, 8 and 32 workers, memory policies on (full figures of
#                      every worker every second), and with 32 workers off: CPU per minute, memory
#
#   full (default)  settle 15 s, measure 30 s (monitoring: 45 s); writes
#                   bench/results/footprint/footprint.csv and meta.txt, then
#                   docs/benchmarks/footprint.md and its plot (report.py)
#   --quick         settle 5 s, measure 5 s; monitoring only with 8 workers, 15 s (about a minute
#                   with --kechi-only); writes to --out (default /tmp/kechi-bench/footprint)
#   --kechi-only    kechid's rows only (what CI runs)
# kechid is the release build when there is one (target/release, or $KECHI_BIN_DIR): a debug
# build maps a much larger binary. Installs supervisor, starlet, libserver-starter-perl,
# python3-venv, python3-matplotlib, and circus from PyPI into a venv ($FP_CIRCUS, default
# /var/tmp/kechi-bench-circus). Exit status 0 when every row was measured, 1 otherwise, 77 when it
# cannot run here (needs root, and a machine whose PID 1 is not systemd).
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ROOT=$(readlink -f "$HERE/../..")
ARGS="$*"
# shellcheck source=tests/system/lib/scenario.sh
. "$ROOT/tests/system/lib/scenario.sh"
# shellcheck source=bench/lib/debs.sh
. "$ROOT/bench/lib/debs.sh"
# shellcheck source=bench/footprint/supervisors.sh
. "$HERE/supervisors.sh"

quick=0 kechi_only=0 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --kechi-only) kechi_only=1 ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "footprint: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then SETTLE=5 SECS=5 MON_SECS=15 MON_PLAN="8:on" out=${out:-/tmp/kechi-bench/footprint}
else SETTLE=15 SECS=30 MON_SECS=45 MON_PLAN="2:on 8:on 32:on 32:off" out=${out:-$ROOT/bench/results/footprint}; fi
PEERS="kechid"
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)   # the machine's load when the run starts (meta.txt)
[ "$kechi_only" = 1 ] || PEERS="kechid supervisord circusd start_server"

kechi_prefer_release

pkgs="python3 python3-matplotlib"
[ "$kechi_only" = 1 ] || pkgs="$pkgs supervisor starlet libserver-starter-perl python3-venv"
[ "$(id -u)" = 0 ] || skip "needs root (it boots a systemd in a throwaway box)"
# shellcheck disable=SC2086  # a list of names
bench_need_debs $pkgs || exit 1
# circus on Debian's python3, like supervisord: another interpreter (a shared libpython) would
# change circusd's USS by megabytes
if [ "$kechi_only" = 0 ] && [ -e "$FP_CIRCUS" ] && [[ $(readlink -f "$FP_CIRCUS/bin/python3") != /usr/bin/python3* ]]; then
  rm -rf "$FP_CIRCUS"
fi
if [ "$kechi_only" = 0 ] && [ ! -x "$FP_CIRCUS/bin/circusd" ]; then
  echo "footprint: installing circus into $FP_CIRCUS" >&2
  if ! { /usr/bin/python3 -m venv "$FP_CIRCUS" && "$FP_CIRCUS/bin/pip" install -q circus; }; then
    echo "footprint: circus did not install" >&2
    exit 1
  fi
fi
mkdir -p "$out"
CSV=$out/footprint.csv
echo "part,supervisor,app_processes,policies,rss_kib,pss_kib,uss_kib,threads,cpu_ms,secs,cpu_ms_per_min" > "$CSV"

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# measure PART NAME N POLICIES SETTLE SECS: start NAME keeping N app processes, wait SETTLE s,
# then sample it SECS s; one CSV row; stop it
measure() {
  local part=$1 name=$2 n=$3 pol=$4 settle=$5 secs=$6 unit pid c0 c1 t0 t1 samples="" m row
  unit=$(fp_unit "$name")
  [ "$name" = kechid ] && fp_kechi_config "$n" "$pol"
  tgt_run timeout 120 systemctl start "$unit" || { bad "$name: $unit did not start"; return 1; }
  if ! tgt_run "$FP_IN" wait-count "$KT_USER" "$(fp_procs "$name" "$n")" 120; then
    bad "$name: not running its $n app processes"
    tgt_run systemctl stop "$unit"
    return 1
  fi
  sleep "$settle"   # past start-up: the supervisor's steady state is what is measured
  pid=$(tgt_run systemctl show -p MainPID --value "$unit")
  c0=$(tgt_run "$FP_IN" cpu-ms "$pid")
  t0=$(date +%s.%N)
  for _ in $(seq 1 "$secs"); do
    m=$(tgt_run "$FP_IN" mem "$pid") && samples="$samples$m"$'\n'
    sleep 1
  done
  c1=$(tgt_run "$FP_IN" cpu-ms "$pid")
  if [ "$part" = peers ]; then  # where the supervisor's USS is
    { echo "kib,mapping"; tgt_run "$FP_IN" uss-by-mapping "$pid"; } > "$out/uss-by-mapping-$name.csv"
  fi
  t1=$(date +%s.%N)
  row=$(awk -v p="$part" -v s="$name" -v n="$n" -v pol="$pol" \
    -v r="$(printf '%s' "$samples" | awk '{ print $1 }' | median)" \
    -v ps="$(printf '%s' "$samples" | awk '{ print $2 }' | median)" \
    -v u="$(printf '%s' "$samples" | awk '{ print $3 }' | median)" \
    -v th="$(tgt_run "$FP_IN" threads "$pid")" -v c=$((c1 - c0)) -v t0="$t0" -v t1="$t1" \
    'BEGIN { d = t1 - t0; printf "%s,%s,%d,%s,%d,%d,%d,%d,%d,%.1f,%.1f\n", p, s, n, pol, r, ps, u, th, c, d, c * 60 / d }')
  echo "$row" >> "$CSV"
  info "$row"
  tgt_run timeout 120 systemctl stop "$unit" 2> /dev/null
  tgt_run "$FP_IN" wait-count "$KT_USER" 0 60 || bad "$name: app processes left after stop"
  ok "$part: $name with $n app processes${pol:+, policies $pol}"
}

scenario bench-footprint "kechid's own memory and CPU beside supervisord, circusd, start_server"
info "machine: $(bench_machine)"
info "kechid: $(kechi_bin_dir)/kechid"
tgt_up bfootprint
kechi_install
tgt_copy_in "$HERE/inside.sh" "$FP_IN" || abort "copying the benchmark helper in"
fp_install
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "kechi@$KT_APP.socket"

for s in $PEERS; do
  pol=""
  [ "$s" = kechid ] && pol=off
  measure peers "$s" 8 "$pol" "$SETTLE" "$SECS"
done
for c in $MON_PLAN; do
  measure monitoring kechid "${c%%:*}" "${c#*:}" "$SETTLE" "$MON_SECS"
done

{
  echo "command: bench/run.sh footprint${ARGS:+ $ARGS}"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(bench_machine)"
  echo "load: $LOAD0 at the start, $(cut -d" " -f1-3 /proc/loadavg) at the end (1, 5 and 15 min load averages)"
  echo "timing: settle ${SETTLE} s, measure ${SECS} s (monitoring: ${MON_SECS} s), one memory sample a second, median"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')"
  echo "kechid: $(basename "$(kechi_bin_dir)") build, $(tgt_run kechid --version 2> /dev/null || echo '?')"
  echo "versions: $(dpkg-query -W -f='${Package} ${Version}, ' supervisor libserver-starter-perl starlet python3 systemd 2> /dev/null | sed 's/, $//')$([ -x "$FP_CIRCUS/bin/circusd" ] && echo ", circus $("$FP_CIRCUS/bin/circusd" --version)")"
} > "$out/meta.txt"
/usr/bin/python3 "$HERE/report.py" --text "$CSV"
if [ "$quick" = 0 ] && [ "$kechi_only" = 0 ]; then
  /usr/bin/python3 "$HERE/report.py" --markdown "$CSV" --meta "$out/meta.txt" --docs "$ROOT/docs/benchmarks" && say "wrote docs/benchmarks/footprint.md"
fi
finish

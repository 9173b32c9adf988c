#!/bin/bash
# bench/restart/run.sh [--quick] [--kechi-only] [--reps N] [--out DIR]
#
# Failed requests and latency during a restart, for the same trivial hello app behind a plain
# systemd service (systemctl restart), start_server + Starlet (SIGHUP), gunicorn (SIGHUP and
# systemctl restart) and kechi (kechictl recycle --all, systemctl reload, systemctl restart,
# kill -9 of kechid) with Starlet and with gunicorn. Everything runs in one throwaway box with a
# real systemd (tests/system/lib/box.sh), one server at a time, so every case sees the same
# conditions. Each case is one load window: two wrk runs of W seconds (8 keep-alive connections,
# and 8 connections that each carry one request), the restart at A seconds; a "steady" window with
# no restart gives each server's baseline. Failed = socket errors (connect, read, write, timeout)
# + non-2xx responses, as wrk counts them.
#
#   full (default)  W=20 s, A=6 s, 2 repetitions; writes bench/results/restart/restart.csv and
#                   meta.txt, then docs/benchmarks/restart.md and its plots (report.py)
#   --quick         W=6 s, A=2 s, 1 repetition (about 3 minutes); writes to --out (default
#                   /tmp/kechi-bench/restart), never to the committed results
#   --kechi-only    only the kechi cases (what CI runs)
# Prints the table at the end. Exit status 0 when every case ran (whatever it measured), 1 if a
# server did not start or an action did not finish, 77 if it cannot run here (needs root and a
# machine whose PID 1 is not systemd). Needs: cargo build (kechid, kechictl in $KECHI_BIN_DIR or
# target/debug); installs wrk, starlet, libserver-starter-perl, gunicorn, curl, python3-matplotlib.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ARGS="$*"
ROOT=$(readlink -f "$HERE/../..")
# shellcheck source=tests/system/lib/scenario.sh
. "$ROOT/tests/system/lib/scenario.sh"
# shellcheck source=bench/lib/debs.sh
. "$ROOT/bench/lib/debs.sh"
# shellcheck source=bench/restart/servers.sh
. "$HERE/servers.sh"
# shellcheck source=bench/restart/actions.sh
. "$HERE/actions.sh"

quick=0 kechi_only=0 reps="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --kechi-only) kechi_only=1 ;;
    --reps) reps=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "restart: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then W=6 A=2 reps=${reps:-1} out=${out:-/tmp/kechi-bench/restart}
else W=20 A=6 reps=${reps:-2} out=${out:-$ROOT/bench/results/restart}; fi
CONNS=8   # per wrk run; two runs (keep-alive and close) at once

[ "$(id -u)" = 0 ] || skip "needs root (it boots a systemd in a throwaway box)"
bench_need_debs wrk starlet libserver-starter-perl gunicorn curl python3-matplotlib || exit 1
mkdir -p "$out"
CSV=$out/restart.csv
echo "app,server,action,rep,load,requests,secs,connect,read,write,timeout,non2xx,failed,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,action_s" > "$CSV"

# the cases, in the order they run in each repetition: SERVER:ACTION...
PLAN_PEERS_PERL="start_server:steady start_server:hup starlet:steady starlet:restart"
PLAN_KECHI_PERL="kechi-starlet:steady kechi-starlet:recycle kechi-starlet:reload kechi-starlet:krestart kechi-starlet:kill9"
PLAN_PEERS_PY="gunicorn:steady gunicorn:hup gunicorn:restart"
PLAN_KECHI_PY="kechi-gunicorn:steady kechi-gunicorn:recycle kechi-gunicorn:reload kechi-gunicorn:krestart kechi-gunicorn:kill9"
if [ "$kechi_only" = 1 ]; then PLAN="$PLAN_KECHI_PERL $PLAN_KECHI_PY"
else PLAN="$PLAN_PEERS_PERL $PLAN_KECHI_PERL $PLAN_PEERS_PY $PLAN_KECHI_PY"; fi

app_of() { case "$1" in *starlet | start_server) echo perl ;; *) echo python ;; esac; }

# one_case SERVER ACTION REP: one load window with the action in it; two CSV rows
one_case() {
  local srv=$1 action=$2 rep=$3 url load res rc=0 row kv
  url=$(srv_url "$srv")
  for load in keepalive close; do
    tgt_run "$BENCH_IN" wrk-start "$load" "$load" "$CONNS" "$W" "$url" || { bad "$srv $action: wrk did not start"; return 1; }
  done
  sleep "$A"   # the load is on; the restart comes A seconds into the window
  act "$srv" "$action" || { rc=1; bad "$srv $action (rep $rep): not over within 60 s"; }
  for load in keepalive close; do
    res=$(tgt_run "$BENCH_IN" wrk-wait "$load") || { bad "$srv $action: no result from wrk ($load)"; rc=1; continue; }
    local requests=0 duration_us=1 connect=0 read=0 write=0 timeout=0 non2xx=0 p50_us=0 p90_us=0 p99_us=0 p999_us=0 max_us=0
    for kv in ${res#result }; do printf -v "${kv%%=*}" '%s' "${kv#*=}"; done
    row=$(awk -v a="$(app_of "$srv")" -v s="$srv" -v x="$action" -v r="$rep" -v l="$load" -v n="$requests" \
      -v d="$duration_us" -v c="$connect" -v rd="$read" -v w="$write" -v t="$timeout" -v h="$non2xx" \
      -v p50="$p50_us" -v p90="$p90_us" -v p99="$p99_us" -v p999="$p999_us" -v mx="$max_us" -v op="$ACT_SECS" \
      'BEGIN { printf "%s,%s,%s,%s,%s,%d,%.2f,%d,%d,%d,%d,%d,%d,%.2f,%.2f,%.2f,%.2f,%.2f,%s\n",
        a, s, x, r, l, n, d / 1e6, c, rd, w, t, h, c + rd + w + t + h,
        p50 / 1e3, p90 / 1e3, p99 / 1e3, p999 / 1e3, mx / 1e3, op }')
    echo "$row" >> "$CSV"
    info "$row"
  done
  return "$rc"
}

scenario bench-restart "failed requests and latency through restarts (window ${W}s, restart at ${A}s, $reps repetition(s))"
info "machine: $(bench_machine)"
tgt_up brestart
kechi_install
tgt_copy_in "$HERE/inside.sh" "$BENCH_IN" || abort "copying the benchmark helper in"
tgt_copy_in "$HERE/result.lua" "$KT_INSIDE/bench-result.lua" || abort "copying result.lua in"
srv_install
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "kechi@$KT_APP.socket"

current=""
for rep in $(seq 1 "$reps"); do
  for c in $PLAN; do
    srv=${c%%:*} action=${c#*:}
    if [ "$srv" != "$current" ]; then
      [ -n "$current" ] && srv_stop "$current"
      current=$srv
      say "rep $rep: $srv"
      srv_start "$srv" || abort "$srv did not start"
    fi
    one_case "$srv" "$action" "$rep" && ok "rep $rep: $srv $action${ACT_SECS:+ (over in $ACT_SECS s)}"
    srv_settle "$srv" || bad "rep $rep: $srv not whole again 120 s after $action"
    sleep 1
  done
done
[ -n "$current" ] && srv_stop "$current"

{
  echo "command: bench/run.sh restart${ARGS:+ $ARGS}"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(bench_machine)"
  echo "window: ${W} s, restart at ${A} s, ${reps} repetition(s), wrk -t1 -c$CONNS keep-alive + wrk -t1 -c$CONNS 'Connection: close', --timeout 5s"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')"
  echo "kechid: $(basename "$(kechi_bin_dir)") build, $(tgt_run kechid --version 2> /dev/null || echo '?')"
  echo "versions: $(dpkg-query -W -f='${Package} ${Version}, ' wrk starlet libserver-starter-perl gunicorn systemd | sed 's/, $//')"
} > "$out/meta.txt"
/usr/bin/python3 "$HERE/report.py" --text "$CSV"
if [ "$quick" = 0 ] && [ "$kechi_only" = 0 ]; then
  /usr/bin/python3 "$HERE/report.py" --markdown "$CSV" --meta "$out/meta.txt" --docs "$ROOT/docs/benchmarks" && say "wrote docs/benchmarks/restart.md"
fi
finish

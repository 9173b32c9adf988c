#!/bin/bash
# bench/slowload/run.sh [--quick] [--rounds N] [--rate N] [--out DIR]
#
# Replacing the workers of an app that takes 1 s to load (bench/slowload/app: hello_slow.psgi,
# hello_slow_wsgi.py sleep 1 s while loading), under an open-loop load at a fixed rate: failed
# requests, and p99, p99.9 and max latency during the replacements against the steady p99 of the
# same server in the same run. Side by side, in one throwaway box with a real systemd
# (tests/system/lib/box.sh), one server at a time:
#   start_server   start_server --port=127.0.0.1:8081 -- plackup -s Starlet --max-workers=4
#                  hello_slow.psgi (no KILL_OLD_DELAY); replaced by SIGHUP, twice
#   kechi-starlet  kechi@demo, 2 workers of plackup -s Starlet --max-workers=2 hello_slow.psgi
#                  (ready.mode accept); replaced by kechictl recycle --all --wait, then systemctl
#                  reload (a changed config)
#   gunicorn       gunicorn --bind 127.0.0.1:8081 --workers 4 hello_slow_wsgi:app; SIGHUP, twice
#   kechi-gunicorn kechi@demo, 2 workers of gunicorn --workers 2 hello_slow_wsgi:app; recycle,
#                  then reload
# Load: bench/openload.rs (cargo build --example openload), two instances at once, R requests a
# second each (default 150): one keeping connections alive, one with "Connection: close". Each
# request's latency counts from the moment it was due, so a stall is charged in full to every
# request it delays (no coordinated omission). The generator runs in the box's namespaces but at
# real-time priority (chrt -f 50, in the host's root cpu cgroup, where real-time is allowed): it
# shares the two cores with the servers, and at the default priority its own waits for a CPU
# were a third to two thirds of the slow requests of a replacement (SLOWLOAD_GEN=plain runs it as
# a unit of the box at the default priority instead). Timeline per server: S s steady, the first
# replacement, W s, the second replacement, W s; the steady window is [5 s, S), each replacement's
# window the W s from its start, and within it the replacement itself: from its start until it
# was over. --rounds N runs the whole plan N times, the servers taking turns within each round, so
# that the machine's own ups and downs fall on every server alike; the report pools the rounds
# (a p99 of a few thousand requests moves by 10-20% from one window to the next on its own).
#
#   full (default)  S=20, W=20, 3 rounds; writes bench/results/slowload/ (per-request CSVs, gzipped,
#                   SERVER-LOAD.rN.csv.gz; actions.csv, meta.txt), then docs/benchmarks/slowload.md
#                   and its plot (report.py)
#   --quick         S=8, W=12, 1 round; writes to --out (default /tmp/kechi-bench/slowload) only
# SLOWLOAD_PLAN="kechi-starlet kechi-gunicorn" runs only those servers (default: all four); each
# kechi-* server's journal of the run is kept beside its CSVs (SERVER-journal.rN.txt.gz), to line
# slow requests up with what kechid did.
# Exit status 0 when every case ran, 1 if a server did not start or an action did not finish, 77
# if it cannot run here (needs root and a machine whose PID 1 is not systemd).
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ARGS="$*"
ROOT=$(readlink -f "$HERE/../..")
# shellcheck source=tests/system/lib/scenario.sh
. "$ROOT/tests/system/lib/scenario.sh"
# shellcheck source=bench/lib/debs.sh
. "$ROOT/bench/lib/debs.sh"

quick=0 rate=150 out="" rounds=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --rate) rate=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "slowload: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then S=8 W=12 out=${out:-/tmp/kechi-bench/slowload} rounds=${rounds:-1}
else S=20 W=20 out=${out:-$ROOT/bench/results/slowload} rounds=${rounds:-3}; fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "slowload: --rounds wants a positive number, not '$rounds'" >&2; exit 2; }

# kechid and kechictl are the release build when there is one (target/release, or $KECHI_BIN_DIR),
# as the peers are their distributions' builds: a debug kechid spends several times the CPU of a
# release one at a hand-over (a worker ready, the old one stopped, the next replacement started),
# on the same two cores as the workers answering the load.
kechi_prefer_release
[ "$(id -u)" = 0 ] || skip "needs root (it boots a systemd in a throwaway box)"
bench_need_debs wrk starlet libserver-starter-perl gunicorn curl python3-matplotlib || exit 1
OPENLOAD=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/openload
(cd "$ROOT" && cargo build -q --release --example openload) || abort "cargo build --example openload"
mkdir -p "$out"
rm -f "$out"/*.csv "$out"/*.csv.gz "$out"/*.txt.gz
echo "server,action,n,start_unix_ms,secs,round" > "$out/actions.csv"

PEER_ADDR=127.0.0.1:8081
PLAN=${SLOWLOAD_PLAN:-"start_server kechi-starlet gunicorn kechi-gunicorn"}

unit_of() { case "$1" in kechi-*) echo "kechi@$KT_APP.service" ;; *) echo "bench-$1.service" ;; esac; }
addr_of() { case "$1" in kechi-*) echo "$KT_LISTEN" ;; *) echo "$PEER_ADDR" ;; esac; }

peer_unit() {  # peer_unit NAME EXECSTART: a plain service as $KT_USER, reload = SIGHUP
  tgt_write "/etc/systemd/system/bench-$1.service" <<EOF
[Unit]
Description=slow-loading app benchmark: $1

[Service]
User=$KT_USER
WorkingDirectory=$KT_INSIDE
Environment=KT_GENERATION=1
ExecStart=$2
ExecReload=/bin/kill -HUP \$MAINPID
EOF
}

kechi_app() {  # kechi_app COMMAND_TOML_ARRAY GENERATION
  kechi_config > /dev/null <<EOF
command = $1
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 2
environment = { KT_GENERATION = "$2" }

[memory]
max = "256M"

[ready]
mode = "accept"
timeout = "60s"

[stop]
timeout = "60s"
EOF
}

kechi_cmd() {
  case "$1" in
    kechi-starlet) echo "[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=2\", \"$KT_INSIDE/hello_slow.psgi\"]" ;;
    kechi-gunicorn) echo '["/usr/bin/gunicorn", "--workers", "2", "hello_slow_wsgi:app"]' ;;
  esac
}

answers() {  # answers ADDR SECS: until GET / answers 200
  # shellcheck disable=SC2016
  tgt_run sh -c 'end=$(($(date +%s) + $2)); until [ "$(curl -s -o /dev/null -w "%{http_code}" --max-time 2 "http://$1/")" = 200 ]; do
    [ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.1; done' answers "$1" "$2"
}

app_gone() {  # app_gone SECS: until $KT_USER runs nothing
  # shellcheck disable=SC2016
  tgt_run sh -c 'end=$(($(date +%s) + $2)); while pgrep -u "$1" > /dev/null; do [ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.1; done' gone "$KT_USER" "$1"
}

srv_start() {
  case "$1" in kechi-*) kechi_app "$(kechi_cmd "$1")" 1 ;; esac
  tgt_run timeout 120 systemctl start "$(unit_of "$1")" || return 1
  case "$1" in kechi-*) kt steady "$KT_APP" 2 - "$KT_USER" 120 > /dev/null || return 1 ;; esac
  answers "$(addr_of "$1")" 60
}

srv_stop() {
  tgt_run timeout 120 systemctl stop "$(unit_of "$1")" 2> /dev/null
  app_gone 60
}

# rolled TOP SECS: until the app's active scopes are 2, every one above serial TOP (kechid stops
# an old worker only once its replacement is ready). One systemctl call every 0.25 s: the
# harness must not compete for the two cores with the workers it measures (`kt wait-new` polls
# ten times a second, several processes each: those showed in the stalls of a reload).
rolled() {
  # shellcheck disable=SC2016
  tgt_run sh -c 'end=$(($(date +%s) + $3)); while :; do
    systemctl list-units --plain --no-legend --no-pager --state=active "kechi-$1-*.scope" 2> /dev/null |
      awk -v top="$2" "{ n++; s = \$1; sub(/^kechi-[^ ]*-/, \"\", s); sub(/\\.scope\$/, \"\", s); if (s + 0 <= top) old = 1 }
        END { exit !(n == 2 && !old) }" && exit 0
    [ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.25; done' rolled "$KT_APP" "$1" "$2"
}

# act SERVER N: the Nth replacement of every worker (process) of the server; sets ACT_T0 (unix ms)
# and ACT_SECS (until it was over: kechictl's --wait, or the old generation's processes gone)
act() {
  local srv=$1 n=$2 t0 rc=0 main old top
  t0=$(date +%s%3N)
  case "$srv" in
    kechi-*)
      if [ "$n" = 1 ]; then
        tgt_run timeout 120 kechictl recycle "$KT_APP" --all --wait --timeout 90s > /dev/null || rc=1
      else
        kechi_app "$(kechi_cmd "$srv")" "$n"
        top=$(kt workers "$KT_APP" | awk '$1 > m { m = $1 } END { print m + 0 }')
        t0=$(date +%s%3N)
        tgt_run timeout 60 systemctl reload "kechi@$KT_APP" || rc=1
        rolled "$top" 90 || rc=1
      fi ;;
    *)
      main=$(tgt_run systemctl show -p MainPID --value "$(unit_of "$srv")")
      old=$(tgt_run pgrep -u "$KT_USER" | grep -vx "$main" | tr '\n' ' ')
      t0=$(date +%s%3N)
      tgt_run systemctl reload "$(unit_of "$srv")" || rc=1
      # shellcheck disable=SC2016
      tgt_run sh -c 'end=$(($(date +%s) + 90)); for p in "$@"; do while kill -0 "$p" 2> /dev/null; do
        [ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.05; done; done' wait $old || rc=1 ;;
  esac
  ACT_T0=$t0
  ACT_SECS=$(awk -v a="$t0" -v b="$(date +%s%3N)" 'BEGIN { printf "%.2f", (b - a) / 1000 }')
  return "$rc"
}

one_server() {  # one_server SERVER ROUND
  local srv=$1 r=$2 addr total m t_start n rc=0
  addr=$(addr_of "$srv")
  total=$((S + 2 * W))
  local gens=""
  for m in keepalive close; do
    if [ "${SLOWLOAD_GEN:-rt}" = rt ]; then
      tgt_run chrt -f 50 /usr/bin/openload \
        --addr "$addr" --rate "$rate" --duration "$total" --mode "$m" --timeout 10 --out "/run/openload-$m.csv" > /dev/null &
      gens="$gens $!"
    else
    tgt_run systemd-run --quiet --unit="openload-$m" --collect --service-type=exec /usr/bin/openload \
      --addr "$addr" --rate "$rate" --duration "$total" --mode "$m" --timeout 10 --out "/run/openload-$m.csv" \
      || { bad "$srv: openload $m did not start"; return 1; }
    fi
  done
  t_start=$SECONDS
  for n in 1 2; do
    sleep $((S + (n - 1) * W - (SECONDS - t_start)))
    if act "$srv" "$n"; then ok "$srv: replacement $n over in $ACT_SECS s"; else bad "$srv: replacement $n not over"; rc=1; fi
    echo "$srv,$n,$n,$ACT_T0,$ACT_SECS,$r" >> "$out/actions.csv"
  done
  # shellcheck disable=SC2086
  [ -z "$gens" ] || wait $gens
  for m in keepalive close; do
    # shellcheck disable=SC2016
    tgt_run sh -c 'while systemctl -q is-active "$1"; do sleep 0.5; done' w "openload-$m"
    [ "$m" = keepalive ] && case "$srv" in
      kechi-*) tgt_run journalctl -q --no-pager -o short-unix -u "kechi@$KT_APP.service" -S "-$((total + 30))s" \
        | gzip -9 > "$out/$srv-journal.r$r.txt.gz" ;;
    esac
    tgt_run cat "/run/openload-$m.csv" | gzip -9 > "$out/$srv-$m.r$r.csv.gz"
    info "$srv $m: $(zcat "$out/$srv-$m.r$r.csv.gz" | wc -l) requests"
  done
  return "$rc"
}

scenario bench-slowload "replacing the workers of an app that loads in 1 s, open-loop load at $rate req/s x 2 (steady ${S}s, two replacements ${W}s apart; $rounds round(s))"
info "machine: $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"
tgt_up bslowload
kechi_install
for f in "$HERE"/app/*; do tgt_copy_in "$f" "$KT_INSIDE/$(basename "$f")" || abort "copying $f in"; done
tgt_copy_in "$OPENLOAD" /usr/bin/openload || abort "copying openload in"
peer_unit start_server "/usr/bin/start_server --port=$PEER_ADDR -- /usr/bin/plackup -s Starlet -E deployment --max-workers=4 $KT_INSIDE/hello_slow.psgi"
peer_unit gunicorn "/usr/bin/gunicorn --bind $PEER_ADDR --workers 4 hello_slow_wsgi:app"
tgt_run systemctl daemon-reload
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "kechi@$KT_APP.socket"
loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$rounds"); do
  for srv in $PLAN; do
    say "round $r/$rounds: $srv (load average $(cut -d' ' -f1 /proc/loadavg))"
    srv_start "$srv" || { bad "$srv did not start"; continue; }
    one_server "$srv" "$r"
    srv_stop "$srv" || bad "$srv: processes left after stop"
  done
done
{
  echo "command: bench/run.sh slowload${ARGS:+ $ARGS}"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(bench_machine)"
  echo "load average: $loadavg_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  echo "load: openload at $rate req/s keep-alive + $rate req/s Connection: close, timeout 10 s; steady ${S} s, replacements at ${S} s and $((S + W)) s, windows of ${W} s; $rounds round(s), the servers taking turns"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2> /dev/null || echo '?')"
  echo "kechid: $(kechi_bin_dir)/kechid ($(case "$(kechi_bin_dir)" in */release) echo release build ;; *) echo "not the release build" ;; esac))"
  echo "versions: $(dpkg-query -W -f='${Package} ${Version}, ' starlet libserver-starter-perl gunicorn systemd | sed 's/, $//')"
} > "$out/meta.txt"
/usr/bin/python3 "$HERE/report.py" --text "$out"
if [ "$quick" = 0 ]; then
  /usr/bin/python3 "$HERE/report.py" --markdown "$out" --docs "$ROOT/docs/benchmarks" && say "wrote docs/benchmarks/slowload.md"
fi
finish

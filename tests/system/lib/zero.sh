#!/bin/bash
# zero.sh — the zero-downtime routine of the compatibility matrix's rows (t_compat_*): a real app server
# behind kechi@demo.socket (its Unix socket and, from a drop-in, $KT_LISTEN), under load from one
# pair of wrk runs that spans the whole test, from before step 1 until after the last step's settle
# (16 keep-alive connections, and 16 connections that each carry one request: "Connection: close"),
# through every kind of planned restart:
#   1. kechictl recycle demo --all --wait
#   2. systemctl reload kechi@demo (a changed config: every worker replaced)
#   3. age recycling (recycle.max-age = 8s, min-interval = 1s) for 20 s: at least 2 recycles with
#      REASON=age in the journal
#   4. systemctl restart kechi@demo (the new kechid adopts the running workers)
#   5. kill -9 of kechid (systemd restarts it; it adopts the running workers)
# After each: every response of the step 2xx (wrk's script counts every status outside 200-299),
# exactly `workers` worker scopes and no other kechi-demo-* unit, each scope with the app server's
# processes and no second set. Over the whole run: 0 failed requests (wrk's own totals: connect,
# read, write and timeout errors, which it does not attribute to a step) and 0 non-2xx responses.
# With ready.mode = "accept", every worker was made ready by the accept detector (the journal's
# "worker ready (waiting for connections)" or "(serving a connection)"), none by the ready.delay
# fallback. At the end `systemctl stop` leaves nothing behind. The requests served per step and
# per load, and the whole run's served and failed, are printed as a table.
#
# The scenario sets, then calls zd_main:
#   ZD_COMMAND   the app's command, as a TOML array
#   ZD_PROCS     processes per worker once it runs (its master and children)
#   ZD_WORKERS   workers (default 2)
#   ZD_READY     ready.mode (default accept; KT_READY_MODE overrides, e.g. delay)
#   ZD_READY_TIMEOUT  ready.timeout (default 60s)
#   ZD_READY_DELAY    ready.delay (default 1s; what accept falls back to without /proc/PID/syscall)
#   ZD_WAIT      seconds to wait for every worker to be replaced after a recycle or reload (180)
#   ZD_SKIP      steps not to run, of: recycle reload age restart kill
#   ZD_STOP_SIGNAL  stop.signal (default: not written, kechi's TERM)
#   ZD_TCP_ONLY  1: kechi@demo.socket listens on $KT_LISTEN instead of its Unix socket (README's
#                "instead" form: an empty ListenStream= first), for a server that takes one socket
#   ZD_SOCKET_OPTIONS  lines for the [Socket] section of a drop-in of kechi@demo.socket (NoDelay=yes)
#   ZD_NONBLOCKING  1: the server makes its listeners non-blocking (an event loop: Node); after
#                each adoption the journal must say kechid put O_NONBLOCK back on $KT_LISTEN
#                (systemd clears it at every start of kechid; src/sockflags.rs)
#   ZD_STEER     1: ReusePort=yes on kechi@demo.socket, so kechid steers its TCP listener (each
#                worker accepts from a socket of its own, drained before its stop signal:
#                src/steer/); checked after start: the journal says so, and the port has one
#                listening socket per worker besides the activated one
# and may define zd_after_start, called once the app runs (before any step), and zd_after_step
# STEP, called after each step's settle time, under load (e.g. to show what the workers wait on).
#
# A row of the compatibility matrix (tests/system/t_compat_*.sh, docs/APP-SERVERS.md) also sets
#   ZD_ROW       the row's name (e.g. starlet)
#   ZD_SERVER    the server as the matrix names it (e.g. "Starlet 0.31 (plackup -s Starlet)")
#   ZD_KNOWN_LOSS  a row whose server loses requests by a mechanism of its own that neither kechi nor
#                a flag of the server can remove: one line naming it (docs/APP-SERVERS.md); the
#                row still fails at any failed request, and the matrix prints the line beside
#                its count. Such a row loses a request now and then whatever kechi does, so a run
#                of every test (tests/run.sh, CI) reports it as SKIP with that line, and only
#                tests/compat-matrix.sh (or KT_COMPAT_KNOWN_LOSS=1) runs it, for the matrix
# and then, before the first step, both loads run alone for ZD_STEADY_SECS (5) seconds: their p99
# there is the row's steady p99, the yardstick of the whole run's. At the end the row prints one
# line per load for tests/compat-matrix.sh to collect from its log:
#   COMPAT row=NAME load=keepalive|close tier=v1 server="..." command="..." socket="..." ready=MODE stop=SIGNAL
#     steps="..." served=N failed=N non2xx=N p99_steady_ms=X p99_ms=Y p99_ratio=Z p999_ms=X
#     max_ms=X secs=N loadavg="A B C" date=ISO8601 known="ZD_KNOWN_LOSS or empty"
# (one line; socket is how kechi@demo.socket differs from Unix + TCP: "TCP only", its options;
# failed counts every failed request and non-2xx response of the whole run; p99_ms,
# p999_ms and max_ms are the whole run's, through every replacement; secs is the row's duration
# so far, loadavg the machine's at the end).
# shellcheck disable=SC2034  # (ZD_* are set by the scenarios)

ZD_WORKERS=${ZD_WORKERS:-2}
ZD_READY=${KT_READY_MODE:-${ZD_READY:-accept}}
ZD_READY_TIMEOUT=${ZD_READY_TIMEOUT:-60s}
ZD_READY_DELAY=${ZD_READY_DELAY:-1s}
ZD_WAIT=${ZD_WAIT:-180}
ZD_SETTLE=3   # seconds of load kept after each step is over, to see late failures
ZD_STEADY_SECS=${ZD_STEADY_SECS:-5}
declare -gA ZD_RESULT=()      # per load, once zd_loads_end ran: "served failed non2xx p99_us p999_us max_us"
declare -gA ZD_STEADY_P99=()  # per load, the steady phase's p99 (µs)

zd_config() {  # zd_config GENERATION [EXTRA_TOML_SECTIONS]
  local sig=""
  [ -n "${ZD_STOP_SIGNAL:-}" ] && sig="signal = \"$ZD_STOP_SIGNAL\""
  kechi_config <<EOF
command = $ZD_COMMAND
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = $ZD_WORKERS
environment = { KT_GENERATION = "$1" }

[memory]
max = "256M"

[ready]
mode = "$ZD_READY"
delay = "$ZD_READY_DELAY"
timeout = "$ZD_READY_TIMEOUT"

[stop]
timeout = "60s"
$sig
${2:-}
EOF
}

# One pair of loads for the whole test: zd_loads_begin before the first step, zd_loads_mark STEP at
# the end of each step (a row per load: the responses since the last mark, all of them 2xx),
# zd_loads_end LABEL after the last (wrk's totals for the whole run: no failed request).
zd_loads_begin() {
  load_start ka keepalive 16 2 || return 1
  load_start close close 16 1 || { kt load-stop ka > /dev/null 2>&1; return 1; }
}

zd_loads_mark() {  # zd_loads_mark STEP
  load_mark ka "$1"
  load_mark close "$1"
}

zd_loads_end() {  # zd_loads_end LABEL; keeps each load's figures in ZD_RESULT
  local n
  for n in ka close; do
    load_stop "$n" "$1"
    ZD_RESULT[$n]="$LOAD_SERVED $LOAD_FAILED $LOAD_NON2XX $LOAD_P99_US $LOAD_P999_US $LOAD_MAX_US"
  done
}

# zd_steady_phase: both loads, as the whole run will have them, for ZD_STEADY_SECS before any step:
# their p99 is the row's steady p99 (the same machine, the same moment, the same workers)
zd_steady_phase() {
  local n
  say "steady phase: both loads for $ZD_STEADY_SECS s before any step (the row's steady p99)"
  zd_loads_begin || return 1
  sleep "$ZD_STEADY_SECS"
  for n in ka close; do
    load_stop "$n" "0 steady (no step)"
    ZD_STEADY_P99[$n]=$LOAD_P99_US
    info "steady p99 of $n: $(zd_ms "$LOAD_P99_US") ms (p99.9 $(zd_ms "$LOAD_P999_US") ms, max $(zd_ms "$LOAD_MAX_US") ms)"
  done
}

zd_ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }

# zd_compat_lines: a row's COMPAT lines (see the top of this file)
zd_compat_lines() {
  local n load served failed non2xx p99 p999 max steady ratio cmd steps="" s la known=${ZD_KNOWN_LOSS:-}
  cmd=$(printf '%s' "$ZD_COMMAND" | python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)))' 2> /dev/null) || cmd=$ZD_COMMAND
  for s in recycle reload age restart kill; do
    case " ${ZD_SKIP:-} " in *" $s "*) ;; *) steps="$steps${steps:+ }$s" ;; esac
  done
  la=$(cut -d' ' -f1-3 /proc/loadavg)
  for n in ka close; do
    [ -n "${ZD_RESULT[$n]:-}" ] || continue
    read -r served failed non2xx p99 p999 max <<< "${ZD_RESULT[$n]}"
    steady=${ZD_STEADY_P99[$n]:-0}
    ratio=$(awk -v a="$p99" -v b="$steady" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "-" }')
    if [ "$n" = ka ]; then load=keepalive; else load=close; fi
    printf 'COMPAT row=%s load=%s tier=%s server="%s" command="%s" socket="%s" ready=%s stop=%s steps="%s" served=%s failed=%s non2xx=%s p99_steady_ms=%s p99_ms=%s p99_ratio=%s p999_ms=%s max_ms=%s secs=%s loadavg="%s" date=%s known="%s"\n' \
      "$ZD_ROW" "$load" "$KT_TIER" "${ZD_SERVER//\"/\'}" "${cmd//\"/\'}" "$(zd_socket_unit)" "$ZD_READY" "${ZD_STOP_SIGNAL:-TERM}" "$steps" \
      "$served" "$failed" "$non2xx" "$(zd_ms "$steady")" "$(zd_ms "$p99")" "$ratio" "$(zd_ms "$p999")" "$(zd_ms "$max")" \
      $((SECONDS - _KT_T0)) "$la" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${known//\"/\'}"
  done
}

# zd_loads_start, then zd_loads_stop STEP: a pair of loads around one step alone (its settle
# included), judged as a whole
zd_loads_start() { zd_loads_begin; }

zd_loads_stop() {  # zd_loads_stop STEP
  zd_settle
  zd_loads_end "$1"
}

# an observation window after a step's action is over, to see late failures; not a wait for a state
zd_settle() { sleep "$ZD_SETTLE"; }

zd_status() {  # kechid's own view, as information
  local j
  if ! j=$(tgt_run kechictl status "$KT_APP" --json 2>&1); then
    info "kechictl status $KT_APP --json: $(printf '%s' "$j" | tr '\n' ' ' | cut -c 1-200)"
    return 0
  fi
  printf '%s' "$j" | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError as e:
    print("kechictl status --json: not JSON ({})".format(e))
    sys.exit(0)
ws = ", ".join("{}:{}:pid {}".format(w.get("serial"), w.get("state"), w.get("pid")) for w in s.get("workers", []))
print("kechictl status: {} | workers {}".format(s.get("summary"), ws))
' | sed 's/^/          /'
}

zd_steady() {  # zd_steady STEP: exactly ZD_WORKERS workers, each whole, no leftover, no second set
  local why w
  if why=$(kt steady "$KT_APP" "$ZD_WORKERS" "$ZD_PROCS" "$KT_USER" 60); then
    ok "$1: exactly $ZD_WORKERS worker scopes, $ZD_PROCS processes each, no other kechi-$KT_APP-* unit, $((ZD_WORKERS * ZD_PROCS)) processes of $KT_USER"
  else
    bad "$1: not steady within 60 s: $why"
  fi
  w=$(workers)
  show_workers "$w"
  expect_eq "$1: kechi@$KT_APP is" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
  zd_status
}

# zd_wait_new STEP ABOVE_SERIAL [+]: every worker replaced (with +: a replacement may be in flight
# beside them, as under age recycling); sets ZD_W
zd_wait_new() {
  local t0=$SECONDS
  if ZD_W=$(kt wait-new "$KT_APP" "$ZD_WORKERS${3:-}" $(($2 + 1)) "$ZD_WAIT"); then
    ok "$1: all $ZD_WORKERS workers replaced, serials above $2 ($((SECONDS - t0)) s)"
  else
    bad "$1: not every worker replaced (serial above $2) within $ZD_WAIT s"
  fi
  show_workers "$ZD_W"
}

zd_reload() {  # zd_reload STEP
  local out rc
  out=$(tgt_run timeout 120 systemctl reload "kechi@$KT_APP" 2>&1); rc=$?
  if [ "$rc" = 0 ]; then ok "$1: systemctl reload kechi@$KT_APP"; else bad "$1: systemctl reload kechi@$KT_APP: exit $rc $out"; fi
}

zd_start() {
  local w pid
  if [ "${ZD_TCP_ONLY:-0}" = 1 ]; then
    kechi_socket_listen "" "$KT_LISTEN"
    info "kechi@$KT_APP.socket: ListenStream= (none of the unit's own), then ListenStream=$KT_LISTEN"
  fi
  if [ "${ZD_STEER:-0}" = 1 ]; then
    ZD_SOCKET_OPTIONS="${ZD_SOCKET_OPTIONS:+$ZD_SOCKET_OPTIONS
}ReusePort=yes"
  fi
  if [ -n "${ZD_SOCKET_OPTIONS:-}" ]; then
    printf '[Socket]\n%s\n' "$ZD_SOCKET_OPTIONS" | tgt_write "/etc/systemd/system/kechi@$KT_APP.socket.d/options.conf" \
      || abort "writing the drop-in of kechi@$KT_APP.socket"
    info "kechi@$KT_APP.socket: $ZD_SOCKET_OPTIONS"
  fi
  if [ "${ZD_TCP_ONLY:-0}" = 1 ] || [ -n "${ZD_SOCKET_OPTIONS:-}" ]; then
    tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
  fi
  zd_config 1
  kechi_start || abort "kechi@$KT_APP did not start"
  zd_steady "start"
  w=$(workers)
  pid=$(printf '%s\n' "$w" | awk 'NR == 1 { print $3 }')
  if [ -n "$(kt envof "$pid" KECHI_WORKER)" ]; then
    info "worker $pid: LISTEN_FDS=$(kt envof "$pid" LISTEN_FDS) LISTEN_PID=$(kt envof "$pid" LISTEN_PID)" \
      "LISTEN_FDNAMES=$(kt envof "$pid" LISTEN_FDNAMES) SERVER_STARTER_PORT=$(kt envof "$pid" SERVER_STARTER_PORT)"
  else  # perl's $0 = "..." writes over the environment block that /proc/PID/environ shows
    info "worker $pid: its /proc/PID/environ was overwritten by the app (perl sets \$0)"
  fi
  zd_get_both "start"
  if [ "${ZD_STEER:-0}" = 1 ]; then zd_check_steered; fi
  if declare -F zd_after_start > /dev/null; then zd_after_start; fi
}

zd_socket_unit() {  # the row's socket unit, in a word or two, for the matrix
  local parts=()
  [ "${ZD_TCP_ONLY:-0}" = 1 ] && parts+=("TCP only")
  # shellcheck disable=SC2206
  [ -n "${ZD_SOCKET_OPTIONS:-}" ] && parts+=(${ZD_SOCKET_OPTIONS//$'\n'/ })
  printf '%s' "${parts[*]:-}"
}

zd_check_steered() {  # the TCP listener is steered: one listening socket per worker besides systemd's
  local n line
  line=$(tgt_journal -o cat -u "kechi@$KT_APP" | grep -F "listening socket $KT_LISTEN:" | tail -n 1)
  case "$line" in
    *"each worker gets a socket of its own"*) ok "kechid steers $KT_LISTEN: $line" ;;
    *) bad "kechid does not steer $KT_LISTEN: '$line'" ;;
  esac
  n=$(tgt_run ss -Hltn "sport = :${KT_LISTEN##*:}" | wc -l)
  expect_eq "listening sockets on port ${KT_LISTEN##*:} (the activated one and one per worker)" "$n" "$((ZD_WORKERS + 1))"
}

zd_get_both() {  # zd_get_both STEP: both sockets of kechi@demo.socket answer (the one with ZD_TCP_ONLY)
  expect_eq "$1: GET http://$KT_LISTEN/" "$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$KT_LISTEN/")" 200
  [ "${ZD_TCP_ONLY:-0}" = 1 ] && return 0
  expect_eq "$1: GET on /run/kechi/$KT_APP.sock" \
    "$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 10 --unix-socket "/run/kechi/$KT_APP.sock" http://localhost/)" 200
}

zd_step_recycle() {
  local step="1 kechictl recycle --all" top out rc t0 cursor
  say "step $step, under load"
  top=$(max_serial "$(workers)")
  cursor=$(journal_cursor)
  t0=$SECONDS
  out=$(tgt_run timeout $((ZD_WAIT + 60)) kechictl recycle "$KT_APP" --all --wait --timeout "${ZD_WAIT}s" 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/          | /'
  if [ "$rc" = 0 ]; then
    ok "$step: kechictl recycle $KT_APP --all --wait returned after $((SECONDS - t0)) s"
    zd_wait_new "$step" "$top"
  else
    bad "$step: kechictl recycle $KT_APP --all --wait: exit status $rc after $((SECONDS - t0)) s"
    ZD_WAIT=10 zd_wait_new "$step" "$top"  # (kechictl has waited already)
  fi
  zd_settle
  journal_unit_after "$cursor" "kechi@$KT_APP.service" fields | head -n 16 | sed 's/^/          | /'
  zd_steady "$step"
  zd_loads_mark "$step"
}

zd_step_reload() {
  local step="2 systemctl reload" top cursor gens
  say "step $step (a changed config: KT_GENERATION=2), under load"
  top=$(max_serial "$(workers)")
  zd_config 2
  cursor=$(journal_cursor)
  zd_reload "$step"
  zd_wait_new "$step" "$top"
  # shellcheck disable=SC2016
  gens=$(tgt_run sh -c 'for i in $(seq 20); do curl -s --max-time 10 "$1"; done' get "http://$KT_LISTEN/" \
    | sed -n 's/.* generation \([^ ]*\)$/\1/p' | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
  expect_eq "$step: generations answering 20 requests" "$gens" "2 x20"
  zd_settle
  journal_unit_after "$cursor" "kechi@$KT_APP.service" fields | grep -iE 'reload|recycl|ready|stopp' | head -n 12 | sed 's/^/          | /'
  zd_steady "$step"
  zd_loads_mark "$step"
}

zd_step_age() {
  local step="3 age (max-age 8s)" top t0 before after n cursor log
  say "step $step: reload to max-age = 8s, min-interval = 1s; 20 s of age recycling; reload to max-age off; under load"
  top=$(max_serial "$(workers)")
  zd_config 3 '
[recycle]
max-age = "8s"
min-interval = "1s"'
  cursor=$(journal_cursor)
  zd_reload "$step"
  zd_wait_new "$step (the reload)" "$top" +
  before=$(max_serial "$ZD_W")
  t0=$SECONDS
  sleep 20  # the observation window of age recycling
  after=$(max_serial "$(workers)")
  n=$((after - before))
  # each worker reaches 8 s (±10 %) about twice in 20 s; slowness may cost one
  if [ "$n" -ge 2 ]; then ok "$step: $n workers started by age recycling in $((SECONDS - t0)) s (serials $before -> $after)"
  else bad "$step: only $n workers started by age recycling in $((SECONDS - t0)) s (serials $before -> $after; want >= 2)"; fi
  # the journal's own account: "recycling worker (...): starting its replacement first" with
  # REASON=age, one line per recycle (its "stopping worker" line carries REASON=age too)
  log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service" fields)
  n=$(printf '%s\n' "$log" | grep -cE '^\[WORKER=[0-9]+ REASON=age\] recycling worker ')
  printf '%s\n' "$log" | grep 'REASON=age\]' | head -n 8 | sed 's/^/          | /'
  if [ "$n" -ge 2 ]; then ok "$step: the journal has $n recycles with REASON=age (want >= 2)"
  else bad "$step: the journal has $n recycles with REASON=age (want >= 2)"; fi
  say "step $step: reload to max-age off (generation 4)"
  zd_config 4
  top=$(max_serial "$(workers)")
  zd_reload "$step"
  zd_wait_new "$step (reload, age off)" "$top" +
  ZD_WAIT=60 zd_wait_new "$step (the last replacement by age done)" "$top"
  zd_settle
  zd_steady "$step"
  zd_loads_mark "$step"
}

# zd_adopted STEP CURSOR WORKERS_BEFORE: the new kechid adopted the running workers, started none
zd_adopted() {
  local step=$1 cursor=$2 before=$3 log n
  log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service" fields)
  printf '%s\n' "$log" | grep -iE 'adopt|worker started|restart|listening|ready' | head -n 15 | sed 's/^/          | /'
  n=$(printf '%s\n' "$log" | grep -c 'adopted running worker in kechi-')
  expect_eq "$step: journal lines 'adopted running worker in kechi-$KT_APP-N.scope'" "$n" "$ZD_WORKERS"
  expect_eq "$step: journal lines 'worker started' (a second set)" "$(printf '%s\n' "$log" | grep -c 'worker started')" 0
  expect_eq "$step: the same workers (serial, scope, pid)" "$(workers | tr '\n' ';')" "$(printf '%s\n' "$before" | tr '\n' ';')"
  if [ "${ZD_NONBLOCKING:-0}" = 1 ]; then
    if has "$log" -F "listening socket $KT_LISTEN: O_NONBLOCK on again"; then
      ok "$step: O_NONBLOCK back on $KT_LISTEN as the workers had it (systemd cleared it)"
    else
      bad "$step: no 'listening socket $KT_LISTEN: O_NONBLOCK on again' line: the workers' event loops block in accept once the queue is empty"
    fi
  fi
}

zd_step_restart() {
  local step="4 systemctl restart" old new w cursor rc t0
  say "step $step, under load"
  old=$(unit_prop "kechi@$KT_APP" MainPID)
  w=$(workers)
  cursor=$(journal_cursor)
  t0=$SECONDS
  tgt_run timeout 120 systemctl restart "kechi@$KT_APP"; rc=$?
  if [ "$rc" = 0 ]; then ok "$step: systemctl restart kechi@$KT_APP ($((SECONDS - t0)) s)"; else bad "$step: systemctl restart kechi@$KT_APP: exit status $rc"; fi
  new=$(unit_prop "kechi@$KT_APP" MainPID)
  if [ "$new" != "$old" ] && [ "$new" != 0 ]; then ok "$step: a new kechid (pid $old -> $new)"; else bad "$step: kechid's MainPID $old -> $new"; fi
  zd_settle
  if declare -F zd_after_step > /dev/null; then zd_after_step "$step"; fi
  zd_adopted "$step" "$cursor" "$w"
  zd_steady "$step"
  zd_loads_mark "$step"
}

zd_step_kill() {
  local step="5 kill -9 kechid" old new w cursor nr t0 state=""
  say "step $step, under load"
  old=$(unit_prop "kechi@$KT_APP" MainPID)
  nr=$(unit_prop "kechi@$KT_APP" NRestarts)
  w=$(workers)
  cursor=$(journal_cursor)
  t0=$SECONDS
  tgt_run kill -KILL "$old"
  while [ $((SECONDS - t0)) -lt 60 ]; do
    new=$(unit_prop "kechi@$KT_APP" MainPID)
    state=$(unit_prop "kechi@$KT_APP" ActiveState)
    [ "$new" != "$old" ] && [ "$new" != 0 ] && [ "$state" = active ] && break
    sleep 0.2
  done
  if [ "$new" != "$old" ] && [ "$new" != 0 ] && [ "$state" = active ]; then
    ok "$step: systemd restarted kechid (pid $old -> $new), active again after $((SECONDS - t0)) s"
  else
    bad "$step: kechi@$KT_APP not active with a new kechid within 60 s (MainPID $new, $state)"
  fi
  expect_eq "$step: NRestarts" "$(unit_prop "kechi@$KT_APP" NRestarts)" $((nr + 1))
  zd_settle
  if declare -F zd_after_step > /dev/null; then zd_after_step "$step"; fi
  zd_adopted "$step" "$cursor" "$w"
  zd_steady "$step"
  zd_loads_mark "$step"
}

zd_stop() {
  local why
  say "systemctl stop kechi@$KT_APP"
  # (systemctl warns that kechi@demo.socket could start it again: expected, not shown)
  tgt_run timeout 120 systemctl stop "kechi@$KT_APP" 2> /dev/null || bad "systemctl stop kechi@$KT_APP failed"
  if why=$(kt steady "$KT_APP" 0 0 "$KT_USER" 30); then
    ok "stopped: no kechi-$KT_APP-* unit and no process of $KT_USER left"
  else
    bad "after systemctl stop: $why"
  fi
}

# zd_ready_how: with ready.mode = "accept", every "worker ready" line of this boot's journal says the
# accept detector saw the worker waiting on (or serving from) its inherited socket; none is the
# plain "worker ready" of the ready.delay fallback, and kechid never announced that fallback.
zd_ready_how() {
  local log started ready accept fallback
  if [ "$ZD_READY" != accept ]; then
    info "ready.mode = $ZD_READY: how workers got ready is not checked (the accept detector is not in use)"
    return 0
  fi
  if ! tgt_run test -e /proc/self/syscall; then
    info "no /proc/self/syscall in the test machine: ready.mode = \"accept\" falls back to ready.delay ($ZD_READY_DELAY), as kechid's journal says"
    return 0
  fi
  log=$(journal_unit_after "" "kechi@$KT_APP.service")
  started=$(printf '%s\n' "$log" | grep -c 'worker started')
  ready=$(printf '%s\n' "$log" | grep -cE '^worker ready( \(.*\))?$')
  accept=$(printf '%s\n' "$log" | grep -cE '^worker ready \((waiting for connections|serving a connection)\)$')
  fallback=$(printf '%s\n' "$log" | grep -cE 'ready.mode = "accept" (needs|without)')
  info "journal of this boot: $started workers started, $ready 'worker ready' lines," \
    "$(printf '%s\n' "$log" | grep -c '^worker ready (waiting for connections)$') waiting for connections," \
    "$(printf '%s\n' "$log" | grep -c '^worker ready (serving a connection)$') serving a connection"
  if [ "$accept" -ge "$ZD_WORKERS" ] && [ "$accept" = "$ready" ]; then
    ok "every worker made ready by the accept detector ($accept of $ready 'worker ready' lines; none by ready.delay)"
  else
    bad "not every worker made ready by the accept detector: $accept of $ready 'worker ready' lines (the others: $(printf '%s\n' "$log" | grep -E '^worker ready' | grep -vE '\((waiting for connections|serving a connection)\)$' | sort | uniq -c | tr -s ' \n' ' '))"
  fi
  expect_eq "journal lines announcing the ready.delay fallback of ready.mode = \"accept\"" "$fallback" 0
}

zd_main() {
  local s label="whole run (every step)"
  if [ -n "${ZD_KNOWN_LOSS:-}" ] && [ "${KT_COMPAT_KNOWN_LOSS:-0}" != 1 ]; then
    skip "known server loss: $ZD_KNOWN_LOSS (run by tests/compat-matrix.sh)"
  fi
  info "ready.mode = $ZD_READY; load for the whole test: wrk -c16 -t2 (keep-alive) and wrk -c16 -t1 -H 'Connection: close' against http://$KT_LISTEN/"
  zd_start
  if [ -n "${ZD_ROW:-}" ]; then zd_steady_phase || abort "no load generator"; fi
  say "load starts, for the whole test"
  zd_loads_begin || abort "no load generator"
  for s in recycle reload age restart kill; do
    case " ${ZD_SKIP:-} " in
      *" $s "*) say "step $s: skipped (ZD_SKIP)" ;;
      *) "zd_step_$s" ;;
    esac
  done
  zd_get_both "after every step"
  say "load stops: wrk's totals for the whole test"
  zd_loads_end "$label"
  zd_ready_how
  zd_stop
  load_summary
  if [ -n "${ZD_ROW:-}" ]; then zd_compat_lines; fi
}

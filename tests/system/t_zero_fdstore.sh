#!/bin/bash
# t_zero_fdstore: without a socket unit, kechid binds `listen = ["127.0.0.1:8080"]` itself and keeps
# the socket in systemd's fd store (FDSTORE=1, FileDescriptorStoreMax= in kechi@.service), so it
# survives kechid's own restarts. kechi@demo.socket is masked (kechi@.service's Wants= would start
# it otherwise), so the only way the socket can come back is the fd store.
#
# Under load (wrk, 16 connections) against tiny.py, three workers:
#  1. `systemctl restart kechi@demo`
#  2. `kill -9` of kechid (systemd restarts it, Restart=on-failure)
#  3. `kechictl recycle demo --all` on the kechid of step 2: new workers get the socket it got back
# After each: 0 failed requests, exactly 3 workers, and one listening socket on 127.0.0.1:8080
# whose inode (ss -e) is the one kechid bound at the start, held by the new kechid and the current
# workers. A socket bound again by a new kechid would be a new inode (and could not be bound at
# all while the adopted workers still listen on the old one).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_zero_fdstore "listen = [...] kept in systemd's fd store: same socket after systemctl restart and kill -9, no failed request"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
WORKERS=3
PORT=${KT_LISTEN##*:}

tgt_up zfdstore
kechi_install
tgt_run systemctl mask "kechi@$KT_APP.socket" > /dev/null 2>&1 || abort "masking kechi@$KT_APP.socket"
tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
expect_eq "kechi@$KT_APP.service FileDescriptorStoreMax" "$(unit_prop "kechi@$KT_APP" FileDescriptorStoreMax)" 64
fault_config 10s "listen = [\"$KT_LISTEN\"]"
kechi_start || abort "kechi@demo did not start"
expect_eq "kechi@$KT_APP.socket" "$(unit_prop "kechi@$KT_APP.socket" LoadState) $(unit_prop "kechi@$KT_APP.socket" ActiveState)" "masked inactive"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"
show_workers "$(workers)"

# listener: the listening sockets on $PORT in the test machine, from ss -e (inode) and -p (holders).
# Sets LISTEN_N (how many), LISTEN_INO (inode of the first) and LISTEN_PIDS (its holders, sorted).
listener() {
  local out
  out=$(tgt_run ss -Hltnpe "sport = :$PORT")
  LISTEN_N=$(printf '%s\n' "$out" | grep -c .)
  LISTEN_INO=$(printf '%s\n' "$out" | head -n 1 | grep -o 'ino:[0-9]*' | cut -d: -f2)
  LISTEN_PIDS=" $(printf '%s\n' "$out" | head -n 1 | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un | tr '\n' ' ')"
  info "listening on :$PORT: $(printf '%s' "$out" | tr -s ' ' | cut -c 1-300)"
}

# same_socket STEP: one listening socket, the first one's inode, held by the current kechid and by
# every current worker
same_socket() {
  local step=$1 kechid w p missing=""
  listener
  expect_eq "$step: listening sockets on :$PORT" "$LISTEN_N" 1
  expect_eq "$step: the listening socket's inode (the one bound at the start)" "$LISTEN_INO" "$INO0"
  kechid=$(unit_prop "kechi@$KT_APP" MainPID)
  w=$(workers)
  for p in "$kechid" $(printf '%s\n' "$w" | awk '{ print $3 }'); do
    case "$LISTEN_PIDS" in *" $p "*) ;; *) missing="$missing $p" ;; esac
  done
  if [ -z "$missing" ]; then
    ok "$step: held by kechid $kechid and the workers' processes ($(printf '%s\n' "$w" | awk '{ print $3 }' | tr '\n' ' '))"
  else
    bad "$step: not held by:$missing (holders:$LISTEN_PIDS)"
  fi
}

# steady_after STEP: exactly WORKERS workers, active, one process each
steady_after() {
  local why
  if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then
    ok "$1: exactly $WORKERS kechi-$KT_APP-* units, active, 1 process each"
  else
    bad "$1: not steady within 60 s: $why"
  fi
  show_workers "$(workers)"
}

# wait_new_kechid OLD_PID: until kechi@demo is active with a main pid other than OLD_PID
wait_new_kechid() {
  local end=$((SECONDS + 60)) pid state
  while :; do
    pid=$(unit_prop "kechi@$KT_APP" MainPID)
    state=$(unit_prop "kechi@$KT_APP" ActiveState)
    if [ "$state" = active ] && [ "$pid" != 0 ] && [ "$pid" != "$1" ]; then echo "$pid"; return 0; fi
    [ "$SECONDS" -lt "$end" ] || { echo "$pid $state"; return 1; }
    sleep 0.2
  done
}

listener
INO0=$LISTEN_INO
expect_eq "at the start: listening sockets on :$PORT" "$LISTEN_N" 1
kechid0=$(unit_prop "kechi@$KT_APP" MainPID)
case "$LISTEN_PIDS" in *" $kechid0 "*) ok "kechid $kechid0 holds the socket it bound (inode $INO0)" ;; *) bad "kechid $kechid0 does not hold the socket (holders:$LISTEN_PIDS)" ;; esac
# kechid names the socket listen-127.0.0.1%3A8080 in the store; systemd refuses a name with ":"
# (and stores the fd under "stored", where the next kechid would not find it)
jr=$(journal_unit_after "" "kechi@$KT_APP.service")
msg=$(printf '%s\n' "$jr" | grep "listening socket")
info "journal: $msg"
if [[ $msg == *"$KT_LISTEN (listen-${KT_LISTEN%:*}%3A$PORT)"* ]]; then
  ok "kechid bound $KT_LISTEN from its config and stored it as listen-${KT_LISTEN%:*}%3A$PORT"
else
  bad "the journal does not name the listening socket listen-${KT_LISTEN%:*}%3A$PORT"
fi
if [[ $jr == *"FDNAME= name is invalid"* ]]; then bad "systemd refused the FDNAME= of the stored socket"; else ok "systemd took the FDNAME= of the stored socket"; fi

say "1. systemctl restart kechi@$KT_APP under load"
fault_load restart 16 || abort "no load generator"
sleep 1
tgt_run timeout 120 systemctl restart "kechi@$KT_APP" || bad "systemctl restart kechi@$KT_APP failed"
if kechid1=$(wait_new_kechid "$kechid0"); then ok "a new kechid ($kechid1, was $kechid0), active"; else bad "no new active kechid after restart: $kechid1"; fi
steady_after "restart"
same_socket "restart"
sleep 1
load_stop restart "systemctl restart"

say "2. kill -9 of kechid under load"
nr0=$(unit_prop "kechi@$KT_APP" NRestarts)
fault_load kill9 16 || abort "no load generator"
sleep 1
tgt_run kill -KILL "$kechid1" || bad "kill -9 $kechid1"
if kechid2=$(wait_new_kechid "$kechid1"); then ok "systemd restarted kechid ($kechid2, was $kechid1)"; else bad "no new active kechid after kill -9: $kechid2"; fi
expect_eq "restarts of kechid by systemd" "$(unit_prop "kechi@$KT_APP" NRestarts)" $((nr0 + 1))
steady_after "kill -9"
same_socket "kill -9"
sleep 1
load_stop kill9 "kill -9 of kechid"

say "3. kechictl recycle $KT_APP --all on the restarted kechid: new workers get the stored socket"
top=$(max_serial "$(workers)")
fault_load recycle 16 || abort "no load generator"
sleep 1
out=$(tgt_run kechictl recycle "$KT_APP" --all 2>&1) || bad "kechictl recycle $KT_APP --all: $out"
if kt wait-new "$KT_APP" "$WORKERS" $((top + 1)) 90 > /dev/null; then
  ok "every worker replaced (serials above $top)"
else
  bad "the workers were not all replaced within 90 s"
fi
steady_after "recycle"
same_socket "recycle"
sleep 1
load_stop recycle "kechictl recycle --all"

load_summary
finish

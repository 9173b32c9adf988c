#!/bin/bash
# t_fault_bus_freeze: the system bus daemon frozen (kill -STOP of dbus-daemon) for 20 s under load
# (Starlet, lib/zero.sh), one worker's main process killed -9 meanwhile. kechid must not stand
# still while systemd cannot be reached: `kechictl status demo` is asked every second during the
# freeze and must answer within 1 s every time (it talks to kechid's control socket only; kechid
# answers from its own loop, which never waits on the bus). The dead worker is seen at once (the
# status shows it gone and its replacement waiting for its scope); after SIGCONT the replacement's
# scope is created and it serves. Afterwards: the same kechid (MainPID), exactly `workers` worker
# scopes and no stray one (the dead worker's scope with the children it left stopped), 0 failed
# requests (the killed master's Starlet children finish what they serve).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_fault_bus_freeze "system bus frozen 20 s under load, a worker killed meanwhile: kechid answers, replaces it after"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=2\", \"$KT_INSIDE/hello.psgi\"]"
ZD_PROCS=3   # Starlet's master and its 2 children
FREEZE=${KT_FREEZE:-20}
tgt_up fbusfreeze
kechi_install
zd_start

pid0=$(unit_prop "kechi@$KT_APP" MainPID)
bus=$(unit_prop dbus.service MainPID)
[ -n "$bus" ] && [ "$bus" != 0 ] || abort "no dbus-daemon (dbus.service MainPID)"
w=$(workers)
read -r vserial _ vpid <<< "$(printf '%s\n' "$w" | head -1)"
top=$(max_serial "$w")
cursor=$(journal_cursor)

# The freeze runs inside the box, one round trip: nothing here may talk to the bus. Per second:
# "status I rc RC ms MS: SUMMARY | WORKERS" (serial:state:pid), the kill after the third.
# shellcheck disable=SC2016
FREEZE_LOOP='
bus=$1 app=$2 victim=$3 secs=$4
kill -STOP "$bus" || { echo "cannot stop dbus-daemon $bus"; exit 1; }
trap "kill -CONT $bus" EXIT
for i in $(seq 1 "$secs"); do
  s=$(date +%s%N)
  out=$(timeout 5 kechictl status "$app" --json 2>&1); rc=$?
  ms=$((($(date +%s%N) - s) / 1000000))
  line=$(printf "%s" "$out" | python3 -c "
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError:
    print(\"not JSON\"); sys.exit(0)
print(s[\"summary\"], \"|\", \" \".join(\"{}:{}:{}\".format(w[\"serial\"], w[\"state\"], w[\"pid\"]) for w in s[\"workers\"]))
" 2> /dev/null)
  echo "status $i rc $rc ms $ms: $line"
  if [ "$i" = 3 ]; then kill -KILL "$victim" && echo "killed worker pid $victim"; fi
  left=$((1000 - ms)); [ "$left" -gt 0 ] && sleep "0.$(printf %03d "$left")"
done
kill -CONT "$bus" && echo "dbus-daemon continued"
trap - EXIT
'

say "freeze dbus-daemon (pid $bus) for $FREEZE s under load; kill -9 worker $vserial (pid $vpid) after 3 s"
zd_loads_start || abort "no load generator"
out=$(KT_RUN_TIMEOUT=$((FREEZE * 3 + 60)) tgt_run bash -c "$FREEZE_LOOP" freeze "$bus" "$KT_APP" "$vpid" "$FREEZE"); rc=$?
printf '%s\n' "$out" | sed 's/^/          | /'
[ "$rc" = 0 ] || bad "the freeze loop ended with status $rc"
asked=$(printf '%s\n' "$out" | grep -c '^status [0-9]* ')
answered=$(printf '%s\n' "$out" | awk '$1 == "status" && $4 == 0 && $6 + 0 <= 1000' | grep -c .)
slowest=$(printf '%s\n' "$out" | awk '$1 == "status" { m = ($6 + 0 > m) ? $6 + 0 : m } END { print m + 0 }')
expect_eq "status requests during the freeze" "$asked" "$FREEZE"
expect_eq "of them answered within 1 s (slowest ${slowest} ms)" "$answered" "$FREEZE"
check "the kill happened during the freeze" grep -q '^killed worker pid' <<< "$out"
# after the kill, while frozen: kechid saw the exit (the worker is no longer listed with its pid)
if printf '%s\n' "$out" | awk '$1 == "status" && $2 + 0 >= 6' | grep -q ":$vpid\( \|\$\)"; then
  bad "kechid did not see worker $vserial (pid $vpid) die while the bus was frozen"
else
  ok "kechid saw worker $vserial (pid $vpid) die while the bus was frozen"
fi

say "after SIGCONT: the dead worker replaced"
t0=$SECONDS new=""
while [ $((SECONDS - t0)) -lt 120 ]; do
  ZD_W=$(workers)
  new=$(printf '%s\n' "$ZD_W" | awk -v t="$top" '$1 > t && $3 != "-" { print $1 }')
  [ -n "$new" ] && break
  sleep 0.5
done
if [ -n "$new" ]; then
  ok "worker $new replaces worker $vserial, $((SECONDS - t0)) s after SIGCONT"
else
  bad "no worker with a serial above $top within 120 s after SIGCONT"
fi
show_workers "$ZD_W"
zd_loads_stop "bus frozen $FREEZE s, worker $vserial killed"
expect_eq "the same kechid (MainPID)" "$(unit_prop "kechi@$KT_APP" MainPID)" "$pid0"
zd_steady "after the freeze"
if printf '%s\n' "$(workers)" | awk '{ print $1 }' | grep -qx "$vserial"; then
  bad "worker $vserial is still listed"
else
  ok "worker $vserial is gone"
fi
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
printf '%s\n' "$log" | grep -iE 'died|started|failed|stopping|reconnect|scope' | head -n 12 | sed 's/^/          | /'
expect_eq "failed kechi units" "$(tgt_run systemctl list-units --failed --plain --no-legend 'kechi*' | grep -c .)" 0
load_summary
tgt_run systemctl stop "kechi@$KT_APP"
finish

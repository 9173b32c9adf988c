#!/bin/bash
# t_journal_watchdog: kechid's journal records carry the structured fields APP, WORKER, PID and
# REASON (so `journalctl APP=demo REASON=crash` finds them); with WatchdogSec= on the unit,
# kechid sends WATCHDOG=1 in time and systemd never kills it; STOPPING=1 on stop.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_journal_watchdog "structured journal fields; WATCHDOG=1 under WatchdogSec"
tgt_up journal
kechi_install
demo_config
tgt_run mkdir -p /etc/systemd/system/kechi@demo.service.d
printf '[Service]\nWatchdogSec=2s\n' | tgt_write /etc/systemd/system/kechi@demo.service.d/watchdog.conf
tgt_run systemctl daemon-reload
kechi_start || abort "kechi@demo did not start"
mainpid=$(unit_prop kechi@demo MainPID)
expect_eq "WatchdogUSec" "$(unit_prop kechi@demo WatchdogUSec)" 2s

say "kill -9 one worker: a crash record with its fields"
w=$(workers)
read -r serial _unit pid <<< "$(printf '%s\n' "$w" | head -1)"
tgt_run kill -9 "$pid"
deadline=$((SECONDS + 20)) found=""
while [ $SECONDS -lt $deadline ]; do
  found=$(tgt_run journalctl -o json --no-pager "APP=demo" "REASON=crash" "WORKER=$serial" | head -1)
  [ -n "$found" ] && break
  sleep 0.5
done
if [ -n "$found" ]; then ok "journalctl APP=demo REASON=crash WORKER=$serial finds the record"; else bad "no journal record with APP=demo REASON=crash WORKER=$serial"; fi
rec_pid=$(printf '%s' "$found" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("PID",""))' 2>/dev/null)
expect_eq "its PID field" "$rec_pid" "$pid"

say "three watchdog periods later kechid is the same process, still active"
sleep 7
expect_eq "kechi@demo" "$(tgt_run systemctl is-active kechi@demo)" active
expect_eq "MainPID (not restarted by the watchdog)" "$(unit_prop kechi@demo MainPID)" "$mainpid"
expect_eq "NRestarts" "$(unit_prop kechi@demo NRestarts)" 0
n=$(tgt_run journalctl -u kechi@demo --no-pager | grep -ci 'watchdog timeout')
expect_eq "watchdog timeouts in the journal" "$n" 0

tgt_run systemctl stop kechi@demo
expect_eq "after stop" "$(unit_prop kechi@demo ActiveState)" inactive
finish

#!/bin/bash
# t_journal_watchdog: kechid's journal records carry the structured fields APP, WORKER, PID and
# REASON (so `journalctl APP=demo REASON=crash` finds them); with WatchdogSec= on the unit,
# kechid sends WATCHDOG=1 in time and systemd never kills it; STOPPING=1 on stop, seen from
# systemd's side: kechid stopped by a plain SIGTERM (not by systemctl stop, so systemd has no stop
# job of its own) turns the unit "deactivating" (stop-sigterm) with STATUS "stopping workers"
# while kechid and its workers still run — systemd does that on STOPPING=1 only.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_journal_watchdog "structured journal fields; WATCHDOG=1 under WatchdogSec"
tgt_up journal
kechi_install
# the workers ignore the stop signal (WINCH), so kechid spends stop.timeout stopping them
demo_config '[stop]
signal = "WINCH"
timeout = "5s"
'
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

say "SIGTERM to kechid itself: STOPPING=1 makes systemd show the unit deactivating before it ends"
w=$(workers)
show_workers "$w"
tgt_run kill -TERM "$mainpid"
seen="" end=$((SECONDS + 15))
while [ "$SECONDS" -lt "$end" ]; do
  # (systemctl show prints the properties in its own order: sorted here)
  st=$(tgt_run systemctl show -p ActiveState -p SubState -p StatusText kechi@demo | sort | tr '\n' ' ')
  alive=$(tgt_run sh -c 'kill -0 "$1" 2>/dev/null && echo kechid-alive' alive "$mainpid")
  n=0
  while read -r _ _ pid; do
    [ -n "$pid" ] && tgt_run kill -0 "$pid" 2> /dev/null && n=$((n + 1))
  done <<< "$w"
  if [ "$alive" = kechid-alive ] && [ "$st" = "ActiveState=deactivating StatusText=stopping workers SubState=stop-sigterm " ]; then
    seen="$st $n workers alive"; break
  fi
  [ "$alive" = kechid-alive ] || break
  sleep 0.1
done
if [ -n "$seen" ]; then ok "while kechid still runs: $seen"; else bad "never saw deactivating/stop-sigterm/'stopping workers' while kechid ran (last: $st)"; fi
state=$(unit_state_within kechi@demo inactive 30)
expect_eq "after kechid ended" "$state" inactive
expect_eq "its exit status" "$(unit_prop kechi@demo ExecMainStatus)" 0
expect_eq "NRestarts (a clean stop is not restarted)" "$(unit_prop kechi@demo NRestarts)" 0
expect_eq "worker scopes left" "$(count_lines "$(workers)")" 0
finish

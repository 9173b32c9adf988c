#!/bin/bash
# t_stop: `systemctl stop kechi@demo` stops every worker and leaves nothing behind: no kechi-demo-*
# unit, no process of the app's user, no temp-dir mount or directory.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_stop "systemctl stop leaves no scope, process or temp dir"
tgt_up stop
kechi_install
demo_config
kechi_start || abort "kechi@demo did not start"
w=$(workers)
show_workers "$w"
[ "$(count_lines "$w")" = 3 ] || abort "want 3 worker scopes, got $(count_lines "$w")"
mainpid=$(unit_prop kechi@demo MainPID)
dirs=""
while read -r _ _ pid; do
  d=$(tgt_run sh -c 'tr "\0" "\n" < /proc/$1/environ | sed -n "s/^TMPDIR=//p"' env "$pid")
  [ -n "$d" ] && dirs="$dirs $d"
done <<< "$w"
info "temp dirs: $dirs"
info "user $KT_USER runs: $(tgt_run pgrep -u "$KT_USER" | tr '\n' ' ')"

say "systemctl stop kechi@demo"
t0=$SECONDS
if tgt_run timeout 120 systemctl stop kechi@demo; then
  ok "systemctl stop returned after $((SECONDS - t0)) s"
else
  bad "systemctl stop failed after $((SECONDS - t0)) s"
fi
if [ $((SECONDS - t0)) -le 30 ]; then ok "stopped within stop.timeout (30 s)"; else bad "stopping took longer than stop.timeout (30 s)"; fi
expect_eq "kechi@demo is" "$(tgt_run systemctl is-active kechi@demo)" inactive
expect_eq "kechi@demo result" "$(unit_prop kechi@demo Result)" success
expect_eq "kechid's exit status" "$(unit_prop kechi@demo ExecMainStatus)" 0
if tgt_run kill -0 "$mainpid" 2> /dev/null; then bad "kechid (pid $mainpid) still runs"; else ok "kechid (pid $mainpid) is gone"; fi

# scopes may take a moment to be garbage-collected once empty
units=""
for _ in $(seq 1 50); do
  units=$(tgt_run systemctl list-units --all --plain --no-legend --no-pager 'kechi-demo-*' | awk '{ print $1 " (" $3 "/" $4 ")" }')
  [ -z "$units" ] && break
  sleep 0.1
done
if [ -z "$units" ]; then ok "no kechi-demo-* unit left (list-units --all)"; else bad "units left: $(printf '%s' "$units" | tr '\n' ' ')"; fi
procs=$(tgt_run ps -u "$KT_USER" -o pid=,args= 2>/dev/null)
if [ -z "$procs" ]; then ok "no process of user $KT_USER left"; else bad "processes of $KT_USER left: $(printf '%s' "$procs" | tr '\n' ';')"; fi
for d in $dirs; do
  holders=$(kt mounted-anywhere "$d" | tr '\n' ' ')
  if [ -z "$holders" ]; then ok "$d: no longer mounted anywhere"; else bad "$d still mounted, seen by pids $holders"; fi
  if tgt_run test -e "$d"; then bad "$d still exists"; else ok "$d removed"; fi
done
info "left in /run/kechi: $(tgt_run find /run/kechi -mindepth 1 2>/dev/null | tr '\n' ' ')"

finish

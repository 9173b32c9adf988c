#!/bin/bash
# t_crash: a worker killed with SIGKILL is replaced by a new scope with a higher serial; an app whose
# workers exit at once makes kechid give up after restart.burst crashes (with backoff between them),
# and systemd marks kechi@demo failed instead of restarting it forever; the journal quotes what the
# dying app wrote to stderr, with a hint.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_crash "SIGKILL of a worker; a crash loop ends in 'failed'"
tgt_up crash
kechi_install
demo_config
kechi_start || abort "kechi@demo did not start"
w=$(workers)
show_workers "$w"
[ "$(count_lines "$w")" = 3 ] || abort "want 3 worker scopes, got $(count_lines "$w")"
read -r vserial vunit vpid <<< "$(printf '%s\n' "$w" | head -1)"
others=$(printf '%s\n' "$w" | tail -n +2 | awk '{ print $3 }' | sort | tr '\n' ' ')
top=$(max_serial "$w")

say "kill -9 worker $vserial (pid $vpid)"
t0=$SECONDS
tgt_run kill -KILL "$vpid"
if w2=$(kt wait-workers demo 3 $((top + 1)) 10); then
  ok "a new worker scope with a serial above $top within 10 s ($((SECONDS - t0)) s)"
else
  bad "no new worker scope with a serial above $top within 10 s"
fi
show_workers "$w2"
expect_eq "active worker scopes" "$(count_lines "$w2")" 3
if printf '%s\n' "$w2" | awk -v u="$vunit" '$2 == u { f = 1 } END { exit !f }'; then
  bad "$vunit is still active"
else
  ok "$vunit is gone ($(unit_prop "$vunit" ActiveState || true))"
fi
expect_eq "the other workers, untouched" "$(printf '%s\n' "$w2" | awk -v s="$top" '$1 <= s { print $3 }' | sort | tr '\n' ' ')" "$others"
expect_eq "kechi@demo is" "$(tgt_run systemctl is-active kechi@demo)" active

say "an app that exits at once, saying why on stderr: sys.exit(\"boom\"), restart.burst = 3"
tgt_run timeout 120 systemctl stop kechi@demo || bad "systemctl stop kechi@demo failed"
kechi_config <<EOF
command = ["/usr/bin/python3", "-c", "import sys; sys.exit('boom: no database')"]
user = "$KT_USER"
workers = 3

[ready]
mode = "delay"
delay = "1s"

[restart]
burst = 3
window = "60s"
backoff = "100ms"
EOF
cursor=$(journal_cursor)
t0=$SECONDS
tgt_run systemctl start --no-block kechi@demo
state=""
while [ $((SECONDS - t0)) -lt 30 ]; do
  state=$(tgt_run systemctl is-failed kechi@demo)
  [ "$state" = failed ] && break
  sleep 0.5
done
expect_eq "systemctl is-failed kechi@demo within 30 s" "$state" failed
info "after $((SECONDS - t0)) s: $(tgt_run systemctl show -p Result -p ExecMainCode -p ExecMainStatus -p NRestarts kechi@demo | tr '\n' ' ')"
expect_eq "kechid's exit status (69, final: no restart by systemd)" "$(unit_prop kechi@demo ExecMainStatus)" 69
expect_eq "restarts of kechid by systemd" "$(unit_prop kechi@demo NRestarts)" 0
log=$(journal_unit_after "$cursor" kechi@demo.service)
printf '%s\n' "$log" | tail -n 15 | sed 's/^/          | /'
n=$(printf '%s\n' "$log" | grep -ciE 'back-?off|backing off')
if [ "$n" -gt 0 ]; then ok "the journal shows backoff ($n lines)"; else bad "no backoff message in the journal of kechi@demo"; fi
early=$(printf '%s\n' "$log" | grep -F 'died' | grep -F 'ms after it started' | grep -F 'boom: no database' | grep -F 'kechictl check demo' | head -1)
if [ -n "$early" ]; then
  ok "the journal quotes the app's stderr, with a hint: ${early#*kechid*: }"
else
  bad "no journal line quoting the app's stderr ('boom: no database') with a hint"
fi
left=$(workers)
expect_eq "worker scopes left" "$(count_lines "$left")" 0

finish

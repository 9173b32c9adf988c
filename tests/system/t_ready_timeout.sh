#!/bin/bash
# t_ready_timeout: a reload onto a command that never gets ready (ready.mode = notify, a command
# that only sleeps, ready.timeout = 3s) under load: each replacement is killed once ready.timeout is
# over, the journal says why, the old workers keep serving with 0 failed requests and kechid does
# not give up on the app. A reload back onto the good command then replaces them, still with 0
# failed requests. One pair of wrk runs (lib/zero.sh) spans both reloads.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_ready_timeout "a replacement never ready: killed after ready.timeout, the old workers keep serving"
[ -x /usr/bin/gunicorn ] || skip "no gunicorn (Debian package gunicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_WORKERS=2
ZD_PROCS=2   # gunicorn's arbiter and 1 worker
GOOD='["/usr/bin/gunicorn", "--workers", "1", "hello_wsgi:app"]'
OBSERVE=25   # seconds of watching the app after the first replacement was killed

config() {  # config GENERATION COMMAND TIMEOUT
  kechi_config <<EOF2
command = $2
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = $ZD_WORKERS
environment = { KT_GENERATION = "$1" }

[ready]
mode = "notify"          # gunicorn sends READY=1 once its arbiter is up; sleep never does
timeout = "$3"

[stop]
timeout = "60s"
EOF2
}

tgt_up readyto
kechi_install
config 1 "$GOOD" 30s
kechi_start || abort "kechi@demo did not start"
zd_steady "start"
w0=$(workers)
top=$(max_serial "$w0")
pids0=$(printf '%s\n' "$w0" | awk '{ print $3 }' | sort | tr '\n' ' ')

step="reload: never ready"
say "$step: reload onto command = /bin/sleep 3600 (never sends READY=1), ready.timeout = 3s, under load"
config 2 '["/bin/sleep", "3600"]' 3s
zd_loads_begin || abort "no load generator"
cursor=$(journal_cursor)
t0=$SECONDS
zd_reload "$step"
log=""
while [ $((SECONDS - t0)) -lt 60 ]; do
  log=$(journal_unit_after "$cursor" kechi@demo.service fields)
  has "$log" 'keeps serving' && break
  sleep 0.2
done
t1=$SECONDS
if has "$log" 'keeps serving'; then
  ok "$step: the journal says the replacement failed and the old worker keeps serving, $((t1 - t0)) s after the reload"
  if [ $((t1 - t0)) -le 13 ]; then ok "$step: within ready.timeout 3s (+ 10 s of slack)"; else bad "$step: $((t1 - t0)) s is far beyond ready.timeout = 3s"; fi
else
  bad "$step: no 'keeps serving' in kechi@demo's journal within 60 s of the reload"
fi
say "watching the app for $OBSERVE s more, still under load"
sleep "$OBSERVE"  # an observation window: kechid must keep the old workers and not give up
log=$(journal_unit_after "$cursor" kechi@demo.service fields)
printf '%s\n' "$log" | sed 's/^/          | /' | head -n 40
n=$(printf '%s\n' "$log" | grep -c 'REASON=ready-timeout')
if [ "$n" -ge 1 ]; then ok "$step: $n journal entries with REASON=ready-timeout"; else bad "$step: no journal entry with REASON=ready-timeout"; fi
info "replacements started: $(printf '%s\n' "$log" | grep -c 'worker started'), failed: $(printf '%s\n' "$log" | grep -c 'keeps serving') (in $((SECONDS - t0)) s)"
if has "$log" -iE 'giving up|crash-loop'; then
  bad "$step: kechid gave up on the app: $(printf '%s\n' "$log" | grep -iE 'giving up|crash-loop' | head -1)"
fi
expect_eq "$step: kechi@demo is" "$(tgt_run systemctl is-active kechi@demo)" active
w1=$(workers)
show_workers "$w1"
alive=""
for p in $pids0; do tgt_run kill -0 "$p" 2> /dev/null && alive="$alive$p "; done
expect_eq "$step: the old workers (pids) still run" "$alive" "$pids0"
# a replacement is killed 3 s after it started: one older than 13 s was not
late=$(tgt_run ps -u "$KT_USER" -o pid=,etimes=,comm= | awk '$3 == "sleep" && $2 > 13 { printf "%s (%s s) ", $1, $2 }')
expect_eq "$step: never-ready replacements running longer than ready.timeout + 10 s" "$late" ""
zd_loads_mark "$step"

step="reload: good again"
say "$step: reload back onto the gunicorn command, under load"
config 3 "$GOOD" 30s
top=$(max_serial "$(workers)")
cursor=$(journal_cursor)
zd_reload "$step"
zd_wait_new "$step" "$top"
zd_settle
journal_unit_after "$cursor" kechi@demo.service fields | sed 's/^/          | /' | head -n 40
zd_steady "$step"
zd_loads_mark "$step"
zd_loads_end "whole run (both reloads)"
load_summary
finish

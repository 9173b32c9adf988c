#!/bin/bash
# t_fault_kill9: kechid killed with SIGKILL KT_KILLS times in a row (default 50) at random moments
# under load: right after systemd restarted it (while it adopts), at random later moments, and
# after a `kechictl recycle demo --all` or a `systemctl reload` so that some kills land while a
# replacement is starting (tiny.py gets ready 0.5 s after it starts) or an old worker drains.
# systemd restarts kechid every time (Restart=on-failure) and each new kechid adopts the workers.
#
# The shipped unit stops restarting a kechid that dies more than 5 times in 10 s
# (StartLimitBurst=5, StartLimitIntervalSec=10s: a kechid that crashes at once must end "failed").
# 50 deliberate kills come faster than that, so a test drop-in lifts the start limit and shortens
# RestartSec to 200ms (to keep the scenario short); everything else is the shipped unit.
#
# Afterwards: kechi@demo active with KT_KILLS restarts, exactly `workers` worker scopes (no
# orphaned, failed or duplicate kechi-demo-* unit), the app slice holds kechid and those workers'
# processes only, every worker answers requests, as many temp-dir mounts as workers, and the load
# saw 0 failed requests. Prints the kills survived and the failed requests.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_fault_kill9 "kechid killed -9 ${KT_KILLS:-50} times at random moments, mid-recycle too: adopted, no failed request"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
KILLS=${KT_KILLS:-50}
WORKERS=3

tgt_up fkill9
kechi_install
printf '[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestartSec=200ms\n' \
  | tgt_write "/etc/systemd/system/kechi@$KT_APP.service.d/kill9.conf" || abort "writing the test drop-in"
tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
fault_config 10s 'environment = { KT_TINY_READY_DELAY = "0.5" }'
kechi_start || abort "kechi@demo did not start"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"
show_workers "$(workers)"
nr0=$(unit_prop "kechi@$KT_APP" NRestarts)

# The kill loop runs inside the box, one round trip for all kills. Per kill it prints
# "kill I pid P after ACTION slept S: scopes N unit STATE" (N above WORKERS: a recycle in flight).
# shellcheck disable=SC2016
KILL_LOOP='
app=$1 kills=$2 workers=$3 prev=0
for i in $(seq 1 "$kills"); do
  end=$((SECONDS + 60))
  while :; do  # a new kechid (restarted by systemd) has to exist before it can be killed
    pid=$(systemctl show -p MainPID --value "kechi@$app")
    [ "$pid" != 0 ] && [ "$pid" != "$prev" ] && break
    [ "$SECONDS" -lt "$end" ] || { echo "no new kechid within 60 s after kill $((i - 1))"; exit 1; }
    sleep 0.05
  done
  action=nothing
  case $((RANDOM % 4)) in
    0|1) ;;
    2) action=recycle
       # wait for a control socket: a kechid just started may not listen yet
       for _ in $(seq 1 40); do kechictl recycle "$app" --all > /dev/null 2>&1 && break; sleep 0.1; done ;;
    3) action=reload; systemctl reload --no-block "kechi@$app" 2> /dev/null ;;
  esac
  s=$((RANDOM % 16)); [ "$action" = nothing ] && [ $((RANDOM % 3)) = 0 ] && s=0
  sleep "$((s / 10)).$((s % 10))"
  n=$(systemctl list-units --plain --no-legend --no-pager --state=active "kechi-$app-*.scope" | grep -c .)
  st=$(systemctl show -p ActiveState --value "kechi@$app")
  kill -KILL "$pid" || { echo "kill $i: kechid $pid was already gone"; exit 1; }
  echo "kill $i pid $pid after $action slept $((s / 10)).$((s % 10)): scopes $n unit $st"
  prev=$pid
done
'

say "$KILLS kills of kechid under load"
fault_load ka || abort "no load generator"
t0=$SECONDS
out=$(KT_RUN_TIMEOUT=$((KILLS * 20 + 60)) tgt_run bash -c "$KILL_LOOP" kill9 "$KT_APP" "$KILLS" "$WORKERS"); rc=$?
printf '%s\n' "$out" | sed 's/^/          | /'
done_kills=$(printf '%s\n' "$out" | grep -c '^kill [0-9]* pid')
mid=$(printf '%s\n' "$out" | awk -v w="$WORKERS" '$1 == "kill" && $10 + 0 > w' | grep -c .)
starting=$(printf '%s\n' "$out" | grep -c 'unit \(activating\|reloading\)')
[ "$rc" = 0 ] || bad "the kill loop ended with status $rc"
expect_eq "kills of kechid" "$done_kills" "$KILLS"
info "in $((SECONDS - t0)) s; $mid kills with a recycle in flight (more than $WORKERS worker scopes), $starting while the unit was activating or reloading"
if [ "$mid" -ge 1 ]; then ok "some kills landed mid-recycle ($mid)"; else bad "no kill landed while a recycle was in flight"; fi

state=""
t1=$SECONDS
while [ $((SECONDS - t1)) -lt 60 ]; do
  state=$(unit_prop "kechi@$KT_APP" ActiveState)
  [ "$state" = active ] && break
  sleep 0.2
done
expect_eq "kechi@$KT_APP after the last kill" "$state" active
expect_eq "restarts of kechid by systemd" "$(unit_prop "kechi@$KT_APP" NRestarts)" $((nr0 + KILLS))
if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then
  ok "exactly $WORKERS kechi-$KT_APP-* units (list-units --all), active, 1 process each, $WORKERS processes of $KT_USER"
else
  bad "not steady within 60 s: $why"
fi
w=$(workers)
show_workers "$w"

# every process in the app's slice is kechid or a worker's
mainpid=$(unit_prop "kechi@$KT_APP" MainPID)
slice_pids=$(tgt_sh "find /sys/fs/cgroup/systemd/kechi.slice/kechi-$KT_APP.slice /sys/fs/cgroup/kechi.slice/kechi-$KT_APP.slice -name cgroup.procs -exec cat {} + 2> /dev/null | sort -un | tr '\n' ' '")
want_pids=$(printf '%s\n%s\n' "$mainpid" "$(printf '%s\n' "$w" | awk '{ print $3 }')" | sort -un | tr '\n' ' ')
expect_eq "processes in kechi-$KT_APP.slice (kechid and the workers)" "$slice_pids" "$want_pids"

# every worker answers: requests over TCP until each serial has answered (at most 300)
# shellcheck disable=SC2016
seen=$(tgt_run bash -c 'for i in $(seq 1 300); do curl -s --max-time 5 "$1"; done | sed -n "s/^hello from worker \([0-9]*\) .*/\1/p" | sort -un | tr "\n" " "' get "http://$KT_LISTEN/")
expect_eq "workers answering 300 requests" "$seen" "$(printf '%s\n' "$w" | awk '{ print $1 }' | sort -un | tr '\n' ' ')"
expect_eq "tmpfs mounts under /run/kechi/$KT_APP/tmp" \
  "$(tgt_sh "findmnt -rn -o TARGET | grep -c '^/run/kechi/$KT_APP/tmp/'")" "$WORKERS"
load_stop ka "$KILLS kills"
info "journal: $(journal_unit_after "" "kechi@$KT_APP.service" | grep -c 'adopted running worker') adoptions," \
  "$(journal_unit_after "" "kechi@$KT_APP.service" | grep -c 'worker died unexpectedly') workers died unexpectedly"
load_summary
say "kill9: $done_kills kills survived, $LOAD_FAILED failed requests of $LOAD_SERVED"
finish

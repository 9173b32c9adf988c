#!/bin/bash
# t_sec_jobremoved: another local user cannot make kechid believe a systemd job ended. The bus
# policy lets any user send a signal to any peer, so an ordinary user can send kechid a
# JobRemoved(id, job, unit, "failed") of its own; kechid must count JobRemoved only from the
# current owner of org.freedesktop.systemd1.
#
# To make the forged signal reach kechid while it waits for the very job it names (and before
# the real one), systemd (the box's PID 1) is stopped with SIGSTOP right after kechid has asked
# it for a replacement worker's scope: the bus daemon keeps running, kechid's StartTransientUnit
# waits for its reply, and user nobody sends JobRemoved "failed" for the next job ids (job ids
# are sequential; one probe job just before tells the current one). Then systemd continues: its
# reply names one of those forged job paths, and its real JobRemoved "done" follows.
#
# Checks: dbus-monitor's record of the bus shows that a forged JobRemoved for the job path of
# kechid's StartTransientUnit was delivered to kechid before systemd's own (so the check below
# could fail); kechid logs that it ignored a JobRemoved not sent by the manager; the replacement
# worker runs in its scope and the recycle completes; no "ended with result 'failed'", the same
# kechid, three workers, no failed kechi unit.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_sec_jobremoved "a JobRemoved forged by another user does not end kechid's wait for its job"
[ "$KT_TIER" = v1 ] || skip "stops the box's PID 1 from the host (sdbox tier only)"
command -v dbus-monitor > /dev/null || skip "no dbus-monitor (Debian package dbus-bin)"
tgt_up jobremoved
kechi_install
demo_config
kechi_start || abort "kechi@demo did not start"
init=$(_box_init_pid "$T") || abort "no init pid for box $T"
# whatever happens below, systemd must not stay stopped
box_on_exit kill -CONT "$init"

mainpid=$(unit_prop "kechi@$KT_APP" MainPID)
w=$(workers)
show_workers "$w"
expect_eq "workers before" "$(count_lines "$w")" 3
top=$(max_serial "$w")

# kechid's and the manager's unique names on the system bus
names=$(tgt_run busctl --system list --no-legend --no-pager)
kechid_name=$(printf '%s\n' "$names" | awk -v p="$mainpid" '$1 ~ /^:/ && $2 == p { print $1; exit }')
manager_name=$(printf '%s\n' "$names" | awk '$1 == "org.freedesktop.systemd1" { print $5; exit }')
[ -n "$kechid_name" ] || abort "kechid (pid $mainpid) has no connection on the system bus"
[ -n "$manager_name" ] || abort "org.freedesktop.systemd1 has no owner"
info "kechid is $kechid_name on the system bus; org.freedesktop.systemd1 is owned by $manager_name"

# everything on the bus from here on, as the bus daemon routes it
tgt_run systemd-run --quiet --unit=kt-monitor sh -c 'exec stdbuf -oL dbus-monitor --system > /run/kt-monitor.log 2>&1' \
  || abort "starting dbus-monitor"
sleep 1
cursor=$(journal_cursor)

# the job counter now: a probe job (starting an active slice) gets the latest id
probe=$(tgt_run busctl --system call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
  org.freedesktop.systemd1.Manager StartUnit ss kechi.slice replace)
last=$(printf '%s\n' "$probe" | sed -n 's|.*/org/freedesktop/systemd1/job/\([0-9]*\)".*|\1|p')
[ -n "$last" ] || abort "no job id from the probe: $probe"
info "probe job: $last; forging JobRemoved for jobs $((last + 1))-$((last + 8))"

say "stopping systemd (PID 1 of the box, host pid $init), then asking kechid to replace worker 1"
kill -STOP "$init"
tgt_run timeout 60 kechictl recycle "$KT_APP" --worker 1 > /tmp/kt-jobremoved-recycle.$$ 2>&1 &
recycle_pid=$!
asked=0
for _ in $(seq 1 100); do
  if tgt_run grep -q "member=StartTransientUnit" /run/kt-monitor.log; then asked=1; break; fi
  sleep 0.1
done
if [ "$asked" = 1 ]; then ok "kechid sent StartTransientUnit while systemd is stopped"
else kill -CONT "$init"; abort "kechid did not call StartTransientUnit within 10 s"; fi

say "user nobody sends kechid JobRemoved(\"failed\") for jobs $((last + 1))-$((last + 8))"
sent=0
for id in $(seq $((last + 1)) $((last + 8))); do
  if tgt_run setpriv --reuid=nobody --regid=nogroup --clear-groups dbus-send --system --type=signal \
    --dest="$kechid_name" /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager.JobRemoved \
    "uint32:$id" "objpath:/org/freedesktop/systemd1/job/$id" "string:kechi-$KT_APP-$((top + 1)).scope" string:failed; then
    sent=$((sent + 1))
  fi
done
expect_eq "forged signals sent by nobody" "$sent" 8
sleep 1
say "systemd continues"
kill -CONT "$init"
wait "$recycle_pid"
info "kechictl recycle: $(tr '\n' ' ' < /tmp/kt-jobremoved-recycle.$$)"
rm -f /tmp/kt-jobremoved-recycle.$$

# the replacement (serial > top) ready and worker 1 gone, within 60 s
deadline=$((SECONDS + 60))
while :; do
  w=$(workers)
  if [ "$(max_serial "$w")" -gt "$top" ] && ! printf '%s\n' "$w" | awk '$1 == 1 { f = 1 } END { exit !f }'; then break; fi
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.5
done
show_workers "$w"
if [ "$(max_serial "$w")" -gt "$top" ]; then ok "a replacement (serial $(max_serial "$w")) runs in its scope"; else bad "no replacement worker after serial $top"; fi
if printf '%s\n' "$w" | awk '$1 == 1 { f = 1 } END { exit !f }'; then bad "worker 1 was not replaced"; else ok "worker 1 is gone"; fi
expect_eq "workers after" "$(count_lines "$w")" 3
expect_eq "the same kechid (MainPID)" "$(unit_prop "kechi@$KT_APP" MainPID)" "$mainpid"
expect_eq "failed kechi units" "$(tgt_run systemctl list-units --failed --plain --no-legend 'kechi*' | grep -c .)" 0

tgt_run systemctl stop kt-monitor
# What reached kechid: StartTransientUnit's reply (its job path), then every JobRemoved for that
# path delivered to kechid (forged: unicast from another name) or broadcast by the manager.
verdict=$(tgt_run cat /run/kt-monitor.log | python3 -c '
import re, sys
kechid, manager = sys.argv[1], sys.argv[2]
msgs, cur = [], None
for line in sys.stdin:
    if re.match(r"^(signal|method call|method return|error) ", line):
        h = {k: v.rstrip(";") for k, v in re.findall(r"(\w+)=(\S+)", line)}
        cur = {"kind": line.split(" time=")[0], "h": h, "args": []}
        msgs.append(cur)
    elif cur is not None and line.strip():
        cur["args"].append(line.strip())
calls = [m for m in msgs if m["kind"] == "method call" and m["h"].get("member") == "StartTransientUnit"
         and m["h"].get("sender") == kechid]
if not calls:
    print("none: no StartTransientUnit from", kechid); sys.exit()
serial = calls[-1]["h"]["serial"]
replies = [m for m in msgs if m["kind"] == "method return" and m["h"].get("reply_serial") == serial]
if not replies:
    print("none: no reply to StartTransientUnit"); sys.exit()
job = next((a.split(None, 2)[2].strip("\"") for a in replies[0]["args"] if a.startswith("object path")), None)
order = []
for m in msgs:
    if m["kind"] == "signal" and m["h"].get("member") == "JobRemoved" and any(job == a.split(None, 2)[-1].strip("\"") for a in m["args"] if a.startswith("object path")):
        who = m["h"].get("sender")
        dest = m["h"].get("destination")
        if who == manager:
            order.append("manager")
        elif dest == kechid:
            order.append("forged:" + m["args"][-1])
print(job, " ".join(order))
' "$kechid_name" "$manager_name")
info "job of kechid's StartTransientUnit, and the JobRemoved signals for it in bus order: $verdict"
case "$verdict" in
  none:*) bad "the monitor did not record kechid's call and its reply: $verdict" ;;
  *" forged:"*" manager"*) ok "a forged JobRemoved for kechid's job reached kechid before systemd's own" ;;
  *) bad "no forged JobRemoved for kechid's job path reached kechid before systemd's (the test proves nothing): $verdict" ;;
esac

log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
printf '%s\n' "$log" | grep -iE 'JobRemoved|job for|worker' | head -n 12 | sed 's/^/          | /'
if has "$log" "ignored a JobRemoved signal not sent by systemd's manager"; then
  ok "kechid says it ignored a JobRemoved not sent by the manager ($(printf '%s\n' "$log" | grep -c "ignored a JobRemoved") times)"
else
  bad "kechid's journal does not say it ignored the forged JobRemoved"
fi
if has "$log" "ended with result 'failed'"; then
  bad "kechid took a job as failed: $(printf '%s\n' "$log" | grep "ended with result" | head -n 2)"
else
  ok "no job taken as failed"
fi
tgt_run systemctl stop "kechi@$KT_APP"
finish

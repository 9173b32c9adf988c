#!/bin/bash
# t_pressure: `[box] pressure` arms a memory PSI trigger in every kechid (polled: the kernel wakes
# kechid, nothing is sampled); when it fires, the largest worker of the box is recycled gracefully
# (REASON=pressure, with the PSI line), one at a time box-wide, with no failed request.
#
# The pressure is made without endangering the machine: a process in a scope of its own limited
# to 48 MiB writes and reads a 256 MiB file again and again, so it reclaims page cache within its limit all
# the time; the kernel counts that reclaim as memory stall time, which shows in
# /proc/pressure/memory (the box's pressure on cgroup v1; kechi.slice's memory.pressure is used on
# cgroup v2). App demo's worker 1 (~98 MiB of USS) is the largest worker of the box.
# (The cgroup v2 demonstration, pressure made by the apps themselves in a 1 GiB machine, is not
# this scenario.)
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_pressure "a memory pressure trigger recycles the box's largest worker"
[ -r /proc/pressure/memory ] || skip "no /proc/pressure/memory (a kernel without PSI, or psi=0)"
tgt_up press
kechi_install
printf '[box]\npressure = "some 2%% 2s"\n' | tgt_write /etc/kechi/kechi.conf || abort "writing kechi.conf"
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 2
environment = { MEM_START_MB = "90,20" }

[memory]
max = "256M"

[ready]
mode = "notify"

[recycle]
check-interval = "1s"
min-interval = "1s"
EOF
cursor=$(journal_cursor)
kechi_start || abort "kechi@$KT_APP did not start"
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
if has "$log" 'memory pressure trigger armed on'; then
  ok "kechid armed the trigger: $(printf '%s\n' "$log" | grep 'memory pressure trigger armed on' | head -1)"
else
  bad "kechid did not arm a memory pressure trigger"
  printf '%s\n' "$log" | grep -i pressure | sed 's/^/          | /'
fi
load_start ka keepalive 8 1 || abort "no load generator"
sleep 3   # every worker sampled (the figures the pick rests on)

say "no pressure for 8 s: no recycle (a newly armed trigger has woken once with no stall)"
sleep 8
expect_eq "pressure recycles without pressure" "$(journal_unit_after "$cursor" "kechi@$KT_APP.service" fields | grep -c 'REASON=pressure')" 0
say "making memory pressure: a 48 MiB scope writing and reading a 256 MiB file over and over"
info "pressure before: $(head -1 /proc/pressure/memory)"
tgt_run systemd-run --unit=kt-thrash -p MemoryMax=48M -p MemoryLimit=48M sh -c 'while :; do dd if=/dev/zero of=/var/tmp/kt-big bs=1M count=256 status=none; cat /var/tmp/kt-big > /dev/null; done' > /dev/null 2>&1 \
  || abort "starting the thrasher"
t0=$SECONDS
seen=""
while [ $((SECONDS - t0)) -lt 90 ]; do
  seen=$(journal_unit_after "$cursor" "kechi@$KT_APP.service" fields | grep 'REASON=pressure' | grep 'memory pressure on the box' | head -1)
  [ -n "$seen" ] && break
  sleep 1
done
info "pressure now: $(tr '\n' ' ' < /proc/pressure/memory)"
tgt_run systemctl stop kt-thrash 2> /dev/null
tgt_run rm -f /var/tmp/kt-big
if [ -n "$seen" ]; then ok "a pressure recycle after $((SECONDS - t0)) s: $seen"; else bad "no REASON=pressure recycle within 90 s of pressure"; fi
case "$seen" in *"WORKER=1"*) ok "it was worker 1, the largest of the box" ;; *) bad "not worker 1 (the largest of the box)" ;; esac
# the recycle completes: worker 1 gone, two workers ready
for _ in $(seq 1 60); do
  w=$(workers)
  printf '%s\n' "$w" | awk '{ print $1 }' | grep -qx 1 || break
  sleep 1
done
show_workers "$w"
if printf '%s\n' "$w" | awk '{ print $1 }' | grep -qx 1; then bad "worker 1 still runs"; else ok "worker 1 was replaced"; fi
# Pressure that outlives the first recycle (the thrasher is stopped only once it is seen) may
# rightly recycle another worker, one at a time: the box settles at two workers either way.
for _ in $(seq 1 60); do
  w=$(workers)
  [ "$(count_lines "$w")" = 2 ] && break
  sleep 1
done
recycles=$(journal_unit_after "$cursor" "kechi@$KT_APP.service" | grep 'recycling it before the OOM killer acts')
info "pressure recycles: $(printf '%s\n' "$recycles" | grep -c .)"
printf '%s\n' "$recycles" | sed 's/^/          | /'
expect_eq "worker scopes once the box settled" "$(count_lines "$w")" 2
load_stop ka "through the pressure recycle"
load_summary
finish

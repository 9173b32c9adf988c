#!/bin/bash
# t_scopes: `systemctl start kechi@demo` runs three workers, each alone in its own transient scope
# kechi-demo-N.scope inside kechi-demo.slice, with the memory limit of the config on the scope and
# in the kernel, as the app's user; the unit is active and reports a status line. A replacement
# loads idle for the CPU and gets the default once ready; the worker it replaces has its CPU
# capped (and idle) before its stop signal, and kechid's own stop stops every worker uncapped.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_scopes "three workers, one scope each, with MemoryMax, as the app's user"
tgt_up scopes
kechi_install
demo_config
kechi_start || abort "kechi@demo did not start"

expect_eq "kechi@demo is" "$(tgt_run systemctl is-active kechi@demo)" active
status=$(unit_prop kechi@demo StatusText)
if [ -n "$status" ]; then ok "StatusText: $status"; else bad "StatusText is empty"; fi
expect_eq "kechi@demo's slice" "$(unit_prop kechi@demo Slice)" kechi-demo.slice
expect_eq "kechi-demo.slice's slice" "$(unit_prop kechi-demo.slice Slice)" kechi.slice
mainpid=$(unit_prop kechi@demo MainPID)
info "kechid: pid $mainpid"

say "worker scopes: systemctl list-units 'kechi-demo-*'"
tgt_run systemctl list-units --no-pager --no-legend 'kechi-demo-*' | sed 's/^/          /'
w=$(workers)
show_workers "$w"
expect_eq "active kechi-demo-N.scope units" "$(count_lines "$w")" 3

cgver=$(kt cgver)
info "cgroup memory controller: $cgver"
pids=""
while read -r serial unit pid; do
  [ -n "$serial" ] || continue
  say "scope $unit (worker $serial, pid $pid)"
  expect_eq "$unit slice" "$(unit_prop "$unit" Slice)" kechi-demo.slice
  expect_eq "$unit MemoryMax" "$(unit_prop "$unit" MemoryMax)" 67108864
  expect_eq "$unit kernel limit ($cgver $( [ "$cgver" = v2 ] && echo memory.max || echo memory.limit_in_bytes))" \
    "$(kt memlimit "$unit")" 67108864
  procs=$(kt procs "$unit" | tr '\n' ' ')
  info "$(kt memdir "$unit")/cgroup.procs: $procs"
  if [ "$pid" = - ]; then bad "$unit has no worker process"; continue; fi
  case " $procs " in *" $pid "*) ok "cgroup.procs of $unit holds the worker $pid" ;; *) bad "worker $pid not in $unit" ;; esac
  expect_eq "worker $pid's parent" "$(tgt_run ps -o ppid= -p "$pid" | tr -d ' ')" "$mainpid"
  expect_eq "worker $pid runs as" "$(tgt_run ps -o user= -p "$pid" | tr -d ' ')" kechitest
  expect_eq "worker $pid command" "$(tgt_run ps -o args= -p "$pid")" "/usr/bin/python3 $KT_INSIDE/hello.py"
  pids="$pids $pid"
done <<< "$w"
distinct=$(printf '%s\n' "$pids" | tr ' ' '\n' | sort -u | grep -c .)
expect_eq "distinct worker pids" "$distinct" 3

# the sockets of kechi@demo.socket reach the workers: its Unix socket, and TCP from the drop-in
code=$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$KT_LISTEN/")
expect_eq "GET http://$KT_LISTEN/ (kechi@demo.socket, drop-in)" "$code" 200
code=$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket "/run/kechi/$KT_APP.sock" http://localhost/)
expect_eq "GET on /run/kechi/$KT_APP.sock (kechi@demo.socket)" "$code" 200

# A replacement loads beside serving workers in a scope idle for the CPU (the loading burst must
# not delay them): CPUWeight=idle, and cpu.idle=1 in the kernel (on v2 systemd writes it, on v1
# kechid does); once ready (ready.mode delay: 1 s here) it gets systemd's default weight and
# cpu.idle=0.
say "a replacement loads idle for the CPU (CPUWeight=idle, cpu.idle=1), then gets the default"
cursor=$(journal_cursor)
new=$(($(max_serial "$w") + 1))
tgt_run kechictl recycle "$KT_APP" --worker 1 > /dev/null || bad "kechictl recycle $KT_APP --worker 1 failed"
scope="kechi-$KT_APP-$new.scope"
cg="kechi.slice/kechi-$KT_APP.slice/$scope"
# cpu.idle of the new scope in the kernel: the v1 cpu hierarchy, or the v2 unified one
cpu_idle() { tgt_run sh -c 'for f in "$@"; do [ -e "$f" ] && exec cat "$f"; done; echo none' idle \
  "/sys/fs/cgroup/cpu/$cg/cpu.idle" "/sys/fs/cgroup/cpu,cpuacct/$cg/cpu.idle" "/sys/fs/cgroup/$cg/cpu.idle"; }
weight="" kernel=""
for _ in $(seq 1 100); do
  weight=$(unit_prop "$scope" CPUWeight 2> /dev/null)
  kernel=$(cpu_idle)
  [ "$weight" = idle ] && [ "$kernel" = 1 ] && break
  sleep 0.02
done
expect_eq "$scope CPUWeight while it loads" "$weight" idle
expect_eq "$scope cpu.idle in the kernel while it loads" "$kernel" 1
for _ in $(seq 1 100); do
  w=$(workers)
  ! printf '%s\n' "$w" | awk '{ print $1 }' | grep -qx 1 && [ "$(count_lines "$w")" = 3 ] && break
  sleep 0.2
done
printf '%s\n' "$w" | awk '{ print $1 }' | grep -qx 1 && bad "worker 1 was not replaced"
for _ in $(seq 1 50); do
  weight=$(unit_prop "$scope" CPUWeight)
  kernel=$(cpu_idle)
  [ "$weight" != idle ] && [ "$kernel" != 1 ] && break
  sleep 0.1
done
case "$weight" in
  idle) bad "$scope still has CPUWeight=idle once ready" ;;
  *) ok "$scope CPUWeight once ready: ${weight:-unset} (systemd's default)" ;;
esac
# (none: on v1 systemd leaves the cpu hierarchy to a scope with no CPU setting of its own, and its
# processes run in the slice's cpu cgroup, which is not idle)
case "$kernel" in
  0 | none) ok "$scope cpu.idle in the kernel once ready: $kernel" ;;
  *) bad "$scope cpu.idle in the kernel once ready: $kernel, want 0 (or no cpu cgroup of its own)" ;;
esac

# The worker it replaced was stopped while two others served: its CPU was capped first
# (CPUQuota=50%, CPUWeight=idle), then it got its signal. kechid's own stop stops every worker
# uncapped.
say "the replaced worker's CPU is capped before its stop signal; a shutdown's stops are not"
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
stop1=$(printf '%s\n' "$log" | grep -m1 'stopping worker with SIG')
info "kechid: ${stop1:-no stop line}"
case "$stop1" in
  *"CPU capped at half a CPU, and idle"*) ok "worker 1 was capped before its stop signal" ;;
  *) bad "worker 1's stop signal came without the CPU cap: '$stop1'" ;;
esac
cursor=$(journal_cursor)
tgt_run systemctl stop "kechi@$KT_APP.service" "kechi@$KT_APP.socket"
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
n=$(printf '%s\n' "$log" | grep -c 'stopping worker with SIG')
capped=$(printf '%s\n' "$log" | grep -c 'CPU capped')
expect_eq "stop signals at kechid's stop" "$n" 3
expect_eq "of them capped" "$capped" 0
finish

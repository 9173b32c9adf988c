#!/bin/bash
# bench/pressure-v2/run.sh: the demonstration with and without the trigger (tests/run.sh runs its
# step with the trigger alone as tests/system/t_pressure_v2.sh). Run it with
#   sudo bash bench/pressure-v2/run.sh        (needs ../shared/vmbox; about 10 minutes)
# docs/benchmarks/pressure-v2.md has its runs. With its defaults (the box as the first seed runs
# it: the machine's memory is the limit, and there is swap) it passes with a kechid that arms its
# trigger on /proc/pressure/memory when kechi.slice has no memory limit of its own
# (kechi::psi::box_pressure_file; run 7); a kechid that arms it on kechi.slice's memory.pressure
# whatever the slice's limits never sees the pressure, and the VM livelocks (run 6).
#
# t_pressure_v2: memory pressure met by a graceful recycle, never by the OOM killer, on a pure
# cgroup v2 machine with PSI: the cgroup v2 VM (vmbox's qemu backend: 1 GiB, 2 vCPUs). Skipped
# when no VM can be had, or when the VM's kernel has no PSI (vmbox's uml backend).
#
# The box is driven towards its memory limit by the apps themselves: four mem_app.py workers, each
# keeping MEM_LEAK_KB of every request it serves (half of it random: zram packs it ~2:1, as a real
# heap) and reading MEM_TOUCH_KB of what it holds again at random (a cache: pages that went to
# swap come back in), under the same wrk traffic in both steps. The box has a zram swap device of
# PV_SWAP (the VM has no disk; the seed's 1 GiB box is "always in swap"), and its limit is the
# machine's memory: no limit on kechi.slice, each worker's own memory.max (2G) far above it. Two
# steps in the same VM, the same app, the same traffic, for the same time:
#   with `[box] pressure` in /etc/kechi/kechi.conf: kechid arms a trigger on the box's pressure
#     file; when it fires, the largest worker is recycled gracefully (REASON=pressure): at least
#     one such recycle, 0 failed requests, no OOM kill;
#   without it: the box ends in OOM kills (oom_kill of /proc/vmstat, and the kernel's "out of
#     memory" lines), failed requests, or a VM that stops answering (swap thrash); those are
#     reported, not judged, and the step must show at least one of them (else the traffic made no
#     pressure and the first step proves nothing).
# The step with the trigger runs first: the step without it may leave the VM damaged, and nothing
# after it depends on the VM.
#
# Where the pressure shows: a cgroup's memory.pressure counts only its own tasks' stalls. With the
# machine's memory as the limit, most reclaim is kswapd's, a kernel thread in no slice: in run 6
# kechi.slice's some avg10 stayed at 0-3% while /proc/pressure/memory's was 10-16%. With a limit
# on kechi.slice (PV_SLICE_HIGH, PV_SLICE_MAX: MemoryHigh= where the kernel reclaims and throttles
# the slice's tasks, MemoryMax= where its OOM killer acts), the slice's own file shows it (runs
# 3-5), but MemoryHigh= throttles kechid and the replacement workers with the rest. Without swap
# and without a slice limit (runs 1-2), kechi.slice's pressure stayed at 0.00 down to 16 MiB
# available, then the VM thrashed its page cache for minutes with no OOM kill.
#
# Knobs: PV_STEPS (below), PV_SECONDS (each step's traffic, default 200), PV_LEAK_KB (128), PV_LEAK_RANDOM (1; 0:
# blocks of 0x01, which zram keeps as nothing), PV_TOUCH_KB (256), PV_DELAY_MS (100), PV_CONNS (8),
# PV_PRESSURE ("some 5% 2s"), PV_SWAP (512M; 0: none), PV_SLICE_HIGH and PV_SLICE_MAX (empty: no
# limit on kechi.slice; runs 3-5 had 360M and 420M, without swap).
KT_TIER=${KT_TIER:-v2}
. "$(dirname "$(readlink -f "$0")")/../../tests/system/lib/scenario.sh"

PV_SECONDS=${PV_SECONDS:-200}
# PV_STEPS: "with-trigger without-trigger" (default), or "with-trigger" alone (tests/system/
# t_pressure_v2.sh: the trigger's own proof is that it fired, and the step without it may leave
# the VM livelocked for minutes)
PV_STEPS=${PV_STEPS:-with-trigger without-trigger}
PV_LEAK_KB=${PV_LEAK_KB:-128}
PV_DELAY_MS=${PV_DELAY_MS:-100}
PV_CONNS=${PV_CONNS:-8}
PV_PRESSURE=${PV_PRESSURE:-some 5% 2s}
PV_SLICE_HIGH=${PV_SLICE_HIGH:-}
PV_SLICE_MAX=${PV_SLICE_MAX:-}
PV_SWAP=${PV_SWAP:-512M}
PV_LEAK_RANDOM=${PV_LEAK_RANDOM:-1}
PV_TOUCH_KB=${PV_TOUCH_KB:-256}
# where kechid must arm its trigger: kechi.slice's file when the slice has a limit of its own
if [ -n "$PV_SLICE_HIGH$PV_SLICE_MAX" ]; then PV_PSI_FILE=/sys/fs/cgroup/kechi.slice/memory.pressure; else PV_PSI_FILE=/proc/pressure/memory; fi

scenario t_pressure_v2 "memory pressure made by the apps: graceful recycles with the trigger, OOM kills without"
[ "$KT_TIER" = v2 ] || skip "the cgroup v2 VM's scenario (KT_TIER=v2)"
# PSI is in vmbox's qemu backend only; its default on CPUs without AMX is uml, which has none:
# this scenario asks for qemu, and does not take a shared VM without PSI (scenario.sh)
export VMBOX_BACKEND=${VMBOX_BACKEND:-qemu} KT_VM_WANT_PSI=1
tgt_up psi
tgt_run test -r /proc/pressure/memory || skip "the VM's kernel has no PSI (vmbox's uml backend; the qemu one has it)"
tgt_run test -e /sys/fs/cgroup/cgroup.controllers || abort "not a cgroup v2 machine"
info "VM memory: $(tgt_sh "awk '/^(MemTotal|MemAvailable|SwapTotal):/ { printf \"%s %d MiB  \", \$1, \$2 / 1024 }' /proc/meminfo")"
kechi_install
if [ "$PV_SWAP" != 0 ]; then
  # zram, the one swap the VM can have (it has no disk); insmod: its module tree has no modules.dep
  # shellcheck disable=SC2016
  tgt_sh '[ -e /sys/block/zram0 ] || { k=/lib/modules/$(uname -r)/kernel; insmod $k/mm/zsmalloc.ko; insmod $k/drivers/block/zram/zram.ko; }' || abort "loading zram"
  tgt_sh "echo $PV_SWAP > /sys/block/zram0/disksize && mkswap /dev/zram0 > /dev/null && swapon /dev/zram0" || abort "zram swap"
  say "swap: zram of $PV_SWAP"
fi
if [ -n "$PV_SLICE_HIGH$PV_SLICE_MAX" ]; then
  printf '[Slice]\nMemoryHigh=%s\nMemoryMax=%s\n' "${PV_SLICE_HIGH:-infinity}" "${PV_SLICE_MAX:-infinity}" |
    tgt_write /etc/systemd/system/kechi.slice.d/limits.conf || abort "writing kechi.slice's drop-in"
  tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
  say "kechi.slice: MemoryHigh=${PV_SLICE_HIGH:-infinity} (pressure starts), MemoryMax=${PV_SLICE_MAX:-infinity} (the OOM killer)"
else
  say "kechi.slice: no limit of its own; the box's limit is the VM's memory (and swap)"
fi
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 4
environment = { MEM_LEAK_KB = "$PV_LEAK_KB", MEM_DELAY_MS = "$PV_DELAY_MS", MEM_LEAK_RANDOM = "$PV_LEAK_RANDOM", MEM_TOUCH_KB = "$PV_TOUCH_KB" }

[memory]
max = "2G"

[ready]
mode = "notify"

[recycle]
check-interval = "1s"
min-interval = "1s"
EOF

# "OOM_KILL GLOBAL MEMCG": the kernel's oom_kill count, and its "Out of memory" lines so far: of
# the whole machine (the global OOM killer) and of a cgroup's limit
oom_figures() {
  # shellcheck disable=SC2016
  tgt_sh 'k=$(dmesg 2>/dev/null); printf "%s %s %s\n" "$(awk "/^oom_kill /{ print \$2 }" /proc/vmstat)" \
    "$(printf "%s\n" "$k" | grep -c "^\[[ 0-9.]*\] Out of memory: Killed process")" "$(printf "%s\n" "$k" | grep -c "Memory cgroup out of memory: Killed process")"'
}

# one line of the box's state: free memory, kechi.slice's memory and pressure, the workers' sizes
box_line() {
  # shellcheck disable=SC2016
  tgt_sh 'avail=$(awk "/^MemAvailable:/{ print int(\$2 / 1024) }" /proc/meminfo)
    swap=$(awk "/^SwapTotal:/{ t = \$2 } /^SwapFree:/{ f = \$2 } END { print int((t - f) / 1024) }" /proc/meminfo)
    cur=$(( $(cat /sys/fs/cgroup/kechi.slice/memory.current 2>/dev/null || echo 0) >> 20 ))
    psi=$(sed -n "s/^some avg10=\([^ ]*\) .*/\1/p" /sys/fs/cgroup/kechi.slice/memory.pressure 2>/dev/null)
    gpsi=$(sed -n "s/^some avg10=\([^ ]*\) .*/\1/p" /proc/pressure/memory 2>/dev/null)
    sizes=""
    for d in /sys/fs/cgroup/kechi.slice/kechi-demo.slice/*.scope; do
      [ -r "$d/memory.current" ] && sizes="$sizes $(( $(cat "$d/memory.current") >> 20 ))"
    done
    ev=$(awk "/^(high|oom_kill) /{ printf \" %s %s\", \$1, \$2 }" /sys/fs/cgroup/kechi.slice/memory.events 2>/dev/null)
    echo "available ${avail} MiB, swap used ${swap} MiB, kechi.slice ${cur} MiB (events:${ev}), some avg10 ${psi:-?}% (the machine: ${gpsi:-?}%), workers (MiB):${sizes:- none}"'
}

# step NAME PRESSURE: the app under the traffic for PV_SECONDS, with [box] pressure = PRESSURE (or
# no kechi.conf if empty); sets STEP_OOM STEP_GLOBAL STEP_MEMCG STEP_PRESSURE STEP_FAILED STEP_SERVED
# STEP_MIN_AVAIL
step() {
  local name=$1 pressure=$2 before after cursor log t0 line avail
  if [ -n "$pressure" ]; then
    printf '[box]\npressure = "%s"\n' "$pressure" | tgt_write /etc/kechi/kechi.conf || abort "writing kechi.conf"
    say "step '$name': /etc/kechi/kechi.conf has [box] pressure = \"$pressure\""
  else
    tgt_run rm -f /etc/kechi/kechi.conf
    say "step '$name': no /etc/kechi/kechi.conf (no pressure trigger)"
  fi
  before=$(oom_figures)
  cursor=$(journal_cursor)
  kechi_start || abort "kechi@$KT_APP did not start"
  log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
  if [ -n "$pressure" ]; then
    if printf '%s\n' "$log" | grep -q "memory pressure trigger armed on $PV_PSI_FILE"; then
      ok "kechid armed the trigger on $PV_PSI_FILE: $(printf '%s\n' "$log" | grep 'memory pressure trigger armed on' | head -1)"
    else
      bad "kechid did not arm a trigger on $PV_PSI_FILE"
      printf '%s\n' "$log" | grep -i pressure | sed 's/^/          | /'
    fi
  else
    expect_eq "triggers armed without kechi.conf" "$(printf '%s\n' "$log" | grep -c 'memory pressure trigger armed')" 0
  fi
  info "before the traffic: $(box_line)"
  load_start "$name" keepalive "$PV_CONNS" 2 || abort "no load generator"
  say "traffic for $PV_SECONDS s: $PV_CONNS keep-alive connections, each request ${PV_DELAY_MS} ms and $PV_LEAK_KB KiB kept by its worker"
  t0=$SECONDS STEP_MIN_AVAIL=999999
  while [ $((SECONDS - t0)) -lt "$PV_SECONDS" ]; do
    line=$(KT_RUN_TIMEOUT=30 box_line)
    info "[+$((SECONDS - t0))s] $line"
    avail=$(printf '%s\n' "$line" | sed -n 's/^available \([0-9]*\) MiB.*/\1/p')
    [ -n "$avail" ] && [ "$avail" -lt "$STEP_MIN_AVAIL" ] && STEP_MIN_AVAIL=$avail
    sleep 5
  done
  # a VM thrashing its page cache (no swap) can stop answering for minutes instead of OOM-killing
  STEP_HUNG=0
  KT_RUN_TIMEOUT=120 tgt_run true || STEP_HUNG=1
  if [ "$STEP_HUNG" = 1 ]; then
    info "the VM did not answer within 120 s: livelocked by memory thrash, the load generator with it"
    STEP_SERVED=? STEP_FAILED=? STEP_OOM=? STEP_GLOBAL=? STEP_MEMCG=? STEP_PRESSURE=?
    _load_row "$name" "$name" "?" "?" "the VM stopped answering"
    return
  fi
  if [ -n "$pressure" ]; then KT_RUN_TIMEOUT=180 load_stop "$name" "$name"; else KT_RUN_TIMEOUT=180 load_stop "$name" "$name" witness; fi
  STEP_SERVED=$LOAD_SERVED STEP_FAILED=$LOAD_FAILED
  after=$(KT_RUN_TIMEOUT=60 oom_figures)
  read -r b_oom b_glob b_memcg <<< "$before"
  read -r a_oom a_glob a_memcg <<< "$after"
  STEP_OOM=$((${a_oom:-0} - b_oom)) STEP_GLOBAL=$((${a_glob:-0} - b_glob)) STEP_MEMCG=$((${a_memcg:-0} - b_memcg))
  log=$(KT_RUN_TIMEOUT=120 journal_unit_after "$cursor" "kechi@$KT_APP.service" fields)
  STEP_PRESSURE=$(printf '%s\n' "$log" | grep 'REASON=pressure' | grep -c 'memory pressure on the box')
  printf '%s\n' "$log" | grep 'REASON=pressure' | grep 'memory pressure on the box' | head -3 | sed 's/^/          | /'
  if [ -n "$pressure" ] && [ "$STEP_FAILED" != 0 ]; then
    # what a failed request needs to be explained: every worker's start, stop and end, with time
    info "kechi@$KT_APP's worker lines of this step (a failed request above):"
    KT_RUN_TIMEOUT=120 tgt_journal -o short-precise -u "kechi@$KT_APP.service" |
      grep -E 'WORKER|worker|mem_app|SIGKILL|died|ready' | tail -80 | sed 's/^/          | /'
    tgt_sh 'dmesg | grep -iE "out of memory|oom-kill|killed process|page allocation failure|blocked for more than|hung_task" | tail -20' | sed 's/^/          | kernel: /'
  fi
  info "step '$name': served $STEP_SERVED, failed $STEP_FAILED; OOM kills $STEP_OOM (global $STEP_GLOBAL, cgroup limit $STEP_MEMCG); pressure recycles $STEP_PRESSURE; least memory available ${STEP_MIN_AVAIL} MiB"
  [ -n "$pressure" ] || return 0  # the last step: the VM goes down as it is
  tgt_run timeout 120 systemctl stop "kechi@$KT_APP" || bad "systemctl stop kechi@$KT_APP"
  tgt_run systemctl reset-failed > /dev/null 2>&1
}

step with-trigger "$PV_PRESSURE"
W_OOM=$STEP_OOM W_FAILED=$STEP_FAILED W_PRESSURE=$STEP_PRESSURE W_SERVED=$STEP_SERVED W_AVAIL=$STEP_MIN_AVAIL
[ "$STEP_HUNG" = 0 ] || abort "with the trigger, the VM stopped answering (thrash): the trigger did not act in time"
if [ "$W_PRESSURE" -ge 1 ]; then ok "with the trigger: $W_PRESSURE graceful REASON=pressure recycles"; else bad "with the trigger: no REASON=pressure recycle"; fi
expect_eq "with the trigger: OOM kills" "$W_OOM" 0

if [ "$PV_STEPS" = with-trigger ]; then
  load_summary
  finish
fi

step without-trigger ""
N_OOM=$STEP_OOM N_FAILED=$STEP_FAILED N_PRESSURE=$STEP_PRESSURE N_SERVED=$STEP_SERVED N_AVAIL=$STEP_MIN_AVAIL
if [ "$STEP_HUNG" = 1 ]; then
  ok "without the trigger, the same traffic left the VM livelocked by memory thrash (it stopped answering)"
  N_OOM="?" N_FAILED="?"
elif expect_eq "without the trigger: pressure recycles" "$N_PRESSURE" 0; [ "$N_OOM" -ge 1 ] || [ "$N_FAILED" -ge 1 ]; then
  ok "without the trigger, the same traffic ends in $N_OOM OOM kills and $N_FAILED failed requests"
else
  bad "without the trigger: no OOM kill and no failed request (the traffic made no real pressure: the step with the trigger proves nothing)"
fi

say "the same app and traffic ($PV_SECONDS s each), with and without [box] pressure:"
printf '          %-16s %9s %7s %10s %19s %15s\n' STEP SERVED FAILED "OOM KILLS" "PRESSURE RECYCLES" "MIN AVAIL MiB"
printf '          %-16s %9s %7s %10s %19s %15s\n' with-trigger "$W_SERVED" "$W_FAILED" "$W_OOM" "$W_PRESSURE" "$W_AVAIL"
printf '          %-16s %9s %7s %10s %19s %15s\n' without-trigger "$N_SERVED" "$N_FAILED" "$N_OOM" "$N_PRESSURE" "$N_AVAIL"
load_summary
finish

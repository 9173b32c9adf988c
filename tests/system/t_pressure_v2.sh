#!/bin/bash
# t_pressure_v2: `[box] pressure` on a pure cgroup v2 machine with PSI and swap (the cgroup v2 VM,
# 1 GiB, zram swap), pressure made by the app itself: kechid arms its trigger on the machine's
# /proc/pressure/memory (kechi.slice has no limit of its own), the trigger fires, the largest
# worker is recycled gracefully (REASON=pressure), no OOM kill, no failed request, and the VM
# keeps answering. The step of bench/pressure-v2/run.sh with the trigger; the run with and
# without it (the VM livelocks without) is that benchmark's (docs/benchmarks/pressure-v2.md).
# Skipped when no VM can be had, or when the VM's kernel has no PSI.
KT_TIER=v2 PV_STEPS=with-trigger PV_SECONDS=${PV_SECONDS:-150} \
  exec bash "$(dirname "$(readlink -f "$0")")/../../bench/pressure-v2/run.sh" "$@"

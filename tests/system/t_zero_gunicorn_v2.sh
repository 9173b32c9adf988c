#!/bin/bash
# t_zero_gunicorn_v2: t_compat_gunicorn_sync on a pure cgroup v2 hierarchy, in a VM (skipped when no VM can
# be had). Without the age and reload steps: the VM is slow (the reload step alone took 160 s), and
# both replace every worker the way recycle --all does, which this row runs; what differs on v2 is
# how kechid starts, stops and finds the scopes, and adopts those of a previous kechid (restart,
# kill -9), which it runs too. The v1 row runs every step.
# The VM's kernel (User-mode Linux) has no /proc/PID/syscall, so ready.mode accept falls back to
# ready.delay there: 5 s, for gunicorn's workers to load the app on a slow single-CPU VM.
# Steered (ReusePort=yes, src/steer/): the v1 row runs gunicorn on a shared socket, this one on
# sockets of each worker's own, so both ways run under a real systemd, and steering on the VM's
# own kernel too.
ZD_STEER=1 ZD_READY_DELAY=5s ZD_SKIP='age reload' KT_TIER=v2 exec bash "$(dirname "$(readlink -f "$0")")/t_compat_gunicorn_sync.sh" "$@"

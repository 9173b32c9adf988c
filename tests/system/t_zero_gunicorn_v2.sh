#!/bin/bash
# t_zero_gunicorn_v2: t_compat_gunicorn_sync on a pure cgroup v2 hierarchy, in a VM (skipped when no VM can
# be had). Without the age step: the VM is slow, and age recycling is the same choreography as a
# reload; what differs on v2 is how kechid finds and adopts the scopes of a previous kechid.
# The VM's kernel (User-mode Linux) has no /proc/PID/syscall, so ready.mode accept falls back to
# ready.delay there: 5 s, for gunicorn's workers to load the app on a slow single-CPU VM.
# Steered (ReusePort=yes, src/steer/): the v1 row runs gunicorn on a shared socket, this one on
# sockets of each worker's own, so both ways run under a real systemd, and steering on the VM's
# own kernel too.
ZD_STEER=1 ZD_READY_DELAY=5s ZD_SKIP=age KT_TIER=v2 exec bash "$(dirname "$(readlink -f "$0")")/t_compat_gunicorn_sync.sh" "$@"

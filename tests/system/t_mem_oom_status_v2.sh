#!/bin/bash
# t_mem_oom_status_v2: t_mem_oom_status on a pure cgroup v2 hierarchy, in a VM (skipped when no VM can be had)
KT_TIER=v2 exec bash "$(dirname "$(readlink -f "$0")")/t_mem_oom_status.sh" "$@"

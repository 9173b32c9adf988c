#!/bin/bash
# t_oom_v2: t_oom on a pure cgroup v2 hierarchy, in a VM (skipped when no VM can be had)
KT_TIER=v2 exec bash "$(dirname "$(readlink -f "$0")")/t_oom.sh" "$@"

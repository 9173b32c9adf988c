#!/bin/bash
# t_scopes_v2: t_scopes on a pure cgroup v2 hierarchy (memory.max), in a VM (skipped when no VM can be had)
KT_TIER=v2 exec bash "$(dirname "$(readlink -f "$0")")/t_scopes.sh" "$@"

#!/bin/bash
# t_oom: a worker that allocates past its memory.max is killed by the kernel inside its own scope;
# the other workers are untouched; the worker is replaced (new serial) and the journal says oom-kill.
# Runs on this machine's cgroups (KT_TIER=v1, the default) and, via t_oom_v2.sh, on pure cgroup v2.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_oom "OOM kill inside one worker's scope, and its replacement"
tgt_up oom
kechi_install
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hog.py"]
user = "$KT_USER"
workers = 3
environment = { HOG_STEP_MB = "4", HOG_INTERVAL = "0.02" }

[memory]
max = "64M"

[ready]
mode = "delay"
delay = "1s"
EOF
kechi_start || abort "kechi@demo did not start"
cgver=$(kt cgver)
w=$(workers)
show_workers "$w"
[ "$(count_lines "$w")" = 3 ] || abort "want 3 worker scopes, got $(count_lines "$w")"
read -r vserial vunit vpid <<< "$(printf '%s\n' "$w" | head -1)"
others=$(printf '%s\n' "$w" | tail -n +2 | awk '{ print $3 }' | sort | tr '\n' ' ')
top=$(max_serial "$w")
limit=$(kt memlimit "$vunit")
expect_eq "$vunit limit ($cgver)" "$limit" 67108864
slice_before=""
if [ "$cgver" = v2 ]; then
  slice_before=$(tgt_run awk '$1 == "oom_kill" { print $2 }' "$(dirname "$(kt memdir "$vunit")")/memory.events")
fi
cursor=$(journal_cursor)

say "SIGUSR1 to worker $vserial (pid $vpid): it allocates 4 MiB steps until it is stopped"
t0=$SECONDS
tgt_run kill -USR1 "$vpid"
figures=$(kt oomwatch "$vunit" "$vpid" 60)
info "watched $vunit for $((SECONDS - t0)) s: $figures"
fig() { printf '%s\n' "$figures" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
expect_eq "worker $vpid" "$(fig ended)" gone
peak=$(fig max_usage)
if [ "$peak" -gt 0 ] && [ "$peak" -le "$limit" ]; then
  ok "memory peak of the scope $peak <= limit $limit"
elif [ "$peak" = 0 ] && [ "$(fig ended)" = gone ]; then
  # a loaded machine: the kill and systemd's removal of the emptied scope came before the first
  # sample; the kernel's own report below (oom_memcg = this scope) is the evidence then
  info "memory peak of the scope not sampled: the scope was gone before the first sample"
else
  bad "memory peak of the scope $peak, limit $limit"
fi

# evidence that the kernel's OOM killer did it, inside this scope
evidence=""
[ "$(fig oom_kill)" -gt 0 ] 2>/dev/null && evidence="$evidence scope-oom_kill=$(fig oom_kill)"
if [ "$cgver" = v2 ]; then
  slice_after=$(fig slice_oom_kill)
  info "kechi-demo.slice memory.events oom_kill: ${slice_before:-?} -> ${slice_after:-?}"
  [ -n "$slice_before" ] && [ -n "$slice_after" ] && [ "$slice_after" -gt "$slice_before" ] && evidence="$evidence slice-oom_kill=+$((slice_after - slice_before))"
fi
info "limit hits (${cgver}: $( [ "$cgver" = v2 ] && echo 'memory.events max' || echo memory.failcnt)): $(fig failcnt)"
memcg="task_memcg=$(tgt_cgprefix)/kechi.slice/kechi-demo.slice/$vunit,"
klines=""
for _ in $(seq 1 50); do
  klines=$(tgt_journal -k -o cat | grep -F -A1 "$memcg")
  [ -n "$klines" ] && break
  sleep 0.2
done
if [ -n "$klines" ]; then
  evidence="$evidence kernel-log"
  printf '%s\n' "$klines" | cut -c 1-220 | sed 's/^/          kernel: /'
else
  info "no kernel log line names $memcg (journald may not see the kernel log here)"
fi
if [ -n "$evidence" ]; then ok "killed by the kernel's OOM killer inside $vunit:$evidence"; else bad "no sign of an OOM kill in $vunit (no oom_kill counter, no kernel log line)"; fi
info "$vunit afterwards: $(tgt_run systemctl show -p ActiveState -p Result "$vunit" 2>/dev/null | tr '\n' ' ')"

alive=""
for p in $others; do tgt_run kill -0 "$p" 2> /dev/null && alive="$alive$p "; done
expect_eq "the other workers, alive" "$alive" "$others"
if w2=$(kt wait-workers demo 3 $((top + 1)) 15); then
  ok "replaced: a new worker with a serial above $top, 3 workers"
else
  bad "not back to 3 workers with a new serial within 15 s"
fi
show_workers "$w2"
expect_eq "the other workers, still in place" "$(printf '%s\n' "$w2" | awk -v s="$top" '$1 <= s { print $3 }' | sort | tr '\n' ' ')" "$others"
log=$(journal_unit_after "$cursor" kechi@demo.service)
printf '%s\n' "$log" | grep -v '^hog: [0-9]* MiB$' | tail -n 8 | sed 's/^/          | /'
if has "$log" -i 'oom'; then ok "the journal of kechi@demo says oom-kill"; else bad "the journal of kechi@demo never mentions an OOM kill"; fi
expect_eq "kechi@demo is" "$(tgt_run systemctl is-active kechi@demo)" active

finish

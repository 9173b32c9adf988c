#!/bin/bash
# t_mem_oom_status: a worker that allocates past its memory.max (64M) in the middle of a request is
# killed by the kernel; kechid reports it as oom-kill: in the journal (REASON=oom-kill, WORKER and
# PID of that worker) and in the recent events of `kechictl status` (table and --json); the worker
# is replaced, the other one untouched. Runs on this machine's cgroups (KT_TIER=v1, the default)
# and, via t_mem_oom_status_v2.sh, on pure cgroup v2 in a VM.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$KT_ROOT/tests/system/lib/mem.sh"

scenario t_mem_oom_status "an OOM kill in the journal and in kechictl status"
tgt_up memoom
kechi_install
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 2

[memory]
max = "64M"

[ready]
mode = "notify"
timeout = "30s"
EOF
kechi_start || abort "kechi@demo did not start"
w=$(kt wait-workers "$KT_APP" 2 1 30) || abort "not 2 workers within 30 s"
show_workers "$w"
top=$(max_serial "$w")
cursor=$(journal_cursor)

say "GET /grow?mb=200: the worker that takes it allocates 4 MiB steps past its 64M"
out=$(tgt_run curl -s -m 60 -o /dev/null -w '%{http_code}' "http://$KT_LISTEN/grow?mb=200" 2>&1); rc=$?
info "curl: exit $rc, HTTP ${out:-none}"
[ "$out" != 200 ] && ok "the request was not answered (its worker died)" || bad "GET /grow?mb=200 answered 200: no OOM kill"

if rec=$(mem_wait_journal "$cursor" '^REASON=oom-kill ' 30); then
  printf '%s\n' "$rec" | sed 's/^/          | /'
  ok "journal: REASON=oom-kill"
else
  bad "no REASON=oom-kill record within 30 s; kechid's records since:"
  mem_journal "$cursor" | tail -n 8 | sed 's/^/          | /'
  journal_unit_after "$cursor" "kechi@$KT_APP.service" | grep -v '^mem_app: ' | tail -n 8 | sed 's/^/          | /'
fi
if w2=$(kt wait-workers "$KT_APP" 2 $((top + 1)) 30); then ok "replaced: 2 workers, one with a serial above $top"; else bad "not back to 2 workers with a new serial within 30 s"; fi
show_workers "$w2"
victim=$(comm -23 <(printf '%s\n' "$w" | sort) <(printf '%s\n' "$w2" | sort))
read -r vserial _ vpid <<< "$victim"
info "the worker that went: ${victim:-none}"
expect_eq "workers gone" "$(count_lines "$victim")" 1
if [ -n "$rec" ]; then
  line=$(printf '%s\n' "$rec" | head -1)
  expect_eq "WORKER field of the oom-kill record" "$(jfield "$line" WORKER)" "$vserial"
  expect_eq "PID field of the oom-kill record" "$(jfield "$line" PID)" "$vpid"
  case "$line" in *oom-kill*) ok "the message says oom-kill" ;; *) bad "the message does not say oom-kill: ${line#* | }" ;; esac
fi

# the kernel's own word, as information (the box's journal may not carry the kernel log)
memcg="$(tgt_cgprefix)/kechi.slice/kechi-demo.slice/kechi-demo-$vserial.scope"
klines=$(tgt_journal -k -o cat | grep -F "$memcg" | head -n 3)
[ -n "$klines" ] && printf '%s\n' "$klines" | cut -c 1-200 | sed 's/^/          kernel: /'

say "kechictl status $KT_APP"
st=$(tgt_run kechictl status "$KT_APP" 2>&1); rc=$?
printf '%s\n' "$st" | sed 's/^/          | /'
expect_eq "kechictl status exit status" "$rc" 0
if has "$st" "worker $vserial oom-kill"; then
  ok "kechictl status shows 'worker $vserial oom-kill'"
else
  bad "kechictl status does not show 'worker $vserial oom-kill'"
fi
if mem_status; then
  ev=$(mem_field "$MEM_STATUS" "'\n'.join(s['events'])")
  printf '%s\n' "$ev" | sed 's/^/          events: /'
  if has "$ev" "worker $vserial oom-kill"; then
    ok "kechictl status --json events: 'worker $vserial oom-kill'"
  else
    bad "kechictl status --json events lack 'worker $vserial oom-kill'"
  fi
else
  bad "kechictl status --json: $MEM_STATUS"
fi
info "STATUS= of kechi@demo: $(unit_prop "kechi@$KT_APP" StatusText)"
expect_eq "kechi@demo is" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
finish

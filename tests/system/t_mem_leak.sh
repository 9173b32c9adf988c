#!/bin/bash
# t_mem_leak: a leaking app (every request keeps MEM_LEAK_KB more, for good) under load from wrk
# (16 keep-alive connections) for 40 s (longer on a slow machine, until 5 recycles), with
# memory.recycle-above on USS, check-interval 1s and min-interval 2s: kechid recycles each worker
# that passes the threshold (journal REASON=memory, with the figures that triggered it), no request
# fails, and the app's total memory, sampled every second from `kechictl status --json`, stays
# bounded although the leak adds up to several times the bound over the run.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$KT_ROOT/tests/system/lib/mem.sh"

scenario t_mem_leak "a leaking worker recycled by USS under load: 0 failed requests, memory bounded"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
WORKERS=2
ABOVE_MB=80        # memory.recycle-above (USS)
LEAK_KB=64         # per request
DELAY_MS=50        # per request: 16 connections make at most 16 / 50 ms = 320 requests/s
RUN=${KT_MEM_LEAK_SECS:-40}
tgt_up memleak
kechi_install
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = $WORKERS
environment = { MEM_LEAK_KB = "$LEAK_KB", MEM_DELAY_MS = "$DELAY_MS" }

[memory]
max = "512M"
metric = "uss"
recycle-above = "${ABOVE_MB}M"

[recycle]
check-interval = "1s"
min-interval = "2s"

[ready]
mode = "notify"
timeout = "30s"

[stop]
timeout = "30s"
EOF
kechi_start || abort "kechi@demo did not start"
w=$(kt wait-workers "$KT_APP" "$WORKERS" 1 30) || abort "not $WORKERS workers within 30 s"
show_workers "$w"
top=$(max_serial "$w")
mem_status || abort "kechictl status $KT_APP --json: $MEM_STATUS"
mem_workers_table "$MEM_STATUS" | sed 's/^/          /'
base=$(mem_total "$MEM_STATUS" uss)
info "USS of the $WORKERS fresh workers: $(mib "$base")"
expect_eq "GET http://$KT_LISTEN/" "$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$KT_LISTEN/")" 200

cursor=$(journal_cursor)
say "$RUN s of load or more, until 5 recycles (wrk -c16 -t2, keep-alive); kechictl status --json every second"
load_start leak keepalive 16 2 || abort "no load generator"
mem_sampler_start leak || abort "the sampler did not start"
t0=$SECONDS
sleep "$RUN"  # the observation window: load and sampling run in the test machine
# a slow machine serves fewer requests, so leaks less: go on until 5 recycles (150 s at most)
while [ "$(mem_journal "$cursor" | grep -cE '^REASON=memory .*\| recycling worker')" -lt 5 ] && [ $((SECONDS - t0)) -lt 150 ]; do
  sleep 5
done
RUN=$((SECONDS - t0))
samples=$(mem_sampler_stop leak)
load_stop leak "leaking load"
served=$LOAD_SERVED

say "recycles in the journal (REASON=memory), with the figures that triggered them"
log=$(mem_journal "$cursor")
rec=$(printf '%s\n' "$log" | grep -E '^REASON=memory .*\| recycling worker')
printf '%s\n' "$rec" | sed 's/^/          | /'
n=$(printf '%s\n' "$rec" | grep -c .)
if [ "$n" -ge 2 ]; then ok "$n recycles with REASON=memory in $RUN s"; else bad "$n recycles with REASON=memory in $RUN s (want >= 2)"; fi
below=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  u=$(jfield "$line" USS)
  if [ -z "$u" ] || [ "$u" -le $((ABOVE_MB << 20)) ]; then below=$((below + 1)); info "USS field ${u:-missing} not above ${ABOVE_MB} MiB: $line"; fi
  for f in RSS PSS USS SHARED CGROUP; do [ -n "$(jfield "$line" "$f")" ] || { below=$((below + 1)); info "no $f field: $line"; }; done
  case "$line" in *"recycle-above"*) ;; *) below=$((below + 1)); info "the message does not name recycle-above: $line" ;; esac
done <<< "$rec"
expect_eq "recycle records whose USS field is not above ${ABOVE_MB} MiB, or lacking a figure" "$below" 0
bad_reasons=$(printf '%s\n' "$log" | grep -E 'REASON=(oom-kill|crash|stop-timeout|ready-timeout|spawn-failed)')
if [ -z "$bad_reasons" ]; then ok "no oom-kill, crash, stop-timeout or failed spawn"; else bad "unexpected records:"; printf '%s\n' "$bad_reasons" | sed 's/^/          | /'; fi

say "memory over the run, from kechictl status --json every second"
stats=$(printf '%s\n' "$samples" | python3 -c '
import json, sys
half = float(sys.argv[1]) / 2
n = errors = 0
mu = mc = mw = mu2 = 0
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if "error" in r:
        errors += 1
        print("# {:5.1f}s  kechictl status failed: {}".format(r["t"], r["error"]))
        continue
    n += 1
    ws = r["workers"]
    uss = sum(w["uss"] or 0 for w in ws)
    cg = sum(w["cgroup"] or w["memory_bytes"] or 0 for w in ws)
    wm = max([w["uss"] or 0 for w in ws] or [0])
    mu, mc, mw = max(mu, uss), max(mc, cg), max(mw, wm)
    if r["t"] >= half:
        mu2 = max(mu2, uss)
    print("# {:5.1f}s  {:<34} USS sum {:7.1f}M  cgroup sum {:7.1f}M".format(
        r["t"], " ".join("{}:{}:{:.0f}M".format(w["serial"], (w["state"] or "?")[:5], (w["uss"] or 0) / 1048576.0) for w in ws),
        uss / 1048576.0, cg / 1048576.0))
print(n, errors, mu, mc, mw, mu2)
' "$RUN")
printf '%s\n' "$stats" | sed -n 's/^# /          /p'
read -r nsamples nerrors max_uss max_cg max_w max_uss2 <<< "$(printf '%s\n' "$stats" | tail -n 1)"
expect_eq "failed kechictl status calls" "${nerrors:-?}" 0
leaked=$((served * LEAK_KB * 1024))
bound=$(((WORKERS + 1) * ABOVE_MB << 20))
printf '          %-52s %12s\n' \
  "leaked in all ($served requests x $LEAK_KB KiB)" "$(mib "$leaked")" \
  "max USS sum over the workers ($nsamples samples)" "$(mib "$max_uss")" \
  "max USS sum, second half of the run" "$(mib "$max_uss2")" \
  "max cgroup charge sum" "$(mib "$max_cg")" \
  "max USS of one worker" "$(mib "$max_w")" \
  "bound: (workers + 1) x recycle-above" "$(mib "$bound")"
if [ "${nsamples:-0}" -ge $((RUN / 2)) ]; then ok "$nsamples samples of kechictl status in $RUN s"; else bad "only $nsamples samples of kechictl status in $RUN s"; fi
if [ "$max_uss" -gt 0 ] && [ "$max_uss" -le "$bound" ]; then
  ok "the app's USS stayed at most $(mib "$max_uss") (bound $(mib "$bound")) while $(mib "$leaked") leaked"
else
  bad "the app's USS reached $(mib "$max_uss") (bound $(mib "$bound")); $(mib "$leaked") leaked"
fi
if [ "$leaked" -gt "$bound" ]; then
  ok "the leak ($(mib "$leaked")) was more than the bound: without recycling the app would have passed it"
else
  bad "the leak ($(mib "$leaked")) was not more than the bound: the load was too light to show anything"
fi

if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then
  ok "afterwards: $WORKERS workers, no leftover scope"
else
  bad "afterwards, not steady: $why"
fi
w=$(workers)
show_workers "$w"
if [ "$(max_serial "$w")" -gt "$top" ]; then ok "workers replaced (serials $top -> $(max_serial "$w"))"; else bad "no worker replaced (serials still <= $top)"; fi
info "kechictl status events: $(mem_status && mem_field "$MEM_STATUS" "'; '.join(s['events'][-6:])")"
load_summary
finish

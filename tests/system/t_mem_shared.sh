#!/bin/bash
# t_mem_shared: a preforking app (Starlet, --max-workers=4, a 2M-element array built in the master
# before it forks) seen through kechi: `kechictl mem demo` and `kechictl status demo --json` show
# each child's USS far below its RSS and a shared part above 50 %, per child and per worker, with
# the same figures /proc/PID/smaps_rollup gives; summing RSS, as the usual worker killers do,
# counts the shared pages once per process: the sums of RSS, PSS and USS are printed side by side.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/mem.sh
. "$KT_ROOT/tests/system/lib/mem.sh"

scenario t_mem_shared "copy-on-write sharing of a preforking app: USS far below RSS, RSS sum vs PSS sum"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
tgt_up memshared
kechi_install
mem_ready_init
WORKERS=2
PROCS=5  # Starlet's master and its 4 children
kechi_config <<EOF
command = ["/usr/bin/plackup", "-s", "Starlet", "-E", "deployment", "--max-workers=4", "--max-reqs-per-child=1000000", "$KT_INSIDE/mem_big.psgi"]
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = $WORKERS

[memory]
max = "512M"

$MEM_READY
EOF
kechi_start || abort "kechi@demo did not start"
if why=$(kt steady "$KT_APP" "$WORKERS" "$PROCS" "$KT_USER" 60); then
  ok "$WORKERS workers, $PROCS processes each (Starlet's master and 4 children)"
else
  abort "not $WORKERS workers of $PROCS processes within 60 s: $why"
fi
w=$(workers)
show_workers "$w"
expect_eq "GET http://$KT_LISTEN/" "$(tgt_run curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$KT_LISTEN/")" 200

say "kechictl mem $KT_APP"
if out=$(tgt_run kechictl mem "$KT_APP" 2>&1); then ok "kechictl mem $KT_APP"; else bad "kechictl mem $KT_APP: $out"; fi
printf '%s\n' "$out" | sed 's/^/          | /'
memjson=$(tgt_run kechictl mem "$KT_APP" --json 2>&1) || bad "kechictl mem $KT_APP --json: $memjson"
masters=$(printf '%s\n' "$w" | awk '{ print $3 }' | tr '\n' ' ')

# per process: masters are the workers' main processes, every other one a Starlet child
say "per process, from kechictl mem --json (children: USS < RSS/4 and shared > 50 %)"
verdict=$(printf '%s' "$memjson" | python3 -c '
import json, sys
masters = set(int(p) for p in sys.argv[1].split())
d = json.load(sys.stdin)
kids = bad = 0
for p in d["processes"]:
    role = "master" if p["pid"] in masters else "child"
    sp = p.get("shared_percent")
    print("info worker {} pid {:>6} {:6}  rss {:7.1f}M  pss {:7.1f}M  uss {:6.1f}M  shared {:7.1f}M ({})".format(
        p.get("worker"), p["pid"], role, p["rss"] / 1048576, p["pss"] / 1048576, p["uss"] / 1048576,
        p["shared"] / 1048576, "-" if sp is None else "{:.0f}%".format(sp)))
    if role == "child":
        kids += 1
        if not (p["uss"] * 4 < p["rss"] and sp is not None and sp > 50):
            bad += 1
            print("bad child {}: uss {} rss {} shared {}%".format(p["pid"], p["uss"], p["rss"], sp))
print("kids {} {}".format(kids, bad))
' "$masters" 2>&1)
printf '%s\n' "$verdict" | sed -n 's/^info /          /p'
printf '%s\n' "$verdict" | sed -n 's/^bad /    FAIL  /p'
read -r _ kids nbad <<< "$(printf '%s\n' "$verdict" | grep '^kids ')"
expect_eq "Starlet children in kechictl mem $KT_APP" "${kids:-0}" $((WORKERS * (PROCS - 1)))
if [ "${nbad:-1}" = 0 ] && [ "${kids:-0}" -gt 0 ]; then
  ok "every child: USS below a quarter of its RSS, shared above 50 %"
else
  bad "${nbad:-?} of ${kids:-?} children with USS >= RSS/4 or shared <= 50 %"
fi
dentry=$(mem_field "$memjson" "s.get('dentry_slab_bytes')")
if [ -n "$dentry" ]; then ok "kechictl mem reports the dentry slab: $(mib "$dentry")"; else bad "kechictl mem --json has no dentry_slab_bytes"; fi

# the same figures straight from the kernel, for one child of each worker
say "kechictl's figures against /proc/PID/smaps_rollup (one child per worker)"
for m in $masters; do
  kid=$(mem_children "$m" | head -1)
  [ -n "$kid" ] || { bad "worker $m has no child"; continue; }
  one=$(tgt_run kechictl mem "$kid" --json 2>&1)
  k=$(mem_smaps "$kid")
  read -r _ krss kpss kuss kshared <<< "$k"
  cmp=$(printf '%s' "$one" | python3 -c '
import json, sys
d = json.load(sys.stdin)["processes"][0]
k = [int(x) * 1024 for x in sys.argv[1:5]]
names = ["rss", "pss", "uss", "shared"]
out = []
off = 0
for n, kv in zip(names, k):
    v = d[n]
    out.append("{} {:.1f}M/{:.1f}M".format(n, v / 1048576, kv / 1048576))
    if abs(v - kv) > max(kv // 10, 1 << 20):  # 10 % or 1 MiB: the pages move between two reads
        off += 1
print("{} {}".format(off, ", ".join(out)))
' "$krss" "$kpss" "$kuss" "$kshared" 2>&1)
  if [ "${cmp%% *}" = 0 ]; then ok "child $kid, kechictl/kernel: ${cmp#* }"; else bad "child $kid, kechictl/kernel differ: $cmp"; fi
done

say "kechictl status $KT_APP --json: per worker"
mem_status || abort "kechictl status $KT_APP --json failed: $MEM_STATUS"
mem_workers_table "$MEM_STATUS" | sed 's/^/          /'
n=$(mem_field "$MEM_STATUS" "sum(1 for w in s['workers'] if (w.get('memory') or {}).get('processes') == $PROCS)")
expect_eq "workers whose memory counts $PROCS processes" "$n" "$WORKERS"
n=$(mem_field "$MEM_STATUS" "sum(1 for w in s['workers'] if (w.get('memory') or {}).get('shared_percent', 0) > 50)")
expect_eq "workers with shared above 50 %" "$n" "$WORKERS"
n=$(mem_field "$MEM_STATUS" "sum(1 for w in s['workers'] if (w.get('memory') or {}).get('uss', 1 << 60) * 4 < (w.get('memory') or {}).get('rss', 0))")
expect_eq "workers with USS below a quarter of RSS" "$n" "$WORKERS"

rss=$(mem_total "$MEM_STATUS" rss)
pss=$(mem_total "$MEM_STATUS" pss)
uss=$(mem_total "$MEM_STATUS" uss)
cg=$(mem_total "$MEM_STATUS" cgroup)
say "the app's memory, summed over its $WORKERS workers ($((WORKERS * PROCS)) processes)"
printf '          %-44s %12s\n' "RSS summed (what an RSS-summing killer sees)" "$(mib "$rss")" \
  "PSS summed (each shared page split)" "$(mib "$pss")" \
  "USS summed (private: freed if they all exit)" "$(mib "$uss")" \
  "cgroup charge of the worker scopes" "$(mib "$cg")"
ratio=$(awk -v r="$rss" -v p="$pss" 'BEGIN { if (p > 0) printf "%.1f", r / p; else print 0 }')
info "an RSS-summing tool would report $(mib "$rss"); real use is $(mib "$pss") (PSS), $(mib "$cg") charged to the scopes: ${ratio}x over"
if awk -v r="$ratio" 'BEGIN { exit !(r >= 3) }'; then
  ok "RSS sum is ${ratio} times the PSS sum (>= 3)"
else
  bad "RSS sum is only ${ratio} times the PSS sum (want >= 3)"
fi
if [ "${pss:-0}" -gt 0 ] && [ "${cg:-0}" -gt 0 ] && awk -v c="$cg" -v p="$pss" 'BEGIN { exit !(c < 2 * p && p < 2 * c) }'; then
  ok "the scopes' cgroup charge ($(mib "$cg")) is within a factor 2 of the PSS sum ($(mib "$pss")), far from the RSS sum"
else
  bad "cgroup charge $(mib "$cg") vs PSS sum $(mib "$pss"): not within a factor 2"
fi

say "kechictl status $KT_APP (the table)"
tgt_run kechictl status "$KT_APP" 2>&1 | sed 's/^/          | /'

# the OpenMetrics textfile, rewritten at every memory check: the same per-worker figures once a
# check has seen the workers loaded (within a minute: full figures may be read every few checks)
say "kechi-$KT_APP.prom (the node exporter's textfile), until its figures match kechictl status"
want=$(mem_field "$MEM_STATUS" "' '.join('{}={}'.format(w['serial'], w['memory']['rss']) for w in s['workers'])")
t0=$SECONDS verdict=""
while :; do
  prom=$(tgt_sh "cat /var/lib/prometheus/node-exporter/kechi-$KT_APP.prom 2>/dev/null || cat /run/kechi/kechi-$KT_APP.prom 2>/dev/null")
  verdict=$(printf '%s\n' "$prom" | python3 -c '
import re, sys
want = dict(kv.split("=") for kv in sys.argv[1].split())
got = {}
for line in sys.stdin:
    m = re.match(r"kechi_worker_(rss|uss)_bytes\{app=\"[^\"]*\",worker=\"(\d+)\"\} (\d+)", line)
    if m:
        got.setdefault(m.group(2), {})[m.group(1)] = int(m.group(3))
off = [w for w, r in want.items() if not ("uss" in got.get(w, {}) and got.get(w, {}).get("rss", 0) * 2 >= int(r))]
print("ok" if not off else "workers " + " ".join(off) + ": " + "; ".join(
    "{} rss {} uss {}".format(w, got.get(w, {}).get("rss"), got.get(w, {}).get("uss")) for w in off))
' "$want")
  [ "$verdict" = ok ] && break
  [ $((SECONDS - t0)) -lt 60 ] || break
  sleep 1
done
series=$(printf '%s\n' "$prom" | grep -E '^kechi_worker_(rss|pss|uss|shared|cgroup)_bytes\{')
if [ "$verdict" = ok ]; then
  ok "kechi-$KT_APP.prom has each worker's RSS (at least half of kechictl status's) and USS, after $((SECONDS - t0)) s"
  printf '%s\n' "$series" | sed 's/^/          | /'
else
  bad "kechi-$KT_APP.prom after $((SECONDS - t0)) s: $verdict (kechictl status RSS: $want); its samples:"
  printf '%s\n' "$prom" | grep -v '^#' | sed 's/^/          | /'
fi
finish

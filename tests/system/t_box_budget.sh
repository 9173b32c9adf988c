#!/bin/bash
# t_box_budget: a box-wide memory budget shared by two apps, each under its own kechid, with no
# central daemon. /etc/kechi/kechi.conf says `[box] budget = "110M"`; app demo runs workers of
# ~98 and ~28 MiB of USS, app other ~68 and ~28 MiB (mem_app.py): ~222 MiB together. Expected:
# the largest worker of the box (demo's worker 1) is recycled gracefully by demo's kechid
# (REASON=box-budget, with the figures), then, still over, other's worker 1 by other's kechid;
# then the box is under its budget and nothing more happens. The two box-wide recycles never
# overlap (the second starts after the first released the box lock), and `kechictl config`
# shows box.budget with its source. A load on demo meanwhile fails nothing.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_box_budget "two apps' kechids keep the box under one budget, one recycle at a time"
tgt_up boxb
kechi_install
printf '[box]\nbudget = "110M"\n' | tgt_write /etc/kechi/kechi.conf || abort "writing kechi.conf"
app_toml() {  # app_toml MEM_START_MB
  cat <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 2
environment = { MEM_START_MB = "$1" }

[memory]
max = "256M"

[ready]
mode = "notify"

[recycle]
check-interval = "1s"
min-interval = "1s"
EOF
}
app_toml "90,20" | kechi_config
app_toml "60,20" | tgt_write /etc/kechi/other.toml || abort "writing other.toml"

cfg=$(tgt_run kechictl config "$KT_APP" 2>&1)
row=$(printf '%s\n' "$cfg" | grep '^box.budget')
info "kechictl config: $row"
if printf '%s' "$row" | tr -s ' ' | grep -qx 'box.budget 110M /etc/kechi/kechi.conf:2'; then
  ok "kechictl config shows box.budget 110M from /etc/kechi/kechi.conf:2"
else
  bad "kechictl config's box.budget row: '$row'"
fi

for a in "$KT_APP" other; do
  printf '[Service]\nEnvironment=KECHI_LOG=info,kechi::driver::boxwide=debug\n' | tgt_write "/etc/systemd/system/kechi@$a.service.d/log.conf"
done
tgt_run systemctl daemon-reload
cursor=$(journal_cursor)
tgt_run systemctl start kechi@other || abort "kechi@other did not start"
kechi_start || abort "kechi@$KT_APP did not start"
load_start ka keepalive 8 1 || abort "no load generator"

# box_lines UNIT: the box-budget lines of UNIT since the start, "SECONDS.MICROS message"
box_lines() {
  tgt_run journalctl --no-pager -o short-unix --after-cursor="$cursor" -u "$1" 2> /dev/null | grep -E 'box budget|box lock' | sed -E 's/^([0-9.]+) [^:]*: /\1 /'
}
say "waiting for both box-wide recycles (at most 120 s)"
t0=$SECONDS
while [ $((SECONDS - t0)) -lt 120 ]; do
  [ "$(box_lines "kechi@other.service" | grep -c 'box lock released')" -ge 1 ] && break
  sleep 1
done
sleep 5   # and nothing more after them
d=$(box_lines "kechi@$KT_APP.service")
o=$(box_lines "kechi@other.service")
printf '%s\n' "$d" | sed "s/^/          | $KT_APP: /"
printf '%s\n' "$o" | sed 's/^/          | other: /'
expect_eq "box-wide recycles by $KT_APP's kechid" "$(printf '%s\n' "$d" | grep -c 'over the box budget')" 1
expect_eq "box-wide recycles by other's kechid" "$(printf '%s\n' "$o" | grep -c 'over the box budget')" 1
if printf '%s\n' "$d" | grep 'over the box budget' | grep -q 'worker 1 '; then ok "$KT_APP's worker 1 (the largest on the box) went first"; else bad "$KT_APP's recycle was not of its worker 1"; fi
if printf '%s\n' "$o" | grep 'over the box budget' | grep -q 'worker 1 '; then ok "other's worker 1 (then the largest) went second"; else bad "other's recycle was not of its worker 1"; fi
d_end=$(printf '%s\n' "$d" | grep 'box lock released' | head -1 | cut -d' ' -f1)
o_start=$(printf '%s\n' "$o" | grep 'over the box budget' | head -1 | cut -d' ' -f1)
if [ -n "$d_end" ] && [ -n "$o_start" ] && python3 -c "import sys; sys.exit(0 if float('$o_start') >= float('$d_end') else 1)"; then
  ok "the second box-wide recycle began after the first had released the box lock ($d_end <= $o_start)"
else
  bad "the box-wide recycles overlap or are missing (first released at '${d_end}', second began at '${o_start}')"
fi
fields=$(tgt_run journalctl --no-pager -o json --after-cursor="$cursor" -u "kechi@$KT_APP.service" 2> /dev/null | python3 -c '
import json, sys
for l in sys.stdin:
    e = json.loads(l)
    if e.get("REASON") == "box-budget" and "BOX_TOTAL" in e:
        print("REASON=%s WORKER=%s BOX_TOTAL=%s BOX_BUDGET=%s" % (e["REASON"], e.get("WORKER"), e["BOX_TOTAL"], e["BOX_BUDGET"]))')
info "journal fields: $fields"
case "$fields" in *"REASON=box-budget WORKER=1 BOX_TOTAL="*"BOX_BUDGET=115343360"*) ok "the journal record carries REASON=box-budget, the worker and the figures" ;; *) bad "no journal record with REASON=box-budget, WORKER and BOX_TOTAL/BOX_BUDGET" ;; esac
info "what the kechids published: $(tgt_sh 'for f in /run/kechi/*/box-figures /run/kechi/box.lock; do echo "[$f]"; cat "$f"; done; date +%s%3N' 2>&1 | tr '\n' ' ')"
load_stop ka "through both box-wide recycles"
for a in "$KT_APP" other; do
  w=$(kt workers "$a")
  expect_eq "$a: worker scopes" "$(count_lines "$w")" 2
done
load_summary
finish

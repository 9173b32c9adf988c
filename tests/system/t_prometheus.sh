#!/bin/bash
# t_prometheus: kechi seen from a fleet. Debian's Prometheus scrapes Debian's node exporter, whose
# textfile collector reads kechi's /var/lib/prometheus/node-exporter/kechi-demo.prom, and loads the
# example rules docs/prometheus/kechi-rules.yml. Through Prometheus' HTTP API (nothing read from
# the file itself) the kechi series arrive with the app's label and the scrape's job and instance,
# and their values follow what happens to the app:
#  - workers ready and wanted, one memory series per worker (the worker that holds 20 MiB above
#    16 MiB, the other below), the memory limits as configured (and as reloaded);
#  - counters typed as counters (Prometheus' metadata), and recycles by reason starting at 0, so
#    that increase() sees the first: a manual recycle, a memory recycle, 2 recycles by a reload;
#  - an idle stop: kechi_idle_stops_total 1, kechi_idle_stopped 1, no worker series, the
#    counters of the stopped kechid kept; no kechi alert pending for an app stopped on purpose;
#  - the cold start that follows: kechi_start_after_idle 1, kechi_start_ready_seconds, counters of
#    the new kechid from 0 again, the idle stops still 1.
# Before that, `promtool check rules` and `promtool test rules` (docs/prometheus/) must pass, and
# `promtool check metrics` must find nothing wrong in the file kechid writes. In Prometheus,
# every rule of the file must evaluate without error against the real series.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_prometheus "Prometheus scrapes kechi's metrics through node exporter's textfile collector"
for c in prometheus promtool prometheus-node-exporter; do
  command -v "$c" > /dev/null || skip "no $c: Debian's packages prometheus and prometheus-node-exporter are not installed (tests/run.sh installs them)"
done
RULES=$KT_ROOT/docs/prometheus/kechi-rules.yml
TEXTFILE_DIR=/var/lib/prometheus/node-exporter
PROM=http://127.0.0.1:9090
HOLD=/run/kt-prom-hold

say "the example rules: promtool check rules, promtool test rules"
out=$(promtool check rules "$RULES" 2>&1); rc=$?
printf '%s\n' "$out" | sed 's/^/          | /'
if [ "$rc" = 0 ]; then ok "promtool check rules $(basename "$RULES")"; else bad "promtool check rules $(basename "$RULES"): exit $rc"; fi
NRULES=$(printf '%s\n' "$out" | sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p')
out=$(cd "$(dirname "$RULES")" && promtool test rules kechi-rules.test.yml 2>&1); rc=$?
printf '%s\n' "$out" | grep -v '^ *$' | head -n 40 | sed 's/^/          | /'
if [ "$rc" = 0 ]; then ok "promtool test rules kechi-rules.test.yml"; else bad "promtool test rules kechi-rules.test.yml: exit $rc"; fi

tgt_up prom
kechi_install

# ---- Prometheus' HTTP API, from inside the machine ----------------------------------------------
# promq QUERY: the result of an instant query, one line per series, sorted: NAME{LABELS} VALUE
# (labels sorted; NAME empty when the expression drops it), or "error: ..."
promq() {
  tgt_run curl -sS -m 10 -G --data-urlencode "query=$1" "$PROM/api/v1/query" 2>&1 | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    r = json.loads(text)
except ValueError:
    print("error: " + text.strip()[:200]); sys.exit()
if r.get("status") != "success":
    print("error: " + str(r.get("error"))); sys.exit()
d = r["data"]
if d["resultType"] == "scalar":
    print(d["result"][1]); sys.exit()
lines = []
for s in d["result"]:
    m = dict(s["metric"])
    name = m.pop("__name__", "")
    labels = ",".join("{}=\"{}\"".format(k, m[k]) for k in sorted(m))
    lines.append("{}{{{}}} {}".format(name, labels, s["value"][1]))
print("\n".join(sorted(lines)))
'
}
# prom_wait QUERY WANT SECS: until the query's result is WANT (lines as promq prints them); prints
# the last result
prom_wait() {
  local got end=$((SECONDS + $3))
  while :; do
    got=$(promq "$1")
    [ "$got" = "$2" ] && { printf '%s\n' "$got"; return 0; }
    [ "$SECONDS" -lt "$end" ] || { printf '%s\n' "$got"; return 1; }
    sleep 0.5
  done
}
# expect_prom DESC QUERY WANT [SECS]: Prometheus answers WANT within SECS (default 30)
expect_prom() {
  local got
  if got=$(prom_wait "$2" "$3" "${4:-30}"); then
    ok "$1: $(printf '%s' "$got" | tr '\n' ';' | sed 's/;/; /g')"
  else
    bad "$1: query $2"
    printf '%s\n' "$got" | sed 's/^/          | got  /'
    printf '%s\n' "$3" | sed 's/^/          | want /'
  fi
}
# the labels Prometheus adds to every series it scrapes from the node exporter
SCRAPE='instance="127.0.0.1:9100",job="node"'
# series NAME LABELS VALUE: a line as promq prints it, for a series of app demo with LABELS (sorted,
# after app; may be empty)
series() { echo "$1{app=\"$KT_APP\",$SCRAPE${2:+,$2}} $3"; }
# metadata NAME: "TYPE HELP" as Prometheus has it from the scrape
metadata() {
  tgt_run curl -sS -m 10 -G --data-urlencode "metric=$1" "$PROM/api/v1/metadata" 2>&1 | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)["data"].get(sys.argv[1]) or [{}]
except (ValueError, KeyError):
    m = [{}]
print(m[0].get("type", "-"), m[0].get("help", "-"))
' "$1"
}

# ---- node exporter and Prometheus, Debian's units and files ------------------------------------
say "node exporter (textfile collector on $TEXTFILE_DIR) and Prometheus (scraping it every second)"
# kechi-*.prom files of other kechids on the host show through the machine's root: not ours
stray=$(tgt_sh "ls $TEXTFILE_DIR/kechi-*.prom 2>/dev/null" | tr '\n' ' ')
[ -z "$stray" ] || { info "removed inside the test machine (left by kechids of the host): $stray"; tgt_sh "rm -f $TEXTFILE_DIR/kechi-*.prom"; }
echo 'ARGS="--web.listen-address=127.0.0.1:9100 --collector.disable-defaults --collector.textfile --collector.textfile.directory='"$TEXTFILE_DIR"'"' \
  | tgt_write /etc/default/prometheus-node-exporter || abort "writing /etc/default/prometheus-node-exporter"
tgt_copy_in "$RULES" /etc/prometheus/kechi-rules.yml || abort "copying the rules in"
tgt_write /etc/prometheus/prometheus.yml << 'EOF' || abort "writing /etc/prometheus/prometheus.yml"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - /etc/prometheus/kechi-rules.yml
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ['127.0.0.1:9100']
EOF
tgt_sh 'install -d -o prometheus -g prometheus /var/lib/prometheus/kechi-test' || abort "creating Prometheus' storage"
echo 'ARGS="--storage.tsdb.path=/var/lib/prometheus/kechi-test --web.listen-address=127.0.0.1:9090"' \
  | tgt_write /etc/default/prometheus || abort "writing /etc/default/prometheus"
for u in prometheus-node-exporter prometheus; do
  if tgt_run timeout 60 systemctl start "$u"; then
    ok "systemctl start $u ($(tgt_run "$u" --version 2>&1 | head -n 1 | cut -d' ' -f1-3))"
  else
    tgt_run systemctl status --no-pager "$u" 2>&1 | head -n 20 | sed 's/^/          | /'
    abort "systemctl start $u"
  fi
done
up=$(prom_wait "up" "up{$SCRAPE} 1" 60) || { printf '%s\n' "$up" | sed 's/^/          | /'; tgt_run journalctl --no-pager -u prometheus -n 20 | sed 's/^/          | /'; abort "Prometheus does not scrape the node exporter"; }
ok "Prometheus scrapes the node exporter: $up"

# ---- the app ------------------------------------------------------------------------------------
STOP_AFTER=6
config() {  # config RECYCLE_ABOVE
  kechi_config << EOF
command = ["/usr/bin/python3", "$KT_INSIDE/mem_app.py"]
user = "$KT_USER"
workers = 2
environment = { MEM_START_MB = "20" }

[ready]
mode = "notify"
timeout = "30s"

[memory]
max = "128M"
recycle-above = "$1"

[recycle]
check-interval = "1s"
min-interval = "1s"

[idle]
stop-after = "${STOP_AFTER}s"
EOF
}
config 48M
# hold: a kept-alive connection that asks for a page every half second while $HOLD exists
# (activity: no idle stop); a worker that stops answers its last request with "Connection:
# close", and the next request opens a new connection at once. unhold: lets the app go idle.
hold() {
  tgt_sh "touch $HOLD" || abort "touch $HOLD"
  tgt_in python3 - "$KT_LISTEN" "$HOLD" > /dev/null 2>&1 << 'EOF' &
import http.client, os, sys, time
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=30)
while os.path.exists(sys.argv[2]):
    try:
        c.request("GET", "/")
        c.getresponse().read()  # closes the connection after "Connection: close"
        time.sleep(0.5)
    except (OSError, http.client.HTTPException):
        c.close()
        time.sleep(0.1)
EOF
  HOLDER=$!
}
unhold() { tgt_sh "rm -f $HOLD"; wait "$HOLDER"; }

say "the app runs (idle.stop-after ${STOP_AFTER}s, held busy by one kept-alive connection)"
hold
kechi_start || abort "kechi@$KT_APP did not start"
w=$(kt wait-new "$KT_APP" 2 1 30) || abort "not 2 workers within 30 s"
show_workers "$w"
kechid_pid() { tgt_run kechictl status "$KT_APP" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["kechid_pid"])'; }
pid0=$(kechid_pid)
big=$(printf '%s\n' "$w" | awk '$1 == 1 { print $1 }')   # worker 1 holds 20 MiB (MEM_START_MB)
small=$(printf '%s\n' "$w" | awk '$1 != 1 { print $1 }')
[ "$big" = 1 ] && [ -n "$small" ] || abort "workers are not 1 and another: $(printf '%s' "$w" | tr '\n' ' ')"

expect_prom "workers ready" "kechi_workers{app=\"$KT_APP\",state=\"ready\"}" "$(series kechi_workers 'state="ready"' 2)"
expect_prom "workers wanted" "kechi_workers_wanted{app=\"$KT_APP\"}" "$(series kechi_workers_wanted "" 2)"
expect_prom "a USS series per worker, worker 1 (20 MiB) above 16 MiB" \
  "kechi_worker_uss_bytes{app=\"$KT_APP\"} > bool 16 * 1024 * 1024" \
  "$(printf '%s\n%s' "$(series "" "worker=\"1\"" 1)" "$(series "" "worker=\"$small\"" 0)")"
# the cgroup's charge, when kechid has it (kechictl status shows it)
cg=$(tgt_run kechictl status "$KT_APP" --json | python3 -c '
import json, sys
print(" ".join(str(w["serial"]) for w in json.load(sys.stdin)["workers"] if (w.get("memory") or {}).get("cgroup")))')
if [ -n "$cg" ]; then
  expect_prom "a cgroup series per worker kechictl shows one for ($cg)" \
    "count(kechi_worker_cgroup_bytes{app=\"$KT_APP\"} > 0)" "{} $(echo "$cg" | wc -w)"
else
  info "no cgroup figures in kechictl status here: kechi_worker_cgroup_bytes not checked"
fi
expect_prom "memory limits as configured" "kechi_memory_limit_bytes{app=\"$KT_APP\"}" \
  "$(printf '%s\n%s' "$(series kechi_memory_limit_bytes 'limit="max"' 134217728)" "$(series kechi_memory_limit_bytes 'limit="recycle-above"' 50331648)")"
expect_prom "recycles by reason: every known reason, all 0" \
  "count(kechi_recycles_total{app=\"$KT_APP\"} == 0)" "{} 8"
expect_prom "idle stops so far" "kechi_idle_stops_total{app=\"$KT_APP\"}" "$(series kechi_idle_stops_total "" 0)"
expect_prom "not stopped for idleness" "kechi_idle_stopped{app=\"$KT_APP\"}" "$(series kechi_idle_stopped "" 0)"
expect_prom "idle.stop-after" "kechi_idle_stop_after_seconds{app=\"$KT_APP\"}" "$(series kechi_idle_stop_after_seconds "" "$STOP_AFTER")"
expect_prom "the recording rule of the app's total (USS)" \
  "instance_app:kechi_worker_uss_bytes:sum{app=\"$KT_APP\"} > bool 16 * 1024 * 1024" "$(series "" "" 1)"
for m in "kechi_idle_stops_total counter" "kechi_recycles_total counter" "kechi_workers gauge" "kechi_worker_uss_bytes gauge"; do
  got=$(metadata "${m% *}")
  if [ "${got%% *}" = "${m#* }" ]; then ok "Prometheus' metadata: ${m% *} is a ${m#* } ($got)"; else bad "Prometheus' metadata: ${m% *}: '$got' (want type ${m#* })"; fi
done
file=$(tgt_run cat "$TEXTFILE_DIR/kechi-$KT_APP.prom")
out=$(printf '%s\n' "$file" | promtool check metrics 2>&1); rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then ok "promtool check metrics: kechi-$KT_APP.prom ($(printf '%s\n' "$file" | grep -vc '^#') samples)"; else bad "promtool check metrics on kechi-$KT_APP.prom: exit $rc"; printf '%s\n' "$out" | sed 's/^/          | /'; fi

say "recycles: kechictl recycle (manual), a worker grown over recycle-above (memory), a reload"
tgt_run kechictl recycle "$KT_APP" --worker "$small" > /dev/null || bad "kechictl recycle $KT_APP --worker $small"
expect_prom "a manual recycle" "kechi_recycles_total{app=\"$KT_APP\",reason=\"manual\"}" \
  "$(series kechi_recycles_total 'reason="manual"' 1)"
# the counter was there at 0 before: increase() sees the recycle
expect_prom "increase() sees the first recycle" \
  "increase(kechi_recycles_total{app=\"$KT_APP\",reason=\"manual\"}[1m]) > bool 0" "$(series "" 'reason="manual"' 1)"
code=$(tgt_run curl -sS -o /dev/null -m 30 -w "%{http_code}" "http://$KT_LISTEN/grow?mb=48")
info "GET /grow?mb=48: $code (its worker now holds more than 48 MiB: over recycle-above 48M)"
expect_prom "a memory recycle" "kechi_recycles_total{app=\"$KT_APP\",reason=\"memory\"}" \
  "$(series kechi_recycles_total 'reason="memory"' 1)"
config 40M
tgt_run systemctl reload "kechi@$KT_APP" || bad "systemctl reload kechi@$KT_APP"
expect_prom "a reload recycles both workers" "kechi_recycles_total{app=\"$KT_APP\",reason=\"reload\"}" \
  "$(series kechi_recycles_total 'reason="reload"' 2)" 60
expect_prom "recycle-above as reloaded" "kechi_memory_limit_bytes{app=\"$KT_APP\",limit=\"recycle-above\"}" \
  "$(series kechi_memory_limit_bytes 'limit="recycle-above"' 41943040)"
expect_prom "2 workers ready again" "kechi_workers{app=\"$KT_APP\",state=\"ready\"}" "$(series kechi_workers 'state="ready"' 2)"
expect_prom "no other recycle" "sum(kechi_recycles_total{app=\"$KT_APP\"})" "{} 4"
# (a kechid that had stopped for idleness meanwhile would have started its counters again)
expect_eq "the same kechid throughout" "$(kechid_pid)" "$pid0"

say "the rules evaluate against the real series"
rules=""
for _ in $(seq 1 30); do
  rules=$(tgt_run curl -sS -m 10 "$PROM/api/v1/rules" | python3 -c '
import json, sys
for g in json.load(sys.stdin)["data"]["groups"]:
    for r in g["rules"]:
        print(r["health"], r["name"], r.get("lastError", ""))')
  has "$rules" -v '^ok ' || break
  sleep 1
done
if [ -n "$NRULES" ] && [ "$(count_lines "$rules")" = "$NRULES" ]; then ok "Prometheus loaded the $NRULES rules promtool counted"; else bad "Prometheus has $(count_lines "$rules") rules, promtool counted '${NRULES:-?}'"; fi
if [ -n "$rules" ] && ! has "$rules" -v '^ok '; then
  ok "every rule evaluated without error"
else
  bad "rules that did not evaluate cleanly:"; printf '%s\n' "$rules" | grep -v '^ok ' | sed 's/^/          | /'
fi
# node exporter's own series about the file, which KechiMetricsStale reads
mtime=$(promq "node_textfile_mtime_seconds")
info "node_textfile_mtime_seconds: $(printf '%s' "$mtime" | tr '\n' ' ')"
expect_prom "KechiMetricsStale finds the file's age" \
  "time() - label_replace(node_textfile_mtime_seconds{file=~\"(.*/)?kechi-.+\\\\.prom\"}, \"app\", \"\$1\", \"file\", \"(?:.*/)?kechi-(.+)\\\\.prom\") < bool 30" \
  "{app=\"$KT_APP\",file=\"$(printf '%s' "$mtime" | grep -o 'file="[^"]*kechi-demo.prom"' | cut -d'"' -f2)\",$SCRAPE} 1"

say "idle: the connection closes; after ${STOP_AFTER}s kechid stops the app"
unhold
end=$((SECONDS + 60))
while [ "$(tgt_run systemctl is-active "kechi@$KT_APP")" != inactive ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.5; done
expect_eq "kechi@$KT_APP after the idle stop" "$(tgt_run systemctl is-active "kechi@$KT_APP")" inactive
expect_prom "an idle stop" "kechi_idle_stops_total{app=\"$KT_APP\"}" "$(series kechi_idle_stops_total "" 1)"
expect_prom "increase() sees the first idle stop" \
  "increase(kechi_idle_stops_total{app=\"$KT_APP\"}[2m]) > bool 0" "$(series "" "" 1)"
expect_prom "stopped for idleness" "kechi_idle_stopped{app=\"$KT_APP\"}" "$(series kechi_idle_stopped "" 1)"
expect_prom "no worker ready" "kechi_workers{app=\"$KT_APP\",state=\"ready\"}" "$(series kechi_workers 'state="ready"' 0)"
expect_prom "no worker memory series" "count(kechi_worker_uss_bytes{app=\"$KT_APP\"}) or vector(0)" "{} 0"
expect_prom "the stopped kechid's recycles are kept" "sum(kechi_recycles_total{app=\"$KT_APP\"})" "{} 4"
file=$(tgt_run cat "$TEXTFILE_DIR/kechi-$KT_APP.prom")
out=$(printf '%s\n' "$file" | promtool check metrics 2>&1); rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then ok "promtool check metrics: the file left by the idle stop"; else bad "promtool check metrics on the file left by the idle stop: exit $rc"; printf '%s\n' "$out" | sed 's/^/          | /'; fi
sleep 3   # pending alerts are evaluated every second
expect_prom "no kechi alert pending or firing for an app stopped on purpose" \
  "count(ALERTS{alertname=~\"Kechi.*\"}) or vector(0)" "{} 0"

say "the next connection starts it again: a cold start"
hold
expect_prom "started again after an idle stop" "kechi_start_after_idle{app=\"$KT_APP\"}" "$(series kechi_start_after_idle "" 1)"
expect_prom "running, not stopped for idleness" "kechi_idle_stopped{app=\"$KT_APP\"}" "$(series kechi_idle_stopped "" 0)"
expect_prom "the cold start's seconds to the first ready worker (between 0 and 30)" \
  "kechi_start_ready_seconds{app=\"$KT_APP\"} > bool 0 and kechi_start_ready_seconds{app=\"$KT_APP\"} < 30" \
  "$(series "" "" 1)"
info "kechi_start_ready_seconds: $(promq "kechi_start_ready_seconds{app=\"$KT_APP\"}")"
expect_prom "the idle stops, still 1" "kechi_idle_stops_total{app=\"$KT_APP\"}" "$(series kechi_idle_stops_total "" 1)"
expect_prom "the new kechid's recycles start at 0" "sum(kechi_recycles_total{app=\"$KT_APP\"})" "{} 0"
expect_prom "workers ready" "kechi_workers{app=\"$KT_APP\",state=\"ready\"}" "$(series kechi_workers 'state="ready"' 2)"
unhold
# every evaluation of every rule, through recycles, reloads, an idle stop and a cold start
warned=$(tgt_run journalctl --no-pager -o cat -u prometheus | grep -F 'component="rule manager"' | grep -vF 'level=info')
if [ -z "$warned" ]; then ok "Prometheus' rule manager logged no warning or error"; else bad "Prometheus' rule manager complained:"; printf '%s\n' "$warned" | head -n 10 | cut -c 1-400 | sed 's/^/          | /'; fi
finish

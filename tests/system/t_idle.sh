#!/bin/bash
# t_idle: scale to zero (`[idle] stop-after`). With no connection open, waiting or arriving for
# stop-after, kechid stops every worker and exits 0: kechi@demo is inactive (not failed), no
# scope is left, kechi@demo.socket keeps listening, and the journal says REASON=idle with the
# idle time. A kept-alive connection is activity (no stop while it is open). The next connection
# starts the app again through socket activation and is answered (never refused), and
# `kechictl status` and the metrics then show a cold start after an idle stop. Requests sent
# while kechid is stopping the idle app are answered too (they wait in the socket's queue), and a
# load that starts against the stopped app fails nothing.
# The TCP listener is steered (ReusePort=yes, src/steer/): while no worker runs, connections wait
# on the activated socket; the first worker that serves gets them handed over (the "waited while
# no worker served" journal line), including across the idle stop's exit of kechid, after which a
# new kechid makes the steering program anew.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_idle "an idle app stops, and the next connection starts it again"
tgt_up idle
kechi_install
printf '[Socket]\nReusePort=yes\n' | tgt_write "/etc/systemd/system/kechi@$KT_APP.socket.d/steer.conf" \
  || abort "writing the drop-in of kechi@$KT_APP.socket"
tgt_run systemctl daemon-reload || abort "systemctl daemon-reload"
STOP_AFTER=4
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
workers = 2

[ready]
mode = "notify"

[stop]
timeout = "10s"

[idle]
stop-after = "${STOP_AFTER}s"
EOF

# get: one request from inside the machine; prints "CODE SECONDS"
get() { tgt_run curl -sS -o /dev/null -m 60 -w '%{http_code} %{time_total}\n' "http://$KT_LISTEN/" 2> /dev/null || echo "000 -"; }
# until_inactive SECS: waits for kechi@demo to be inactive; prints how long it took
until_inactive() {
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$1" ]; do
    [ "$(tgt_run systemctl is-active "kechi@$KT_APP")" = inactive ] && { echo $((SECONDS - t0)); return 0; }
    sleep 0.5
  done
  return 1
}
# stopped_cleanly WHAT: the checks of an idle stop
stopped_cleanly() {
  expect_eq "$1: kechi@$KT_APP result" "$(unit_prop "kechi@$KT_APP" Result)" success
  expect_eq "$1: kechid's exit status" "$(unit_prop "kechi@$KT_APP" ExecMainStatus)" 0
  expect_eq "$1: kechi@$KT_APP.socket" "$(tgt_run systemctl is-active "kechi@$KT_APP.socket")" active
  local units=""
  for _ in $(seq 1 50); do
    units=$(tgt_run systemctl list-units --all --plain --no-legend --no-pager "kechi-$KT_APP-*" | awk '{ print $1 }')
    [ -z "$units" ] && break
    sleep 0.1
  done
  expect_eq "$1: kechi-$KT_APP-* units left" "$(printf '%s' "$units" | tr '\n' ' ')" ""
  expect_eq "$1: processes of $KT_USER" "$(tgt_run pgrep -u "$KT_USER" | tr '\n' ' ')" ""
}

say "the socket alone: nothing runs until a connection comes"
tgt_run systemctl start "kechi@$KT_APP.socket" || abort "systemctl start kechi@$KT_APP.socket"
expect_eq "kechi@$KT_APP before any connection" "$(tgt_run systemctl is-active "kechi@$KT_APP")" inactive
r=$(get)
expect_eq "the first request (starts the app)" "${r%% *}" 200
info "first request answered in ${r#* } s (kechid and 2 workers started for it)"

say "a kept-alive connection is activity: no idle stop while it is open (12 s > stop-after ${STOP_AFTER}s)"
cursor=$(journal_cursor)
tgt_in python3 - "$KT_LISTEN" > /dev/null 2>&1 << 'EOF' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
for _ in range(3):
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    s.recv(65536)
    time.sleep(4)
s.close()
EOF
holder=$!
sleep 10
expect_eq "kechi@$KT_APP after 10 s with the connection open" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
wait "$holder"

say "idle for stop-after: stopped"
if took=$(until_inactive 60); then ok "kechi@$KT_APP inactive ${took} s after the connection closed"; else bad "kechi@$KT_APP still $(tgt_run systemctl is-active "kechi@$KT_APP") 60 s after the connection closed"; fi
stopped_cleanly "idle stop 1"
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service" fields)
printf '%s\n' "$log" | grep -iE 'idle|stopp' | head -n 6 | sed 's/^/          | /'
if printf '%s\n' "$log" | grep -F 'REASON=idle' | grep -qF 'no connection open or waiting for'; then
  ok "the journal says REASON=idle with the idle time"
else
  bad "no REASON=idle line with the idle time in the journal"
fi
out=$(tgt_run kechictl status "$KT_APP" 2>&1)
info "kechictl status while stopped: $out"
case "$out" in *"stopped for idleness"*) ok "kechictl status says the app is stopped for idleness" ;; *) bad "kechictl status does not say the app is stopped for idleness" ;; esac

say "the next connection starts it again: a cold start"
r=$(get)
expect_eq "the first request after the idle stop" "${r%% *}" 200
info "cold start: first request answered in ${r#* } s"
st=$(tgt_run kechictl status "$KT_APP" 2>&1)
printf '%s\n' "$st" | head -n 4 | sed 's/^/          | /'
if has "$st" '^start: first worker ready .* (a cold start after an idle stop'; then
  ok "kechictl status shows the cold start"
else
  bad "kechictl status does not show a cold start after an idle stop"
fi
prom=$(tgt_run sh -c "cat /var/lib/prometheus/node-exporter/kechi-$KT_APP.prom 2>/dev/null || cat /run/kechi/kechi-$KT_APP.prom")
for m in "kechi_start_after_idle{app=\"$KT_APP\"} 1" "kechi_idle_stops_total{app=\"$KT_APP\"} 1"; do
  if has "$prom" -F "$m"; then ok "metrics: $m"; else bad "metrics lack: $m"; fi
done
if has "$prom" "^kechi_start_ready_seconds{app=\"$KT_APP\"} [0-9.]*$"; then
  ok "metrics: $(printf '%s\n' "$prom" | grep '^kechi_start_ready_seconds')"
else
  bad "metrics lack kechi_start_ready_seconds"
fi

say "requests sent the moment kechid begins the idle stop are answered (they wait in the queue)"
until_inactive 60 > /dev/null || bad "no second idle stop within 60 s"
get > /dev/null
cursor=$(journal_cursor)
# wait for the idle line, then fire 20 requests at once while the workers stop
for _ in $(seq 1 200); do
  journal_unit_after "$cursor" "kechi@$KT_APP.service" | grep -q 'no connection open or waiting' && break
  sleep 0.05
done
codes=$(tgt_run sh -c "for i in \$(seq 1 20); do curl -sS -o /dev/null -m 60 -w '%{http_code}\n' http://$KT_LISTEN/ 2>/dev/null || echo 000 & done; wait" | sort | uniq -c | tr -s ' ' | tr '\n' ';')
expect_eq "20 requests during the idle stop" "$codes" " 20 200;"

steer=$(tgt_journal -o cat -u "kechi@$KT_APP" | grep -F "listening socket $KT_LISTEN:")
handed=$(printf '%s\n' "$steer" | grep -c 'waited while no worker served')
if [ "$(printf '%s\n' "$steer" | grep -c 'each worker gets a socket of its own')" -ge 2 ]; then
  ok "kechid steered $KT_LISTEN at each start"
else
  bad "kechid did not steer $KT_LISTEN at each start: $steer"
fi
# the first request and the one after the idle stop each started the app: each waited on the
# activated socket until a worker served
if [ "$handed" -ge 2 ]; then
  ok "connections that waited on the activated socket handed to the first serving worker: $handed time(s)"
else
  bad "connections handed from the activated socket: $handed time(s), want 2 or more (the first request and the cold start)"
fi
expect_eq "kechid lines about $KT_LISTEN that are warnings (not steered)" "$(printf '%s\n' "$steer" | grep -c 'not steered')" 0

say "a load that starts against the stopped app: nothing fails"
until_inactive 60 > /dev/null || bad "no idle stop before the load"
load_start burst keepalive || abort "no load generator"
sleep 5
load_stop burst "load from a stopped app"
expect_eq "kechi@$KT_APP under load" "$(tgt_run systemctl is-active "kechi@$KT_APP")" active
if took=$(until_inactive 60); then ok "idle again ${took} s after the load ended"; else bad "not idle within 60 s after the load"; fi
stopped_cleanly "after the load"
load_summary
finish

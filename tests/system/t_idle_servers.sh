#!/bin/bash
# t_idle_servers: scale to zero with real app servers (Starlet, gunicorn, puma cluster), each as
# in its matrix row, with `[idle] stop-after = "3s"` and ready.mode accept. For each: the app is
# started by a first connection, stops for idleness, and then KT_COLD_ROUNDS (default 5) times
# the first request after an idle stop is answered (200; a refused or failed one is a FAIL).
# Prints per server the cold start seen by the client (the request's total time, curl inside the
# machine) and by kechid (its start to its first ready worker, from `kechictl status --json`):
#   COLD server=NAME rounds=N client_median_s=X client_max_s=X kechid_median_s=X kechid_max_s=X
# docs/benchmarks/coldstart.md is made from these lines.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_idle_servers "cold starts after idle stops: Starlet, gunicorn, puma"
for b in plackup gunicorn puma; do command -v "$b" > /dev/null || skip "no $b (tests/run.sh installs the app servers)"; done
tgt_up idlesrv
kechi_install
ROUNDS=${KT_COLD_ROUNDS:-5}

get() { tgt_run curl -sS -o /dev/null -m 90 -w '%{http_code} %{time_total}\n' "http://$KT_LISTEN/" 2> /dev/null || echo "000 -"; }
until_inactive() {
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$1" ]; do
    [ "$(tgt_run systemctl is-active "kechi@$KT_APP")" = inactive ] && return 0
    sleep 0.3
  done
  return 1
}
median_max() {  # numbers on stdin -> "MEDIAN MAX"
  sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit } m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f\n", m, v[NR] }'
}

# cold NAME COMMAND_TOML [STOP_SIGNAL]
cold() {
  local name=$1 command=$2 sig=${3:-TERM} r i client=() kechid=() st rs
  say "$name: $command"
  tgt_run systemctl stop "kechi@$KT_APP.socket" "kechi@$KT_APP" 2> /dev/null
  kechi_config <<EOF
command = $command
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 1

[memory]
max = "256M"

[ready]
mode = "accept"
timeout = "60s"

[stop]
signal = "$sig"
timeout = "30s"

[idle]
stop-after = "3s"
EOF
  tgt_run systemctl start "kechi@$KT_APP.socket" || { bad "$name: systemctl start kechi@$KT_APP.socket"; return; }
  r=$(get)
  expect_eq "$name: the first request (starts the app)" "${r%% *}" 200
  for i in $(seq 1 "$ROUNDS"); do
    if ! until_inactive 90; then bad "$name: round $i: no idle stop within 90 s"; return; fi
    r=$(get)
    if [ "${r%% *}" != 200 ]; then bad "$name: round $i: the first request after the idle stop got ${r%% *}"; continue; fi
    client+=("${r#* }")
    # (in accept mode kechid may see the worker ready a moment after it answered)
    for _ in $(seq 1 50); do
      st=$(tgt_run kechictl status "$KT_APP" --json 2> /dev/null)
      rs=$(printf '%s' "$st" | python3 -c 'import json, sys; s = json.load(sys.stdin)["start"]; print(s["ready_secs"] if s.get("after_idle_secs") is not None and s.get("ready_secs") is not None else "-")' 2> /dev/null)
      [ "$rs" = - ] || [ -z "$rs" ] || break
      sleep 0.2
    done
    [ "$rs" = - ] || [ -z "$rs" ] || kechid+=("$rs")
  done
  expect_eq "$name: cold starts answered with 200" "${#client[@]}" "$ROUNDS"
  expect_eq "$name: cold starts kechid reported as after an idle stop" "${#kechid[@]}" "$ROUNDS"
  read -r cm cx <<< "$(printf '%s\n' "${client[@]}" | median_max)"
  read -r km kx <<< "$(printf '%s\n' "${kechid[@]}" | median_max)"
  echo "COLD server=$name rounds=${#client[@]} client_median_s=$cm client_max_s=$cx kechid_median_s=$km kechid_max_s=$kx"
  tgt_run systemctl stop "kechi@$KT_APP.socket" "kechi@$KT_APP" 2> /dev/null
}

cold "Starlet" "[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"$KT_INSIDE/hello.psgi\"]"
cold "gunicorn (sync, 2 workers)" '["/usr/bin/gunicorn", "--workers", "2", "hello_wsgi:app"]'
cold "puma (cluster, -w 2 --preload)" "[\"/usr/bin/puma\", \"-C\", \"$KT_INSIDE/puma_kechi.rb\", \"-e\", \"production\", \"-w\", \"2\", \"--preload\", \"-b\", \"unix:///run/kechi/$KT_APP.sock\", \"-b\", \"tcp://$KT_LISTEN\", \"$KT_INSIDE/hello.ru\"]"
finish

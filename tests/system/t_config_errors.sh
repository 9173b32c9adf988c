#!/bin/bash
# t_config_errors: kechid refuses a bad /etc/kechi/demo.toml before starting anything:
# `systemctl start kechi@demo` fails, the unit ends "failed" without restart loops (exit status 78,
# EX_CONFIG, which the unit does not restart), and the journal names file:line and the key;
# `kechictl check demo` reports every problem of the file in one run (an unknown key, a missing
# directory, a missing program), and refuses puma bound to the TCP address "besides" the unix
# socket (puma would unlink /run/kechi/demo.sock), naming the fix, as kechid does; warnings (gunicorn
# with ready.mode notify and stop.signal INT) go to the journal at start and do not stop the app.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"

scenario t_config_errors "a bad config is refused with file:line: key"
tgt_up conferr
kechi_install

# try_bad LINE KEY: the config just written has its problem at LINE, about KEY
try_bad() {
  local line=$1 key=$2 cursor state log t0
  tgt_run systemctl reset-failed kechi@demo 2> /dev/null
  cursor=$(journal_cursor)
  t0=$SECONDS
  if tgt_run timeout 60 systemctl start kechi@demo 2> /dev/null; then
    bad "systemctl start kechi@demo succeeded"
  else
    ok "systemctl start kechi@demo fails ($((SECONDS - t0)) s)"
  fi
  state=""
  for _ in $(seq 1 30); do
    state=$(tgt_run systemctl is-failed kechi@demo)
    [ "$state" = failed ] && break
    sleep 0.5
  done
  expect_eq "systemctl is-failed kechi@demo" "$state" failed
  info "$(tgt_run systemctl show -p Result -p ExecMainStatus -p NRestarts kechi@demo | tr '\n' ' ')"
  expect_eq "kechid's exit status (78, EX_CONFIG)" "$(unit_prop kechi@demo ExecMainStatus)" 78
  expect_eq "restarts of kechid by systemd" "$(unit_prop kechi@demo NRestarts)" 0
  log=$(journal_unit_after "$cursor" kechi@demo.service)
  printf '%s\n' "$log" | head -n 8 | sed 's/^/          | /'
  if printf '%s\n' "$log" | grep -F "/etc/kechi/demo.toml:$line:" | grep -qF "$key"; then
    ok "the journal says /etc/kechi/demo.toml:$line: ... $key"
  else
    bad "no journal line with /etc/kechi/demo.toml:$line: and '$key'"
  fi
  expect_eq "worker scopes started" "$(count_lines "$(workers)")" 0
  expect_eq "processes of $KT_USER" "$(tgt_run pgrep -u "$KT_USER" | tr '\n' ' ')" ""
}

say "an unknown key"
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
wokers = 3
EOF
try_bad 3 wokers

say "a value of the wrong type"
kechi_config <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"

workers = "many"
EOF
try_bad 4 workers

# check_says WHAT PATTERN...: `kechictl check demo` exits 1 and its output has every PATTERN
check_says() {
  local what=$1 out rc p
  shift
  out=$(tgt_run kechictl check demo 2>&1)
  rc=$?
  printf '%s\n' "$out" | sed 's/^/          | /'
  expect_eq "kechictl check demo exit status ($what)" "$rc" 1
  for p in "$@"; do
    if has "$out" -F -- "$p"; then ok "kechictl check says: $p"; else bad "kechictl check does not say: $p"; fi
  done
}

say "three problems at once: an unknown key does not hide a missing directory and program"
kechi_config <<EOF
command = ["/usr/lib/kechi-test/no-such-server", "--port", "8080"]
user = "$KT_USER"
workerz = 3
directory = "/srv/no-such-app"
EOF
check_says "3 problems" "demo.toml:1: command: /usr/lib/kechi-test/no-such-server does not exist" \
  "demo.toml:3: workerz: unknown key; did you mean workers?" \
  "demo.toml:4: directory: /srv/no-such-app does not exist"
try_bad 4 directory

say "puma bound to the TCP address added besides the unix socket ($KT_LISTEN)"
kechi_config <<EOF
command = ["/usr/bin/puma", "-b", "tcp://$KT_LISTEN", "$KT_INSIDE/config.ru"]
user = "$KT_USER"
EOF
check_says "puma would unlink the socket" \
  "demo.toml:1: command: puma is passed the unix socket /run/kechi/demo.sock but does not bind it" \
  "expected -b unix:///run/kechi/demo.sock in command too"
try_bad 1 "unlinks /run/kechi/demo.sock"

say "warnings do not stop the app: gunicorn with ready.mode notify and stop.signal INT"
tgt_run systemctl reset-failed kechi@demo 2> /dev/null
kechi_config <<EOF
command = ["/usr/bin/gunicorn", "--workers", "1", "hello_wsgi:app"]
directory = "$KT_INSIDE"
user = "$KT_USER"
[ready]
mode = "notify"
[stop]
signal = "INT"
EOF
cursor=$(journal_cursor)
kechi_start || bad "kechi@demo did not start with warnings only"
log=$(journal_unit_after "$cursor" kechi@demo.service)
for p in "demo.toml:5: ready.mode: warning: gunicorn's arbiter sends READY=1 before its workers" \
  "demo.toml:7: stop.signal: warning: gunicorn's arbiter kills its workers at once on INT"; do
  if has "$log" -F -- "$p"; then ok "the journal says: $p"; else bad "the journal does not say: $p"; fi
done
expect_eq "kechictl check demo exit status (warnings only)" "$(tgt_run kechictl check demo > /dev/null 2>&1; echo $?)" 0
expect_eq "kechictl check --strict demo exit status" "$(tgt_run kechictl check --strict demo > /dev/null 2>&1; echo $?)" 1
expect_eq "kechictl check --json: problems" "$(tgt_run kechictl check --json demo | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["server"], [(p["severity"], p["key"], p["line"]) for p in d["problems"]])')" "gunicorn [('warning', 'ready.mode', 5), ('warning', 'stop.signal', 7)]"
tgt_run timeout 120 systemctl stop kechi@demo

say "and a good config starts (the unit was not left unusable)"
tgt_run systemctl reset-failed kechi@demo 2> /dev/null
demo_config
kechi_start
expect_eq "worker scopes" "$(count_lines "$(workers)")" 3

finish

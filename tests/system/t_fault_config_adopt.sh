#!/bin/bash
# t_fault_config_adopt: a kechid that adopts workers started with another configuration replaces
# them, as a reload would have (the workers file records each worker's config fingerprint):
#   1. the config edited (a new environment value), then `systemctl restart kechi@demo`: the new
#      kechid adopts the running workers, says they run an older configuration, and replaces
#      every one; the replacements have the new value;
#   2. a reload roll cut short: the config edited again, `systemctl reload`, and kechid killed
#      with SIGKILL at once, before the roll is done: the next kechid finishes the roll.
# Under load all along: 0 failed requests; at the end exactly `workers` workers.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/fault.sh
. "$KT_ROOT/tests/system/lib/fault.sh"

scenario t_fault_config_adopt "workers adopted with an older configuration are replaced (restart after an edit, kill -9 mid-roll)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
WORKERS=3

config() {  # config GENERATION
  kechi_config <<EOF
command = $FAULT_APP
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = $WORKERS
environment = { KT_GENERATION = "$1" }

[ready]
mode = "notify"
timeout = "30s"

[stop]
timeout = "10s"
EOF
}

# generations: the KT_GENERATION of every worker's main process, sorted
generations() {
  local pid
  for pid in $(workers | awk '{ print $3 }'); do kt envof "$pid" KT_GENERATION 2> /dev/null; done | sort | tr '\n' ' '
}

all_at() {  # all_at STEP GENERATION: within 60 s every worker runs GENERATION
  local want="" i
  for i in $(seq 1 "$WORKERS"); do want="$want$2 "; done
  for _ in $(seq 1 300); do
    [ "$(generations)" = "$want" ] && [ "$(count_lines "$(workers)")" = "$WORKERS" ] && break
    sleep 0.2
  done
  expect_eq "$1: every worker's KT_GENERATION" "$(generations)" "$want"
}

tgt_up fconfig
kechi_install
config 1
kechi_start || abort "kechi@demo did not start"
why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60) || abort "not steady after start: $why"
all_at start 1

say "step 1: config edited, then systemctl restart kechi@demo, under load"
fault_load one || abort "no load"
cursor=$(journal_cursor)
config 2
tgt_run timeout 120 systemctl restart "kechi@$KT_APP" || bad "1: systemctl restart"
all_at 1 2
log=$(journal_unit_after "$cursor" "kechi@$KT_APP.service")
expect_eq "1: workers adopted by the new kechid" "$(printf '%s\n' "$log" | grep -c 'adopted running worker')" "$WORKERS"
expect_eq "1: journal lines 'runs an older configuration'" "$(printf '%s\n' "$log" | grep -c 'runs an older configuration')" "$WORKERS"
fault_load_stop one 1 0 "none"

say "step 2: config edited, systemctl reload, kechid killed -9 at once (the roll cut short), under load"
fault_load two || abort "no load"
config 3
pid=$(unit_prop "kechi@$KT_APP" MainPID)
tgt_run systemctl reload "kechi@$KT_APP" || bad "2: systemctl reload"
tgt_run kill -KILL "$pid"
info "right after the kill: generations $(generations)"
all_at 2 3
fault_load_stop two 2 0 "none"
if why=$(kt steady "$KT_APP" "$WORKERS" 1 "$KT_USER" 60); then ok "end: exactly $WORKERS workers, nothing else"; else bad "end: $why"; fi
load_summary
finish

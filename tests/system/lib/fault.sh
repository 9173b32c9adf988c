#!/bin/bash
# fault.sh — what the t_fault_* scenarios share, on top of scenario.sh: the fast test app's config,
# a load start that survives a slow machine, a load judged against the failures a fault
# necessarily causes, and the box's whole journal after a cursor.
# shellcheck disable=SC2034  # (FAULT_* are read by the scenarios)

# The app: tiny.py (tests/system/apps), ready by READY=1, graceful, ~50 ms to start.
FAULT_APP="[\"/usr/bin/python3\", \"-S\", \"$KT_INSIDE/tiny.py\"]"

# fault_config STOP_TIMEOUT [TOP_LINES [SECTIONS]]: /etc/kechi/demo.toml as the fault scenarios
# use it: $FAULT_COMMAND (default $FAULT_APP) as $KT_USER in $KT_INSIDE, $WORKERS workers of 64M,
# ready by notify within 30 s, stop.timeout STOP_TIMEOUT; TOP_LINES (top-level keys) go after
# `workers`, SECTIONS (whole tables) at the end.
fault_config() {
  kechi_config <<EOF
command = ${FAULT_COMMAND:-$FAULT_APP}
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = $WORKERS
${2:-}
[memory]
max = "64M"

[ready]
mode = "notify"
timeout = "30s"

[stop]
timeout = "$1"
${3:-}
EOF
}

# fault_load NAME [CONNS]: load_start NAME keepalive with CONNS (8) connections, one thread. load-start waits for
# wrk to show an established connection, which tiny.py (one request per connection, closed at
# once) keeps established for well under a millisecond: on a loaded machine ss may never catch one
# in 10 s. Then wrk still counts as started if its unit runs and sockets to the address exist in
# any state (TIME-WAIT included); otherwise it is stopped and started once more.
fault_load() {
  local out n c=${2:-8}
  if out=$(kt load-start "$1" keepalive "http://$KT_LISTEN/" "$c" 1 "$(load_start_wait)" 2>&1); then return 0; fi
  n=$(tgt_run ss -Htan "dst $KT_LISTEN" 2> /dev/null | grep -c .)
  if tgt_run systemctl -q is-active "kt-load-$1" && [ "$n" -gt 0 ]; then
    info "load generator $1: wrk runs, $n sockets to $KT_LISTEN (load-start saw none established)"
    return 0
  fi
  info "load generator $1 did not start at the first try: $(printf '%s' "$out" | tr '\n' ' ' | cut -c 1-200)"
  kt load-stop "$1" > /dev/null 2>&1
  sleep 3
  load_start "$1" keepalive "$c" 1
}

# fault_load_stop NAME STEP ALLOWED WHY: load_stop, except that up to ALLOWED failed requests are
# expected (WHY says why); more is a FAIL. Sets LOAD_SERVED and LOAD_FAILED as load_stop does.
fault_load_stop() {
  local name=$1 step=$2 allowed=$3 why=$4 fails=$_KT_FAILS checks=$_KT_CHECKS
  load_stop "$name" "$step" > /dev/null
  # load_stop judged against 0 (and said so on stdout, discarded): judge against ALLOWED instead
  _KT_FAILS=$fails _KT_CHECKS=$checks
  LOAD_ROWS[-1]="${LOAD_ROWS[-1]} (allowed $allowed: $why)"
  if [ "$LOAD_FAILED" -le "$allowed" ] && [ "$LOAD_SERVED" -gt 0 ]; then
    ok "$step, load $name: served $LOAD_SERVED, failed $LOAD_FAILED (at most $allowed: $why)"
  else
    bad "$step, load $name: served $LOAD_SERVED, failed $LOAD_FAILED (at most $allowed: $why)"
  fi
}

# fault_journal CURSOR: every message of the box's journal after CURSOR (a worker's own output
# included, whichever unit journald files it under)
fault_journal() { tgt_run journalctl --no-pager -q -o cat --after-cursor="$1"; }

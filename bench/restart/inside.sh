#!/bin/bash
# bench/restart/inside.sh — runs INSIDE the benchmark's box, installed there as
# /usr/lib/kechi-test/bench-restart. One call answers one question (few round trips, no quoting).
#
#   wrk-start NAME MODE CONNS SECS URL  wrk for SECS seconds as unit bench-wrk-NAME (MODE keepalive,
#                                       or close: "Connection: close", one connection per request)
#   wrk-wait NAME                       until it has ended; prints its "result ..." line
#   app-pids USER [EXCLUDE_PID]         the pids USER runs, but EXCLUDE_PID
#   wait-gone SECS PID...               until none of the PIDs lives; exit 1 after SECS
#   wait-http URL SECS                  until GET URL answers 200; exit 1 after SECS
#   wait-active UNIT OLD_MAINPID SECS   until UNIT is active with a MainPID other than OLD_MAINPID
set -uo pipefail
LUA=/usr/lib/kechi-test/bench-result.lua
OUT=/run/bench-wrk

wrk_start() {
  local name=$1 mode=$2 conns=$3 secs=$4 url=$5 args
  mkdir -p "$OUT"
  rm -f "$OUT/$name.out"
  args=(-c "$conns" -t 1 -d "${secs}s" --timeout 5s -s "$LUA")
  [ "$mode" = close ] && args+=(-H "Connection: close")
  # shellcheck disable=SC2016  # expanded by that sh: $0 is the output file
  systemd-run --quiet --unit="bench-wrk-$name" --collect --service-type=exec \
    sh -c 'exec wrk "$@" > "$0" 2>&1' "$OUT/$name.out" "${args[@]}" "$url"
}

wrk_wait() {
  local name=$1 end=$((SECONDS + 120))
  while systemctl -q is-active "bench-wrk-$name" 2> /dev/null; do
    [ "$SECONDS" -lt "$end" ] || { systemctl kill -s KILL "bench-wrk-$name"; break; }
    sleep 0.2
  done
  grep '^result ' "$OUT/$name.out" || { echo "no result from wrk $name:" >&2; cat "$OUT/$name.out" >&2; return 1; }
}

app_pids() { pgrep -u "$1" | grep -vx "${2:-0}" | tr '\n' ' '; }

wait_gone() {
  local end=$((SECONDS + $1)) p alive
  shift
  while :; do
    alive=0
    for p in "$@"; do kill -0 "$p" 2> /dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

wait_http() {
  local end=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1")" = 200 ]; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}

wait_active() {
  local end=$((SECONDS + $3)) pid
  while :; do
    pid=$(systemctl show -p MainPID --value "$1")
    [ "$pid" != "$2" ] && [ "$pid" != 0 ] && [ "$(systemctl show -p ActiveState --value "$1")" = active ] && return 0
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  wrk-start) wrk_start "$@" ;;
  wrk-wait) wrk_wait "$@" ;;
  app-pids) app_pids "$@" ;;
  wait-gone) wait_gone "$@" ;;
  wait-http) wait_http "$@" ;;
  wait-active) wait_active "$@" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac

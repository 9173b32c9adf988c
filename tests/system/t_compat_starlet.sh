#!/bin/bash
# t_compat_starlet: the compatibility matrix's Starlet row (docs/APP-SERVERS.md): Starlet as plackup
# runs it (4 processes per worker, no keep-alive: Starlet's default), the sockets through
# SERVER_STARTER_PORT, under keep-alive and "Connection: close" load through kechictl recycle --all,
# systemctl reload, systemctl restart and kill -9 of kechid: 0 failed requests, and after each
# exactly `workers` workers (lib/zero.sh). Age recycling is t_compat_starlet_keepalive's.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_starlet "Starlet via SERVER_STARTER_PORT: no failed request through recycle, reload, restart, kill -9"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"$KT_INSIDE/hello.psgi\"]"
ZD_PROCS=5   # Starlet's master and its 4 children
ZD_ROW=starlet
ZD_SERVER="Starlet $(dpkg-query -W -f='${Version}' starlet 2> /dev/null | cut -d- -f1)"
ZD_SKIP=age
# Starlet takes its sockets from SERVER_STARTER_PORT alone: no --listen. The variable must be in
# Server::Starter's format, ADDRESS=FD joined by ";", naming the two sockets of kechi@demo.socket,
# and at each FD Starlet's master must hold that very socket, listening. Perl's $0 (set while
# plackup loads the app) writes over the environment block that /proc/PID/environ shows, so the
# value comes from the app's own %ENV (hello.psgi answers GET /env/NAME) when /proc has lost it.
zd_after_start() {
  local pid ssp from answers el els addr fd got n=0 want_fd=3 addrs=()
  case "$ZD_COMMAND" in
    *--listen*|*'"-l"'*) bad "Starlet's command has --listen: $ZD_COMMAND" ;;
    *) ok "Starlet's command has no --listen (its sockets can only come from SERVER_STARTER_PORT)" ;;
  esac
  pid=$(workers | awk 'NR == 1 { print $3 }')
  ssp=$(kt envof "$pid" SERVER_STARTER_PORT)
  from="/proc/$pid/environ (the worker's master)"
  if [ -z "$ssp" ]; then
    # shellcheck disable=SC2016
    answers=$(tgt_run sh -c 'for i in $(seq 10); do curl -s --max-time 10 "$1"; done' get "http://$KT_LISTEN/env/SERVER_STARTER_PORT" | sort -u)
    if [ "$(count_lines "$answers")" = 1 ]; then ssp=$answers; fi
    from="the app's %ENV in its Starlet processes (10 requests, one answer: $(count_lines "$answers") distinct)"
  fi
  info "SERVER_STARTER_PORT=$ssp, from $from"
  if [ -z "$ssp" ]; then bad "no SERVER_STARTER_PORT in the worker's environment"; return 0; fi
  IFS=';' read -ra els <<< "$ssp"
  for el in "${els[@]}"; do
    addr=${el%=*} fd=${el##*=}
    n=$((n + 1))
    if [ "$addr" = "$el" ] || ! [[ $fd =~ ^[0-9]+$ ]]; then bad "SERVER_STARTER_PORT element '$el' is not ADDRESS=FD"; continue; fi
    expect_eq "SERVER_STARTER_PORT element $n: its fd" "$fd" "$want_fd"
    want_fd=$((want_fd + 1))
    got=$(kt fdsock "$pid" "$fd" 2>&1)
    expect_eq "fd $fd of Starlet's master (pid $pid)" "$got" "$addr listening"
    addrs+=("$addr")
  done
  expect_eq "the addresses SERVER_STARTER_PORT names" "$(printf '%s\n' "${addrs[@]}" | sort | paste -sd ' ')" \
    "$(printf '%s\n' "$KT_LISTEN" "/run/kechi/$KT_APP.sock" | sort | paste -sd ' ')"
}
tgt_up cstarlet
kechi_install
zd_main
finish

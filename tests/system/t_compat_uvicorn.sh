#!/bin/bash
# t_compat_uvicorn: the compatibility matrix's uvicorn row (docs/APP-SERVERS.md): Debian's uvicorn
# with 2 worker processes, an ASGI app, its socket through --fd 3. uvicorn takes one inherited socket
# (--fd, no LISTEN_FDS), so kechi@demo.socket has the TCP listener instead of its Unix socket
# (README's "instead" form) and fd 3 is that listener, with NoDelay=yes. Under keep-alive and "Connection: close"
# load through kechictl recycle --all, systemctl reload, systemctl restart and kill -9 of kechid:
# 0 failed requests, and after each exactly `workers` workers (lib/zero.sh).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_uvicorn "uvicorn --fd 3: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/uvicorn ] || skip "no uvicorn (Debian package uvicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# --header connection:close: uvicorn's own switch to end each connection after its response
# (uvicorn 0.17 has no keep-alive flag; a "connection: close" response header, default or the
# app's, sets its cycle's keep_alive off and tells the client). Without it, uvicorn's graceful stop
# closes every idle kept-alive connection at once (HttpToolsProtocol.shutdown: transport.close()),
# and a request the client sent on one at that moment is lost (docs/APP-SERVERS.md).
ZD_COMMAND='["/usr/bin/uvicorn", "--fd", "3", "--workers", "2", "--no-access-log", "--header", "connection:close", "hello_asgi:app"]'
ZD_PROCS=4   # uvicorn's parent, its 2 server processes and multiprocessing's resource tracker
ZD_TCP_ONLY=1
# uvicorn 0.17 wraps the --fd socket as AF_UNIX whatever it is, so asyncio never sets TCP_NODELAY on
# the connections it accepts: each kept-alive response, written in two sends, waits for the
# client's delayed ACK (Nagle). Linux copies TCP_NODELAY from the listening socket to every
# connection accepted from it: the socket unit's NoDelay=yes is the recipe (docs/APP-SERVERS.md).
ZD_SOCKET_OPTIONS="NoDelay=yes"
ZD_ROW=uvicorn
ZD_SERVER="uvicorn $(dpkg-query -W -f='${Version}' uvicorn 2> /dev/null | cut -d- -f1)"
ZD_SKIP=age
# What no flag of uvicorn removes (docs/APP-SERVERS.md): its graceful stop closes every connection
# whose request it has not parsed yet, so a connection it accepted just before TERM, its request
# unread in the socket's buffer, is reset (traced with no kechi: bench/uvicorn-term-race/). Three
# runs on a shared socket lost 0, 1 and 7 requests. Steering (ReusePort=yes: each worker accepts
# from a socket of its own and gets TERM only once no connection can reach it) closes the window;
# the row fails at any failed request.
ZD_STEER=1
zd_after_start() {
  local line
  line=$(tgt_journal -o cat | grep -m1 'Uvicorn running on')
  info "uvicorn: $line"
  case "$line" in
    *"'127.0.0.1', ${KT_LISTEN##*:}"*) ok "uvicorn serves the inherited socket at fd 3 ($KT_LISTEN), not its default 127.0.0.1:8000" ;;
    *) bad "uvicorn's 'Uvicorn running on' line does not name $KT_LISTEN" ;;
  esac
}
# what each process of the workers waits on after a step, under load (docs/APP-SERVERS.md, the
# O_NONBLOCK section): its system call (/proc/PID/syscall: 288 accept4, 232 epoll_wait, 7 poll, on
# x86-64) and fd 3's file status flags (04002: O_NONBLOCK on)
zd_after_step() {
  # shellcheck disable=SC2016
  tgt_run sh -c 'for p in $(ps -u "$1" -o pid=); do
      printf "%s %s syscall=%s fd3_flags=%s\n" "$p" "$(cat /proc/$p/comm)" "$(cut -d" " -f1 /proc/$p/syscall 2> /dev/null)" \
        "$(sed -n "s/^flags:[[:space:]]*//p" /proc/$p/fdinfo/3 2> /dev/null)"
    done' sh "$KT_USER" 2> /dev/null | sed "s/^/          $1: /"
}
tgt_up cuvicorn
kechi_install
zd_main
finish

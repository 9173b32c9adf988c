#!/bin/bash
# t_compat_starman: the compatibility matrix's Starman row (docs/APP-SERVERS.md): Debian's starman
# with its app preloaded (4 processes per worker) and keep-alive off, its socket through
# Server::Starter's protocol (SERVER_STARTER_PORT: Plack::Handler::Starman then runs on
# Net::Server::SS::PreFork, which takes the listening sockets from the fds the variable names and
# binds nothing), stopped with QUIT (Starman's graceful shutdown; TERM and INT kill its children at
# once), under keep-alive and "Connection: close" load through kechictl recycle --all, systemctl
# reload, systemctl restart and kill -9 of kechid: 0 failed requests, and after each exactly
# `workers` workers (lib/zero.sh).
# Two recipes of Starman's own, each for a loss measured without it (docs/APP-SERVERS.md):
#  - TCP only (README's "instead" form): Net::Server::SS::PreFork takes every Server::Starter socket
#    for TCP, and a child that accepts on a Unix socket dies in Socket::unpack_sockaddr_in.
#  - --disable-keepalive: each Starman process serves one connection at a time, and with keep-alive
#    a client that keeps more connections busy than there are processes holds them forever (the
#    other connections starve), and a graceful QUIT never ends (stop.timeout, then SIGKILL).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_starman "Starman via SERVER_STARTER_PORT, stop.signal QUIT: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/starman ] || skip "no starman (Debian package starman)"
perl -MNet::Server::SS::PreFork -e 1 2> /dev/null || skip "no Net::Server::SS::PreFork (Debian package libnet-server-ss-prefork-perl)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# no --listen: with SERVER_STARTER_PORT set, --listen is not used
ZD_COMMAND="[\"/usr/bin/starman\", \"--preload-app\", \"--workers\", \"4\", \"--disable-keepalive\", \"$KT_INSIDE/hello.psgi\"]"
ZD_TCP_ONLY=1
ZD_PROCS=5   # Starman's master and its 4 children
ZD_STOP_SIGNAL=QUIT
ZD_ROW=starman
ZD_SERVER="Starman $(dpkg-query -W -f='${Version}' starman 2> /dev/null | cut -d- -f1)"
ZD_SKIP=age
# A loss that is Starman's own (Net::Server::PreFork, measured with strace under Server::Starter
# itself, no kechi: docs/APP-SERVERS.md): at QUIT the master sends HUP to its children, and a child
# whose accept() has just returned a connection, but has not yet marked itself connected, takes
# the HUP as "idle" and exits with that connection unanswered (the client reads a reset). No flag
# of Starman closes that window; steering does (ReusePort=yes on the socket: each worker accepts
# from a socket of its own, and gets its QUIT only once no connection can reach it). Before it,
# runs lost 7 to 44 requests; the row fails at any failed request.
ZD_STEER=1
# Starman's master holds the socket of kechi@demo.socket it took from Server::Starter's variable,
# and binds none itself (its default is *:5000)
zd_after_start() {
  local pid n
  pid=$(workers | awk 'NR == 1 { print $3 }')
  n=$(tgt_run ss -Hlnp 2> /dev/null | grep -c "pid=$pid,")
  info "sockets the master (pid $pid) listens on: $(tgt_run ss -Hlnp 2> /dev/null | grep "pid=$pid," | awk '{ print $5 }' | sort | paste -sd ' ')"
  expect_eq "listening sockets held by Starman's master" "$n" 1
  expect_eq "a socket on Starman's default port 5000" "$(tgt_run ss -Hlnt 'sport = :5000' | grep -c .)" 0
}
tgt_up cstarman
kechi_install
zd_main
finish

#!/bin/bash
# t_compat_uwsgi: uWSGI 2.0 (Debian's, python3 plugin; a master and 2 workers per kechi worker, the
# sockets through LISTEN_FDS) under keep-alive and "Connection: close" load through kechictl
# recycle --all, systemctl reload, systemctl restart and kill -9 of kechid: 0 failed requests
# (lib/zero.sh; docs/APP-SERVERS.md, "uWSGI").
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_uwsgi "uWSGI --master via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/uwsgi ] || skip "no uwsgi (Debian package uwsgi)"
[ -e /usr/lib/uwsgi/plugins/python3_plugin.so ] || skip "no python3 plugin for uWSGI (Debian package uwsgi-plugin-python3)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# - no --socket/--http-socket: uWSGI takes the sockets of LISTEN_FDS; --protocol http speaks HTTP
#   on them
# - SIGTERM (kechi's stop signal) is a brutal reload in uWSGI 2.0; the hook makes it the graceful
#   shutdown (each worker finishes its request, then exits)
# - --protocol http closes the connection after every response: the route says so to the client
#   ("Connection: close"), which otherwise sends its next request on a closed connection
ZD_COMMAND="[\"/usr/bin/uwsgi\", \"--master\", \"--processes\", \"2\", \"--plugin\", \"python3\", \"--protocol\", \"http\", \"--route-run\", \"addheader:Connection: close\", \"--hook-master-start\", \"unix_signal:15 gracefully_kill_them_all\", \"--wsgi-file\", \"$KT_INSIDE/hello_wsgi.py\", \"--callable\", \"app\"]"
ZD_PROCS=3   # uWSGI's master and its 2 workers
ZD_SKIP=${ZD_SKIP-age}
ZD_ROW=uwsgi
ZD_SERVER="uWSGI $(dpkg-query -W -f='${Version}' uwsgi-core 2> /dev/null | cut -d- -f1), --master, 2 processes"
# - steered (ReusePort=yes): a sync worker that has accepted a connection but not yet marked itself
#   in a request exits at once on gracefully_kill (about one request in millions on a shared socket,
#   docs/APP-SERVERS.md); with a socket of its own it gets TERM only once no connection can reach it
ZD_STEER=1
tgt_up zuwsgi
kechi_install
zd_main
finish

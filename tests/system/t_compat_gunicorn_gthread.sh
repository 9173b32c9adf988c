#!/bin/bash
# t_compat_gunicorn_gthread: the compatibility matrix's row of gunicorn with threaded workers
# (docs/APP-SERVERS.md): 2 gthread workers of 4 threads per kechi worker, the sockets through
# LISTEN_FDS and LISTEN_PID, under keep-alive and "Connection: close" load through kechictl
# recycle --all, systemctl reload, systemctl restart and kill -9 of kechid: 0 failed requests, and
# after each exactly `workers` workers (lib/zero.sh). Unlike sync workers, gthread workers keep
# connections alive (2 s, gunicorn's --keep-alive default), and gunicorn 20.1's graceful stop of a
# gthread worker never reads the idle kept-alive connections it holds: a request sent on one in
# its last moments is lost (docs/APP-SERVERS.md). --keep-alive 0 is gunicorn's recipe.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_gunicorn_gthread "gunicorn (gthread workers) via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/gunicorn ] || skip "no gunicorn (Debian package gunicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND='["/usr/bin/gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--keep-alive", "0", "hello_wsgi:app"]'
ZD_PROCS=3   # gunicorn's arbiter and its 2 workers
ZD_ROW=gunicorn_gthread
ZD_SERVER="gunicorn $(dpkg-query -W -f='${Version}' gunicorn 2> /dev/null | cut -d- -f1), gthread workers"
ZD_SKIP=age
tgt_up cgthread
kechi_install
zd_main
finish

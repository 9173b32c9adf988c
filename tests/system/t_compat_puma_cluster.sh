#!/bin/bash
# t_compat_puma_cluster: puma in cluster mode (-w 2 --preload: a master and 2 forked workers per
# kechi worker, the sockets through LISTEN_FDS matched by its -b binds) under keep-alive and
# "Connection: close" load through kechictl recycle --all, systemctl reload, systemctl restart
# and kill -9 of kechid: 0 failed requests (lib/zero.sh; docs/APP-SERVERS.md, "puma").
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_puma_cluster "puma -w 2 --preload via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/puma ] || skip "no puma (Debian package puma)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# every activated socket named by a -b bind: puma closes (and unlinks!) one it is not given
ZD_COMMAND="[\"/usr/bin/puma\", \"-C\", \"$KT_INSIDE/puma_kechi.rb\", \"-e\", \"production\", \"-w\", \"2\", \"--preload\", \"-b\", \"unix:///run/kechi/$KT_APP.sock\", \"-b\", \"tcp://$KT_LISTEN\", \"$KT_INSIDE/hello.ru\"]"
ZD_PROCS=3   # puma's master and its 2 workers
ZD_SKIP=${ZD_SKIP-age}
tgt_up zpumac
kechi_install
zd_main
finish

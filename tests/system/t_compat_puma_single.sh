#!/bin/bash
# t_compat_puma_single: puma in single mode (one process, its thread pool, the sockets through
# LISTEN_FDS matched by its -b binds) under keep-alive and "Connection: close" load through
# kechictl recycle --all, systemctl reload, systemctl restart and kill -9 of kechid: 0 failed
# requests (lib/zero.sh; docs/APP-SERVERS.md, "puma").
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_puma_single "puma (single mode) via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/puma ] || skip "no puma (Debian package puma)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/puma\", \"-C\", \"$KT_INSIDE/puma_kechi.rb\", \"-e\", \"production\", \"-b\", \"unix:///run/kechi/$KT_APP.sock\", \"-b\", \"tcp://$KT_LISTEN\", \"$KT_INSIDE/hello.ru\"]"
ZD_PROCS=1
ZD_SKIP=${ZD_SKIP-age}
tgt_up zpumas
kechi_install
zd_main
finish

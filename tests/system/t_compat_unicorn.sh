#!/bin/bash
# t_compat_unicorn: unicorn (a master and 2 forked workers per kechi worker, the sockets through
# LISTEN_FDS, stop.signal = "QUIT": unicorn's graceful shutdown) under keep-alive and
# "Connection: close" load through kechictl recycle --all, systemctl reload, systemctl restart and
# kill -9 of kechid: 0 failed requests (lib/zero.sh; docs/APP-SERVERS.md, "unicorn").
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_unicorn "unicorn via LISTEN_FDS, stop.signal QUIT: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/unicorn ] || skip "no unicorn (Debian package unicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# no -l: unicorn takes the sockets of LISTEN_FDS and then binds no default one
ZD_COMMAND="[\"/usr/bin/unicorn\", \"-E\", \"production\", \"-c\", \"$KT_INSIDE/unicorn.conf.rb\", \"$KT_INSIDE/hello.ru\"]"
ZD_PROCS=3   # unicorn's master and its 2 workers
# TERM and INT are unicorn's immediate shutdown (workers killed mid-request); QUIT is graceful
ZD_STOP_SIGNAL=QUIT
ZD_SKIP=${ZD_SKIP-age}
tgt_up zunicorn
kechi_install
zd_main
finish

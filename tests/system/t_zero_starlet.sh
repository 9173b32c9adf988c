#!/bin/bash
# t_zero_starlet: Starlet (4 processes per worker, the sockets through SERVER_STARTER_PORT) under
# load through kechictl recycle --all, systemctl reload, age recycling, systemctl restart and
# kill -9 of kechid: 0 failed requests, and after each exactly `workers` workers (lib/zero.sh).
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_zero_starlet "Starlet via SERVER_STARTER_PORT: no failed request through recycle, reload, age, restart, kill -9"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"$KT_INSIDE/hello.psgi\"]"
ZD_PROCS=5   # Starlet's master and its 4 children
tgt_up zstarlet
kechi_install
zd_main
finish

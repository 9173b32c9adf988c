#!/bin/bash
# t_compat_starlet_keepalive: the compatibility matrix's row of Starlet with keep-alive
# (docs/APP-SERVERS.md): t_compat_starlet's routine (lib/zero.sh), with Starlet keeping
# connections alive (--max-keepalive-reqs=1000): wrk's 16 keep-alive connections stay open across
# every recycle, so each graceful stop meets connections that are busy or idle between two requests
# (a server that closes an idle one just as wrk sends on it shows up as a read or write error).
# With 16 keep-alive connections and 8 Starlet processes, every process of a new worker is busy
# from its first moment: ready.mode = "accept" must still see it ready. The one row with the age
# step (recycle.max-age): the same choreography as a recycle, started by kechid's own clock.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_starlet_keepalive "Starlet with keep-alive: no failed request through recycle, reload, age, restart, kill -9"
perl -MPlack::Handler::Starlet -e 1 2> /dev/null || skip "no Starlet (Debian package starlet)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=4\", \"--max-keepalive-reqs=1000\", \"$KT_INSIDE/hello.psgi\"]"
ZD_PROCS=5             # Starlet's master and its 4 children
ZD_READY_TIMEOUT=20s   # a replacement never seen ready fails within the step
ZD_WAIT=90
ZD_ROW=starlet_keepalive
ZD_SERVER="Starlet $(dpkg-query -W -f='${Version}' starlet 2> /dev/null | cut -d- -f1), keep-alive"
tgt_up zkeepalive
kechi_install
zd_main
finish

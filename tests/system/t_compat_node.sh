#!/bin/bash
# t_compat_node: a Node.js http server (Debian's nodejs; one process per kechi worker, the sockets
# through LISTEN_FDS, server.close() on SIGTERM) under keep-alive and "Connection: close" load
# through kechictl recycle --all, systemctl reload, systemctl restart and kill -9 of kechid:
# 0 failed requests (lib/zero.sh; docs/APP-SERVERS.md, "Node.js").
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_node "Node.js http server via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/node ] || skip "no node (Debian package nodejs)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
ZD_COMMAND="[\"/usr/bin/node\", \"$KT_INSIDE/hello_node.js\"${KT_NODE_ARGS:-}]"
ZD_PROCS=1
ZD_NONBLOCKING=1   # libuv's listeners are non-blocking
ZD_SKIP=${ZD_SKIP-age}
ZD_ROW=node
ZD_SERVER="Node.js $(node --version 2> /dev/null), http server"
tgt_up znode
kechi_install
zd_main
finish

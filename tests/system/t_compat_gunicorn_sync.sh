#!/bin/bash
# t_compat_gunicorn_sync: the compatibility matrix's row of gunicorn with sync workers
# (docs/APP-SERVERS.md): 2 sync workers per kechi worker, the sockets through LISTEN_FDS and
# LISTEN_PID, under keep-alive and "Connection: close" load through kechictl recycle --all,
# systemctl reload, systemctl restart and kill -9 of kechid: 0 failed requests, and after each
# exactly `workers` workers (lib/zero.sh). Sync workers close every connection after one response.
. "$(dirname "$(readlink -f "$0")")/lib/scenario.sh"
# shellcheck source=tests/system/lib/zero.sh
. "$KT_ROOT/tests/system/lib/zero.sh"

scenario t_compat_gunicorn_sync "gunicorn (sync workers) via LISTEN_FDS: no failed request through recycle, reload, restart, kill -9"
[ -x /usr/bin/gunicorn ] || skip "no gunicorn (Debian package gunicorn)"
command -v wrk > /dev/null || skip "no wrk (Debian package wrk)"
# no --bind: gunicorn takes the inherited sockets when LISTEN_PID is its own pid
ZD_COMMAND='["/usr/bin/gunicorn", "--workers", "2", "hello_wsgi:app"]'
ZD_PROCS=3   # gunicorn's arbiter and its 2 workers
ZD_ROW=gunicorn_sync
ZD_SERVER="gunicorn $(dpkg-query -W -f='${Version}' gunicorn 2> /dev/null | cut -d- -f1), sync workers"
ZD_SKIP=${ZD_SKIP:-age}   # (age recycling: t_compat_starlet_keepalive)
# gunicorn 20.1 (Debian 12) takes LISTEN_FDS only when LISTEN_PID is its own pid, then unsets
# both so that its workers do not see them, and never unlinks an inherited Unix socket on exit.
zd_after_start() {
  local line
  line=$(tgt_journal -o cat | grep -m1 'Listening at: ')
  info "gunicorn: $line"
  case "$line" in
    *"unix:/run/kechi/$KT_APP.sock"*"http://$KT_LISTEN"*|*"http://$KT_LISTEN"*"unix:/run/kechi/$KT_APP.sock"*)
      ok "gunicorn listens on both inherited sockets (LISTEN_FDS), not on its default 127.0.0.1:8000" ;;
    *) bad "gunicorn's 'Listening at:' line does not name both sockets of kechi@$KT_APP.socket" ;;
  esac
}
tgt_up cgunicorn
kechi_install
zd_main
finish

#!/bin/bash
# bench/restart/servers.sh — sourced by bench/restart/run.sh (after tests/system/lib/scenario.sh):
# the servers under test, each run inside the box, one at a time, all serving the same trivial
# hello app (tests/system/apps/hello.psgi for Perl, hello_wsgi.py for Python) with four processes
# that serve requests:
#   starlet          plackup -s Starlet --max-workers=4, binds 127.0.0.1:8081 itself, a plain
#                    systemd service (no socket activation)
#   start_server     start_server --port=127.0.0.1:8081 -- plackup -s Starlet --max-workers=4
#                    (Server::Starter holds the socket; SIGHUP starts a new generation)
#   kechi-starlet    kechi@demo: 2 workers of plackup -s Starlet --max-workers=2 (ready.mode accept)
#   gunicorn         gunicorn --workers 4, binds 127.0.0.1:8081 itself (systemd restart, or SIGHUP)
#   kechi-gunicorn   kechi@demo: 2 workers of gunicorn --workers 2 (sockets through LISTEN_FDS)
# srv_install (once per box), srv_start SERVER, srv_stop SERVER, srv_url SERVER, srv_unit SERVER,
# srv_settle SERVER (wait until the server is whole again after an action: every worker up, no
# leftover, answering).

PEER_ADDR=127.0.0.1:8081
BENCH_IN=$KT_INSIDE/bench-restart   # bench/restart/inside.sh, in the box
SRV_PROCS=3   # processes per kechi worker: Starlet's master and 2 children, gunicorn's arbiter and 2 workers

srv_unit() {
  case "$1" in
    kechi-*) echo "kechi@$KT_APP.service" ;;
    *) echo "bench-$1.service" ;;
  esac
}

srv_url() {
  case "$1" in
    kechi-*) echo "http://$KT_LISTEN/" ;;
    *) echo "http://$PEER_ADDR/" ;;
  esac
}

_srv_peer_unit() {  # _srv_peer_unit NAME EXECSTART: a plain service as $KT_USER, reload = SIGHUP
  tgt_write "/etc/systemd/system/bench-$1.service" <<EOF
[Unit]
Description=restart benchmark: $1

[Service]
User=$KT_USER
WorkingDirectory=$KT_INSIDE
Environment=KT_GENERATION=1
ExecStart=$2
ExecReload=/bin/kill -HUP \$MAINPID
EOF
}

_srv_kechi() {  # _srv_kechi COMMAND_TOML_ARRAY
  kechi_config > /dev/null <<EOF
command = $1
directory = "$KT_INSIDE"
user = "$KT_USER"
workers = 2
environment = { KT_GENERATION = "1" }

[memory]
max = "256M"

[ready]
mode = "accept"
timeout = "60s"

[stop]
timeout = "60s"
EOF
}

srv_install() {
  _srv_peer_unit starlet "/usr/bin/plackup -s Starlet -E deployment --listen $PEER_ADDR --max-workers=4 $KT_INSIDE/hello.psgi"
  _srv_peer_unit start_server "/usr/bin/start_server --port=$PEER_ADDR -- /usr/bin/plackup -s Starlet -E deployment --max-workers=4 $KT_INSIDE/hello.psgi"
  _srv_peer_unit gunicorn "/usr/bin/gunicorn --bind $PEER_ADDR --workers 4 hello_wsgi:app"
  tgt_run systemctl daemon-reload
}

srv_start() {
  case "$1" in
    kechi-starlet) _srv_kechi "[\"/usr/bin/plackup\", \"-s\", \"Starlet\", \"-E\", \"deployment\", \"--max-workers=2\", \"$KT_INSIDE/hello.psgi\"]" ;;
    kechi-gunicorn) _srv_kechi '["/usr/bin/gunicorn", "--workers", "2", "hello_wsgi:app"]' ;;
  esac
  tgt_run timeout 120 systemctl start "$(srv_unit "$1")" || return 1
  srv_settle "$1"
}

srv_stop() {
  # (systemctl warns that kechi@demo.socket could start kechi@demo again: expected, not shown)
  tgt_run timeout 120 systemctl stop "$(srv_unit "$1")" 2> /dev/null
  # nothing of the app may be left to serve the next one
  # shellcheck disable=SC2046
  tgt_run "$BENCH_IN" wait-gone 60 $(tgt_run "$BENCH_IN" app-pids "$KT_USER")
}

srv_settle() {
  case "$1" in
    kechi-*) kt steady "$KT_APP" 2 "$SRV_PROCS" "$KT_USER" 120 > /dev/null || return 1 ;;
  esac
  tgt_run "$BENCH_IN" wait-http "$(srv_url "$1")" 60
}

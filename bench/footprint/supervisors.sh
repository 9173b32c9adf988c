#!/bin/bash
# bench/footprint/supervisors.sh — sourced by bench/footprint/run.sh (after
# tests/system/lib/scenario.sh): the supervisors compared, each started in the box as a systemd
# service, one at a time, each keeping the same app running: tests/system/apps/hello.py (a
# threaded Python HTTP server), as user kechitest:
#   kechid        kechi@demo, `workers` = N, ready by READY=1 (hello.py sends it), sockets from
#                 kechi@demo.socket; memory policies on or off (fp_kechi_config)
#   supervisord   Debian's supervisor: [program:hello] numprocs=8 (PORT=8081, SO_REUSEPORT),
#                 with the control socket and RPC interface of Debian's default configuration
#   circusd       circus from PyPI (a venv, FP_CIRCUS): [watcher:hello] numprocesses=8
#   start_server  Server::Starter supervises one server process: plackup -s Starlet
#                 --max-workers=8 hello.psgi (the same hello app in Perl, 8 serving children)
# fp_install (once per box), fp_unit NAME, fp_procs NAME N (the app processes to wait for: for
# start_server, itself and Starlet's master too, as they run as the same user).

FP_CIRCUS=${FP_CIRCUS:-/var/tmp/kechi-bench-circus}   # the venv (not in the repository)
# shellcheck disable=SC2034  # read by run.sh
FP_IN=$KT_INSIDE/bench-footprint                      # bench/footprint/inside.sh, in the box

fp_unit() { case "$1" in kechid) echo "kechi@$KT_APP.service" ;; *) echo "bench-fp-$1.service" ;; esac; }
fp_procs() { case "$1" in start_server) echo $(($2 + 2)) ;; *) echo "$2" ;; esac; }

_fp_service() {  # _fp_service NAME EXECSTART [USER]
  tgt_write "/etc/systemd/system/bench-fp-$1.service" <<EOF
[Unit]
Description=footprint benchmark: $1

[Service]
${3:+User=$3}
WorkingDirectory=$KT_INSIDE
ExecStart=$2
EOF
}

# fp_kechi_config N POLICIES: N workers of hello.py; POLICIES on = every memory policy that makes
# kechid read the full figures (smaps_rollup) of every worker, sampled every second
fp_kechi_config() {
  local pol=""
  [ "$2" = on ] && pol='app-budget = "64G"
recycle-above = "200M"
min-shared = "1%"

[recycle]
check-interval = "1s"'
  kechi_config > /dev/null <<EOF
command = ["/usr/bin/python3", "$KT_INSIDE/hello.py"]
user = "$KT_USER"
workers = $1

[ready]
mode = "notify"

[memory]
max = "256M"
$pol
EOF
}

fp_install() {
  tgt_write /etc/bench-fp/supervisord.conf <<EOF
; Debian's default /etc/supervisor/supervisord.conf, plus the app
[unix_http_server]
file=/run/bench-fp-supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile=/run/bench-fp-supervisord.log
pidfile=/run/bench-fp-supervisord.pid
childlogdir=/run

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///run/bench-fp-supervisor.sock

[program:hello]
command=/usr/bin/python3 $KT_INSIDE/hello.py
process_name=%(program_name)s_%(process_num)02d
numprocs=8
user=$KT_USER
environment=PORT="8081"
autorestart=true
stdout_logfile=NONE
stderr_logfile=NONE
EOF
  tgt_write /etc/bench-fp/circus.ini <<EOF
[circus]
statsd = False

[watcher:hello]
cmd = /usr/bin/python3 $KT_INSIDE/hello.py
numprocesses = 8
uid = $KT_USER
copy_env = False

[env:hello]
PORT = 8081
EOF
  _fp_service supervisord "/usr/bin/supervisord -n -c /etc/bench-fp/supervisord.conf"
  _fp_service circusd "$FP_CIRCUS/bin/circusd /etc/bench-fp/circus.ini"
  _fp_service start_server "/usr/bin/start_server --port=127.0.0.1:8081 -- /usr/bin/plackup -s Starlet -E deployment --max-workers=8 $KT_INSIDE/hello.psgi" "$KT_USER"
  tgt_run systemctl daemon-reload
}

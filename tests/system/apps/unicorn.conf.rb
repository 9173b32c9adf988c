# unicorn config for kechi's compatibility row (docs/APP-SERVERS.md, "unicorn"): two forked
# workers per kechi worker. No listen lines: unicorn takes the sockets of kechi@APP.socket from
# LISTEN_FDS (when LISTEN_PID is its own pid) and, having some, binds no default one.
worker_processes 2
preload_app true

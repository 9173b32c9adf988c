#!/bin/bash
# bench/restart/actions.sh — sourced by bench/restart/run.sh (after servers.sh): the restarts.
# act SERVER ACTION runs one, mid-load, and sets ACT_SECS to the seconds until it was over, as
# each kind defines "over" (empty for "steady"); returns non-zero if it was not over within 60 s:
#   steady    nothing (the baseline window)
#   restart   systemctl restart of the unit; over once the app answers again
#   hup       SIGHUP to the server's main process (systemctl reload = kill -HUP $MAINPID);
#             over once every process of the old generation has exited
#   recycle   kechictl recycle demo --all --wait; over when it returns (every worker replaced)
#   reload    systemctl reload kechi@demo (re-read the config, roll every worker); over once
#             every old worker process has exited
#   krestart  systemctl restart kechi@demo; over once kechid is active again (it adopts the workers)
#   kill9     kill -9 of kechid; over once systemd has restarted it and it is active again

# shellcheck disable=SC2034  # ACT_SECS is read by run.sh
_now() { date +%s.%N; }

act() {
  local srv=$1 action=$2 unit t0 rc=0 old main
  unit=$(srv_unit "$srv")
  ACT_SECS=""
  [ "$action" = steady ] && return 0
  main=$(tgt_run systemctl show -p MainPID --value "$unit")
  old=$(tgt_run "$BENCH_IN" app-pids "$KT_USER" "$main")
  t0=$(_now)
  case "$action" in
    restart)
      tgt_run timeout 60 systemctl restart "$unit" && tgt_run "$BENCH_IN" wait-http "$(srv_url "$srv")" 60 || rc=1 ;;
    hup | reload)
      # shellcheck disable=SC2086
      tgt_run timeout 60 systemctl reload "$unit" && tgt_run "$BENCH_IN" wait-gone 60 $old || rc=1 ;;
    recycle)
      tgt_run timeout 90 kechictl recycle "$KT_APP" --all --wait --timeout 60s > /dev/null || rc=1 ;;
    krestart)
      tgt_run timeout 60 systemctl restart "$unit" && tgt_run "$BENCH_IN" wait-active "$unit" "$main" 60 || rc=1 ;;
    kill9)
      tgt_run kill -KILL "$main" && tgt_run "$BENCH_IN" wait-active "$unit" "$main" 60 || rc=1 ;;
    *) echo "act: unknown action $action" >&2; return 2 ;;
  esac
  ACT_SECS=$(awk -v a="$t0" -v b="$(_now)" 'BEGIN { printf "%.2f", b - a }')
  return "$rc"
}

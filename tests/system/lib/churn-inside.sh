#!/bin/bash
# churn-inside.sh — runs INSIDE a test machine for t_fault_churn (installed as
# /usr/lib/kechi-test/churn): recycles every worker of an app again and again with
# `kechictl recycle APP --all --wait` and samples kechid's own fds and memory as it goes.
#
#   churn APP RECYCLES EVERY   recycle until RECYCLES workers were started since the beginning
#                              (the serial in /run/kechi/APP/last-serial counts them), one sample
#                              line before, every EVERY recycles, and after:
#       sample LABEL recycles=N fds=N rss_kib=N pss_kib=N uss_kib=N secs=N
#                              then "end recycles=N errors=N kechid=PID->PID secs=N"
#   selfmem PID                one line "fds=N rss_kib=N pss_kib=N uss_kib=N"
#
# fds is the smallest count of 5 reads 0.1 s apart: a control connection or D-Bus reply in flight
# comes and goes, a leaked descriptor stays and raises the floor.
set -uo pipefail

selfmem() {
  local pid=$1 fds=999999 n _i
  for _i in 1 2 3 4 5; do
    n=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2> /dev/null | wc -l)
    [ "$n" -lt "$fds" ] && fds=$n
    sleep 0.1
  done
  awk -v fds="$fds" '
    $1 == "Rss:" { rss = $2 } $1 == "Pss:" { pss = $2 }
    $1 == "Private_Clean:" || $1 == "Private_Dirty:" || $1 == "Private_Hugetlb:" { uss += $2 }
    END { printf "fds=%d rss_kib=%d pss_kib=%d uss_kib=%d\n", fds, rss, pss, uss }
  ' "/proc/$pid/smaps_rollup"
}

churn() {
  local app=$1 want=$2 every=$3 pid pid_end serial0 done=0 next errors=0 t0=$SECONDS out
  pid=$(systemctl show -p MainPID --value "kechi@$app")
  serial0=$(cat "/run/kechi/$app/last-serial")
  echo "sample before recycles=0 $(selfmem "$pid") secs=0"
  next=$every
  while [ "$done" -lt "$want" ]; do
    if ! out=$(kechictl recycle "$app" --all --wait --timeout 60s 2>&1); then
      errors=$((errors + 1))
      echo "error after $done recycles: $(printf '%s' "$out" | tr '\n' ' ')"
      # what kechid thought and did meanwhile, for the log
      kechictl status "$app" 2>&1 | sed 's/^/status: /'
      journalctl -u "kechi@$app" --since "-80s" --no-pager -o short-monotonic -n 60 2>&1 | sed 's/^/journal: /'
      [ "$errors" -ge 3 ] && break
    fi
    done=$(($(cat "/run/kechi/$app/last-serial") - serial0))
    if [ "$done" -ge "$next" ] && [ "$done" -lt "$want" ]; then
      echo "sample during recycles=$done $(selfmem "$pid") secs=$((SECONDS - t0))"
      next=$((next + every))
    fi
  done
  echo "sample after recycles=$done $(selfmem "$pid") secs=$((SECONDS - t0))"
  pid_end=$(systemctl show -p MainPID --value "kechi@$app")
  echo "end recycles=$done errors=$errors kechid=$pid->$pid_end secs=$((SECONDS - t0))"
}

cmd=${1:-}
shift || true
case "$cmd" in
  churn) churn "$1" "$2" "$3" ;;
  selfmem) selfmem "$1" ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac

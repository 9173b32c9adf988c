#!/bin/bash
# inside.sh — helpers that run INSIDE a test machine (box or VM), installed there as
# /usr/lib/kechi-test/kt by the scenarios. One call answers one question, so the host side needs few
# round trips and no fragile quoting.
#
#   kt cgver                    v1 (memory controller on cgroup v1) or v2
#   kt workers APP              one line per active worker scope, by serial: SERIAL UNIT PID
#   kt procs UNIT               the pids in the scope's cgroup (memory hierarchy on v1)
#   kt memdir UNIT              the scope's memory cgroup directory
#   kt memlimit UNIT            the scope's memory limit as the kernel has it (bytes)
#   kt mountof PID DIR          "TARGET FSTYPE" of the mount holding DIR, seen by process PID
#   kt mounted-anywhere DIR     the pids of processes that see a mount at DIR (nothing if none)
#   kt oomwatch UNIT PID SECS   watch the scope while PID lives: counters, peak, how it ended
#   kt wait-workers APP N MIN_SERIAL SECS   until N active scopes, one with serial >= MIN_SERIAL
#   kt wait-gone PID SECS       until PID has exited
#   kt wait-new APP N MIN_SERIAL SECS   until exactly N active scopes (N+: at least N), every one
#                               with serial >= MIN_SERIAL
#   kt steady APP N PROCS USER SECS     until exactly N kechi-APP-* scopes (in any state, so none
#                               left over), all active, each with PROCS processes ("-": any), and
#                               USER running N*PROCS processes in all (no second set); prints why not
#   kt load-start NAME MODE URL CONNS THREADS   a load generator (wrk) as unit kt-load-NAME, until
#                               load-stop; MODE keepalive or close (a new connection per request)
#   kt load-stop NAME           stop it (SIGINT: wrk prints its totals); its output, then one line
#                               "result: requests=N time=T connect=N read=N write=N timeout=N non2xx=N"
#                               (T as wrk prints it: 6.92s, 7.06m)
#   kt envof PID VAR            a variable of a process's environment
set -uo pipefail

cgver() {
  if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then echo v2; else echo v1; fi
}

cgpath() { systemctl show -p ControlGroup --value "$1"; }

memdir() {
  local cg
  cg=$(cgpath "$1")
  [ -n "$cg" ] || return 1
  if [ "$(cgver)" = v2 ]; then echo "/sys/fs/cgroup$cg"; else echo "/sys/fs/cgroup/memory$cg"; fi
}

procs() {
  local d
  d=$(memdir "$1") || return 1
  cat "$d/cgroup.procs" 2>/dev/null
}

ppid_of() { awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$1/stat" 2>/dev/null; }

# the worker: the process of the scope whose parent is not in the scope
worker_pid() {
  local unit=$1 p all
  all=" $(procs "$unit" | tr '\n' ' ') "
  for p in $all; do
    case "$all" in *" $(ppid_of "$p") "*) ;; *) echo "$p"; return 0 ;; esac
  done
  return 1
}

workers() {
  local app=$1 u n p
  systemctl list-units --plain --no-legend --no-pager --state=active "kechi-$app-*.scope" 2>/dev/null \
    | awk '{ print $1 }' | while read -r u; do
        n=${u#"kechi-$app-"}; n=${n%.scope}
        [[ $n =~ ^[0-9]+$ ]] || continue
        p=$(worker_pid "$u" || echo -)
        echo "$n $u $p"
      done | sort -n
}

memlimit() {
  local d
  d=$(memdir "$1") || return 1
  if [ "$(cgver)" = v2 ]; then cat "$d/memory.max"; else cat "$d/memory.limit_in_bytes"; fi
}

mountof() {  # as process PID sees it
  nsenter -t "$1" -m findmnt -n -o TARGET,FSTYPE -T "$2" | head -1
}

mounted_anywhere() {
  local f p
  for f in /proc/[0-9]*/mountinfo; do
    p=${f#/proc/}; p=${p%/mountinfo}
    awk -v d="$1" '$5 == d { found = 1 } END { exit !found }' "$f" 2>/dev/null && echo "$p"
  done
  return 0
}

# Watch a worker scope while a process of it lives; print the last figures seen:
#   ended=gone|timeout failcnt=N oom_kill=N max_usage=N limit=N slice_oom_kill=N
oomwatch() {
  local unit=$1 pid=$2 secs=$3 d sd v ver end failcnt=0 oomk=0 peak=0 limit=0 slice_oomk=0 ended=timeout
  ver=$(cgver)
  d=$(memdir "$unit")
  sd=$(dirname "$d")
  end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do
    if [ "$ver" = v1 ]; then
      v=$(cat "$d/memory.failcnt" 2>/dev/null) && failcnt=$v
      v=$(awk '$1 == "oom_kill" { print $2 }' "$d/memory.oom_control" 2>/dev/null) && [ -n "$v" ] && oomk=$v
      v=$(cat "$d/memory.max_usage_in_bytes" 2>/dev/null) && peak=$v
      v=$(cat "$d/memory.limit_in_bytes" 2>/dev/null) && limit=$v
    else
      v=$(awk '$1 == "max" { print $2 }' "$d/memory.events" 2>/dev/null) && [ -n "$v" ] && failcnt=$v
      v=$(awk '$1 == "oom_kill" { print $2 }' "$d/memory.events" 2>/dev/null) && [ -n "$v" ] && oomk=$v
      v=$(cat "$d/memory.peak" 2>/dev/null) && peak=$v
      v=$(cat "$d/memory.max" 2>/dev/null) && limit=$v
      v=$(awk '$1 == "oom_kill" { print $2 }' "$sd/memory.events" 2>/dev/null) && [ -n "$v" ] && slice_oomk=$v
    fi
    if ! kill -0 "$pid" 2>/dev/null; then ended=gone; break; fi
    sleep 0.05
  done
  echo "ended=$ended failcnt=$failcnt oom_kill=$oomk max_usage=$peak limit=$limit slice_oom_kill=$slice_oomk"
}

wait_workers() {
  local app=$1 n=$2 min=$3 secs=$4 end lines
  end=$((SECONDS + secs))
  while :; do
    lines=$(workers "$app")
    if [ "$(printf '%s\n' "$lines" | grep -c .)" = "$n" ] && ! printf '%s\n' "$lines" | grep -q ' -$' &&
       printf '%s\n' "$lines" | awk -v m="$min" '$1 >= m { f = 1 } END { exit !f }'; then
      printf '%s\n' "$lines"; return 0
    fi
    [ "$SECONDS" -lt "$end" ] || { printf '%s\n' "$lines"; return 1; }
    sleep 0.1
  done
}

wait_gone() {
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.05
  done
}

wait_new() {
  local app=$1 n=$2 min=$3 secs=$4 end lines c
  end=$((SECONDS + secs))
  while :; do
    lines=$(workers "$app")
    c=$(printf '%s\n' "$lines" | grep -c .)
    if { [ "$c" = "$n" ] || { [ "${n%+}" != "$n" ] && [ "$c" -ge "${n%+}" ]; }; } && ! printf '%s\n' "$lines" | grep -q ' -$' &&
       printf '%s\n' "$lines" | awk -v m="$min" '$1 < m { old = 1 } END { exit old }'; then
      printf '%s\n' "$lines"; return 0
    fi
    [ "$SECONDS" -lt "$end" ] || { printf '%s\n' "$lines"; return 1; }
    sleep 0.1
  done
}

# one check of steady(); prints what is wrong, nothing when all is well
steady_once() {
  local app=$1 n=$2 procs=$3 user=$4 all act lines u c total why=""
  all=$(systemctl list-units --all --plain --no-legend --no-pager "kechi-$app-*.scope" 2>/dev/null | awk '{ print $1 "=" $3 "/" $4 }')
  act=$(printf '%s\n' "$all" | grep -c '=active/running$')
  [ "$(printf '%s\n' "$all" | grep -c .)" = "$n" ] || why="$why; $(printf '%s\n' "$all" | grep -c .) kechi-$app-* scopes ($(printf '%s' "$all" | tr '\n' ' '))"
  [ "$act" = "$n" ] || why="$why; $act active"
  lines=$(workers "$app")
  if [ "$procs" != - ]; then
    while read -r _ u _; do
      [ -n "$u" ] || continue
      c=$(procs "$u" | grep -c .)
      [ "$c" = "$procs" ] || why="$why; $u has $c processes"
    done <<< "$lines"
    total=$(pgrep -u "$user" | grep -c .)
    [ "$total" = $((n * procs)) ] || why="$why; user $user runs $total processes"
  fi
  printf '%s' "${why#; }"
}

steady() {
  local app=$1 n=$2 procs=$3 user=$4 secs=$5 end why
  end=$((SECONDS + secs))
  while :; do
    why=$(steady_once "$app" "$n" "$procs" "$user")
    [ -z "$why" ] && return 0
    [ "$SECONDS" -lt "$end" ] || { echo "$why"; return 1; }
    sleep 0.2
  done
}

load_out() { echo "/run/kt-load/$1.out"; }

load_start() {
  local name=$1 mode=$2 url=$3 conns=$4 threads=$5 unit="kt-load-$1" end
  mkdir -p /run/kt-load
  rm -f "$(load_out "$name")"
  # a load of this name left over from a step that failed must not block this one
  systemctl stop "$unit" 2> /dev/null
  systemd-run --quiet --unit="$unit" --collect --service-type=exec \
    "$0" load-run "$name" "$mode" "$url" "$conns" "$threads" || return 1
  # wrk buffers its output until it ends: it runs once it has connections to the address
  # (30 s: on a loaded machine wrk itself can take that long to get going)
  end=$((SECONDS + 30))
  until [ "$(ss -Htnp state established "dst $(load_hostport "$url")" 2>/dev/null | grep -c '"wrk"')" -ge 1 ]; do
    systemctl -q is-active "$unit" || { echo "$unit ended at once:"; cat "$(load_out "$name")"; return 1; }
    [ "$SECONDS" -lt "$end" ] || { echo "$unit has no connection to $url after 30 s"; systemctl stop "$unit"; return 1; }
    sleep 0.05
  done
}

load_hostport() { local u=${1#*://}; echo "${u%%/*}"; }

load_run() {  # the unit's command: wrk until SIGINT (an hour at most), its output to the file
  local name=$1 mode=$2 url=$3 conns=$4 threads=$5 args
  args=(-c "$conns" -t "$threads" -d 3600s --timeout 10s --latency)
  [ "$mode" = close ] && args+=(-H "Connection: close")
  exec wrk "${args[@]}" "$url" > "$(load_out "$name")" 2>&1
}

load_stop() {
  local name=$1 unit="kt-load-$1" end out
  out=$(load_out "$name")
  systemctl kill -s INT "$unit" 2>/dev/null
  end=$((SECONDS + 30))
  while systemctl -q is-active "$unit"; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "wrk did not stop within 30 s of SIGINT: killed"
      systemctl kill -s KILL "$unit"
      break
    fi
    sleep 0.1
  done
  cat "$out"
  awk '
    / requests in / { req = $1; sec = $4; sub(/,$/, "", sec) }
    /Socket errors:/ { gsub(/,/, ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx or 3xx responses:/ { n = $5 }
    END { printf "result: requests=%d time=%s connect=%d read=%d write=%d timeout=%d non2xx=%d\n", req, sec, c, r, w, t, n }
  ' "$out"
}

envof() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p"; }

cmd=${1:-}
shift || true
case "$cmd" in
  cgver) cgver ;;
  workers) workers "$1" ;;
  procs) procs "$1" ;;
  memdir) memdir "$1" ;;
  memlimit) memlimit "$1" ;;
  mountof) mountof "$1" "$2" ;;
  mounted-anywhere) mounted_anywhere "$1" ;;
  oomwatch) oomwatch "$1" "$2" "$3" ;;
  wait-workers) wait_workers "$1" "$2" "$3" "$4" ;;
  wait-gone) wait_gone "$1" "$2" ;;
  wait-new) wait_new "$1" "$2" "$3" "$4" ;;
  steady) steady "$1" "$2" "$3" "$4" "$5" ;;
  load-start) load_start "$1" "$2" "$3" "$4" "$5" ;;
  load-run) load_run "$1" "$2" "$3" "$4" "$5" ;;
  load-stop) load_stop "$1" ;;
  envof) envof "$1" "$2" ;;
  *) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac

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
#   kt load-start NAME MODE URL CONNS THREADS [WAIT]   a load generator (wrk) as unit kt-load-NAME,
#                               until load-stop; MODE keepalive or close (a new connection per
#                               request); it must have a connection within WAIT s (default 30)
#   kt load-stop NAME           stop it (SIGINT: wrk prints its totals); its output, then one line
#                               "result: requests=N time=T connect=N read=N write=N timeout=N non2xx=N
#                               responses=N outside2xx=N statuses=S" (T as wrk prints it: 6.92s,
#                               7.06m; non2xx is wrk's count of statuses above 399, outside2xx the
#                               count of every status outside 200-299 and statuses them all, e.g.
#                               200:1234,502:1, from the counting script; responses=-1 without it)
#                               then "p99_us=N p999_us=N max_us=N": the completed requests' latency
#                               tail, from the script (0 without it)
#   kt load-count NAME          the responses of a running load so far, as its threads last wrote
#                               them (every 200 responses, and each second): "responses=N
#                               outside2xx=N statuses=S"
#   kt envof PID VAR            a variable of a process's environment
#   kt fdsock PID FD            the socket at fd FD of process PID: "ADDRESS STATE" (a Unix path
#                               or IPv4 HOST:PORT; STATE listening or other), from its /proc/PID/net
set -uo pipefail
# has TEXT [GREP OPTIONS] PATTERN: whether a line of TEXT matches. Not `printf | grep -q`: under
# pipefail, grep -q leaves at its first match, and printf, still writing a text longer than the
# pipe takes at once, dies of SIGPIPE (exit 141): the pipeline fails although grep matched (seen:
# 1 in 200 with 12 KB of text, and a journal check of t_sec_jobremoved failing so).
has() { local text=$1; shift; grep -q "$@" <<< "$text"; }

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
    if [ "$(printf '%s\n' "$lines" | grep -c .)" = "$n" ] && ! has "$lines" ' -$' &&
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
    if { [ "$c" = "$n" ] || { [ "${n%+}" != "$n" ] && [ "$c" -ge "${n%+}" ]; }; } && ! has "$lines" ' -$' &&
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
  local name=$1 mode=$2 url=$3 conns=$4 threads=$5 wait=${6:-30} unit="kt-load-$1" end t0
  mkdir -p /run/kt-load
  rm -f "$(load_out "$name")" "$(load_counts "$name")".*
  # a load of this name left over from a step that failed must not block this one
  systemctl stop "$unit" 2> /dev/null
  systemd-run --quiet --unit="$unit" --collect --service-type=exec \
    "$0" load-run "$name" "$mode" "$url" "$conns" "$threads" || return 1
  # wrk buffers its output until it ends: it runs once it has connections to the address
  # (WAIT s, 30 by default: on a loaded machine wrk itself can take that long to get going, and
  # the test machine's caller passes more for a slower guest), or once it has an answer: against a
  # server that closes every connection after one response, a connection may never be seen
  # established between two looks
  t0=$SECONDS end=$((SECONDS + wait))
  until [ "$(ss -Htnp state established "dst $(load_hostport "$url")" 2>/dev/null | grep -c '"wrk"')" -ge 1 ] ||
    compgen -G "$(load_counts "$name").*" > /dev/null; do
    systemctl -q is-active "$unit" || { echo "$unit ended at once:"; cat "$(load_out "$name")"; return 1; }
    [ "$SECONDS" -lt "$end" ] || { echo "$unit has no connection to $url after $wait s"; systemctl stop "$unit"; return 1; }
    sleep 0.05
  done
  # a slow start is worth knowing (how far the wait is from its limit)
  [ $((SECONDS - t0)) -lt 5 ] || echo "wrk took $((SECONDS - t0)) s of the $wait s allowed to hold a connection"
}

load_hostport() { local u=${1#*://}; echo "${u%%/*}"; }

load_counts() { echo "/run/kt-load/$1.counts"; }  # the prefix of its threads' count files

# The script wrk runs: counts every response by status (wrk's own "Non-2xx or 3xx responses" counts
# only statuses above 399). Each thread writes its cumulative counts ("N OUTSIDE2XX STATUSES") to
# $KT_LOAD_COUNTS.ID every 200 responses and at the first response of each second, so that a
# reader can take a load's counts at any moment (its per-step figures); done() writes the final ones
# and prints a line "responses: N, outside 200-299: N, by status: S". wrk calls response() only
# once a response is complete: a request that failed (connect, read, write, timeout) is not seen
# here, only in wrk's own "Socket errors".
load_script() {
  cat <<'LUA'
local prefix = os.getenv("KT_LOAD_COUNTS")
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("kt_id", #threads)
end

-- per thread (each runs in its own Lua state)
kt_n, kt_bad, kt_codes = 0, 0, {}
local flushed_n, flushed_t = 0, 0

local function codes_text(codes)
  local keys, parts = {}, {}
  for k in pairs(codes) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. ":" .. codes[k] end
  return table.concat(parts, ",")
end

local function write_counts(id, n, bad, codes)
  if not prefix then return end
  local path = prefix .. "." .. id
  local f = io.open(path .. ".tmp", "w")
  if not f then return end
  f:write(string.format("%d %d %s\n", n, bad, codes_text(codes)))
  f:close()
  os.rename(path .. ".tmp", path)  -- a reader sees the old counts or the new, never half a file
end

function response(status, headers, body)
  kt_n = kt_n + 1
  if status < 200 or status > 299 then kt_bad = kt_bad + 1 end
  kt_codes[status] = (kt_codes[status] or 0) + 1
  if kt_n - flushed_n >= 200 or os.time() ~= flushed_t then
    flushed_n, flushed_t = kt_n, os.time()
    write_counts(kt_id, kt_n, kt_bad, kt_codes)
  end
end

function done(summary, latency, requests)
  local n, bad, codes = 0, 0, {}
  for i, t in ipairs(threads) do
    local tn, tbad, tcodes = t:get("kt_n") or 0, t:get("kt_bad") or 0, t:get("kt_codes") or {}
    write_counts(i, tn, tbad, tcodes)
    n, bad = n + tn, bad + tbad
    for k, v in pairs(tcodes) do codes[k] = (codes[k] or 0) + v end
  end
  io.write(string.format("responses: %d, outside 200-299: %d, by status: %s\n", n, bad, codes_text(codes)))
  -- the latency of the completed requests, in microseconds, at the tail wrk's own table stops short of
  io.write(string.format("latency_us: p99=%d p999=%d max=%d\n",
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
LUA
}

load_run() {  # the unit's command: wrk until SIGINT (an hour at most), its output to the file
  local name=$1 mode=$2 url=$3 conns=$4 threads=$5 args script="/run/kt-load/$1.lua"
  load_script > "$script" || return 1
  args=(-c "$conns" -t "$threads" -d 3600s --timeout 10s --latency -s "$script")
  [ "$mode" = close ] && args+=(-H "Connection: close")
  KT_LOAD_COUNTS=$(load_counts "$name") exec wrk "${args[@]}" "$url" > "$(load_out "$name")" 2>&1
}

# load_count NAME: the sum of its threads' count files
load_count() {
  cat "$(load_counts "$1")".[0-9]* 2> /dev/null | awk '
    { n += $1; bad += $2; k = split($3, kv, ","); for (i = 1; i <= k; i++) { split(kv[i], p, ":"); by[p[1]] += p[2] } }
    END {
      s = ""; m = 0
      for (c in by) keys[++m] = c
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (keys[j] + 0 < keys[i] + 0) { t = keys[i]; keys[i] = keys[j]; keys[j] = t }
      for (i = 1; i <= m; i++) s = s (i > 1 ? "," : "") keys[i] ":" by[keys[i]]
      printf "responses=%d outside2xx=%d statuses=%s\n", n, bad, (s == "" ? "-" : s)
    }'
}

# load_hung PID: how many of wrk's (process PID) TCP connections neither sent nor received anything
# for KT_LOAD_HUNG_MS (default 10000, wrk's --timeout): requests that hang. wrk 4.1 counts a
# request as failed only once something comes back (an error, or an answer later than its timeout):
# one that never gets an answer is counted nowhere, and its connection stays silent until wrk
# stops. wrk keeps a request outstanding on every connection (the script adds no delay), so a
# connection of a running wrk is never that quiet unless its request hangs.
load_hung() {
  ss -Htinp state established 2> /dev/null | awk -v pid="pid=$1," -v lim="${KT_LOAD_HUNG_MS:-10000}" '
    /users:\(\(/ { mine = index($0, pid) > 0; next }
    mine {
      snd = rcv = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^lastsnd:/) { split($i, a, ":"); snd = a[2] + 0 }
        if ($i ~ /^lastrcv:/) { split($i, a, ":"); rcv = a[2] + 0 }
      }
      if (snd >= lim && rcv >= lim) n++
      mine = 0
    }
    END { print n + 0 }'
}

load_stop() {
  local name=$1 unit="kt-load-$1" end out pid hung=0
  out=$(load_out "$name")
  pid=$(systemctl show -p MainPID --value "$unit" 2> /dev/null)
  if [ -n "$pid" ] && [ "$pid" != 0 ]; then hung=$(load_hung "$pid"); fi
  [ "$hung" = 0 ] || echo "hung: $hung of wrk's connections had sent and received nothing for ${KT_LOAD_HUNG_MS:-10000} ms (a request without an answer)"
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
  awk -v hung="$hung" '
    / requests in / { req = $1; sec = $4; sub(/,$/, "", sec) }
    /Socket errors:/ { gsub(/,/, ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx or 3xx responses:/ { n = $5 }
    /^responses: [0-9]+, outside 200-299: / { resp = $2; bad = $5; st = $8; gsub(/,$/, "", resp); gsub(/,$/, "", bad) }
    /^latency_us: / { for (i = 2; i <= NF; i++) { split($i, kv, "="); lat[kv[1]] = kv[2] } }
    END {
      if (resp == "") { resp = -1; bad = 0 }
      printf "result: requests=%d time=%s connect=%d read=%d write=%d timeout=%d hung=%d non2xx=%d responses=%d outside2xx=%d statuses=%s p99_us=%d p999_us=%d max_us=%d\n", req, sec, c, r, w, t, hung, n, resp, bad, (st == "" ? "-" : st), lat["p99"], lat["p999"], lat["max"]
    }
  ' "$out"
}

envof() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n "s/^$2=//p"; }

fdsock() {
  python3 - "$1" "$2" <<'PY'
import os, socket, struct, sys
pid, fd = sys.argv[1], sys.argv[2]
try:
    link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
except OSError as e:
    sys.exit("fd %s of %s: %s" % (fd, pid, e.strerror))
if not link.startswith("socket:["):
    sys.exit("fd %s of %s is not a socket: %s" % (fd, pid, link))
ino = link[len("socket:["):-1]
net = "/proc/%s/net/" % pid  # the process's own network namespace
for line in open(net + "unix").readlines()[1:]:
    f = line.split()
    if f[6] == ino:  # Flags 00010000: accepting connections
        print(f[7] if len(f) > 7 else "(unnamed)", "listening" if int(f[3], 16) & 0x10000 else "other")
        sys.exit(0)
for line in open(net + "tcp").readlines()[1:]:
    f = line.split()
    if f[9] == ino:  # st 0A: LISTEN
        host, port = f[1].split(":")
        print("%s:%d" % (socket.inet_ntoa(struct.pack("<I", int(host, 16))), int(port, 16)),
              "listening" if f[3] == "0A" else "other")
        sys.exit(0)
sys.exit("socket %s (fd %s of %s) is neither a Unix nor an IPv4 TCP socket" % (ino, fd, pid))
PY
}

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
  load-start) load_start "$1" "$2" "$3" "$4" "$5" "${6:-30}" ;;
  load-run) load_run "$1" "$2" "$3" "$4" "$5" ;;
  load-stop) load_stop "$1" ;;
  load-count) load_count "$1" ;;
  envof) envof "$1" "$2" ;;
  fdsock) fdsock "$1" "$2" ;;
  *) sed -n '2,34p' "$0" >&2; exit 2 ;;
esac

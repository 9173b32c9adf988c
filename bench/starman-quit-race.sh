#!/bin/bash
# starman-quit-race: Starman's graceful stop (QUIT) loses new connections with no kechi involved
# (docs/APP-SERVERS.md, "Starman"). Runs Starman under Server::Starter's own start_server on
# 127.0.0.1:PORT, Connection: close load from wrk, N replacements (HUP to start_server: a new
# generation, then QUIT to the old one), strace of every Starman process, and lists each
# connection a child accepted and closed without a byte written to it, with the signals it got in
# between. Needs start_server (libserver-starter-perl), starman, wrk, strace.
#   bench/starman-quit-race.sh [PORT] [REPLACEMENTS]
set -eu
port=${1:-18737}
n=${2:-6}
app=$(cd "$(dirname "$0")/.." && pwd)/tests/system/apps/hello.psgi
out=$(mktemp -d /tmp/starman-quit-race.XXXXXX)
start_server --port "127.0.0.1:$port" --signal-on-hup=QUIT --signal-on-term=QUIT -- \
  /usr/bin/starman --preload-app --workers 4 --disable-keepalive "$app" > "$out/start_server.log" 2>&1 &
ss=$!
sleep 4
# start_server and what it forks from now on (every later generation), and the first generation
pids=(-p "$ss")
for p in $(pgrep -P "$ss"); do pids+=(-p "$p"); for c in $(pgrep -P "$p"); do pids+=(-p "$c"); done; done
strace -f -tt -o "$out/strace.txt" -e trace=accept,accept4,close,read,write,writev,sendto,exit_group "${pids[@]}" 2> /dev/null &
st=$!
sleep 1
wrk -t2 -c16 -d$((n * 2 + 4))s -H 'Connection: close' "http://127.0.0.1:$port/" > "$out/wrk.txt" 2>&1 &
w=$!
sleep 2
for _ in $(seq "$n"); do kill -HUP "$ss"; sleep 2; done
wait "$w"
kill "$st"
kill -TERM "$ss"
wait "$ss" 2> /dev/null || true
grep -E 'requests in|Socket errors' "$out/wrk.txt"
python3 - "$out/strace.txt" <<'PY'
import collections, re, sys
pending, events = {}, collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"(\d+)\s+(\S+) (.*)", line.rstrip("\n"))
    if not m:
        continue
    pid, t, rest = m.groups()
    if rest.endswith("<unfinished ...>"):
        pending[pid] = (t, rest[: -len("<unfinished ...>")])
        continue
    r = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
    if r and pid in pending:
        t, head = pending.pop(pid)
        rest = head + r.group(1)
    events[pid].append((t, rest))
lost = 0
for pid, evs in events.items():
    open_conns = {}  # fd -> (accepted at, client port, answered)
    for t, call in evs:
        m = re.match(r"accept4?\(\d+,\s+\{sa_family=AF_INET, sin_port=htons\((\d+)\).*\) = (\d+)", call)
        if m:
            open_conns[m.group(2)] = [t, m.group(1), False]
            continue
        m = re.match(r"(?:write|writev|sendto)\((\d+),", call)
        if m and m.group(1) in open_conns:
            open_conns[m.group(1)][2] = True
        m = re.match(r"read\((\d+), \"\", \d+\) = 0", call)
        if m and m.group(1) in open_conns:  # the client hung up first (wrk at its end): no loss
            open_conns[m.group(1)][2] = True
        m = re.match(r"close\((\d+)", call)
        if m and m.group(1) in open_conns:
            at, port, answered = open_conns.pop(m.group(1))
            if not answered:
                lost += 1
                sigs = [s[4:s.index(" {")] for u, s in evs if s.startswith("--- SIG") and at <= u <= t]
                print("pid {} accepted client port {} at {}, closed it unanswered at {}; signals between: {}".format(pid, port, at, t, " ".join(sigs) or "none"))
print("{} accepted connections closed unanswered".format(lost))
PY
echo "strace and logs: $out"

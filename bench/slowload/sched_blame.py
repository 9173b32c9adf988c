#!/usr/bin/env python3
"""bench/slowload/sched_blame.py OUT [SERVER]: who the slow requests of a replacement waited for.

Reads what traced.sh wrote (OUT/, OUT.perf.txt, OUT.offset, OUT.nsmap) for SERVER (default
kechi-gunicorn). A request is slow when it took over 1.2x the steady p99 (the steady phase as in
run.sh: from 5 s into the load until the first replacement) and was due during a replacement
(from its start until it was over). For each slow request, over the time from its due moment to
its answer, prints:
- what ran on the CPUs meanwhile, by who ran longest: a serving worker process (one that
  answered a request within 150 ms) or the generator is not counted; a gunicorn/Starlet process
  seen first under 2.5 s before is "loading", one gone within 1.5 s after is "exiting"; the
  benchmark's own shell, systemctl and kechictl are "harness"; PID 1's tokio threads are the
  host's agent;
- whose wait for a CPU (wake-up to running) was over 1 ms: the generator's, or the process that
  answered the request.
"""
import bisect
import collections
import csv
import glob
import gzip
import re
import sys

SWITCH = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) .*"
                    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
WAKEUP = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_wakeup: comm=(.*?) pid=(\d+)")
HARNESS = {"sh", "bash", "env", "timeout", "sleep", "systemctl", "kechictl", "awk", "cat", "grep",
           "nsenter", "date", "readlink"}
SERVERS = {"gunicorn", "perl", "plackup", "kechid"}


def main(out, srv="kechi-gunicorn"):
    off = float(open(out + ".offset").read()) * 1000
    host = {}
    for line in open(out + ".nsmap"):
        _, h, p = line.split()
        host[p] = h
    acts = [(float(x["start_unix_ms"]), float(x["start_unix_ms"]) + float(x["secs"]) * 1000)
            for x in csv.DictReader(open(out + "/actions.csv")) if x["server"] == srv]
    cur, segs, first, last, comm = {}, collections.defaultdict(list), {}, {}, {}
    pending, waits = {}, collections.defaultdict(list)
    for line in open(out + ".perf.txt"):
        m = WAKEUP.match(line)
        if m:
            pending[m[4]] = float(m[2]) * 1000 + off
            continue
        m = SWITCH.match(line)
        if not m:
            continue
        cpu, t = int(m[1]), float(m[2]) * 1000 + off
        if cpu in cur:
            s, c, p = cur[cpu]
            segs[cpu].append((s, t, c, p))
            last[p] = t
        if m[5].startswith("R"):  # preempted: waiting for a CPU again from now
            pending[m[4]] = t
        if m[7] in pending:
            waits[m[7]].append((pending.pop(m[7]), t))
        cur[cpu] = (t, m[6], m[7])
        first.setdefault(m[7], t)
        comm[m[7]] = m[6]
    starts = {c: [s[0] for s in segs[c]] for c in segs}
    generators = [p for p, c in comm.items() if c == "openload"]
    kechid = collections.Counter(p for c in segs for s, e, cm, p in segs[c] if cm == "kechid").most_common(1)
    kechid = kechid[0][0] if kechid else None
    reqs, answers = [], collections.defaultdict(list)
    for load in ("keepalive", "close"):
        for f in glob.glob(f"{out}/{srv}-{load}*.csv.gz"):
            for line in gzip.open(f, "rt"):
                due, lat, _, pid = line.strip().split(",")[:4]
                due, lat, h = float(due), float(lat), host.get(pid)
                reqs.append((due, lat, h))
                if h:
                    answers[h].append(due + lat)
    for a in answers.values():
        a.sort()

    def serving(p, t):
        a = answers.get(p, [])
        i = bisect.bisect_left(a, t - 150)
        return i < len(a) and a[i] <= t + 150

    def who(c, p, t):
        if c.startswith("swapper") or c == "openload":
            return None
        if c in SERVERS and p != kechid:
            if serving(p, t):
                return None
            if first.get(p, 0) > t - 2500:
                return "app server, loading"
            if last.get(p, 1e19) < t + 1500:
                return "app server, exiting"
            return "app server, other"
        if c in HARNESS:
            return "harness"
        if c == "tokio-rt-worker":
            return "host agent"
        return c

    def max_wait(p, a, b):
        w = waits.get(p, [])
        i = bisect.bisect_left(w, (a - 5, 0))
        return max((e - s for s, e in w[i:] if s <= b and e >= a), default=0)

    steady = sorted(lat for due, lat, h in reqs if reqs and acts and due < acts[0][0] and due > min(r[0] for r in reqs) + 5000)
    thr = 1.2 * steady[int(.99 * len(steady))]
    blame, waited, n, total = collections.Counter(), collections.Counter(), 0, 0
    for due, lat, h in reqs:
        if not any(a <= due < b for a, b in acts):
            continue
        total += 1
        if lat <= thr:
            continue
        n += 1
        ran = collections.Counter()
        for cpu in segs:
            i = max(0, bisect.bisect_left(starts[cpu], due - 2) - 1)
            for s, e, c, p in segs[cpu][i:]:
                if s > due + lat:
                    break
                o = min(e, due + lat) - max(s, due - 2)
                k = who(c, p, due)
                if o > 0 and k:
                    ran[k] += o
        blame[ran.most_common(1)[0][0] if ran else "nothing"] += 1
        gen = max((max_wait(p, due, due + lat) for p in generators), default=0)
        server = max_wait(h, due, due + lat) if h else 0
        waited["the generator" if gen > 1 and gen >= server else "the serving worker" if server > 1 else "neither over 1 ms"] += 1
    print(f"{srv}: {n} of {total} requests during the replacements slower than {thr:.2f} ms (1.2x the steady p99)")
    print("  ran longest in their way: " + ", ".join(f"{k} {v}" for k, v in blame.most_common()))
    print("  waited for a CPU over 1 ms: " + ", ".join(f"{k} {v}" for k, v in waited.most_common()))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])

#!/usr/bin/env python3
"""bench/slowload/handover.py DIR [DIR...]: where in a kechi replacement the slow requests are.

Reads what bench/slowload/run.sh wrote (SERVER-LOAD.rN.csv.gz, SERVER-journal.rN.txt.gz,
actions.csv) for the kechi-* servers and splits each replacement's requests by when they were
due: in the 50 ms after one of kechid's stop signals (a hand-over: a replacement is ready and
the worker it replaces exits) or in the rest of the replacement (the replacement loading
beside the serving workers). For each part, against the same run's steady phase: how many
requests, their p99 as a multiple of the steady p99, and the share slower than 1.2x the steady
p99 (by definition about 1% in the steady phase itself). Several DIRs are pooled (the rounds
of an A/B, say). Prints a Markdown table.
"""
import collections
import csv
import glob
import gzip
import os
import re
import sys

HANDOVER_MS = 50


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def stop_signals(journal):
    """Unix ms of each "stopping worker with SIG..." line of kechid."""
    out = []
    with gzip.open(journal, "rt") as f:
        for line in f:
            p = line.split(" ", 3)
            if len(p) == 4 and "kechid" in p[2] and "stopping worker with SIG" in p[3]:
                out.append(float(p[0]) * 1000)
    return out


def main(dirs):
    parts = collections.defaultdict(list)  # (server, load, part) -> [latency / steady p99]
    for d in dirs:
        acts = list(csv.DictReader(open(os.path.join(d, "actions.csv"))))
        for journal in sorted(glob.glob(os.path.join(d, "kechi-*-journal.r*.txt.gz"))):
            m = re.search(r"/(kechi-[a-z]+)-journal\.r(\d+)\.txt\.gz$", journal)
            srv, rnd = m.group(1), m.group(2)
            stops = stop_signals(journal)
            reps = [(float(a["start_unix_ms"]), float(a["start_unix_ms"]) + 1000 * float(a["secs"]))
                    for a in acts if a["server"] == srv and a.get("round", "1") == rnd]
            if not reps:
                continue
            for ld in ("keepalive", "close"):
                path = os.path.join(d, "{}-{}.r{}.csv.gz".format(srv, ld, rnd))
                if not os.path.exists(path):
                    continue
                rows = []
                with gzip.open(path, "rt") as f:
                    for line in f:
                        p = line.strip().split(",")
                        if p[2].startswith("2"):
                            rows.append((float(p[0]), float(p[1])))
                t0 = rows[0][0] + 5000
                steady = [lat for due, lat in rows if t0 <= due < reps[0][0]]
                p99 = pct(steady, 0.99)
                for due, lat in rows:
                    if t0 <= due < reps[0][0]:
                        part = "steady"
                    elif any(a <= due < b for a, b in reps):
                        near = any(0 <= due - s < HANDOVER_MS for s in stops)
                        part = "hand-over" if near else "loading"
                    else:
                        continue
                    parts[(srv, ld, part)].append(lat / p99)
    print("| server | load | part of the replacement | requests | p99 x steady | slower than 1.2x steady p99 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    order = {"steady": 0, "loading": 1, "hand-over": 2}
    for key in sorted(parts, key=lambda k: (k[0], k[1], order[k[2]])):
        v = parts[key]
        label = {"steady": "steady (before)",
                 "loading": "loading (the rest of it)",
                 "hand-over": "hand-over ({} ms after a stop signal)".format(HANDOVER_MS)}[key[2]]
        slow = sum(1 for x in v if x > 1.2) / len(v) * 100
        print("| {} | {} | {} | {} | {:.2f}x | {:.1f}% |".format(
            key[0].replace("kechi-", "kechi + "), key[1], label, len(v), pct(v, 0.99), slow))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) > 1 else 2)
    main(sys.argv[1:])

#!/usr/bin/env python3
"""bench/slowload/ab_report.py OUT A_LABEL B_LABEL [A_NAME B_NAME]: the table of an A/B run.

Reads the quick runs bench/slowload/ab.sh wrote into OUT (OUT/A1, OUT/B1, OUT/A2, ...: each a
`run.sh --quick` output) and prints, per server and load, each build's latency over the
replacements themselves (every request due from a replacement's start until it was over, as
run.sh's own table) against the steady phase before them ([5 s, first replacement)), pooled over
the rounds; beside it the ratio of each round alone, the tail, and the share of requests slower
than 1.2x the steady p99 (about 1% in the steady phase by definition of a p99 and 1.2x of it).
A_NAME and B_NAME are the directories' prefixes (default A and B).
"""
import csv
import glob
import gzip
import os
import sys


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def runs(out, name, srv, load):
    """(steady latencies, replacement latencies, failed) of each round of build `name`."""
    for d in sorted(glob.glob(os.path.join(out, name + "[0-9]*"))):
        if not os.path.isdir(d):
            continue
        try:
            acts = [(float(x["start_unix_ms"]), float(x["start_unix_ms"]) + float(x["secs"]) * 1000)
                    for x in csv.DictReader(open(os.path.join(d, "actions.csv"))) if x["server"] == srv]
        except OSError:
            continue
        files = glob.glob(os.path.join(d, f"{srv}-{load}.r*.csv.gz"))
        if not acts or not files:
            continue
        steady, during, failed, first = [], [], 0, None
        for line in gzip.open(files[0], "rt"):
            due, lat, status = line.strip().split(",")[:3]
            due, lat = float(due), float(lat)
            first = due if first is None else first
            if not status.startswith("2"):
                failed += 1
            elif any(a <= due < b for a, b in acts):
                during.append(lat)
            elif first + 5000 <= due < acts[0][0]:
                steady.append(lat)
        yield steady, during, failed


def main(out, a_label, b_label, a_name="A", b_name="B"):
    print(f"A = {a_label}\nB = {b_label}\n")
    print("| server | load | build | steady p99 | replacements: p99 | x steady | x steady by round "
          "| p99.9 | max | slower than 1.2x steady p99 | failed | requests |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for srv in ("kechi-starlet", "kechi-gunicorn"):
        for load in ("keepalive", "close"):
            for label, name in (("A", a_name), ("B", b_name)):
                steady, during, failed, by_round = [], [], 0, []
                for s, d, f in runs(out, name, srv, load):
                    steady += s
                    during += d
                    failed += f
                    by_round.append(pct(d, .99) / pct(s, .99))
                if not steady or not during:
                    continue
                sp, dp = pct(steady, .99), pct(during, .99)
                slow = sum(1 for x in during if x > 1.2 * sp) / len(during) * 100
                print(f"| {srv.replace('kechi-', 'kechi + ')} | {load} | {label} | {sp:.2f} ms | {dp:.2f} ms "
                      f"| {dp / sp:.2f}x | {', '.join(f'{r:.2f}' for r in by_round)} | {pct(during, .999):.1f} ms "
                      f"| {max(during):.1f} ms | {slow:.1f}% | {failed} | {len(during) + len(steady)} |")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 6):
        sys.exit(__doc__)
    main(*sys.argv[1:])

#!/usr/bin/python3
"""bench/slowload/report.py — turns bench/slowload's raw figures into its report.

  report.py --text DIR                 the table, on stdout
  report.py --markdown DIR --docs DOCS DOCS/slowload.md (summary, table, the command, the machine,
                                       the date) and DOCS/slowload.png (latency over time)

DIR holds SERVER-LOAD.rN.csv.gz, one per round N (openload's per-request lines:
due_unix_ms,latency_ms,outcome,pid; SERVER-LOAD.csv.gz of a single round is read too), actions.csv
(server,action,n,start_unix_ms,secs,round) and meta.txt. Per server and load, pooled over the
rounds: the steady window is from 5 s after the load began until the first replacement; each
replacement's window is from its start until the next one's (the last: as long as the one
before); "during" is the part of that window until the replacement was over. Failed = every request
due in a window that did not end in a 2xx response (connection refused, reset, closed, timed out,
or another status). Latency percentiles are over the 2xx responses, counted from each request's
due time.
"""
import argparse
import csv
import glob
import gzip
import math
import os
import re
import sys

SERVER = {
    "start_server": ("start_server + Starlet", "SIGHUP to start_server (no KILL_OLD_DELAY), twice"),
    "kechi-starlet": ("kechi + Starlet", "kechictl recycle --all --wait, then systemctl reload"),
    "gunicorn": ("gunicorn", "SIGHUP to gunicorn's arbiter, twice"),
    "kechi-gunicorn": ("kechi + gunicorn", "kechictl recycle --all --wait, then systemctl reload"),
}
ORDER = ["start_server", "kechi-starlet", "gunicorn", "kechi-gunicorn"]


def pct(xs, p):
    if not xs:
        return float("nan")
    k = max(1, math.ceil(p / 100 * len(xs)))
    return xs[k - 1]


def stats(rows):
    ok = sorted(r[1] for r in rows if r[2].startswith("2"))
    failed = [r for r in rows if not r[2].startswith("2")]
    kinds = {}
    for r in failed:
        kinds[r[2]] = kinds.get(r[2], 0) + 1
    return {"n": len(rows), "failed": len(failed), "kinds": kinds, "p50": pct(ok, 50), "p99": pct(ok, 99),
            "p999": pct(ok, 99.9), "max": ok[-1] if ok else float("nan")}


def read_rows(path):
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            a, b, c = line.strip().split(",")[:3]
            rows.append((float(a), float(b), c))
    return rows


def rounds_of(d, srv, ld):
    """[(round or None, path)] of the per-request files of SERVER and LOAD, by round."""
    out = []
    single = os.path.join(d, "{}-{}.csv.gz".format(srv, ld))
    if os.path.exists(single):
        out.append((None, single))
    for path in glob.glob(os.path.join(d, "{}-{}.r*.csv.gz".format(srv, ld))):
        m = re.search(r"\.r(\d+)\.csv\.gz$", path)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out, key=lambda x: x[0] or 0)


def load(d):
    actions = {}
    with open(os.path.join(d, "actions.csv")) as f:
        for r in csv.DictReader(f):
            rnd = int(r["round"]) if r.get("round") else None
            actions.setdefault(r["server"], []).append((rnd, float(r["start_unix_ms"]), float(r["secs"])))
    out = []
    for srv in ORDER:
        if not actions.get(srv):
            continue
        for ld in ("keepalive", "close"):
            steady, repl, during, whole, secs, first, per_round = [], [], [], [], [], None, []
            for rnd, path in rounds_of(d, srv, ld):
                rows = read_rows(path)
                acts = sorted((a[1], a[2]) for a in actions[srv] if rnd is None or a[0] == rnd)
                if not rows or not acts:
                    continue
                t0 = rows[0][0]
                starts = [a[0] for a in acts]
                width = starts[1] - starts[0] if len(starts) > 1 else 20000.0
                st = [r for r in rows if t0 + 5000 <= r[0] < starts[0]]
                rp = [r for r in rows if any(s <= r[0] < s + width for s in starts)]
                du = [r for r in rows if any(s <= r[0] < s + 1000 * sec for s, sec in acts)]
                steady, repl, during = steady + st, repl + rp, during + du
                sp = stats(st)["p99"]
                per_round.append((ratio(stats(du)["p99"], sp), ratio(stats(rp)["p99"], sp), sp))
                whole += rows
                secs += [a[1] for a in acts]
                if first is None:
                    first = (rows, starts)
            if first is None:
                continue
            out.append({"server": srv, "load": ld, "steady": stats(steady), "repl": stats(repl),
                        "during": stats(during), "rows": first[0], "starts": first[1], "secs": secs,
                        "per_round": per_round,
                        "rounds": len(rounds_of(d, srv, ld)), "whole_failed": stats(whole)["failed"]})
    return out


def fmt(x):
    return "-" if x != x else ("{:.0f}".format(x) if x >= 100 else "{:.1f}".format(x))


def ratio(a, b):
    return a / b if b and b == b and a == a else float("nan")


def over_in(secs):
    if len(secs) <= 2:
        return " and ".join("{:.1f} s".format(s) for s in secs)
    return "{:.1f}-{:.1f} s ({})".format(min(secs), max(secs), len(secs))


def table(res):
    lines = ["| server | replaced by | load | replacement over in | steady p99 | during the replacement: p99"
             " | x steady | replacement's window: p99 | x steady | x steady by round: during, window (steady p99)"
             " | p99.9 | max | failed (of requests) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in res:
        name, how = SERVER.get(r["server"], (r["server"], ""))
        st, rp, du = r["steady"], r["repl"], r["during"]
        kinds = ", ".join("{} {}".format(k, v) for k, v in sorted(rp["kinds"].items()))
        x = lambda v: "{:.2f}x".format(v) if v == v else "-"  # noqa: E731
        rounds = "; ".join("{}, {} ({} ms)".format(x(a), x(b), fmt(c)) for a, b, c in r["per_round"])
        lines.append("| {} | {} | {} | {} | {} ms | {} ms | {} | {} ms | {} | {} | {} ms | {} ms | **{}** of {}{} |".format(
            name, how, r["load"], over_in(r["secs"]), fmt(st["p99"]), fmt(du["p99"]),
            x(ratio(du["p99"], st["p99"])), fmt(rp["p99"]), x(ratio(rp["p99"], st["p99"])), rounds, fmt(rp["p999"]),
            fmt(rp["max"]), rp["failed"], rp["n"], " ({})".format(kinds) if kinds else ""))
    return "\n".join(lines)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    servers = [s for s in ORDER if any(r["server"] == s for r in res)]
    fig, axes = plt.subplots(len(servers), 1, figsize=(10, 2.6 * len(servers)), sharex=True)
    if len(servers) == 1:
        axes = [axes]
    for ax, srv in zip(axes, servers):
        for r in (x for x in res if x["server"] == srv):
            base = r["starts"][0]
            ok = [((x[0] - base) / 1000, x[1]) for x in r["rows"] if x[2].startswith("2")]
            bad = [((x[0] - base) / 1000, x[1]) for x in r["rows"] if not x[2].startswith("2")]
            ax.scatter([p[0] for p in ok], [p[1] for p in ok], s=2, alpha=0.5,
                       label="{} (2xx)".format(r["load"]))
            if bad:
                ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=14, marker="x", color="red",
                           label="{}: failed".format(r["load"]))
            for s in r["starts"]:
                ax.axvline((s - base) / 1000, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title("{}: {}".format(*SERVER.get(srv, (srv, ""))), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", markerscale=3)
    axes[-1].set_xlabel("seconds since the first replacement (dashed: replacements), by each request's due time")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text")
    ap.add_argument("--markdown")
    ap.add_argument("--docs")
    a = ap.parse_args()
    d = a.text or a.markdown
    if not d:
        ap.error("--text DIR or --markdown DIR")
    res = load(d)
    if not res:
        sys.exit("no results in {}".format(d))
    if a.text:
        print(table(res))
        return
    meta = open(os.path.join(d, "meta.txt")).read().strip().splitlines()
    plot(res, os.path.join(a.docs, "slowload.png"))
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    kechi_failed = sum(r["repl"]["failed"] for r in res if r["server"].startswith("kechi-"))
    kechi = [r for r in res if r["server"].startswith("kechi-")]
    kechi_ratio = max((ratio(r["repl"]["p99"], r["steady"]["p99"]) for r in kechi), default=float("nan"))
    kechi_during = max((ratio(r["during"]["p99"], r["steady"]["p99"]) for r in kechi), default=float("nan"))
    rounds = max((r["rounds"] for r in res), default=1)

    def median_round(r, k):  # the median over the rounds of one ratio (k: 0 during, 1 window)
        xs = sorted(pr[k] for pr in r["per_round"] if pr[k] == pr[k])
        return xs[(len(xs) - 1) // 2] if xs else float("nan")

    kechi_ratio_med = max((median_round(r, 1) for r in kechi), default=float("nan"))
    kechi_during_med = max((median_round(r, 0) for r in kechi), default=float("nan"))
    with open(os.path.join(a.docs, "slowload.md"), "w") as f:
        f.write("# Replacing the workers of a slow-loading app\n\n")
        f.write("An app that takes 1 s to load, its workers replaced twice under an open-loop load at a fixed rate "
                "({} round(s)): kechi failed {} requests; its worst p99 in the windows after its replacements was "
                "{:.2f}x its steady p99 in the median round ({:.2f}x pooled over the rounds), and {:.2f}x over the "
                "replacements themselves, from their start until the old workers were gone ({:.2f}x pooled); "
                "start_server and gunicorn's SIGHUP beside it in the table.\n\n".format(
                    rounds, kechi_failed, kechi_ratio_med, kechi_ratio, kechi_during_med, kechi_during))
        f.write(table(res) + "\n\n")
        f.write("![latency of every request over time, per server (the first round)](slowload.png)\n\n")
        if os.path.exists(notes):
            f.write("## Observations\n\n" + open(notes).read().strip() + "\n\n")
        # experiments that compared two kechid builds (bench/slowload/ab.sh), kept beside the run
        ab = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ab.md")
        if os.path.exists(ab):
            f.write(open(ab).read().strip() + "\n\n")
        f.write("## How it was measured\n\n")
        f.write("`bench/slowload/run.sh` (its header says what each server and replacement is). The load is "
                "`bench/openload.rs`, an open-loop generator: request i is due at start + i/rate whatever happened "
                "to the others, and its latency counts from that due time, so a stall is charged in full to every "
                "request it holds up (wrk and `hey -q` are closed-loop: each connection waits for its response before "
                "the next request, so a 2 s stall shows as one slow request). Percentiles are over 2xx responses; "
                "failed counts every other outcome. The generator shares the two cores with the servers, as a "
                "proxy on the same box would; it runs at real-time priority (`chrt -f 50`, outside the box's "
                "cgroups) so that what it measures is the servers' latency, not its own wait for a CPU (at the "
                "default priority, a `sched_switch` trace put a third to two thirds of the slow requests of a "
                "replacement on the generator waiting for a CPU another process held, while the other CPU was "
                "idle).\n\n")
        for m in meta:
            f.write("- " + m + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""bench/seedbox/report.py — turns bench/seedbox's raw figures into its report.

  report.py DIR DOCS     writes DOCS/seedbox.md (a table per configuration, the command, the
                         machine, the date) and DOCS/seedbox.png (memory over time, the busy app's
                         latency over time); prints the tables
  report.py --text DIR   the tables only, on stdout

DIR holds one folder per configuration (plain, kechi, kechi-new) with samples.csv (sample.py: one
line a second), busy.csv.gz (openload: due_unix_ms,latency_ms,outcome,pid), visits.csv (visit.py),
events.jsonl (journal entries with a REASON, and OOM lines) and meta.txt; and run.txt.

The traffic window is from the busy load's first due request to its last. Memory figures are over
the samples in that window. A visit's first request is a cold start when the app had no process
in the last sample before it (the app was stopped); otherwise it is a warm first request. Failed:
every request that did not end in a 2xx response (refused, reset, timed out, another status).
Latency percentiles are over the 2xx responses, from each request's due time.
"""
import csv
import gzip
import json
import math
import os
import sys

CONFIGS = [
    ("plain", "plain systemd services, always running"),
    ("kechi", "kechi, always running (no idle stop, no box budget, no pressure trigger)"),
    ("kechi-new", "kechi with [idle] stop-after, [box] budget and [box] pressure"),
]
APPS = ["starlet", "gunicorn", "puma", "uwsgi", "node"]
IDLE = ["gunicorn", "puma", "uwsgi", "node"]
COLORS = {"plain": "tab:red", "kechi": "tab:orange", "kechi-new": "tab:green"}


def pct(xs, p):
    if not xs:
        return float("nan")
    k = max(1, math.ceil(p / 100 * len(xs)))
    return xs[k - 1]


def meta(d):
    m = {}
    path = os.path.join(d, "meta.txt")
    if os.path.exists(path):
        for line in open(path):
            if ":" in line:
                k, v = line.split(":", 1)
                m[k.strip()] = v.strip()
    return m


def load(d):
    samples = []
    with open(os.path.join(d, "samples.csv")) as f:
        for r in csv.DictReader(f):
            samples.append({k: float(v) for k, v in r.items()})
    busy = []
    with gzip.open(os.path.join(d, "busy.csv.gz"), "rt") as f:
        for line in f:
            p = line.strip().split(",")
            if len(p) >= 3 and p[0][:1].isdigit():
                busy.append((float(p[0]), float(p[1]), p[2]))
    visits = []
    with open(os.path.join(d, "visits.csv")) as f:
        for r in csv.DictReader(f):
            visits.append(r)
    events = []
    path = os.path.join(d, "events.jsonl")
    if os.path.exists(path):
        for line in open(path):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    oom_lines = 0
    path = os.path.join(d, "dmesg-oom.txt")
    if os.path.exists(path):
        oom_lines = sum(1 for line in open(path) if "Killed process" in line)
    return {"samples": samples, "busy": busy, "visits": visits, "events": events, "oom_lines": oom_lines,
            "meta": meta(d)}


def figures(r):
    busy = sorted(r["busy"])
    t0, t1 = busy[0][0], busy[-1][0]
    win = [s for s in r["samples"] if t0 <= s["unix_ms"] <= t1 + 1000] or r["samples"]
    before = [s for s in r["samples"] if s["unix_ms"] < t0] or r["samples"][:1]
    ok = sorted(b[1] for b in busy if b[2].startswith("2"))
    fails = {}
    for b in busy:
        if not b[2].startswith("2"):
            fails[b[2]] = fails.get(b[2], 0) + 1
    f = {
        "t0": t0, "secs": (t1 - t0) / 1000,
        "used_mean": sum(s["used_mib"] for s in win) / len(win), "used_max": max(s["used_mib"] for s in win),
        "swap_mean": sum(s["swap_mib"] for s in win) / len(win), "swap_max": max(s["swap_mib"] for s in win),
        "oom": int(win[-1]["oom_kill"] - before[-1]["oom_kill"]), "oom_lines": r["oom_lines"],
        "psi_max": max(s["psi_some10"] for s in win),
        "busy_n": len(busy), "busy_failed": sum(fails.values()), "busy_fails": fails,
        "p50": pct(ok, 50), "p99": pct(ok, 99), "p999": pct(ok, 99.9), "max": ok[-1] if ok else float("nan"),
        "apps": {a: sum(s.get(a + "_mib", 0) for s in win) / len(win) for a in APPS},
        "apps_swap": {a: max(s.get(a + "_swap_mib", 0) for s in win) for a in APPS},
        "apps_running": {a: sum(1 for s in win if s.get(a + "_pids", 0) > 0) / len(win) for a in APPS},
    }
    # visits: the first request of each, cold when its app had no process in the sample before it
    cold, warm, rest, vfail = [], [], [], 0
    for v in r["visits"]:
        ok_v = v["outcome"].startswith("2")
        if not ok_v:
            vfail += 1
        if not ok_v or not v["ttfb_ms"]:
            continue
        due = float(v["due_unix_ms"])
        if v["seq"] == "0":
            prev = [s for s in r["samples"] if s["unix_ms"] <= due]
            stopped = bool(prev) and prev[-1].get(v["app"] + "_pids", 1) == 0
            (cold if stopped else warm).append(float(v["ttfb_ms"]))
        else:
            rest.append(float(v["ttfb_ms"]))
    f.update({"visits_n": len(r["visits"]), "visits_failed": vfail, "cold": sorted(cold), "warm": sorted(warm),
              "rest": sorted(rest)})
    # kechid's journal during the traffic: idle stops (one line each), and recycles by reason (a
    # recycle writes several lines with its REASON: counted once per worker)
    reasons, seen = {}, set()
    for e in r["events"]:
        reason, msg = e.get("REASON"), str(e.get("MESSAGE", ""))
        if not reason or not t0 <= int(e.get("__REALTIME_TIMESTAMP", 0)) / 1000 <= t1 + 1000:
            continue
        if reason == "idle":
            if msg.startswith("no connection open"):
                reasons["idle stops"] = reasons.get("idle stops", 0) + 1
            continue
        key = (reason, e.get("APP"), e.get("WORKER"))
        if key not in seen:
            seen.add(key)
            reasons[reason] = reasons.get(reason, 0) + 1
    f["reasons"] = reasons
    return f


def ms(x):
    if x != x:
        return "-"
    return "{:.0f}".format(x) if x >= 100 else "{:.1f}".format(x)


def tables(res):
    out = []
    out.append("| | " + " | ".join(name for name, _ in res) + " |")
    out.append("| --- |" + " ---: |" * len(res))

    def row(label, fn):
        out.append("| {} | {} |".format(label, " | ".join(fn(f) for _, f in res)))

    row("traffic window (s)", lambda f: "{:.0f}".format(f["secs"]))
    row("memory used, mean / max (MiB, MemTotal - MemAvailable)",
        lambda f: "{:.0f} / {:.0f}".format(f["used_mean"], f["used_max"]))
    row("swap used, mean / max (MiB)", lambda f: "{:.0f} / {:.0f}".format(f["swap_mean"], f["swap_max"]))
    row("OOM kills (/proc/vmstat oom_kill)", lambda f: str(f["oom"]))
    row("memory PSI, highest some avg10 (%)", lambda f: "{:.1f}".format(f["psi_max"]))
    row("busy app (starlet): requests / failed", lambda f: "{} / {}{}".format(
        f["busy_n"], f["busy_failed"],
        " ({})".format(", ".join("{} {}".format(k, v) for k, v in sorted(f["busy_fails"].items()))) if f["busy_fails"] else ""))
    row("busy app: p50 / p99 / p99.9 / max (ms)",
        lambda f: " / ".join(ms(f[k]) for k in ("p50", "p99", "p999", "max")))
    row("visits: requests / failed", lambda f: "{} / {}".format(f["visits_n"], f["visits_failed"]))
    row("visit's first request, app stopped (cold start): n, median / max TTFB (ms)",
        lambda f: "{}: {} / {}".format(len(f["cold"]), ms(pct(f["cold"], 50)), ms(f["cold"][-1] if f["cold"] else float("nan")))
        if f["cold"] else "0")
    row("visit's first request, app running: n, median / max TTFB (ms)",
        lambda f: "{}: {} / {}".format(len(f["warm"]), ms(pct(f["warm"], 50)), ms(f["warm"][-1] if f["warm"] else float("nan")))
        if f["warm"] else "0")
    row("visit's other requests: median / max TTFB (ms)",
        lambda f: "{} / {}".format(ms(pct(f["rest"], 50)), ms(f["rest"][-1] if f["rest"] else float("nan"))))
    for a in APPS:
        row("{}: mean memory (MiB), max swap (MiB), running".format(a),
            lambda f, a=a: "{:.0f}, {:.0f}, {:.0f}%".format(f["apps"][a], f["apps_swap"][a], 100 * f["apps_running"][a]))
    row("kechid during the traffic: idle stops, recycles by REASON", lambda f: ", ".join("{} {}".format(k, v) for k, v in sorted(f["reasons"].items())) or "-")
    return "\n".join(out)


def plot(runs, res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2 + len(res), 1, figsize=(10, 3.0 * (2 + len(res))), sharex=True)
    ax = axes[0]
    for name, f in res:
        s = runs[name]["samples"]
        t = [(x["unix_ms"] - f["t0"]) / 1000 for x in s]
        ax.plot(t, [x["used_mib"] for x in s], color=COLORS.get(name), label="{}: used".format(name))
        ax.plot(t, [x["swap_mib"] for x in s], color=COLORS.get(name), linestyle="--", label="{}: swap".format(name))
    ax.axhline(958, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("MiB")
    ax.set_title("the box: memory used (MemTotal - MemAvailable, solid) and swap used (dashed); "
                 "dotted: MemTotal", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax = axes[1]
    for name, f in res:
        b = runs[name]["busy"]
        # p99 of each 10 s window, by due time
        wins = {}
        for due, lat, out in b:
            wins.setdefault(int((due - f["t0"]) / 10000), []).append(lat if out.startswith("2") else float("inf"))
        xs = sorted(wins)
        ax.plot([x * 10 + 5 for x in xs], [min(pct(sorted(wins[x]), 99), 20000) for x in xs], color=COLORS.get(name),
                marker=".", label="{}: p99 per 10 s".format(name))
        bad = [((due - f["t0"]) / 1000) for due, _, out in b if not out.startswith("2")]
        if bad:
            ax.scatter(bad, [15000] * len(bad), marker="x", color=COLORS.get(name), s=12,
                       label="{}: failed ({})".format(name, len(bad)))
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("the busy app (Starlet, open-loop load): p99 latency of each 10 s window (failed = x at the top)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    for ax, (name, f) in zip(axes[2:], res):
        s = runs[name]["samples"]
        t = [(x["unix_ms"] - f["t0"]) / 1000 for x in s]
        ax.stackplot(t, *[[x.get(a + "_mib", 0) for x in s] for a in APPS], labels=APPS, alpha=0.8)
        cold = [(float(v["due_unix_ms"]) - f["t0"]) / 1000 for v in runs[name]["visits"] if v["seq"] == "0"]
        for c in cold:
            ax.axvline(c, color="grey", linewidth=0.5, linestyle=":")
        ax.set_ylabel("MiB")
        ax.set_title("{}: each app's memory (its cgroup's memory.current, stacked; dotted: visits)".format(name),
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=5)
    axes[-1].set_xlabel("seconds since the busy load began")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    if sys.argv[1] == "--text":
        d, docs = sys.argv[2], None
    else:
        d, docs = sys.argv[1], sys.argv[2]
    runs = {name: load(os.path.join(d, name)) for name, _ in CONFIGS if os.path.exists(os.path.join(d, name, "busy.csv.gz"))}
    res = [(name, figures(runs[name])) for name, _ in CONFIGS if name in runs]
    if not res:
        sys.exit("no results in {}".format(d))
    t = tables(res)
    print(t)
    if docs is None:
        return
    plot(runs, res, os.path.join(docs, "seedbox.png"))
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    run = open(os.path.join(d, "run.txt")).read().strip().splitlines() if os.path.exists(os.path.join(d, "run.txt")) else []
    with open(os.path.join(docs, "seedbox.md"), "w") as f:
        f.write("# The seed's box: five apps on 1 GiB\n\n")
        byname = dict(res)
        summ = []
        for name, _ in CONFIGS:
            if name in byname:
                x = byname[name]
                cold = ", visits' cold starts {} ms in median (max {})".format(
                    ms(pct(x["cold"], 50)), ms(x["cold"][-1])) if x["cold"] else ""
                summ.append("{}: {:.0f} MiB used on average (max {:.0f}), {:.0f} MiB swap at most, {} OOM kills, {} failed "
                            "requests, busy p99 {} ms{}".format(
                                name, x["used_mean"], x["used_max"], x["swap_max"], x["oom"],
                                x["busy_failed"] + x["visits_failed"], ms(x["p99"]), cold))
        f.write("Five apps (Starlet busy, gunicorn, puma, uWSGI and Node.js visited now and then) in a 1 GiB cgroup v2 VM "
                "with zram swap, the same traffic three ways. " + "; ".join(summ) + ".\n\n")
        f.write(t + "\n\n")
        f.write("![memory of the box and of each app, and the busy app's p99, over time](seedbox.png)\n\n")
        if os.path.exists(notes):
            f.write(open(notes).read().strip() + "\n\n")
        f.write("## How it was measured\n\n")
        f.write("`bench/seedbox/run.sh` (its header says what each app, configuration and load is); "
                "this report is made by `bench/seedbox/report.py` from the raw figures in `bench/results/seedbox/`. "
                "The busy load is `bench/openload.rs`, open loop: request i is due at start + i/rate whatever happened "
                "to the others, and its latency counts from that due time. Percentiles are over 2xx responses; failed "
                "counts every other outcome. A visit's first request counts as a cold start when its app had no process "
                "in the last one-second sample before it.\n\n")
        for m in run:
            f.write("- " + m + "\n")
        for name, _ in CONFIGS:
            if name in runs:
                m = runs[name]["meta"]
                f.write("- {}: {}; host load average at its end {}, VM's {}; {}\n".format(
                    name, m.get("date", "?"), m.get("host_loadavg_end", "?"), m.get("vm_loadavg_end", "?"),
                    ", ".join("{} {}".format(k, m[k]) for k in ("seconds", "stop_after") if k in m)))


if __name__ == "__main__":
    main()

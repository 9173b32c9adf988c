#!/usr/bin/python3
"""report.py RAW OUT DOCS PARAMS MACHINE: turns bench/leaks/run.sh's raw files into its results.

RAW holds mem-POLICY.csv (procmem.py's per-process samples), summary.csv (one row per policy from
run.sh) and, for the killer policy, kills.csv. Writes:
  OUT/memory.csv     policy,t,processes,rss_mib,uss_mib,pss_mib (sums over the app's processes)
  OUT/summary.csv    one row per policy: memory peak and mean, requests, failures, recycles, kills
  DOCS/leaks.md, DOCS/leaks-memory.png
PARAMS: "key=value ..." from run.sh (mode, duration, leak_kb, limit_mb, ...); MACHINE: one line.
"""
import csv
import os
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "none": "no recycling",
    "age": "periodic (max-age)",
    "memory": "kechi recycle-above",
    "killer": "external RSS killer",
}


def series(path):
    """Per sample time: sums over the processes of RSS, USS, PSS (KiB) and the process count."""
    by_t = OrderedDict()
    with open(path) as f:
        for r in csv.DictReader(f):
            s = by_t.setdefault(r["t"], [0, 0, 0, 0])
            s[0] += int(r["rss_kb"])
            s[1] += int(r["uss_kb"])
            s[2] += int(r["pss_kb"])
            s[3] += 1
    return [(float(t), v[0] / 1024, v[1] / 1024, v[2] / 1024, v[3]) for t, v in by_t.items()]


def main():
    raw, out, docs, params, machine = sys.argv[1:6]
    p = dict(kv.split("=", 1) for kv in params.split())
    os.makedirs(out, exist_ok=True)
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(raw, "summary.csv")) as f:
        runs = list(csv.DictReader(f))

    rows = []
    plt.figure(figsize=(9, 5))
    with open(os.path.join(out, "memory.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "t", "processes", "rss_mib", "uss_mib", "pss_mib"])
        for run in runs:
            pol = run["policy"]
            s = series(os.path.join(raw, "mem-{}.csv".format(pol)))
            for t, rss, uss, pss, n in s:
                w.writerow([pol, "{:.1f}".format(t), n, "{:.1f}".format(rss), "{:.1f}".format(uss), "{:.1f}".format(pss)])
            rss = [x[1] for x in s]
            uss = [x[2] for x in s]
            secs = float(p["duration"])
            rows.append({
                "policy": pol,
                "peak_rss_mib": round(max(rss), 1), "mean_rss_mib": round(sum(rss) / len(rss), 1),
                "peak_uss_mib": round(max(uss), 1), "mean_uss_mib": round(sum(uss) / len(uss), 1),
                "end_rss_mib": round(rss[-1], 1),
                "served": int(run["served"]), "req_per_s": round(int(run["served"]) / secs, 1),
                "failed": int(run["failed"]), "failed_kinds": run["failed_kinds"],
                "recycles": int(run["recycles"]), "kills": int(run["kills"]),
                "crash_restarts": int(run["crash_restarts"]), "journal_reasons": run["reasons"],
                "samples": len(s),
            })
            plt.plot([x[0] for x in s], rss, label=LABELS.get(pol, pol), linewidth=1.4)
    limit2 = 2 * float(p["limit_mb"])
    secs = float(p["duration"])
    plt.axvspan(secs / 3, 2 * secs / 3, color="orange", alpha=0.08, label="traffic peak")
    plt.axhline(limit2, color="grey", linestyle=":", linewidth=1)
    plt.text(1, limit2, " 2 x limit ({} MiB per worker)".format(p["limit_mb"]), va="bottom", fontsize=8, color="grey")
    plt.xlabel("seconds under load")
    plt.ylabel("app memory: RSS summed over its processes (MiB)")
    plt.title("Leaking app ({} KiB per request), 2 workers: memory over time".format(p["leak_kb"]))
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(os.path.join(docs, "leaks-memory.png"), dpi=110)

    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    by = {r["policy"]: r for r in rows}
    with open(os.path.join(docs, "leaks.md"), "w") as f:
        f.write(doc(rows, by, p, machine))


def doc(rows, by, p, machine):
    lines = ["# Benchmark: leaks — a leaking app, four recycling policies", ""]
    summ = []
    if "none" in by:
        summ.append("A worker leaking {} KiB per request, 2 workers, {} s of load with a traffic peak: unchecked, "
                    "the app grew to {:.0f} MiB (RSS sum).".format(p["leak_kb"], p["duration"], by["none"]["peak_rss_mib"]))
    parts = ["{} peaked at {:.0f} MiB".format(LABELS[k], by[k]["peak_rss_mib"]) for k in ("age", "memory", "killer") if k in by]
    if parts:
        text = "; ".join(parts)
        summ.append(text[0].upper() + text[1:] + ".")
    failed = {k: by[k]["failed"] for k in by}
    summ.append("Failed requests: " + ", ".join("{} {}".format(k, v) for k, v in failed.items()) + ".")
    if "memory" in by and "killer" in by:
        m, k = by["memory"], by["killer"]
        if k["req_per_s"] < 0.95 * m["req_per_s"]:
            summ.append("The killer's SIGTERMs cost throughput ({:.0f} against {:.0f} requests/s with recycle-above, which "
                        "starts the replacement first).".format(k["req_per_s"], m["req_per_s"]))
        else:
            summ.append("The killer cost no measurable throughput here ({:.0f} against {:.0f} requests/s with "
                        "recycle-above): this app starts in milliseconds and drains on SIGTERM.".format(
                            k["req_per_s"], m["req_per_s"]))
    lines += [" ".join(summ), ""]
    lines += [
        "Reproduces \"a wiki's workers grew to 1.2 GB a day; hourly restarts fixed it\" in minutes: the app",
        "(`tests/system/apps/mem_app.py`) keeps {} KiB for good on every request (each request also takes {} ms),".format(
            p["leak_kb"], p["delay_ms"]),
        "run by kechid as {} workers under a real systemd (the test harness's box), loaded by".format(p["workers"]),
        "`wrk -c{} -t2` (keep-alive) for {} s per policy, plus a traffic peak of `wrk -c{}` more during the".format(
            p["conns"], p["duration"], p["peak_conns"]),
        "middle third (the leak follows the traffic; a fixed recycling interval does not):",
        "",
        "| policy | what runs |",
        "|---|---|",
        "| no recycling | kechid only restarts workers that exit |",
        "| periodic (max-age) | `[recycle] max-age = \"{}s\"` (jitter 10 %, min-interval 5s) |".format(p["max_age"]),
        "| kechi recycle-above | `[memory] recycle-above = \"{}M\"`, `metric = \"uss\"`, check-interval {}s, min-interval 5s: replacement started first |".format(
            p["limit_mb"], p["poll"]),
        "| external RSS killer | `bench/leaks/rss_killer.py`, in the manner of puma_worker_killer: polls each worker's VmRSS every {} s, SIGTERM above {} MiB (puma_worker_killer compares the workers' summed RSS and kills the largest; a per-worker limit is the like-for-like comparison with recycle-above); kechid sees an exit and restarts the worker (crash backoff 1 s) |".format(
            p["poll"], p["limit_mb"]),
        "",
        "Memory is the sum of RSS over every process of the app's user, read from `/proc/PID/smaps_rollup`",
        "every second inside the box (`bench/lib/procmem.py`), the same way for every policy; while a worker",
        "is replaced, the old and the new one both count. USS (private) is given too. Failed requests are",
        "wrk's socket errors (connect, read, write, timeout) plus non-2xx responses.",
        "",
        "![memory over time](leaks-memory.png)",
        "",
        "| policy | peak RSS sum (MiB) | mean RSS sum (MiB) | peak USS sum (MiB) | mean USS sum (MiB) | recycles | kills | served | req/s | failed | failures by kind |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append("| {} | {:.0f} | {:.0f} | {:.0f} | {:.0f} | {} | {} | {} | {} | {} | {} |".format(
            LABELS.get(r["policy"], r["policy"]), r["peak_rss_mib"], r["mean_rss_mib"], r["peak_uss_mib"],
            r["mean_uss_mib"], r["recycles"], r["kills"], r["served"], r["req_per_s"], r["failed"],
            r["failed_kinds"] if r["failed"] else "-"))
    lines += [
        "",
        "Recycles are kechid's journal records `REASON=age` / `REASON=memory` (\"recycling worker\"); kills are",
        "the killer's SIGTERMs. kechid's journal, all records with a REASON per policy: " + "; ".join(
            "{}: {}".format(r["policy"], r["journal_reasons"] or "none") for r in rows) + ".",
        "",
    ] + reading(by, p) + [
        "## Reproduce",
        "",
        "```sh",
        "sudo bench/run.sh leaks            # full: {} s per policy".format(300),
        "sudo bench/run.sh leaks --quick    # 42 s per policy, under 5 minutes",
        "```",
        "",
        "Parameters of this run: " + ", ".join("{}={}".format(k, v) for k, v in p.items()) + ".",
        "Raw figures: `bench/results/leaks/memory.csv` (per second, per policy) and `summary.csv`.",
        "",
        "Machine: " + machine + ". The load generator, the sampler and the app share the same 2 cores with",
        "other work: request rates are comparable within this run only.",
        "",
    ]
    return "\n".join(lines)


def reading(by, p):
    """What the figures say, each policy's cost included (whether it flatters kechi or not)."""
    out = ["Reading it:", ""]
    if "age" in by and "memory" in by:
        a, m = by["age"], by["memory"]
        verdict = ("the traffic peak outran it: peak {:.0f} MiB against {:.0f} MiB with recycle-above".format(
            a["peak_rss_mib"], m["peak_rss_mib"]) if a["peak_rss_mib"] > m["peak_rss_mib"] else
            "it held (peak {:.0f} MiB against {:.0f} MiB with recycle-above)".format(a["peak_rss_mib"], m["peak_rss_mib"]))
        out += ["- Periodic recycling (max-age {}s, a fixed interval) recycled {} times, healthy".format(
                    p["max_age"], a["recycles"]),
                "  workers included, whatever the leak did; {}.".format(verdict),
                "- recycle-above follows the leak whatever the traffic ({} recycles, each when a worker passed the limit); the".format(
                    m["recycles"]),
                "  replacement starts first, so for a moment the old and the new worker both count."]
    if "killer" in by and "memory" in by:
        k, m = by["killer"], by["memory"]
        if k["mean_rss_mib"] < m["mean_rss_mib"]:
            out += ["- The external killer kept memory lower (peak {:.0f} MiB, mean {:.0f} against {:.0f}): it measures".format(
                        k["peak_rss_mib"], k["mean_rss_mib"], m["mean_rss_mib"]),
                    "  RSS, which is above USS, and a killed worker's memory goes at once, with no replacement beside it."]
        else:
            out += ["- The external killer kept memory no lower (peak {:.0f} MiB, mean {:.0f} against {:.0f}).".format(
                k["peak_rss_mib"], k["mean_rss_mib"], m["mean_rss_mib"])]
        out += ["- Its cost is capacity: after each SIGTERM the app runs a worker short until kechid notices the",
                "  exit, waits out the crash backoff and the new worker is ready; kechid logs each kill as a crash",
                "  ({} here). Measured: {:.0f} requests/s against {:.0f} with recycle-above, {} failed requests.".format(
                    k["crash_restarts"], k["req_per_s"], m["req_per_s"], k["failed"])]
        if k["req_per_s"] >= 0.95 * m["req_per_s"] and k["failed"] == 0:
            out += ["  That cost did not show here: this app is ready in milliseconds and finishes the requests in",
                    "  flight on SIGTERM. An app that loads for seconds, or exits at once on SIGTERM, would pay it."]
    out.append("")
    return out


if __name__ == "__main__":
    main()

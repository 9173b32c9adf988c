#!/usr/bin/python3
"""report.py RAW OUT DOCS PARAMS MACHINE: turns bench/cow/run.sh's raw files into its results.

RAW holds mem-VARIANT.csv (procmem.py's per-process samples) and summary.csv (one row per variant
from run.sh). A child is a process whose parent is also the app's (a Starlet master's child);
its shared % is (RSS - USS) / RSS. Writes:
  OUT/shared.csv    variant,t,children,mean_shared,min_shared,uss_sum_mib,rss_sum_mib
  OUT/summary.csv   one row per variant
  DOCS/cow.md, DOCS/cow-shared.png, DOCS/cow-private.png
PARAMS: "key=value ..." from run.sh; MACHINE: one line.
"""
import csv
import os
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "none": "no policy",
    "minshared": "min-shared + child-signal",
    "childsig": "recycle-above (USS) + child-signal",
}
COLORS = {"none": "tab:red", "minshared": "tab:blue", "childsig": "tab:green"}


def series(path):
    """Per sample: (t, children, mean shared %, min shared %, USS sum MiB, RSS sum MiB)."""
    by_t = OrderedDict()
    with open(path) as f:
        for r in csv.DictReader(f):
            by_t.setdefault(r["t"], []).append(r)
    out = []
    for t, rows in by_t.items():
        pids = {r["pid"] for r in rows}
        kids = [r for r in rows if r["ppid"] in pids]
        sh = [100.0 * int(r["shared_kb"]) / int(r["rss_kb"]) for r in kids]
        if not sh:
            continue  # a master between two sets of children (a whole-worker recycle)
        out.append((float(t), len(kids), sum(sh) / len(sh), min(sh),
                    sum(int(r["uss_kb"]) for r in rows) / 1024, sum(int(r["rss_kb"]) for r in rows) / 1024))
    return out


def main():
    raw, out, docs, params, machine = sys.argv[1:6]
    p = dict(kv.split("=", 1) for kv in params.split())
    os.makedirs(out, exist_ok=True)
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(raw, "summary.csv")) as f:
        runs = list(csv.DictReader(f))
    rows, all_series = [], {}
    with open(os.path.join(out, "shared.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "t", "children", "mean_shared", "min_shared", "uss_sum_mib", "rss_sum_mib"])
        for run in runs:
            v = run["variant"]
            s = series(os.path.join(raw, "mem-{}.csv".format(v)))
            all_series[v] = s
            for t, n, mean, mn, uss, rss in s:
                w.writerow([v, "{:.1f}".format(t), n, "{:.1f}".format(mean), "{:.1f}".format(mn),
                            "{:.1f}".format(uss), "{:.1f}".format(rss)])
            secs = float(p["duration"])
            tail = [x for x in s if x[0] >= 0.9 * secs] or s[-1:]
            rows.append({
                "variant": v,
                "start_mean_shared": round(s[0][2], 1),
                "end_mean_shared": round(sum(x[2] for x in tail) / len(tail), 1),
                "avg_mean_shared": round(sum(x[2] for x in s) / len(s), 1),
                "lowest_min_shared": round(min(x[3] for x in s), 1),
                "mean_uss_sum_mib": round(sum(x[4] for x in s) / len(s), 1),
                "peak_uss_sum_mib": round(max(x[4] for x in s), 1),
                "mean_rss_sum_mib": round(sum(x[5] for x in s) / len(s), 1),
                "child_signals": int(run["child_signals"]), "worker_recycles": int(run["worker_recycles"]),
                "served": int(run["served"]), "req_per_s": round(int(run["served"]) / secs, 1),
                "failed": int(run["failed"]), "failed_kinds": run["failed_kinds"],
                "journal_reasons": run["reasons"], "samples": len(s),
            })
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)

    plt.figure(figsize=(9, 5))
    for v, s in all_series.items():
        c = COLORS.get(v)
        plt.plot([x[0] for x in s], [x[2] for x in s], color=c, linewidth=1.5, label=LABELS.get(v, v) + ": mean")
        plt.plot([x[0] for x in s], [x[3] for x in s], color=c, linewidth=0.9, linestyle="--", label=LABELS.get(v, v) + ": min")
    plt.axhline(float(p["min_shared"]), color="grey", linestyle=":", linewidth=1)
    plt.xlabel("seconds under load")
    plt.ylabel("shared part of a child's RSS (%)")
    plt.title("Starlet, {} children: copy-on-write sharing over time (mean and min over children)".format(p["children"]),
              fontsize=10)
    plt.ylim(0, 100)
    plt.legend(fontsize=8, loc="lower left")
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(os.path.join(docs, "cow-shared.png"), dpi=110)

    plt.figure(figsize=(9, 4))
    for v, s in all_series.items():
        plt.plot([x[0] for x in s], [x[4] for x in s], color=COLORS.get(v), linewidth=1.4, label=LABELS.get(v, v))
    plt.xlabel("seconds under load")
    plt.ylabel("USS summed over the app's processes (MiB)")
    plt.title("Private memory of the app (what un-sharing costs)", fontsize=10)
    plt.legend(fontsize=8)
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(os.path.join(docs, "cow-private.png"), dpi=110)

    with open(os.path.join(docs, "cow.md"), "w") as f:
        f.write(doc(rows, {r["variant"]: r for r in rows}, p, machine))


def doc(rows, by, p, machine):
    lines = ["# Benchmark: cow — copy-on-write decay of a preforking Starlet app", ""]
    summ = []
    if "none" in by:
        n = by["none"]
        summ.append("Starlet children sharing a preloaded 2M-element array, each request touching {} random elements: "
                    "without a policy the children's shared part fell from {:.0f}% to {:.0f}% in {} s.".format(
                        p["visits"], n["start_mean_shared"], n["end_mean_shared"], p["duration"]))
    if "childsig" in by:
        c = by["childsig"]
        summ.append("With recycle-above (USS) + child-signal, kechid signalled {} children one at a time and the mean "
                    "stayed at {:.0f}% on average (no policy: {:.0f}%), {} failed requests.".format(
                        c["child_signals"], c["avg_mean_shared"], by["none"]["avg_mean_shared"] if "none" in by else 0,
                        c["failed"]))
    if "minshared" in by:
        m = by["minshared"]
        if m["child_signals"] == 0 and m["worker_recycles"] > 0:
            summ.append("`min-shared` + `child-signal` signalled no child: kechid recycled the whole worker {} times "
                        "instead (it applies child-signal to recycle-above only); average {:.0f}%.".format(
                            m["worker_recycles"], m["avg_mean_shared"]))
        else:
            summ.append("`min-shared` + `child-signal`: {} child signals, {} worker recycles, average {:.0f}%.".format(
                m["child_signals"], m["worker_recycles"], m["avg_mean_shared"]))
    lines += [" ".join(summ), ""]
    lines += [
        "Reproduces \"a Starlet box saw shared memory fall from 90% to 60%\": `tests/system/apps/mem_big.psgi` under",
        "`plackup -s Starlet --max-workers={} --max-reqs-per-child=1000000` (one kechi worker: a master and {}".format(
            p["children"], p["children"]),
        "children; Starlet's own respawning kept out of the way). The master builds a 2M-element array before it",
        "forks; every request, `GET /visit?n={}&ms={}`, takes a reference to {} random elements and drops it, which".format(
            p["visits"], p["work_ms"], p["visits"]),
        "writes their reference counts: each page it lands on becomes the child's own copy; then it sleeps {} ms".format(
            p["work_ms"]),
        "(the rest of a request's work). Under a real systemd",
        "(the test harness's box), `wrk -c{} -t2` for {} s per variant:".format(p["conns"], p["duration"]),
        "",
        "| variant | configuration |",
        "|---|---|",
        "| no policy | kechid runs the app, no memory policy |",
        "| min-shared + child-signal | `min-shared = \"{}%\"`, `child-signal = \"TERM\"` |".format(p["min_shared"]),
        "| recycle-above (USS) + child-signal | `metric = \"uss\"`, `recycle-above = \"{}M\"` ({}% of the fresh worker's RSS: the same point as min-shared {}%, by private memory), `child-signal = \"TERM\"` |".format(
            p["above_mb"], 100 - int(p["min_shared"]), p["min_shared"]),
        "",
        "All with check-interval {}s, min-interval 5s. Every second, every process of the app's user is read from".format(p["poll"]),
        "`/proc/PID/smaps_rollup` inside the box (`bench/lib/procmem.py`); a child's shared % is (RSS - USS) / RSS.",
        "",
        "![shared % over time](cow-shared.png)",
        "",
        "![private memory over time](cow-private.png)",
        "",
        "| variant | shared at start | shared at end (last 10 %) | time-average of mean | lowest child | mean USS sum (MiB) | peak USS sum (MiB) | child signals | worker recycles | served | req/s | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append("| {} | {:.0f}% | {:.0f}% | {:.0f}% | {:.0f}% | {:.0f} | {:.0f} | {} | {} | {} | {} | {} |".format(
            LABELS.get(r["variant"], r["variant"]), r["start_mean_shared"], r["end_mean_shared"], r["avg_mean_shared"],
            r["lowest_min_shared"], r["mean_uss_sum_mib"], r["peak_uss_sum_mib"], r["child_signals"],
            r["worker_recycles"], r["served"], r["req_per_s"], r["failed"]))
    lines += [
        "",
        "Shared % figures are the mean over the children (per sample), then averaged over the samples; \"lowest",
        "child\" is the lowest any child reached. Failed requests are wrk's socket errors plus non-2xx",
        "responses" + "".join("; {}: {}".format(r["variant"], r["failed_kinds"]) for r in rows if r["failed"]) + ".",
        "kechid's journal, records with a REASON per variant: " + "; ".join(
            "{}: {}".format(r["variant"], r["journal_reasons"] or "none") for r in rows) + ".",
        "",
    ] + reading(by) + [
        "## Reproduce",
        "",
        "```sh",
        "sudo bench/run.sh cow            # full: 180 s per variant",
        "sudo bench/run.sh cow --quick    # 45 s per variant, under 5 minutes",
        "```",
        "",
        "Parameters of this run: " + ", ".join("{}={}".format(k, v) for k, v in p.items()) + ".",
        "Raw figures: `bench/results/cow/shared.csv` (per second, per variant) and `summary.csv`.",
        "",
        "Machine: " + machine + ". The load generator, the sampler and the app share the same 2 cores with",
        "other work: request rates are comparable within this run only.",
        "",
    ]
    return "\n".join(lines)


def reading(by):
    """What the figures say, where each policy's cost lies (including what does not flatter kechi)."""
    out = ["Reading it:", ""]
    if "minshared" in by and "none" in by:
        m, n = by["minshared"], by["none"]
        out += ["- `min-shared` judges the worker as a whole and, child-signal or not, replaces the whole worker: the",
                "  new master loads the preload again and both sets of processes live during the handover (peak USS sum",
                "  {:.0f} MiB against {:.0f} MiB for the child-level policy), and this run served {:.0f} requests/s against {:.0f}".format(
                    m["peak_uss_sum_mib"], by.get("childsig", m)["peak_uss_sum_mib"], m["req_per_s"], n["req_per_s"]),
                "  without a policy (the reloads share 2 busy cores with the app; one run cannot tell them from the",
                "  machine's other load). In return every child is fresh at once."]
    if "childsig" in by:
        c = by["childsig"]
        out += ["- recycle-above on USS with child-signal replaces one child at a time (the largest by USS, at most one",
                "  per min-interval): the mean saw-tooths around the threshold, {} requests failed, the throughput".format(c["failed"]),
                "  stays ({:.0f} requests/s), but the oldest children keep decaying until their turn (lowest child {:.0f}%).".format(
                    c["req_per_s"], c["lowest_min_shared"]),
                "  Its threshold is the worker's total private memory, so it has to be set for the number of children."]
    out += ["- Starlet's own `--max-reqs-per-child` (default 1000) renews children by request count instead; it was",
            "  set out of reach here so that only the policies under test act.", ""]
    return out


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Tables and plots of bench/allocator's results.

    report.py RESULTS_DIR PNG_DIR [--doc FILE]

Reads RESULTS_DIR/runs.csv (one row per run, from sample.py) and RESULTS_DIR/raw/*.csv (the
samples), writes PNG_DIR/allocator-{python,ruby}.png (RSS and USS against requests served, then
against time through the idle phase) and PNG_DIR/allocator-ratios.png, prints the tables as
Markdown, and with --doc replaces what lies between the lines `<!-- tables:begin -->` and
`<!-- tables:end -->` of FILE with them (the prose around them is written by hand).

Figures per variant are the median over rounds; ratios are against glibc in the same run.
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"glibc": "black", "jemalloc-defaults": "tab:orange", "kechi-default": "tab:blue",
          "narenas1": "tab:green", "decay0": "tab:red", "decay5s": "tab:purple",
          "no-bg-thread": "tab:brown"}


def load_runs(results):
    with open(os.path.join(results, "runs.csv")) as f:
        return list(csv.DictReader(f))


def load_samples(results, interp, variant, rnd):
    with open(os.path.join(results, "raw", "%s-%s-%s.csv" % (interp, variant, rnd))) as f:
        return [{k: (v if k == "phase" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def mib(kib):
    return float(kib) / 1024


def med(rows, key):
    return statistics.median(float(r[key]) for r in rows)


def tables(runs):
    by = defaultdict(list)
    for r in runs:
        by[(r["interp"], r["variant"])].append(r)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    if "glibc" in variants:  # glibc first, then the order the runs used
        variants.remove("glibc")
        variants.insert(0, "glibc")
    out = []
    for interp in dict.fromkeys(r["interp"] for r in runs):
        base = by[(interp, "glibc")]
        out.append("### %s (%d requests per run, median of %d round(s))\n"
                   % (interp, int(med(base, "requests")) if base else 0, len(base)))
        out.append("| variant | MALLOC_CONF | peak RSS | end-of-load RSS | end-of-load USS "
                   "| after idle RSS | after idle USS | after idle USS / glibc | peak RSS / glibc "
                   "| CPU ms / request | CPU / glibc | page faults / request | req/s / glibc | p99 ms |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                   "| ---: | ---: |")
        for v in variants:
            rows = by.get((interp, v))
            if not rows:
                continue
            conf = rows[0]["malloc_conf"] or "(none: glibc malloc)"

            def ratio(key):
                return "%.2f" % (med(rows, key) / med(base, key)) if base else "-"
            out.append("| %s | `%s` | %.0f MiB | %.0f MiB | %.0f MiB | %.0f MiB | %.0f MiB "
                       "| **%s** | %s | %.2f | %s | %.0f | %s | %.0f |" % (
                           v, conf, mib(med(rows, "peak_rss_kib")),
                           mib(med(rows, "final_rss_kib")), mib(med(rows, "final_uss_kib")),
                           mib(med(rows, "idle_rss_kib")), mib(med(rows, "idle_uss_kib")),
                           ratio("idle_uss_kib"), ratio("peak_rss_kib"),
                           med(rows, "cpu_ms_per_req"), ratio("cpu_ms_per_req"),
                           med(rows, "minflt_per_req"), ratio("req_per_s"),
                           med(rows, "p99_ms")))
        out.append("")
    out.append("Every run, as measured: `bench/results/allocator/runs.csv`.")
    return "\n".join(out) + "\n"


def plot_interp(results, runs, interp, png):
    variants = list(dict.fromkeys(r["variant"] for r in runs if r["interp"] == interp))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for v in variants:
        rnd = min(r["round"] for r in runs if r["interp"] == interp and r["variant"] == v)
        s = load_samples(results, interp, v, rnd)
        load = [r for r in s if r["phase"] == "load"]
        t_end = load[-1]["t_s"] if load else 0
        style = dict(color=COLORS.get(v), lw=2.2 if v in ("glibc", "kechi-default") else 1.2,
                     label=v)
        for col, key in ((0, "rss_kib"), (1, "uss_kib")):
            axes[0][col].plot([r["requests"] for r in load], [mib(r[key]) for r in load], **style)
            axes[1][col].plot([r["t_s"] - t_end for r in s], [mib(r[key]) for r in s], **style)
    for col, what in ((0, "RSS"), (1, "USS (private)")):
        axes[0][col].set(title="%s: %s while serving (round 1)" % (interp, what),
                         xlabel="requests served", ylabel="MiB")
        axes[1][col].set(title="%s: %s, load stops at 0 s" % (interp, what),
                         xlabel="seconds since the load stopped", ylabel="MiB")
        axes[1][col].axvline(0, color="grey", ls=":")
        for row in (0, 1):
            axes[row][col].set_ylim(bottom=0)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def plot_ratios(runs, png):
    interps = list(dict.fromkeys(r["interp"] for r in runs))
    variants = [v for v in dict.fromkeys(r["variant"] for r in runs) if v != "glibc"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(interps) * 3)
    x = range(len(variants))
    bars = [("peak RSS", "peak_rss_kib"), ("end-of-load USS", "final_uss_kib"),
            ("after idle USS", "idle_uss_kib")]
    k = 0
    for interp in interps:
        base = [r for r in runs if r["interp"] == interp and r["variant"] == "glibc"]
        for label, key in bars:
            ys = []
            for v in variants:
                rows = [r for r in runs if r["interp"] == interp and r["variant"] == v]
                ys.append(med(rows, key) / med(base, key) if rows and base else 0)
            ax.bar([i + (k - len(interps) * 1.5 + 0.5) * width for i in x], ys, width,
                   label="%s: %s" % (interp, label))
            k += 1
    ax.axhline(1, color="black", lw=1)
    ax.axhline(0.45, color="grey", ls=":", lw=1)
    ax.set_xticks(list(x))
    ax.set_xticklabels(variants)
    ax.set_ylabel("x glibc (same run)")
    ax.set_title("jemalloc variants against glibc malloc (below 1 = less memory)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main():
    args = sys.argv[1:]
    doc = None
    if "--doc" in args:
        i = args.index("--doc")
        doc = args[i + 1]
        del args[i:i + 2]
    results, png_dir = args
    runs = load_runs(results)
    os.makedirs(png_dir, exist_ok=True)
    for interp in dict.fromkeys(r["interp"] for r in runs):
        plot_interp(results, runs, interp, os.path.join(png_dir, "allocator-%s.png" % interp))
    plot_ratios(runs, os.path.join(png_dir, "allocator-ratios.png"))
    text = tables(runs)
    print(text)
    if doc:
        with open(doc) as f:
            lines = f.read().split("\n")
        begin = lines.index("<!-- tables:begin -->")
        end = lines.index("<!-- tables:end -->")
        lines[begin + 1:end] = [text]
        with open(doc, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()

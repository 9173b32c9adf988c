#!/usr/bin/python3
"""Tables and plots of bench/tmpfiles' results.

    report.py RESULTS_DIR PNG_DIR [--doc FILE]

Reads RESULTS_DIR/runs.csv (one row per run, from sample_slab.py) and RESULTS_DIR/raw/*.csv,
writes PNG_DIR/tmpfiles-dentry.png (dentry slab bytes over time, every run), prints the table as
Markdown, and with --doc replaces what lies between the lines `<!-- tables:begin -->` and
`<!-- tables:end -->` of FILE with it (the prose around them is written by hand).
"""
import csv
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ext4": "tab:red", "tmpfs": "tab:blue", "control": "grey"}
LABELS = {"ext4": "TMPDIR on ext4 (loop image)", "tmpfs": "kechi's per-worker tmpfs TMPDIR",
          "control": "control: no temp files"}


def mb(b):
    return float(b) / 1e6


def table(runs):
    setups = list(dict.fromkeys(r["setup"] for r in runs))
    out = ["| setup | TMPDIR fs | runs | requests/s | dentry growth in the run | growth per 30 s "
           "| dentry objects added | per request | negative dentries added |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in setups:
        rows = [r for r in runs if r["setup"] == s]

        def m(key):
            return statistics.median(float(r[key]) for r in rows)
        per_req = [float(r["growth_bytes_per_request"]) for r in rows
                   if r["growth_bytes_per_request"] not in ("", "None")]
        out.append("| %s | %s | %d | %.0f | %.1f MB in %.0f s | **%.1f MB** | %.0f | %s | %.0f |" % (
            s, rows[0]["tmpdir_fs"], len(rows), m("req_per_s"), mb(m("dentry_growth_bytes")),
            m("seconds"), mb(m("growth_bytes_per_30s")), m("dentry_growth_objs"),
            "%.0f B" % statistics.median(per_req) if per_req else "-", m("negative_growth")))
    out.append("")
    out.append("Medians over rounds; MB = 10^6 bytes; dentry bytes = active objects x object size "
               "from /proc/slabinfo. Every run: `bench/results/tmpfiles/runs.csv`.")
    return "\n".join(out) + "\n"


def plot(results, runs, png):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    seen = set()
    for r in runs:
        with open(os.path.join(results, "raw", "%s-%s.csv" % (r["setup"], r["round"]))) as f:
            s = list(csv.DictReader(f))
        label = LABELS.get(r["setup"], r["setup"]) if r["setup"] not in seen else None
        seen.add(r["setup"])
        style = dict(color=COLORS.get(r["setup"]), label=label,
                     ls="-" if r["round"] == "1" else "--")
        t = [float(x["t_s"]) for x in s]
        axes[0].plot(t, [mb(x["dentry_bytes"]) for x in s], **style)
        axes[1].plot(t, [float(x["nr_negative"]) / 1000 for x in s], **style)
    axes[0].set(title="dentry slab (active objects x size), caches dropped at 0",
                xlabel="seconds under load", ylabel="MB")
    axes[1].set(title="negative dentries (/proc/sys/fs/dentry-state)",
                xlabel="seconds under load", ylabel="thousands")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
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
    with open(os.path.join(results, "runs.csv")) as f:
        runs = list(csv.DictReader(f))
    os.makedirs(png_dir, exist_ok=True)
    plot(results, runs, os.path.join(png_dir, "tmpfiles-dentry.png"))
    text = table(runs)
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

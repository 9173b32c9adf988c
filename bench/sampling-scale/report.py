#!/usr/bin/env python3
"""docs/benchmarks/sampling-scale.md from the runs of bench/sampling-scale/run.sh.

Usage: report.py RESULTS_DIR OUT.md

Reads every LABEL.csv in RESULTS_DIR (one run of one kechid build each), with LABEL-meta.txt and
LABEL-breakdown.txt beside it, and writes one table that puts the labels side by side (kechid's
CPU per minute and % of a core, per layout and policy set), the breakdown of each run (files
opened per second, perf shares), and bench/sampling-scale/notes.md as "Observations".
"""
import csv
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
POLICIES = {
    "off": "none (check-interval 1s)",
    "on": "all, none near firing",
    "near1": "all; one worker near recycle-above",
    "nearall": "all; app near app-budget",
}
# "before" first: the build the others are compared with
ORDER = {"before": 0, "after": 1}


def load(results):
    rows, labels = [], []
    for path in sorted(results.glob("*.csv"), key=lambda p: (ORDER.get(p.stem, 2), p.stem)):
        with path.open() as f:
            got = list(csv.DictReader(f))
        if got:
            labels.append(path.stem)
            rows += got
    return rows, labels


def table(rows, labels):
    keys = []
    for r in rows:
        k = (r["layout"], r["policies"])
        if k not in keys:
            keys.append(k)
    cell = {(r["label"], r["layout"], r["policies"]): r for r in rows}
    head = ["workers x processes", "memory policies", "app RSS / USS MiB"]
    for lab in labels:
        head += [f"{lab}: CPU ms/min", f"{lab}: % of a core"]
    out = ["| " + " | ".join(head) + " |", "| --- | --- | ---: |" + " ---: | ---: |" * len(labels)]
    for layout, pol in keys:
        any_row = next(cell[(lab, layout, pol)] for lab in labels if (lab, layout, pol) in cell)
        line = [
            layout.replace("x", " x "),
            POLICIES.get(pol, pol),
            f"{int(any_row['app_rss_kib']) / 1024:.0f} / {int(any_row['app_uss_kib']) / 1024:.0f}",
        ]
        for lab in labels:
            r = cell.get((lab, layout, pol))
            line += [f"{float(r['cpu_ms_per_min']):.0f}", f"**{float(r['percent_of_core']):.2f}**"] if r else ["-", "-"]
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def trimmed(text, top=6):
    """A breakdown with the first `top` self-time symbols of each run (the raw file has 15)."""
    out, seen = [], 0
    for line in text.strip().splitlines():
        if line.startswith("## "):
            seen = 0
        if line.startswith("self\t"):
            seen += 1
            if seen > top:
                continue
        out.append(line)
    return "\n".join(out)


def summary(rows, labels):
    """'With every memory policy on and none near firing: LABEL X-Y% of a core, ...'."""
    parts = []
    for lab in labels:
        on = [float(r["percent_of_core"]) for r in rows if r["label"] == lab and r["policies"] == "on"]
        if on:
            parts.append(f"{lab} {min(on):.2f}-{max(on):.2f}%")
    return ("With every memory policy on and none near firing, by layout: " + ", ".join(parts) + " of a core."
            if parts else "")


def main():
    results, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rows, labels = load(results)
    if not rows:
        print("report.py: no rows", file=sys.stderr)
        return 1
    doc = [
        "# Sampling that scales: kechid's CPU for 200 worker processes at 1 Hz",
        "",
        "kechid's own CPU time while it watches the memory of one app of 200 processes every second"
        " (`recycle.check-interval = \"1s\"`), laid out as 100 workers of 2 processes, 40 of 5 or 8 of"
        " 25, with the memory policies off, on and far from firing, and on with one worker or the"
        " whole app near a threshold. The target (DESIGN.md): at most 1% of one core. " + summary(rows, labels),
        "",
        "Every worker is a prefork master and its children asleep (`bench/sampling-scale/prefork.py`:"
        " 4 MiB written by the master before forking, shared copy-on-write, 1 MiB written by each"
        " child; about 14 MiB resident a process), so the app itself costs nothing once started and"
        " kechid's CPU is what watching it costs. CPU time is kechid's utime + stime from"
        " `/proc/PID/stat` over the measured span (clock ticks of 10 ms). \"on\": `metric = \"uss\"`,"
        " `recycle-above = \"512M\"`, `app-budget = \"16G\"`, `min-shared = \"30%\"`,"
        " `child-signal = \"TERM\"`. \"near1\": the first worker started holds 300 MiB more and `recycle-above` is 32 MiB"
        " above its USS; \"nearall\": `app-budget` is 10% above the app's total USS. Nothing ever fires.",
        "",
        table(rows, labels),
        "",
    ]
    notes = HERE / "notes.md"
    if notes.exists():
        doc += ["## Observations", "", notes.read_text().strip(), ""]
    for lab in labels:
        br = results / f"{lab}-breakdown.txt"
        if br.exists():
            doc += [f"## Where the time goes: {lab}", "",
                    "Per run: files opened (and renamed, statfs-ed) per second, from strace; then the"
                    " share of kechid's CPU samples (perf, 997 Hz) under each kernel entry point, and the"
                    " top six symbols by self time (all fifteen in the raw file). Both taken after the measured span.", "", "```",
                    trimmed(br.read_text()), "```", ""]
    doc += ["## How to run it", "", "    bench/run.sh sampling-scale --label NAME", "",
            "(`KECHI_BIN_DIR=DIR` picks the kechid build; `--quick`: one 8 x 25 row with every policy on,"
            " 20 s, written under /tmp.) Raw figures: `bench/results/sampling-scale/LABEL.csv`,"
            " `LABEL-breakdown.txt`, `LABEL-meta.txt`.", ""]
    for lab in labels:
        meta = results / f"{lab}-meta.txt"
        if meta.exists():
            doc += [f"Run `{lab}`:", ""] + [f"- {line}" for line in meta.read_text().strip().splitlines()] + [""]
    out.write_text("\n".join(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

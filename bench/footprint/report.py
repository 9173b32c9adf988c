#!/usr/bin/python3
"""bench/footprint/report.py — turns bench/footprint's CSV into its report.

  report.py --text CSV                       the tables, on stdout
  report.py --markdown CSV --meta META --docs DIR
      DIR/footprint.md (summary, tables, the command, the machine, the date) and DIR/footprint.png
      (bench/footprint/notes.md, when present, goes in as "Observations": what the committed run
      shows, written by hand; the rest is generated)

Memory in MiB (the CSV has KiB); "x kechid" is a supervisor's USS over kechid's, both supervising
8 processes. CPU is the supervisor's own user + system time, per minute of wall-clock time, and as
a share of one core.
"""
import argparse
import os
import csv
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from observations import with_observations  # noqa: E402

WHAT = {
    "kechid": "kechid (kechi@demo, 8 workers)",
    "supervisord": "supervisord (numprocs=8)",
    "circusd": "circusd (numprocesses=8)",
    "start_server": "start_server (Starlet, 8 children)",
}


def mib(kib):
    return "{:.2f}".format(int(kib) / 1024)


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["part"] == "peers"], [r for r in rows if r["part"] == "monitoring"]


def cpu(r):
    per_min = float(r["cpu_ms_per_min"])
    return "{:.0f}".format(per_min), "{:.3f}".format(per_min / 60000 * 100)


ANON = {}  # supervisor -> KiB of its USS in anonymous memory ([heap], [stack], [anon]), when known


def load_anon(csv_path):
    d = os.path.dirname(os.path.abspath(csv_path))
    for f in os.listdir(d):
        if f.startswith("uss-by-mapping-") and f.endswith(".csv"):
            with open(os.path.join(d, f)) as fh:
                ANON[f[len("uss-by-mapping-"):-4]] = sum(int(r["kib"]) for r in csv.DictReader(fh) if r["mapping"].startswith("["))


def peer_rows(peers):
    k = next((r for r in peers if r["supervisor"] == "kechid"), None)
    for r in peers:
        ratio = "{:.1f}".format(int(r["uss_kib"]) / int(k["uss_kib"])) if k and int(k["uss_kib"]) else "-"
        anon = ANON.get(r["supervisor"])
        aratio = "{:.0f}".format(anon / ANON["kechid"]) if anon is not None and ANON.get("kechid") else "-"
        yield [WHAT.get(r["supervisor"], r["supervisor"]), mib(r["rss_kib"]), mib(r["pss_kib"]), mib(r["uss_kib"]),
               ratio, "-" if anon is None else mib(anon), aratio, r["threads"], *cpu(r)]


def mon_rows(mon):
    for r in mon:
        yield [r["app_processes"], r["policies"], *cpu(r), mib(r["rss_kib"]), mib(r["pss_kib"]), mib(r["uss_kib"]), r["threads"]]


PEER_COLS = ["supervisor", "RSS MiB", "PSS MiB", "USS MiB", "USS x kechid", "anonymous USS MiB", "x kechid",
             "threads", "CPU ms/min", "% of a core"]
MON_COLS = ["workers", "memory policies", "CPU ms/min", "% of a core", "RSS MiB", "PSS MiB", "USS MiB", "threads"]


def text_table(cols, rows):
    rows = [cols] + list(rows)
    w = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(r)))


def md_table(cols, rows, left=(0,)):
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" if i in left else "---:" for i in range(len(cols))) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plot(peers, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [WHAT.get(r["supervisor"], r["supervisor"]).split(" (")[0] for r in peers]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (key, lab, col) in enumerate((("rss_kib", "RSS", "#9bb7d4"), ("pss_kib", "PSS", "#4878a8"), ("uss_kib", "USS", "#e0a040"))):
        xs = [j + (i - 1) * 0.27 for j in range(len(peers))]
        vals = [int(r[key]) / 1024 for r in peers]
        ax.bar(xs, vals, width=0.27, label=lab, color=col)
        for x, v in zip(xs, vals):
            ax.text(x, v, "{:.1f}".format(v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(peers)))
    ax.set_xticklabels(names)
    ax.set_ylabel("MiB")
    ax.set_title("the supervisor's own memory, supervising 8 processes of the same app", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(peers, mon):
    k = next((r for r in peers if r["supervisor"] == "kechid"), None)
    others = [r for r in peers if r["supervisor"] != "kechid"]
    lines = []
    if k:
        s = "kechid supervising 8 workers: USS {} MiB, PSS {} MiB, RSS {} MiB".format(mib(k["uss_kib"]), mib(k["pss_kib"]), mib(k["rss_kib"]))
        if others:
            small = min(others, key=lambda r: int(r["uss_kib"]))
            s += "; the smallest peer, {}, has {} MiB of USS ({:.1f}x kechid's)".format(
                small["supervisor"], mib(small["uss_kib"]), int(small["uss_kib"]) / int(k["uss_kib"]))
        lines.append(s + ".")
        if ANON.get("kechid") and others and all(r["supervisor"] in ANON for r in others):
            lines.append("Most of kechid's USS is its own executable's pages; its heap, stacks and anonymous memory "
                         "are {} MiB, {:.0f}-{:.0f}x less than the peers'.".format(
                             mib(ANON["kechid"]), min(ANON[r["supervisor"]] for r in others) / ANON["kechid"],
                             max(ANON[r["supervisor"]] for r in others) / ANON["kechid"]))
    on = [r for r in mon if r["policies"] == "on"]
    if on:
        lines.append("Sampling every worker's full figures every second costs kechid " + ", ".join(
            "{:.0f} ms of CPU a minute with {} workers".format(float(r["cpu_ms_per_min"]), r["app_processes"]) for r in on) + ".")
    return lines


def by_mapping(csv_path, name, top=8):
    """The largest parts of a supervisor's USS, by mapping (uss-by-mapping-NAME.csv beside the CSV)."""
    path = os.path.join(os.path.dirname(os.path.abspath(csv_path)), "uss-by-mapping-{}.csv".format(name))
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        rows = [(int(r["kib"]), r["mapping"]) for r in csv.DictReader(f)]
    total = sum(k for k, _ in rows)
    lines = [(m, "{:.2f}".format(k / 1024), "{:.0f}%".format(100 * k / total)) for k, m in rows[:top]]
    rest = sum(k for k, _ in rows[top:])
    if rest:
        lines.append(("{} other mappings".format(len(rows) - top), "{:.2f}".format(rest / 1024), "{:.0f}%".format(100 * rest / total)))
    return ("Where {}'s USS is ({:.2f} MiB in all, from `/proc/PID/smaps` in the same run, "
            "private pages per mapping):\n\n".format(name, total / 1024)
            + md_table(["mapping", "USS MiB", "share"], lines) + "\n\n")


def markdown(peers, mon, meta, docs, csv_path):
    m = dict(line.split(": ", 1) for line in open(meta).read().splitlines() if ": " in line)
    os.makedirs(docs, exist_ok=True)
    plot(peers, docs + "/footprint.png")
    doc = """# Footprint: the supervisor's own memory and CPU

{summary}

![RSS, PSS and USS of each supervisor](footprint.png)

## kechid beside other supervisors

Each supervisor keeps 8 processes of the same hello app running (tests/system/apps/hello.py, a
threaded Python HTTP server; for start_server, which supervises a single server process, Starlet
with 8 children serving tests/system/apps/hello.psgi), one at a time, in the same throwaway box with
a real systemd. Figures are the supervisor's own process only, not its app: RSS, PSS and USS
(Private_Clean + Private_Dirty, the pages no other process maps) from `/proc/PID/smaps_rollup`, the
median of one sample a second, after a settling time; CPU is its user + system time over the same
span. "Anonymous USS" is the part of USS in heap, stacks and anonymous mappings (from
`/proc/PID/smaps`); the rest is file pages (the program and its libraries) that no other process
maps.

{peers}

{mappings}- kechid: `kechi@demo` with `workers = 8`, `ready.mode = "notify"`, `memory.max = "256M"`, no memory
  policy (it reads each worker's `statm` and cgroup memory every `check-interval`, 5 s).
- supervisord: Debian's package, its default configuration (control socket, RPC interface) plus
  `[program:hello]` with `numprocs=8`.
- circusd: circus from PyPI in a venv, `[watcher:hello]` with `numprocesses = 8`, statsd off.
- start_server: Debian's libserver-starter-perl, `--port=127.0.0.1:8081 -- plackup -s Starlet
  --max-workers=8`.

## What monitoring costs kechid

kechid alone, with 2, 8 and 32 workers of hello.py (policies off: 32 workers only). "on": `memory.app-budget = "64G"`,
`recycle-above = "200M"`, `min-shared = "1%"` (none ever fires here) and `recycle.check-interval =
"1s"`: every second kechid reads `statm` and `smaps_rollup` of every worker process and each
scope's cgroup memory (app-budget needs every worker's full figures). "off": no memory policy, the
default 5 s interval, `statm` and the cgroup figure only. The per-read costs behind these figures are
in [MEMORY-SAMPLING.md](../MEMORY-SAMPLING.md). CPU time is read from `/proc/PID/stat` in clock
ticks (10 ms), so small figures are coarse.

{mon}

{notes}## How to run it

    {command}

(`bench/run.sh footprint --quick`: 5 s spans, written under /tmp; `--kechi-only` is what
`bench/ci.sh` runs, which fails when kechid's USS exceeds its bound.) Raw figures:
`bench/results/footprint/footprint.csv`, `uss-by-mapping-*.csv` (each supervisor's USS per
mapping), `meta.txt`.

- date: {date}
- machine: {machine}
- load: {load}
- {timing}
- {versions}
- kechid: {kechid} (commit {commit})
""".format(notes="{notes}", mappings=by_mapping(csv_path, "kechid"), summary="\n".join(summary(peers, mon)), peers=md_table(PEER_COLS, peer_rows(peers)),
           mon=md_table(MON_COLS, mon_rows(mon), left=(1,)), command=m.get("command", "?"),
           date=m.get("date", "?"), machine=m.get("machine", "?"), load=m.get("load", "?"), timing="timing: " + m.get("timing", "?"),
           versions="versions: " + m.get("versions", "?"), kechid=m.get("kechid", "?"), commit=m.get("commit", "?"))
    doc = with_observations(doc, __file__)  # notes.md: observations on the committed run
    with open(docs + "/footprint.md", "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--meta")
    ap.add_argument("--docs")
    a = ap.parse_args()
    peers, mon = load(a.csv)
    load_anon(a.csv)
    if not peers and not mon:
        sys.exit("report: no rows in " + a.csv)
    if a.markdown:
        markdown(peers, mon, a.meta, a.docs, a.csv)
        return
    if peers:
        text_table(PEER_COLS, peer_rows(peers))
    if mon:
        print()
        text_table(MON_COLS, mon_rows(mon))


if __name__ == "__main__":
    main()

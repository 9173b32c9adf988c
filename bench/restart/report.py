#!/usr/bin/python3
"""bench/restart/report.py — turns bench/restart's CSV into its report.

  report.py --text CSV                           the table, on stdout
  report.py --markdown CSV --meta META --docs DIR
      DIR/restart.md (summary, tables, the command, the machine, the date) and DIR/restart.png
      (bench/restart/notes.md, when present, goes in as "Observations": what the committed run
      shows, written by hand; the rest is generated)

Per case (server, restart kind, load) the repetitions are combined: failed and served requests are
summed, latency percentiles and the action's duration are the median over repetitions, max is the
largest. "p99 x steady" is the window's p99 over the p99 of the same server's steady window (same load, no
restart) in the same repetition, the median over repetitions.
"""
import argparse
import os
import csv
import statistics
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from observations import with_observations  # noqa: E402

LABEL = {
    ("restart",): "systemctl restart",
    ("hup",): "SIGHUP",
    ("recycle",): "kechictl recycle --all --wait",
    ("reload",): "systemctl reload",
    ("krestart",): "systemctl restart kechi@demo",
    ("kill9",): "kill -9 kechid",
    ("steady",): "steady (no restart)",

}
SERVER = {
    "starlet": "Starlet, binding its own port",
    "start_server": "start_server + Starlet",
    "kechi-starlet": "kechi + Starlet",
    "gunicorn": "gunicorn, binding its own port",
    "kechi-gunicorn": "kechi + gunicorn",
}


def label(server, action):
    if (server, action) in LABEL:
        return LABEL[(server, action)]
    return "{}: {}".format(SERVER.get(server, server), LABEL.get((action,), action))


def load(path):
    cases = OrderedDict()
    steady = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            cases.setdefault((r["app"], r["server"], r["action"], r["load"]), []).append(r)
            if r["action"] == "steady":
                steady[(r["server"], r["load"], r["rep"])] = float(r["p99_ms"])
    out = []
    for (app, server, action, ld), rows in cases.items():
        med = lambda k: statistics.median(float(r[k]) for r in rows)  # noqa: E731
        ops = [float(r["action_s"]) for r in rows if r["action_s"]]
        # each window over the steady window of the same repetition: the machine's load drifts
        ratios = [float(r["p99_ms"]) / steady[k] for r in rows
                  for k in [(r["server"], r["load"], r["rep"])] if steady.get(k)]
        out.append(dict(
            app=app, server=server, action=action, load=ld, reps=len(rows),
            requests=sum(int(r["requests"]) for r in rows),
            failed=sum(int(r["failed"]) for r in rows),
            kinds={k: sum(int(r[k]) for r in rows) for k in ("connect", "read", "write", "timeout", "non2xx")},
            p50=med("p50_ms"), p99=med("p99_ms"), p999=med("p999_ms"),
            max=max(float(r["max_ms"]) for r in rows),
            op=statistics.median(ops) if ops else None,
            ratio=statistics.median(ratios) if ratios else None))
    return out


def kinds(c):
    return ", ".join("{} {}".format(k, v) for k, v in c["kinds"].items() if v) or "-"


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


COLS = ["case", "load", "served", "failed", "failures by kind", "p50 ms", "p99 ms", "p99 x steady",
        "p99.9 ms", "max ms", "action s"]


def rows_for(cases):
    for c in cases:
        yield [label(c["server"], c["action"]),
               c["load"], str(c["requests"]), str(c["failed"]), kinds(c), fmt(c["p50"], "{:.2f}"),
               fmt(c["p99"], "{:.2f}"), fmt(c["ratio"], "{:.2f}"), fmt(c["p999"]), fmt(c["max"]), fmt(c["op"], "{:.2f}")]


def text(cases):
    rows = [COLS] + list(rows_for(cases))
    w = [max(len(r[i]) for r in rows) for i in range(len(COLS))]
    for r in rows:
        print("  ".join(v.ljust(w[i]) if i in (0, 1, 4) else v.rjust(w[i]) for i, v in enumerate(r)))


def md_table(cases):
    lines = ["| " + " | ".join(COLS) + " |", "| " + " | ".join("---" if i in (0, 1, 4) else "---:" for i in range(len(COLS))) + " |"]
    for r in rows_for(cases):
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines)


def plot(cases, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    acts = [c for c in cases if c["action"] != "steady"]
    names = OrderedDict()
    for c in acts:
        names.setdefault((c["server"], c["action"]), label(c["server"], c["action"]).replace(": ", ":\n", 1))
    keys = list(names)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(keys) + 1.8), sharey=True)
    for ax, metric, title in ((axes[0], "failed", "failed requests (both loads, all repetitions)"),
                              (axes[1], "ratio", "p99 latency / steady p99 (median of repetitions)")):
        for i, ld in enumerate(("keepalive", "close")):
            vals = []
            for k in keys:
                c = next((c for c in acts if (c["server"], c["action"]) == k and c["load"] == ld), None)
                vals.append((c[metric] or 0) if c else 0)
            ys = [j + (i - 0.5) * 0.38 for j in range(len(keys))]
            ax.barh(ys, vals, height=0.38, label="keep-alive" if ld == "keepalive" else "Connection: close",
                    color="#4878a8" if i == 0 else "#e0a040")
            for y, v in zip(ys, vals):
                ax.text(v, y, " {:g}".format(round(v, 2)), va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xscale("symlog", linthresh=1)
    axes[1].axvline(1.2, color="grey", ls="--", lw=0.8)
    axes[0].set_yticks(range(len(keys)))
    axes[0].set_yticklabels([names[k] for k in keys], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(cases):
    acts = [c for c in cases if c["action"] != "steady"]
    kechi = [c for c in acts if c["server"].startswith("kechi-")]
    peers = [c for c in acts if not c["server"].startswith("kechi-")]
    kf = sum(c["failed"] for c in kechi)
    kr = [c["ratio"] for c in kechi if c["ratio"] is not None]
    lines = ["kechi's restarts (recycle --all, reload, systemctl restart, kill -9 of kechid; Starlet and "
             "gunicorn): **{} failed requests** out of {} served; p99 during them {}-{}x the steady p99."
             .format(kf, sum(c["requests"] for c in kechi), fmt(min(kr) if kr else None, "{:.2f}"),
                     fmt(max(kr) if kr else None, "{:.2f}"))]
    if peers:
        by = OrderedDict()
        for c in peers:
            by.setdefault((c["server"], c["action"]), []).append(c)
        parts = []
        for (s, a), cs in by.items():
            rs = [c["ratio"] for c in cs if c["ratio"] is not None]
            parts.append("{}: {} failed, p99 up to {}x".format(label(s, a), sum(c["failed"] for c in cs),
                                                                fmt(max(rs) if rs else None, "{:.2f}")))
        lines.append("Peers on the same app and load: " + "; ".join(parts) + ".")
    return lines


def markdown(cases, meta, docs):
    m = dict(line.split(": ", 1) for line in open(meta).read().splitlines() if ": " in line)
    os.makedirs(docs, exist_ok=True)
    plot(cases, docs + "/restart.png")
    perl = [c for c in cases if c["app"] == "perl"]
    py = [c for c in cases if c["app"] == "python"]
    doc = """# Restarts under load: failed requests and latency

{summary}

![failed requests and p99 ratio per restart kind](restart.png)

## What was measured

The same trivial hello app (`tests/system/apps/hello.psgi` for Perl, `hello_wsgi.py` for Python:
200 and one line of text) behind each server, four processes serving requests in every case, all
inside one throwaway box with a real systemd 252 (`tests/system/lib/box.sh`), one server at a time:

| server | how it runs | restart kinds |
| --- | --- | --- |
| Starlet, binding its own port | `plackup -s Starlet --max-workers=4 --listen 127.0.0.1:8081`, a plain systemd service, no socket activation | `systemctl restart` |
| start_server + Starlet | `start_server --port=127.0.0.1:8081 -- plackup -s Starlet --max-workers=4` (Server::Starter defaults: `--interval=1`, no kill-old delay) | SIGHUP (`systemctl reload` = `kill -HUP $MAINPID`) |
| kechi + Starlet | `kechi@demo`: 2 workers of `plackup -s Starlet --max-workers=2`, `ready.mode = "accept"`, sockets from `kechi@demo.socket` | `kechictl recycle demo --all --wait`, `systemctl reload kechi@demo`, `systemctl restart kechi@demo`, `kill -9` of kechid |
| gunicorn, binding its own port | `gunicorn --bind 127.0.0.1:8081 --workers 4`, a plain systemd service | `systemctl restart`, SIGHUP |
| kechi + gunicorn | `kechi@demo`: 2 workers of `gunicorn --workers 2` (sockets through `LISTEN_FDS`) | as kechi + Starlet |

Each case is one load window of {window}: two wrk runs at once for the whole window, one with
keep-alive connections and one sending `Connection: close` (a new connection per request), the
restart issued some seconds into it. A window with no restart ("steady") gives each server's
baseline; "p99 x steady" divides by it (same server, same load, same repetition; the median over
repetitions). **Failed** is every socket error wrk
counts (connect, read, write, timeout) plus every non-2xx response. "action s" is how long the
restart took to be over: until the app answered again (systemctl restart of a plain service),
until every process of the old generation had exited (SIGHUP, reload), until `kechictl recycle
--wait` returned, or until kechid was active again (its restart and kill -9; the workers never stop).

## Perl: Starlet

{perl}

## Python: gunicorn

{py}

{notes}## Reading the figures

- wrk is a closed-loop generator: a connection waits for its answer before it sends the next
  request, so a stall of one second delays only the few requests in flight (one per connection)
  and hardly moves p99 over a window of tens of thousands of requests (coordinated omission). The
  p99.9 and max columns show stalls better than p99 does; "failed" is exact.
- A plain `systemctl restart` of a server that binds its own port closes the listening socket: every
  connection attempt until the new process listens is refused (wrk's non-blocking connect reports
  it as a write error), and the connections open at the stop are cut (read errors). wrk opens a
  new connection at once after a failure, so that count is a rate times the gap, not a count of
  users turned away.
- kechi keeps the listening sockets in systemd (`kechi@demo.socket`) and replaces a worker only
  once its replacement is ready; kechid's own restart and kill -9 leave the workers serving.
- Timings are noisy: the machine has 2 cores shared with other work; compare ratios within one run.

## How to run it

    {command}

(`bench/run.sh restart --quick`: one repetition of 6 s windows, written under /tmp; `--kechi-only`
is what `bench/ci.sh` runs.) Raw figures: `bench/results/restart/restart.csv` (one row per window
and load), `bench/results/restart/meta.txt`.

- date: {date}
- machine: {machine}
- load: {window_line}
- {versions}
- kechid: {kechid} (commit {commit})
""".format(notes="{notes}", summary="\n".join(summary(cases)), window=m.get("window", "?").split(",")[0],
           perl=md_table(perl), py=md_table(py), command=m.get("command", "?"), date=m.get("date", "?"),
           machine=m.get("machine", "?"), window_line=m.get("window", "?"),
           versions="versions: " + m.get("versions", "?"), kechid=m.get("kechid", "?"), commit=m.get("commit", "?"))
    doc = with_observations(doc, __file__)  # notes.md: observations on the committed run
    with open(docs + "/restart.md", "w") as f:
        f.write(doc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--text", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--meta")
    ap.add_argument("--docs")
    a = ap.parse_args()
    cases = load(a.csv)
    if not cases:
        sys.exit("report: no rows in " + a.csv)
    if a.markdown:
        markdown(cases, a.meta, a.docs)
    else:
        text(cases)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Loads one worker with wrk and samples its memory: bench/allocator's measuring step.

    sample.py --pid PID --count-file FILE --requests N --idle SECONDS --out CSV
              [--summary RUNS_CSV --tag KEY=VALUE...] -- WRK_ARGS...

Starts `wrk WRK_ARGS...` (give it a duration longer than N requests need), and every --every
seconds reads the worker's requests-served count (the decimal number at the start of FILE, which
the app rewrites every 100 requests) and /proc/PID/smaps_rollup. Once the count reaches N it
stops wrk with SIGINT (wrk then prints its latency summary), and keeps sampling for --idle
seconds of no load: what the allocator gives back after a burst, and when.

CSV columns: t_s (since wrk started), phase (load | idle), requests, rss_kib, pss_kib, uss_kib
(Private_Clean + Private_Dirty, kechi's USS), anon_huge_kib (AnonHugePages: transparent huge
pages backing the heap).
Prints one JSON object on stdout: requests, load_s, req_per_s, wrk's p50/p99 latency in ms, the
worker's CPU time (user + system) and minor page faults per request during the load, peak
and final (end of load) and after-idle RSS/USS in KiB, and whether libjemalloc was mapped; with
--summary, the same as a row appended to RUNS_CSV (header written when the file is new), after
the --tag columns.
Exit status 1 when the worker died or wrk stopped before N requests.
"""
import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

FIELDS = {"Rss": "rss_kib", "Pss": "pss_kib", "Private_Clean": "pc", "Private_Dirty": "pd",
          "AnonHugePages": "anon_huge_kib"}


def read_mem(pid):
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[FIELDS[key]] = int(rest.split()[0])
    out["uss_kib"] = out.pop("pc") + out.pop("pd")
    return out


def read_cpu(pid):
    """(user + system CPU seconds, minor page faults) of the process, all its threads."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, minflt 10, utime 14, stime 15 (proc(5)).
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[7])


def read_count(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text else 0
    except (OSError, ValueError):
        return 0


def jemalloc_mapped(pid):
    with open("/proc/%d/maps" % pid) as f:
        return any("libjemalloc" in line for line in f)


def wrk_latency_ms(text, pct):
    """wrk --latency prints lines like '     99%  123.45ms'."""
    m = re.search(r"^\s*%d%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
    if not m:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return round(float(m.group(1)) * scale, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--count-file", required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--idle", type=float, required=True)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("wrk", nargs="+")
    a = ap.parse_args()

    rows = []
    cpu0, flt0 = read_cpu(a.pid)
    cpu1, flt1 = cpu0, flt0
    t0 = time.monotonic()
    wrk = subprocess.Popen(["wrk"] + a.wrk, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    load_s = None
    ok = True
    try:
        while True:
            now = time.monotonic() - t0
            n = read_count(a.count_file)
            phase = "load" if load_s is None else "idle"
            rows.append(dict(t_s=round(now, 3), phase=phase, requests=n, **read_mem(a.pid)))
            if load_s is None:
                if n >= a.requests:
                    load_s = now
                    cpu1, flt1 = read_cpu(a.pid)
                    wrk.send_signal(signal.SIGINT)
                elif wrk.poll() is not None:
                    ok = False
                    print("sample.py: wrk ended after %d of %d requests" % (n, a.requests),
                          file=sys.stderr)
                    break
            elif now - load_s >= a.idle:
                break
            time.sleep(a.every)
    except (FileNotFoundError, ProcessLookupError):
        ok = False
        print("sample.py: worker %d is gone" % a.pid, file=sys.stderr)
    if wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    wrk_out = wrk.communicate(timeout=30)[0]

    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["t_s", "phase", "requests", "rss_kib", "pss_kib",
                                          "uss_kib", "anon_huge_kib"])
        w.writeheader()
        w.writerows(rows)
    load = [r for r in rows if r["phase"] == "load"]
    end_of_load = load[-1] if load else rows[-1]
    summary = {
        "ok": ok,
        "requests": end_of_load["requests"],
        "load_s": round(load_s or 0, 2),
        "req_per_s": round(end_of_load["requests"] / load_s, 1) if load_s else None,
        "p50_ms": wrk_latency_ms(wrk_out, 50),
        "p99_ms": wrk_latency_ms(wrk_out, 99),
        # CPU time per request: unlike req/s, hardly moved by what else runs on the machine.
        "cpu_ms_per_req": round((cpu1 - cpu0) * 1000 / end_of_load["requests"], 3)
        if end_of_load["requests"] else None,
        "minflt_per_req": round((flt1 - flt0) / end_of_load["requests"], 1)
        if end_of_load["requests"] else None,
        "peak_rss_kib": max(r["rss_kib"] for r in rows),
        "peak_uss_kib": max(r["uss_kib"] for r in rows),
        "final_rss_kib": end_of_load["rss_kib"],
        "final_uss_kib": end_of_load["uss_kib"],
        "idle_rss_kib": rows[-1]["rss_kib"],
        "idle_uss_kib": rows[-1]["uss_kib"],
        "jemalloc_mapped": os.path.exists("/proc/%d" % a.pid) and jemalloc_mapped(a.pid),
    }
    print(json.dumps(summary))
    if a.summary:
        row = dict(t.split("=", 1) for t in a.tag)
        row.update(summary)
        new = not os.path.exists(a.summary)
        with open(a.summary, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

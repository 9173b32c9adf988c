#!/usr/bin/python3
"""Loads the workers with wrk for a while and samples the kernel's dentry cache: bench/tmpfiles'
measuring step.

    sample_slab.py --seconds S --count-file FILE --out CSV
                   [--summary RUNS_CSV --tag KEY=VALUE...] -- WRK_ARGS...

Starts `wrk WRK_ARGS...` (give it a duration longer than S) and every --every seconds (default 1)
reads /proc/slabinfo and the requests served (the decimal number at the start of FILE, which the
app rewrites every 100 requests); after S seconds it stops wrk.
CSV columns: t_s, requests, dentry_objs (active objects), dentry_bytes (active objects x object
size), ext4_inode_bytes, shmem_inode_bytes (the same for those slabs; 0 when absent),
sreclaimable_kib (all reclaimable slab, /proc/meminfo), nr_dentry, nr_unused, nr_negative
(/proc/sys/fs/dentry-state: system-wide, the kernel's own dentry counters).
Prints one JSON summary (requests, req/s, dentry growth in bytes and in objects, growth per
request, growth per 30 s) and with --summary appends it, after the --tag columns, to RUNS_CSV.
The figures are system-wide: the control run (no temp files) shows how much the rest of the
machine moves them meanwhile.
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time

SLABS = {"dentry": "dentry", "ext4_inode_cache": "ext4_inode", "shmem_inode_cache": "shmem_inode"}


def read_slabs():
    """Active objects and bytes (active x objsize) of the slabs in SLABS."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in SLABS:
                active, objsize = int(parts[1]), int(parts[3])
                out[SLABS[parts[0]] + "_objs"] = active
                out[SLABS[parts[0]] + "_bytes"] = active * objsize
    return out


def read_dentry_state():
    with open("/proc/sys/fs/dentry-state") as f:
        v = [int(x) for x in f.read().split()]
    # nr_dentry, nr_unused, age_limit, want_pages, nr_negative, dummy
    return {"nr_dentry": v[0], "nr_unused": v[1], "nr_negative": v[4] if len(v) > 4 else 0}


def read_sreclaimable():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("SReclaimable:"):
                return int(line.split()[1])
    return 0


def read_count(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text else 0
    except (OSError, ValueError):
        return 0


def sample(t, count_file):
    s = read_slabs()
    row = {"t_s": round(t, 2), "requests": read_count(count_file),
           "dentry_objs": s.get("dentry_objs", 0), "dentry_bytes": s.get("dentry_bytes", 0),
           "ext4_inode_bytes": s.get("ext4_inode_bytes", 0),
           "shmem_inode_bytes": s.get("shmem_inode_bytes", 0),
           "sreclaimable_kib": read_sreclaimable()}
    row.update(read_dentry_state())
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--count-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("wrk", nargs="+")
    a = ap.parse_args()

    rows = [sample(0.0, a.count_file)]
    t0 = time.monotonic()
    wrk = subprocess.Popen(["wrk"] + a.wrk, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    ok = True
    while True:
        # Sleep to the next tick of a fixed grid, so samples do not drift with the reading time.
        time.sleep(max(0.0, a.every * len(rows) - (time.monotonic() - t0)))
        now = time.monotonic() - t0
        rows.append(sample(now, a.count_file))
        if now >= a.seconds:
            break
        if wrk.poll() is not None:
            ok = False
            print("sample_slab.py: wrk ended early", file=sys.stderr)
            break
    if wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    wrk.wait(timeout=30)

    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    first, last = rows[0], rows[-1]
    secs = last["t_s"] - first["t_s"]
    reqs = last["requests"] - first["requests"]
    growth = last["dentry_bytes"] - first["dentry_bytes"]
    summary = {
        "ok": ok,
        "seconds": round(secs, 1),
        "requests": reqs,
        "req_per_s": round(reqs / secs, 1) if secs else None,
        "dentry_start_bytes": first["dentry_bytes"],
        "dentry_end_bytes": last["dentry_bytes"],
        "dentry_growth_bytes": growth,
        "dentry_growth_objs": last["dentry_objs"] - first["dentry_objs"],
        "negative_growth": last["nr_negative"] - first["nr_negative"],
        "growth_bytes_per_request": round(growth / reqs, 1) if reqs else None,
        "growth_bytes_per_30s": round(growth * 30 / secs) if secs else None,
        "sreclaimable_growth_kib": last["sreclaimable_kib"] - first["sreclaimable_kib"],
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

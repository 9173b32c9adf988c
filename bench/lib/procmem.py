#!/usr/bin/python3
"""procmem.py USER OUT [INTERVAL]: samples the memory of every process of USER, straight from the
kernel (no kechi), every INTERVAL seconds (default 1) until SIGTERM.

Runs inside the test machine (the benchmarks start it as a transient unit), so that samples are
not thinned by slow round trips from the host and see the same pid namespace as the app.
Appends one CSV line per process per sample to OUT (header written first):
    t,pid,ppid,rss_kb,pss_kb,uss_kb,shared_kb
t: seconds since start; uss = Private_Clean + Private_Dirty; shared = Shared_Clean + Shared_Dirty
(= RSS - USS), all from /proc/PID/smaps_rollup. A process that ends between listing and reading is
skipped. Independent of kechi on purpose: the same figures for every policy, kechi's or not.
"""
import os
import pwd
import signal
import sys
import time


def ppid_of(pid):
    with open("/proc/{}/stat".format(pid)) as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def rollup(pid):
    v = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0, "Shared_Clean": 0, "Shared_Dirty": 0}
    with open("/proc/{}/smaps_rollup".format(pid)) as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in v:
                v[k] = int(rest.split()[0])
    return v


def main():
    uid = pwd.getpwnam(sys.argv[1]).pw_uid
    out = sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    nxt = t0
    with open(out, "w", buffering=1) as f:
        f.write("t,pid,ppid,rss_kb,pss_kb,uss_kb,shared_kb\n")
        while True:
            t = time.monotonic() - t0
            rows = []
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    if os.stat("/proc/" + d).st_uid != uid:
                        continue
                    pid = int(d)
                    r = rollup(pid)
                    pp = ppid_of(pid)
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile, or a kernel thread without smaps
                if r["Rss"] == 0:
                    continue
                uss = r["Private_Clean"] + r["Private_Dirty"]
                rows.append("{:.2f},{},{},{},{},{},{}\n".format(
                    t, pid, pp, r["Rss"], r["Pss"], uss, r["Shared_Clean"] + r["Shared_Dirty"]))
            f.write("".join(rows))
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))


if __name__ == "__main__":
    main()

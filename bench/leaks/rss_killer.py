#!/usr/bin/python3
"""rss_killer.py USER PATTERN LIMIT_MB INTERVAL LOG: an external worker killer in the manner of
puma_worker_killer: every INTERVAL seconds, reads VmRSS from /proc/PID/status of each process of
USER whose command line contains PATTERN, and sends SIGTERM to each one above LIMIT_MB MiB.

It knows nothing of kechi: the worker just exits, and whoever supervises it (kechid here) sees an
unplanned exit and starts a new one. That is the comparison with kechi's own recycling, which
starts the replacement first. Each process is signalled once (it may take a moment to exit).
Appends "t,pid,rss_kb" per kill to LOG (t: seconds since start). Runs until SIGTERM.
"""
import os
import pwd
import signal
import sys
import time


def rss_kb(pid):
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    uid = pwd.getpwnam(sys.argv[1]).pw_uid
    pattern = sys.argv[2].encode()
    limit_kb = int(sys.argv[3]) * 1024
    interval = float(sys.argv[4])
    log = sys.argv[5]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    killed = set()
    t0 = time.monotonic()
    with open(log, "w", buffering=1) as f:
        f.write("t,pid,rss_kb\n")
        while True:
            time.sleep(interval)
            for d in os.listdir("/proc"):
                if not d.isdigit() or int(d) in killed:
                    continue
                try:
                    if os.stat("/proc/" + d).st_uid != uid:
                        continue
                    with open("/proc/{}/cmdline".format(d), "rb") as c:
                        if pattern not in c.read():
                            continue
                    rss = rss_kb(d)
                    if rss > limit_kb:
                        os.kill(int(d), signal.SIGTERM)
                        killed.add(int(d))
                        f.write("{:.2f},{},{}\n".format(time.monotonic() - t0, d, rss))
                except OSError:
                    continue  # gone meanwhile


if __name__ == "__main__":
    main()

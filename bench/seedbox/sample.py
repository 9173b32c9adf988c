#!/usr/bin/python3
"""bench/seedbox/sample.py — runs in the test machine: one CSV line a second of the box's memory.

  sample.py OUT.csv SECONDS NAME=CGROUP_DIR...

Columns: unix_ms, used_mib (MemTotal - MemAvailable), swap_mib (SwapTotal - SwapFree), oom_kill
(/proc/vmstat, cumulative), psi_some10 (/proc/pressure/memory "some avg10", %), then per app NAME
its cgroup's memory.current and memory.swap.current (MiB) and pids.current (its processes; 0 when
the cgroup is gone: a stopped app). The cgroup is the app's whole unit or slice, supervisor
included (the plain service's master, or kechid and its worker scopes).
"""
import sys
import time


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def meminfo():
    m = {}
    for line in read("/proc/meminfo").splitlines():
        k, v = line.split(":", 1)
        m[k] = int(v.split()[0])
    return m


def num(path):
    v = read(path, "0").strip()
    return 0 if v in ("", "max") else int(v)


def main():
    out, secs, apps = sys.argv[1], float(sys.argv[2]), [a.split("=", 1) for a in sys.argv[3:]]
    cols = ["unix_ms", "used_mib", "swap_mib", "oom_kill", "psi_some10"]
    for name, _ in apps:
        cols += [name + "_mib", name + "_swap_mib", name + "_pids"]
    end = time.time() + secs
    with open(out, "w") as f:
        f.write(",".join(cols) + "\n")
        nxt = time.time()
        while time.time() < end:
            m = meminfo()
            vm = dict(line.split() for line in read("/proc/vmstat").splitlines())
            psi = read("/proc/pressure/memory").split()
            some10 = next((p.split("=")[1] for p in psi if p.startswith("avg10=")), "0")
            row = [str(int(time.time() * 1000)), "%.1f" % ((m["MemTotal"] - m["MemAvailable"]) / 1024),
                   "%.1f" % ((m["SwapTotal"] - m["SwapFree"]) / 1024), vm.get("oom_kill", "0"), some10]
            for _, d in apps:
                row += ["%.1f" % (num(d + "/memory.current") / 2**20), "%.1f" % (num(d + "/memory.swap.current") / 2**20),
                        str(num(d + "/pids.current"))]
            f.write(",".join(row) + "\n")
            f.flush()
            nxt += 1
            time.sleep(max(0.0, nxt - time.time()))


if __name__ == "__main__":
    main()

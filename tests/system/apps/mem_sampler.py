#!/usr/bin/python3
"""Samples `kechictl status APP --json` in the test machine every INTERVAL seconds until stopped,
one JSON line per sample appended to OUT (for t_mem_*.sh, which run it as a transient unit):
  {"t": seconds since start, "workers": [{"serial", "pid", "state", "rss", "pss", "uss",
   "shared_percent", "cgroup", "processes", "memory_bytes"}], "error": "..." when kechictl failed}

usage: mem_sampler.py APP OUT [INTERVAL]
"""
import json
import signal
import subprocess
import sys
import time


def main():
    app, out = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    nxt = t0
    with open(out, "a", buffering=1) as f:
        while True:
            rec = {"t": round(time.monotonic() - t0, 2)}
            try:
                p = subprocess.run(["kechictl", "status", app, "--json"], capture_output=True, timeout=10)
                if p.returncode != 0:
                    raise RuntimeError("exit {}: {}".format(p.returncode, p.stderr.decode(errors="replace").strip()))
                s = json.loads(p.stdout)
                rec["workers"] = []
                for w in s.get("workers", []):
                    m = w.get("memory") or {}
                    rec["workers"].append({
                        "serial": w.get("serial"), "pid": w.get("pid"), "state": w.get("state"),
                        "rss": m.get("rss"), "pss": m.get("pss"), "uss": m.get("uss"),
                        "shared_percent": m.get("shared_percent"), "cgroup": m.get("cgroup"),
                        "processes": m.get("processes"), "memory_bytes": w.get("memory_bytes"),
                    })
            except Exception as e:  # noqa: BLE001 — recorded, the next sample may work
                rec["error"] = str(e)[:300]
            f.write(json.dumps(rec) + "\n")
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))


if __name__ == "__main__":
    main()

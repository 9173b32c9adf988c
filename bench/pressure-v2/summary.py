#!/usr/bin/python3
"""bench/pressure-v2/summary.py LOG...: one row per t_pressure_v2 run found in LOGs (the output of
tests/system/t_pressure_v2.sh or bench/pressure-v2/run.sh, several runs a file allowed): served,
failed (by kind), wrk's latency tail, the least memory available, the most swap used and the
machine's highest `some avg10` in the 5-7 s samples, and the pressure recycles. Markdown on stdout.
"""
import re
import sys


def runs(text):
    """Splits a log at each scenario's banner line."""
    parts = re.split(r"^=== t_pressure_v2 .*$", text, flags=re.M)
    return [p for p in parts[1:] if "with-trigger" in p]


def row(name, log):
    lat = re.search(r"latency_us: p99=(\d+) p999=(\d+) max=(\d+)", log)
    step = re.search(r"step 'with-trigger': served (\d+), failed (\d+);.*pressure recycles (\d+); least memory available (\d+) MiB", log)
    kinds = re.search(r"Socket errors: (.*)", log)
    swap = [int(m) for m in re.findall(r"swap used (\d+) MiB", log)]
    psi = [float(m) for m in re.findall(r"\(the machine: ([0-9.]+)%\)", log)]
    if not (lat and step):
        return None
    ms = [int(v) / 1000 for v in lat.groups()]
    return "| {} | {} | {}{} | {:.0f} | {:.0f} | {:.0f} | {} | {} | {:.1f} | {} |".format(
        name, step.group(1), step.group(2), " ({})".format(kinds.group(1)) if kinds and step.group(2) != "0" else "",
        ms[0], ms[1], ms[2], step.group(4), max(swap, default=0), max(psi, default=0.0), step.group(3))


def main():
    print("| run | served | failed | p99 ms | p99.9 ms | max ms | least available MiB | most swap used MiB | machine's some avg10, highest % | pressure recycles |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in sys.argv[1:]:
        with open(path, errors="replace") as f:
            text = f.read()
        for i, log in enumerate(runs(text), 1):
            r = row("{} #{}".format(path.rsplit("/", 1)[-1], i), log)
            if r:
                print(r)


if __name__ == "__main__":
    main()

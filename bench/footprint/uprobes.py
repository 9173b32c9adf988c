#!/usr/bin/python3
"""Counts how often each function of a program runs, with the kernel's uprobes (run as root,
inside the benchmark's box: bench/footprint/link-order.sh). No debugger: the program runs at
nearly full speed, forks and all, and a probe costs a trap into the kernel per call.

    uprobes.py add PROGRAM FUNCTIONS   FUNCTIONS: "ADDRESS FILE_OFFSET" lines (hex)
    uprobes.py counts                  "ADDRESS HITS" lines, hits since `add`
    uprobes.py remove                  every probe gone, tracefs unmounted

The probes go in their own group (kechi_order) and are enabled in their own tracing instance
with tracing off, so nothing is written to any trace buffer and the machine's own tracing
settings are not touched; `remove` takes them all out again (uprobes outlive the process that
made them).
"""

import os
import sys

TRACEFS = "/run/kechi-order-tracefs"
GROUP = "kechi_order"
INSTANCE = f"{TRACEFS}/instances/kechi-order"


def mounted():
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == TRACEFS for line in f)


def add(program, functions):
    os.makedirs(TRACEFS, exist_ok=True)
    if not mounted():
        if os.system(f"mount -t tracefs nodev {TRACEFS}") != 0:
            sys.exit("uprobes: cannot mount tracefs")
    os.makedirs(INSTANCE, exist_ok=True)
    with open(f"{INSTANCE}/tracing_on", "w") as f:
        f.write("0")
    added = 0
    fd = os.open(f"{TRACEFS}/uprobe_events", os.O_WRONLY | os.O_APPEND)
    with open(functions) as f:
        for line in f:
            addr, off = line.split()
            try:  # one write per probe: a probe the kernel refuses must not take others along
                os.write(fd, f"p:{GROUP}/f{addr} {program}:0x{off}\n".encode())
                added += 1
            except OSError:
                pass
    os.close(fd)
    with open(f"{INSTANCE}/events/{GROUP}/enable", "w") as f:
        f.write("1")
    print(f"uprobes: {added} probes on {program}", file=sys.stderr)


def counts():
    with open(f"{TRACEFS}/uprobe_profile") as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and p[1].startswith("f"):
                print(p[1][1:], p[2])


def remove():
    if not mounted():
        return
    enable = f"{INSTANCE}/events/{GROUP}/enable"
    if os.path.exists(enable):
        with open(enable, "w") as f:
            f.write("0")
    names = []
    with open(f"{TRACEFS}/uprobe_events") as f:
        for line in f:
            name = line.split()[0].split(":", 1)[1] if ":" in line.split()[0] else ""
            if name.startswith(f"{GROUP}/"):
                names.append(name)
    fd = os.open(f"{TRACEFS}/uprobe_events", os.O_WRONLY | os.O_APPEND)
    for n in names:
        try:
            os.write(fd, f"-:{n}\n".encode())
        except OSError as e:
            print(f"uprobes: cannot remove {n}: {e}", file=sys.stderr)
    os.close(fd)
    if os.path.isdir(INSTANCE):
        os.rmdir(INSTANCE)
    os.system(f"umount {TRACEFS}")


def main(argv):
    if argv[:1] == ["add"] and len(argv) == 3:
        add(argv[1], argv[2])
    elif argv == ["counts"]:
        counts()
    elif argv == ["remove"]:
        remove()
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

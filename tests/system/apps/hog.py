#!/usr/bin/python3
"""A worker that eats memory in steps, for kechi's memory-limit tests.

HOG_TRIGGER = "signal" (default): idle until SIGUSR1, then allocate
            = "start": allocate at once
HOG_STEP_MB     size of one step (default 4), every page of it written
HOG_INTERVAL    seconds between steps (default 0.05)
HOG_LIMIT_MB    stop growing at this total (default 4096) and stay there
Each step is reported on stdout ("hog: 12 MiB").
"""
import os
import signal
import sys
import time

go = os.environ.get("HOG_TRIGGER", "signal") == "start"


def on_usr1(*_):
    global go
    go = True


def main():
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    step = int(os.environ.get("HOG_STEP_MB", "4")) << 20
    interval = float(os.environ.get("HOG_INTERVAL", "0.05"))
    limit = int(os.environ.get("HOG_LIMIT_MB", "4096")) << 20
    print("hog: worker {} pid {} waiting ({})".format(
        os.environ.get("KECHI_WORKER", "?"), os.getpid(),
        "allocating" if go else "SIGUSR1 starts it"), flush=True)
    while not go:
        signal.pause()
    kept = []
    total = 0
    while True:
        if total < limit:
            kept.append(b"\x01" * step)  # bytes filled by memset: every page is touched
            total += step
            print("hog: {} MiB".format(total >> 20), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()

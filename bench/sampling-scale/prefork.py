#!/usr/bin/python3
"""A worker for the sampling benchmark: a prefork master and its children, all asleep.

kechid's cost of watching memory is what is measured, so the worker itself must cost nothing
once started: the master touches some memory, forks, and every process then waits in pause()
until SIGTERM. The memory is real and laid out like a prefork app server's: what the master
wrote before forking is copy-on-write shared with every child, what a child writes after is
its own.

PREFORK_CHILDREN     children of the master (default 0: a single-process worker)
PREFORK_SHARED_MB    MiB the master writes before forking (default 4)
PREFORK_PRIVATE_MB   MiB each child writes after forking (default 1)
PREFORK_GROW         "first:MB": the master of the first worker its kechid starts writes MB MiB
                     more after forking (its private memory grows: one worker of the app near a
                     threshold; serials go on growing across restarts, so "first" is not a serial)

READY=1 goes to NOTIFY_SOCKET once every child runs. On SIGTERM the master signals its children,
waits for them, and exits; a child exits on SIGTERM.
"""
import os
import signal
import socket
import sys
import time


def touch(mb):
    return bytearray(b"\x01") * (mb << 20)


def first_of_kechid():
    """Whether this is the first master its kechid (the parent) started: the first to create a
    flag file named after kechid's pid."""
    try:
        os.close(os.open("/tmp/bench-prefork-grow.{}".format(os.getppid()), os.O_CREAT | os.O_EXCL, 0o644))
        return True
    except FileExistsError:
        return False


def notify(msg):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.send(msg.encode())


def main():
    children = int(os.environ.get("PREFORK_CHILDREN", "0") or "0")
    shared = touch(int(os.environ.get("PREFORK_SHARED_MB", "4") or "0"))
    private_mb = int(os.environ.get("PREFORK_PRIVATE_MB", "1") or "0")
    kids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            mine = touch(private_mb)
            while True:
                signal.pause()
        kids.append(pid)
    grow = os.environ.get("PREFORK_GROW", "")
    extra = None
    if grow.startswith("first:") and first_of_kechid():
        extra = touch(int(grow.split(":")[1]))

    def stop(_sig, _frame):
        for k in kids:
            try:
                os.kill(k, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for k in kids:
            try:
                os.waitpid(k, 0)
            except ChildProcessError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    time.sleep(0.1)
    notify("READY=1")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()

#!/usr/bin/python3 -S
"""A small, fast-starting, graceful web worker for kechi's fault scenarios.

It starts in tens of milliseconds (no site, no http.server), so a scenario can recycle it thousands
of times, and it never drops a request it has accepted: on SIGTERM it finishes the request in hand,
stops accepting (the connections still queued stay in the shared listening socket for the other
workers) and exits.

- Listens on the sockets passed as fds 3.. (LISTEN_FDS, LISTEN_PID = our pid).
- Sends READY=1 on $NOTIFY_SOCKET once it listens.
- Answers every request with 200 "hello from worker N pid P" and "Connection: close", one at a
  time (so at any moment it holds at most one accepted connection).
- SIGUSR1: fills $TMPDIR (file "fill", 1 MiB at a time) until the filesystem refuses, then keeps
  serving; prints how much it wrote.
- SIGUSR2: from now on ignores SIGTERM (a worker that will not stop: only SIGKILL ends it).
- KT_TINY_READY_DELAY=SECONDS: waits that long before READY=1 (a replacement that takes a moment
  to get ready, so a fault can land while it starts).
"""
import errno
import os
import select
import signal
import socket
import sys
import time

stopping = False
ignore_term = False


def on_term(*_):
    global stopping
    if not ignore_term:
        stopping = True


def on_usr2(*_):
    global ignore_term
    ignore_term = True
    print("tiny: worker {} now ignores SIGTERM".format(os.environ.get("KECHI_WORKER", "?")), flush=True)


def on_usr1(*_):
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fill")
    written = 0
    chunk = b"\0" * (1 << 20)
    try:
        with open(path, "ab") as f:
            while True:
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as e:
        print("tiny: worker {} filled {} with {} bytes: {}".format(
            os.environ.get("KECHI_WORKER", "?"), path, written, e.strerror), flush=True)


def sockets():
    n = int(os.environ.get("LISTEN_FDS", "0") or "0")
    if n < 1 or os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("tiny: no listening sockets (LISTEN_FDS/LISTEN_PID)")
    return [socket.socket(fileno=3 + i) for i in range(n)]


def notify_ready():
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1", path)
        except OSError as e:  # as sd_notify(3): no listener (kechid restarting) is no reason to die
            print("tiny: cannot notify {}: {}".format(path, e), file=sys.stderr, flush=True)


def serve(conn, body):
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(4096)
        if not part:
            return
        data += part
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def main():
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    listeners = sockets()
    for s in listeners:
        s.setblocking(False)
    body = "hello from worker {} pid {}\n".format(os.environ.get("KECHI_WORKER", "?"), os.getpid()).encode()
    time.sleep(float(os.environ.get("KT_TINY_READY_DELAY", "0") or "0"))
    notify_ready()
    while not stopping:
        # a short timeout: SIGTERM only sets a flag (so it can never cut a request short), and the
        # loop looks at it at least this often
        ready, _, _ = select.select(listeners, [], [], 0.05)
        for s in ready:
            try:
                conn, _ = s.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ECONNABORTED):
                    continue  # another worker took it
                raise
            with conn:
                conn.setblocking(True)
                try:
                    serve(conn, body)
                except OSError:
                    pass  # the client went away


if __name__ == "__main__":
    main()

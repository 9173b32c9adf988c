#!/usr/bin/python3
"""A web worker whose memory the memory scenarios control (t_mem_*.sh).

Serves HTTP/1.1 (keep-alive) on every inherited socket: LISTEN_FDS (+ LISTEN_PID), else
SERVER_STARTER_PORT. Sends READY=1 to NOTIFY_SOCKET once it listens.

MEM_START_MB    comma list: worker N (KECHI_WORKER) allocates the Nth figure, in MiB, before it
                listens ("30,60,90": workers 1, 2, 3 hold 30, 60, 90 MiB)
MEM_START_REST  MiB for workers beyond that list (default 0)
MEM_LEAK_KB     KiB kept forever per request served (default 0): a leak of a fixed amount
MEM_DELAY_MS    milliseconds each request takes (default 0)
MEM_LEAK_RANDOM 1: half of each kept block is random bytes (default: all 0x01). Compressed swap
                (zram) keeps a same-filled page as a few bytes, so a leak of those costs it
                nothing; half random packs about 2:1, as a real heap does
MEM_TOUCH_KB    KiB of what the worker holds that each request reads again, one byte a page, at
                random places (default 0): a cache that is read as well as written, so pages that
                went to swap come back in (swap-in stalls) as they would in a real app

GET /            200 "worker N pid P held X KiB"
GET /grow?mb=M   allocates M MiB more in 4 MiB steps, every page written, and keeps it (a hog)

On SIGTERM it stops accepting, answers each request still in flight with "Connection: close",
and exits once its connections are gone (20 s at most): a planned stop drops no request.
Every allocation is written to (bytes made by b"\\x01" * n), so it is resident and private.
"""
import http.server
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import urllib.parse

WORKER = os.environ.get("KECHI_WORKER", "?")
stopping = threading.Event()
kept = []
kept_lock = threading.Lock()
kept_bytes = 0
active = 0
active_lock = threading.Lock()


def keep(nbytes):
    global kept_bytes
    if LEAK_RANDOM:
        half = nbytes // 2
        block = os.urandom(half) + b"\x01" * (nbytes - half)
    else:
        block = b"\x01" * nbytes
    with kept_lock:
        kept.append(block)
        kept_bytes += nbytes


def start_size():
    sizes = [s.strip() for s in os.environ.get("MEM_START_MB", "").split(",") if s.strip()]
    try:
        n = int(WORKER)
    except ValueError:
        n = 0
    if 1 <= n <= len(sizes):
        return int(sizes[n - 1])
    return int(os.environ.get("MEM_START_REST", "0") or "0")


def inherited_sockets():
    fds = int(os.environ.get("LISTEN_FDS", "0") or "0")
    pid = os.environ.get("LISTEN_PID")
    if fds > 0 and (pid is None or pid == str(os.getpid())):
        return [socket.socket(fileno=3 + i) for i in range(fds)]
    starter = os.environ.get("SERVER_STARTER_PORT")
    if starter:
        return [socket.socket(fileno=int(p.rsplit("=", 1)[1])) for p in starter.split(";") if p]
    print("mem_app: no inherited socket (LISTEN_FDS or SERVER_STARTER_PORT)", file=sys.stderr, flush=True)
    sys.exit(2)


LEAK = int(os.environ.get("MEM_LEAK_KB", "0") or "0") << 10
LEAK_RANDOM = os.environ.get("MEM_LEAK_RANDOM", "") == "1"
TOUCH = int(os.environ.get("MEM_TOUCH_KB", "0") or "0") << 10


def touch(nbytes):
    """Reads one byte a page of nbytes of the kept blocks, from random places."""
    with kept_lock:
        blocks = list(kept)
    if not blocks:
        return 0
    total, left = 0, nbytes
    while left > 0:
        b = random.choice(blocks)
        start = random.randrange(0, len(b)) & ~4095
        pages = range(start, min(len(b), start + left), 4096)
        for i in pages:
            total += b[i]
        left -= max(1, len(pages)) * 4096
    return total
DELAY = int(os.environ.get("MEM_DELAY_MS", "0") or "0") / 1000.0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/grow":
            mb = int(urllib.parse.parse_qs(url.query).get("mb", ["64"])[0])
            print("mem_app: worker {} pid {} growing by {} MiB".format(WORKER, os.getpid(), mb), flush=True)
            for done in range(0, mb, 4):
                keep(min(4, mb - done) << 20)
                time.sleep(0.01)
        if DELAY:
            time.sleep(DELAY)
        if LEAK:
            keep(LEAK)
        if TOUCH:
            touch(TOUCH)
        body = "worker {} pid {} held {} KiB\n".format(WORKER, os.getpid(), kept_bytes >> 10).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if stopping.is_set():
            self.send_header("Connection", "close")  # sets close_connection
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def serve_connection(conn, addr):
    global active
    try:
        Handler(conn, addr or ("unix", 0), None)
    except Exception:  # a client that went away
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass
        with active_lock:
            active -= 1


def notify_ready():
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1", path)
        except OSError as e:
            print("mem_app: cannot notify {}: {}".format(path, e), file=sys.stderr, flush=True)


def main():
    global active
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    mb = start_size()
    for done in range(0, mb, 4):
        keep(min(4, mb - done) << 20)
    socks = inherited_sockets()
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("mem_app: worker {} pid {} holds {} MiB, listening on {} sockets".format(
        WORKER, os.getpid(), kept_bytes >> 20, len(socks)), flush=True)
    notify_ready()
    while not stopping.is_set():
        for key, _ in sel.select(timeout=0.2):
            try:
                conn, addr = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            if conn.family in (socket.AF_INET, socket.AF_INET6):  # no 40 ms delayed-ACK stalls
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with active_lock:
                active += 1
            threading.Thread(target=serve_connection, args=(conn, addr), daemon=True).start()
    for s in socks:
        sel.unregister(s)
        s.close()  # our descriptor only: the listening socket lives on in kechid and the others
    end = time.monotonic() + 20
    while time.monotonic() < end:
        with active_lock:
            if active == 0:
                break
        time.sleep(0.05)
    print("mem_app: worker {} pid {} stopped ({} connections left)".format(WORKER, os.getpid(), active), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A fragmentation-heavy HTTP worker for bench/allocator (frag.rb does the same work in Ruby).

Serves HTTP/1.1 keep-alive on the socket passed as fd 3 (LISTEN_FDS, as kechid passes it), or on
127.0.0.1:$PORT when run by hand. One thread per connection, so a load generator with C
connections makes C threads, each of which glibc malloc gives an arena of its own.

Per request (GET any path), the same in both interpreters:
  - makes FRAG_OBJECTS objects (1 request in FRAG_HEAVY_EVERY makes ten times as many), each a
    small list holding a bytes payload whose size is log-uniform between 16 B and 32 KiB, so
    sizes from every malloc size class are interleaved;
  - keeps about 1 in FRAG_KEEP_EVERY of them in a process-wide cache of FRAG_CACHE_SLOTS slots,
    at a random slot: the object that was there is dropped. The cache is the long-lived data,
    scattered among the short-lived rest, and it churns forever;
  - drops the rest when the request ends and answers "ok N" (N = requests served).
Every FRAG_COUNT_EVERY requests it writes the number served, as decimal text, at offset 0 of
FRAG_COUNT_FILE (when set): that is how the sampler plots memory against requests without
asking the worker anything over HTTP.
"""
import math
import os
import random
import signal
import socket
import sys
import threading

OBJECTS = int(os.environ.get("FRAG_OBJECTS", "400"))
HEAVY_EVERY = int(os.environ.get("FRAG_HEAVY_EVERY", "20"))
KEEP_EVERY = int(os.environ.get("FRAG_KEEP_EVERY", "50"))
CACHE_SLOTS = int(os.environ.get("FRAG_CACHE_SLOTS", "8192"))
COUNT_EVERY = int(os.environ.get("FRAG_COUNT_EVERY", "100"))
LN_MIN, LN_MAX = math.log(16), math.log(32768)

cache = [None] * CACHE_SLOTS
served = 0
served_lock = threading.Lock()
count_fd = None
if os.environ.get("FRAG_COUNT_FILE"):
    count_fd = os.open(os.environ["FRAG_COUNT_FILE"], os.O_WRONLY | os.O_CREAT, 0o644)


def work(rng, n):
    """The per-request allocation pattern described in the module doc."""
    made = []
    for i in range(n):
        size = int(math.exp(rng.uniform(LN_MIN, LN_MAX)))
        obj = [i, b"x" * size, "k%d" % i]
        made.append(obj)
        if rng.randrange(KEEP_EVERY) == 0:
            # A single list store: atomic under the GIL, no lock needed.
            cache[rng.randrange(CACHE_SLOTS)] = obj
    return len(made)


def count_request():
    global served
    with served_lock:
        served += 1
        n = served
    if count_fd is not None and n % COUNT_EVERY == 0:
        os.pwrite(count_fd, b"%-20d\n" % n, 0)
    return n


def serve(conn, seed):
    try:
        with conn:
            answer(conn, random.Random(seed))
    except OSError:  # the client went away mid-request (a load generator stopping)
        pass


def answer(conn, rng):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        _head, buf = buf.split(b"\r\n\r\n", 1)
        n = count_request()
        work(rng, OBJECTS * (10 if n % HEAVY_EVERY == 0 else 1))
        body = b"ok %d\n" % n
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))


def listening_socket():
    if int(os.environ.get("LISTEN_FDS", "0") or "0") > 0:
        return socket.socket(fileno=3)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
    s.listen(128)
    return s


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sock = listening_socket()
    print("frag.py: pid %d serving" % os.getpid(), file=sys.stderr, flush=True)
    seed = 0
    while True:
        conn, _ = sock.accept()
        seed += 1
        threading.Thread(target=serve, args=(conn, seed), daemon=True).start()


if __name__ == "__main__":
    main()

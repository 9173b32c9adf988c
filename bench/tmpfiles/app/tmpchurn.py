#!/usr/bin/python3
"""A temp-file churning HTTP worker for bench/tmpfiles.

Serves HTTP/1.1 keep-alive on the socket passed as fd 3 (LISTEN_FDS, as kechid passes it), or on
127.0.0.1:$PORT when run by hand; one thread per connection.
Per request (GET any path), unless CHURN=0: creates a temp file with a unique random name in
$TMPDIR (tempfile.mkstemp, as most code does), writes CHURN_BYTES bytes (default 4096) to it,
closes and deletes it. With CHURN=0 it only answers: the control run, which shows how much the
rest of the machine moves the dentry cache meanwhile.
Every COUNT_EVERY (100) requests it writes the number served, as decimal text, at offset 0 of
COUNT_FILE (when set), for the sampler.
"""
import os
import signal
import socket
import sys
import tempfile
import threading

CHURN = os.environ.get("CHURN", "1") != "0"
PAYLOAD = b"x" * int(os.environ.get("CHURN_BYTES", "4096"))
COUNT_EVERY = 100
served = 0
served_lock = threading.Lock()
count_fd = None
if os.environ.get("COUNT_FILE"):
    count_fd = os.open(os.environ["COUNT_FILE"], os.O_WRONLY | os.O_CREAT, 0o644)


def churn():
    fd, path = tempfile.mkstemp(prefix="req-")
    try:
        os.write(fd, PAYLOAD)
    finally:
        os.close(fd)
        os.unlink(path)


def count_request():
    global served
    with served_lock:
        served += 1
        n = served
    if count_fd is not None and n % COUNT_EVERY == 0:
        os.pwrite(count_fd, b"%-20d\n" % n, 0)
    return n


def answer(conn):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        _head, buf = buf.split(b"\r\n\r\n", 1)
        if CHURN:
            churn()
        body = b"ok %d\n" % count_request()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))


def serve(conn):
    try:
        with conn:
            answer(conn)
    except OSError:  # the client went away mid-request (a load generator stopping)
        pass


def listening_socket():
    if int(os.environ.get("LISTEN_FDS", "0") or "0") > 0:
        return socket.socket(fileno=3)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", int(os.environ.get("PORT", "8080"))))
    s.listen(128)
    return s


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sock = listening_socket()
    print("tmpchurn.py: pid %d serving, TMPDIR=%s, churn %s"
          % (os.getpid(), tempfile.gettempdir(), "on" if CHURN else "off"),
          file=sys.stderr, flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()

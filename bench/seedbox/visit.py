#!/usr/bin/python3
"""bench/seedbox/visit.py — runs in the test machine: the seed box's rare visitors.

  visit.py OUT.csv SECONDS PERIOD REQUESTS NAME=PORT...

Each app is visited every PERIOD seconds, the apps' visits spread evenly over the period (app i
first at i * PERIOD / n); a visit is REQUESTS requests one after the other, each on its own
connection ("Connection: close"), like a page and its few assets. One thread per app, so a slow
cold start delays no other app's visit. One CSV line per request: due_unix_ms, app, visit (its
number), seq (0 = the visit's first request: the cold start when the app was stopped), ttfb_ms
(connect to the first byte of the response), total_ms, outcome (the status code, or
connect/timeout/error).
"""
import socket
import sys
import threading
import time

lock = threading.Lock()


def request(port):
    t0 = time.monotonic()
    ttfb = None
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
    except OSError:
        return None, (time.monotonic() - t0) * 1000, "connect"
    try:
        s.settimeout(60)
        s.sendall(b"GET / HTTP/1.1\r\nHost: seed\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            if ttfb is None:
                ttfb = (time.monotonic() - t0) * 1000
            data += chunk
        total = (time.monotonic() - t0) * 1000
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "error"
        return ttfb, total, status
    except socket.timeout:
        return ttfb, (time.monotonic() - t0) * 1000, "timeout"
    except OSError:
        return ttfb, (time.monotonic() - t0) * 1000, "error"
    finally:
        s.close()


def visitor(f, name, port, first, period, end, n):
    k = 0
    due = first
    while due < end:
        time.sleep(max(0.0, due - time.time()))
        for seq in range(n):
            d = time.time()
            ttfb, total, outcome = request(port)
            with lock:
                f.write("%d,%s,%d,%d,%s,%.1f,%s\n" % (d * 1000, name, k, seq, "" if ttfb is None else "%.1f" % ttfb,
                                                      total, outcome))
                f.flush()
        k += 1
        due += period


def main():
    out, secs, period, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    apps = [a.split("=", 1) for a in sys.argv[5:]]
    start = time.time()
    end = start + secs
    with open(out, "w") as f:
        f.write("due_unix_ms,app,visit,seq,ttfb_ms,total_ms,outcome\n")
        threads = [threading.Thread(target=visitor, args=(f, name, int(port), start + i * period / len(apps), period, end, n))
                   for i, (name, port) in enumerate(apps)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A minimal web worker for kechi's system tests: answers every GET with 200 OK.

Where it listens, first match wins:
  LISTEN_FDS (+ LISTEN_PID = our pid)  the sockets passed as fds 3.. (systemd protocol): serves
                                      every one of them
  SERVER_STARTER_PORT                 "addr=fd;..." (Server::Starter protocol): serves every fd
  PORT                                binds 127.0.0.1:PORT itself, with SO_REUSEPORT so that
                                      several workers can share it
  (nothing)                           binds 127.0.0.1 on a free port
Each connection gets a thread of its own (a keep-alive client never blocks the others).
When NOTIFY_SOCKET is set it sends READY=1 once it listens.
"""
import http.server
import os
import signal
import socket
import socketserver
import sys
import threading


def inherited_sockets():
    fds = int(os.environ.get("LISTEN_FDS", "0") or "0")
    pid = os.environ.get("LISTEN_PID")
    if fds > 0 and (pid is None or pid == str(os.getpid())):
        return [socket.socket(fileno=3 + i) for i in range(fds)]
    starter = os.environ.get("SERVER_STARTER_PORT")
    if starter:
        return [socket.socket(fileno=int(p.rsplit("=", 1)[1])) for p in starter.split(";") if p]
    return []


def own_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", int(os.environ.get("PORT", "0") or "0")))
    s.listen(128)
    return s


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = "hello from worker {} pid {}\n".format(
            os.environ.get("KECHI_WORKER", "?"), os.getpid()
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format, *args):  # one quiet worker per scope: no access log
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        super().__init__(("", 0), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()


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
            print("hello: cannot notify {}: {}".format(path, e), file=sys.stderr, flush=True)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    servers = [Server(s) for s in inherited_sockets() or [own_socket()]]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("hello: worker {} pid {} listening on {}".format(
        os.environ.get("KECHI_WORKER", "?"), os.getpid(),
        ", ".join(str(s.server_address) for s in servers)), flush=True)
    notify_ready()
    try:
        servers[0].serve_forever()
    except SystemExit:
        pass


if __name__ == "__main__":
    main()

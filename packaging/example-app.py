"""kechi's example app: a plain HTTP server that answers every GET with
"hello from worker N" (N = $KECHI_WORKER).

Installed as /usr/share/kechi/example-app.py and run by /etc/kechi/example.toml.sample as
`python3 /usr/share/kechi/example-app.py [HOST:PORT]` (no #! line: the packages suggest
python3 but do not require it).
It needs nothing but python3, and shows what an app has to do to work well under kechi:

  * serve on the listening sockets it is given (systemd protocol: LISTEN_FDS and
    LISTEN_PID, the sockets are fds 3 and up), so that they outlive the worker and no
    connection is refused while workers are replaced; without any it binds
    127.0.0.1:8080 itself (or the HOST:PORT given as its only argument);
  * share those sockets with the other workers: they are switched to non-blocking so
    that a worker that loses the race for a connection goes back to waiting instead of
    hanging in accept();
  * say READY=1 on $NOTIFY_SOCKET once it serves (kechi's ready.mode = "notify");
  * on SIGTERM stop accepting, finish the requests in flight, and exit 0.
"""

import http.server
import os
import signal
import socket
import socketserver
import sys
import threading

SD_LISTEN_FDS_START = 3
FALLBACK = ("127.0.0.1", 8080)


def log(msg):
    print("example-app[worker {}]: {}".format(os.environ.get("KECHI_WORKER", "-"), msg),
          file=sys.stderr, flush=True)


def inherited_sockets():
    """The sockets passed by the systemd protocol (fds 3 .. 3+LISTEN_FDS-1), or []."""
    try:
        fds = int(os.environ.get("LISTEN_FDS", ""))
        pid = int(os.environ.get("LISTEN_PID", ""))
    except ValueError:
        return []
    if fds < 1 or pid != os.getpid():
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    # Not for our children (a CGI script, a subprocess): the fds are ours alone.
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    socks = []
    for i in range(fds):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) else str(fd)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log("fd {} ({}) is no socket: {}".format(fd, name, e))
            continue
        if sock.type != socket.SOCK_STREAM:
            log("fd {} ({}) is not a stream socket: not served".format(fd, name))
            sock.detach()
            continue
        socks.append(sock)
    if not socks:
        log("LISTEN_FDS={} but no stream socket among them".format(fds))
        sys.exit(1)
    return socks


def own_socket(host, port):
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # several workers bind the same port: the kernel spreads connections over them
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def parse_address(arg):
    host, sep, port = arg.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit("usage: example-app.py [HOST:PORT]")
    return host.strip("[]") or FALLBACK[0], int(port)


def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), path)
    except OSError as e:
        log("cannot notify {}: {}".format(path, e))


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "kechi-example"
    # one request per connection: a worker told to stop has no idle keep-alive
    # connections to wait for
    protocol_version = "HTTP/1.0"
    timeout = 30

    def do_GET(self):
        body = "hello from worker {}\n".format(os.environ.get("KECHI_WORKER", "?")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.send_response(200)
        self.end_headers()

    def address_string(self):
        # a Unix-socket peer has no address
        return str(self.client_address[0]) if self.client_address else "local"

    def log_message(self, format, *args):  # no access log in the journal
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # wait for the requests in flight when closing
    daemon_threads = False
    block_on_close = True

    def __init__(self, sock):
        super().__init__(FALLBACK, Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()

    def server_bind(self):  # the socket is bound already
        pass

    def handle_error(self, request, client_address):
        log("error while serving a request: {}".format(sys.exc_info()[1]))


def main():
    if len(sys.argv) > 2:
        raise SystemExit("usage: example-app.py [HOST:PORT]")
    socks = inherited_sockets()
    if not socks:
        addr = parse_address(sys.argv[1]) if len(sys.argv) == 2 else FALLBACK
        socks = [own_socket(*addr)]
        log("no socket passed (LISTEN_FDS); listening on {}:{}".format(*addr))
    servers = []
    for sock in socks:
        # Every worker waits on the same socket and all of them wake up for a connection;
        # those that lose the race must get EAGAIN, not block in accept().
        sock.setblocking(False)
        servers.append(Server(sock))

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    # one thread per socket (a unit may pass several: a Unix socket and TCP ports)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.5})
               for s in servers]
    for t in threads:
        t.start()
    notify("READY=1\nSTATUS=serving on {} socket(s)".format(len(servers)))
    while not stopping.wait(1):
        pass
    notify("STOPPING=1")
    for s in servers:
        # the loops end between two connections, never in the middle of one
        s.shutdown()
    for s in servers:
        # waits for the requests in flight; closes only this process's copy of the socket:
        # the other workers and kechid keep it open
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

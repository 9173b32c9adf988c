"""A trivial WSGI app for kechi's zero-downtime scenarios (gunicorn through LISTEN_FDS):
answers every request with 200 and the worker that served it."""
import os


def app(environ, start_response):
    body = "hello from worker {} pid {}\n".format(os.environ.get("KECHI_WORKER", "?"), os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

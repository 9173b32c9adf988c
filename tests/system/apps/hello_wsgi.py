"""A trivial WSGI app for kechi's zero-downtime scenarios (gunicorn through LISTEN_FDS):
answers every request with 200, the worker that served it and $KT_GENERATION."""
import os


def app(environ, start_response):
    body = "hello from worker {} pid {} generation {}\n".format(
        os.environ.get("KECHI_WORKER", "?"), os.getpid(), os.environ.get("KT_GENERATION", "?")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""The seed box's WSGI app (bench/seedbox), for gunicorn and uWSGI: at import it builds SEED_MB
MiB of data (a framework, templates, caches; half of each MiB random, half repeated text, so that
compressed swap packs it about 2:1 as it does a real heap), then answers every request with a
short text."""
import os

_DATA = [bytearray(os.urandom(1 << 19) + b"d" * (1 << 19)) for _ in range(int(os.environ.get("SEED_MB", "0")))]


def app(environ, start_response):
    body = "seed wsgi: worker {} pid {}\n".format(os.environ.get("KECHI_WORKER", "-"), os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

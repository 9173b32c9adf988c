"""bench/slowload's WSGI app: tests/system/apps/hello_wsgi.py's answer, but the module takes 1 s
to import (as a real app loading its modules, config and connections would)."""
import os
import time

time.sleep(1)


def app(environ, start_response):
    body = "hello from worker {} pid {} generation {}\n".format(
        os.environ.get("KECHI_WORKER", "?"), os.getpid(), os.environ.get("KT_GENERATION", "?")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

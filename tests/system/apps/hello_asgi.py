"""A trivial ASGI app for kechi's compatibility matrix (uvicorn through --fd): answers every request
with 200, the worker that served it and $KT_GENERATION."""
import os
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = "hello from worker {} pid {} generation {}\n".format(
        os.environ.get("KECHI_WORKER", "?"), os.getpid(), os.environ.get("KT_GENERATION", "?")).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

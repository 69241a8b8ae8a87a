"""`python -m pipeline serve`: a logged model over HTTP, as `mlflow models serve` serves it,
with a limit on what one request may send.

The app is MLflow's own scoring server (mlflow.pyfunc.scoring_server.init: FastAPI; the same
/invocations, /ping, /health and /version) run by uvicorn in this process, as `mlflow models
serve --env-manager local` runs it. MLflow reads any body whole and has no size option, and
its error for a body that is not JSON quotes the body (several times its size). `BodyLimit`
sits in front of it:
- a body over the limit (its Content-Length, or the bytes streamed) is refused with 413
  before it is read whole, and never parsed;
- a JSON body that does not parse, or a CSV body that is not UTF-8, is a short 400 here;
- any other error response longer than MAX_ERROR_BYTES (one that quotes the request) is cut
  to its error code and the start of its message.
"""

from __future__ import annotations

import asyncio
import json
import re

MB = 1_000_000
MAX_ERROR_BYTES = 16_384  # an error of MLflow's or the pyfunc's; longer ones quote the input
MESSAGE_CHARS = 300  # of a cut error message


def serve(model: str, host: str, port: int, max_request_mb: float) -> None:
    """Load `model` (a models:/ URI or an MLflow Model folder) and serve it until stopped."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from pipeline.serving.predict import _load_registered as load_pyfunc

    app = BodyLimit(scoring_server.init(load_pyfunc(model)), int(max_request_mb * MB))
    print(f"serving {model} on http://{host}:{port}/invocations (bodies up to {max_request_mb} MB)")
    uvicorn.run(app, host=host, port=port, log_level="info")


class BodyLimit:
    """ASGI middleware: a request body of at most `max_bytes`, checked before the app sees it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, self._too_large(int(declared)))
        body = await self._read(receive)
        if body is None:
            return await self._refuse(send, 413, self._too_large(None))
        problem = await asyncio.to_thread(unparseable, body, headers.get(b"content-type", b""))
        if problem:
            return await self._refuse(send, 400, problem)
        await self.app(scope, _replay(body, receive), ShortErrors(send))

    def _too_large(self, size: int | None) -> str:
        got = "" if size is None else f"{size / MB:.1f} MB, "
        return (
            f"request body too large: {got}more than serving.max_request_mb "
            f"({self.max_bytes / MB:g} MB); send fewer or smaller images per request"
        )

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_bytes (the rest is left unread)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        code = "RESOURCE_LIMIT_EXCEEDED" if status == 413 else "BAD_REQUEST"
        body = json.dumps({"error_code": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        # close: the rest of a refused body is never read, so the connection cannot be reused
        headers += [(b"connection", b"close")] if status == 413 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def unparseable(body: bytes, content_type: bytes) -> str:
    """Why MLflow could not read `body` of this type, in one short line; "" if it can.
    JSON is parsed here once more: MLflow's own error for bad JSON quotes the whole body."""
    mime = content_type.split(b";")[0].strip().lower()
    if mime == b"application/json":
        try:
            json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            where = f" at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            return f"the body is not JSON{where} ({type(exc).__name__}); send a JSON request"
    elif mime == b"text/csv":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"the CSV body is not UTF-8 text (byte {exc.start})"
    return ""


def _replay(body: bytes, receive):
    """A receive() that gives the body read already, then waits on the client as before."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class ShortErrors:
    """An ASGI send() that passes responses on, but cuts an error body longer than
    MAX_ERROR_BYTES to its error code and the start of its message."""

    def __init__(self, send):
        self.send, self.start, self.head, self.size = send, None, b"", 0

    async def __call__(self, message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message  # held until the body's size is known
            return None
        if self.start is None or message["type"] != "http.response.body":
            return await self.send(message)
        body = message.get("body", b"")
        self.size += len(body)
        if len(self.head) <= MAX_ERROR_BYTES:
            self.head += body[: MAX_ERROR_BYTES + 1 - len(self.head)]
        if not message.get("more_body", False):
            await self._flush()
        return None

    async def _flush(self) -> None:
        body = self.head if self.size <= MAX_ERROR_BYTES else cut_error(self.head, self.size)
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", b"%d" % len(body)))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def cut_error(head: bytes, size: int) -> bytes:
    """A short JSON error from the first bytes of a long one (MLflow's {"error_code": ...,
    "message": ...}): its code and the first MESSAGE_CHARS of its message."""
    text = head.decode("utf-8", "replace")
    code = re.search(r'"error_code":\s*"(\w+)"', text)
    start = re.search(rf'"message":\s*"((?:[^"\\]|\\.){{0,{MESSAGE_CHARS}}})', text)
    message = ""
    if start:
        try:
            message = json.loads(f'"{start.group(1)}"')
        except ValueError:  # cut inside an escape
            message = start.group(1)
    note = f" ... (cut from {size:,} bytes: it quoted the request)"
    cut = {"error_code": code.group(1) if code else "BAD_REQUEST", "message": message + note}
    return json.dumps(cut).encode()

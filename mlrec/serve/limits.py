"""Limits on what requests may cost: the body size, whether or not the client declares it,
and (InFlightLimit, below) the number of requests in the service at once.

A Content-Length over the cap is refused before any of the body is read. A chunked body (no
Content-Length) is read here, chunk by chunk, and refused as soon as it passes the cap, so at most
the cap is ever held in memory; the endpoints read whole JSON bodies anyway, so reading it first
costs nothing. Either way the answer is a 413 with a JSON `detail`, like the service's other 4xx.

After the 413 has been sent uvicorn discards the rest of an unread body (h11 keeps the connection
until the request ends), so the client gets the answer rather than a reset connection.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Pure ASGI middleware: a BaseHTTPMiddleware could only see the Content-Length header."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            detail = f"request body of {declared} bytes; at most {self.max_bytes}"
            await self._refuse(scope, receive, send, detail)
            return
        try:
            body = await _read_body(receive, self.max_bytes)
        except _TooLarge:
            limit = self.max_bytes
            detail = f"request body of more than {limit} bytes; at most {limit}"
            await self._refuse(scope, receive, send, detail)
            return
        if body is None:
            return  # the client went away: nobody to answer
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    """The body passed the cap while it was being read."""


async def _read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body, or None if the client went away first; _TooLarge once past max_bytes.
    The chunks are freed when this returns, so a request in flight holds one copy of its body,
    not two."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the buffered body once, then the client's own messages
    (the disconnect that streaming responses wait for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class InFlightLimit:
    """At most `max_in_flight` requests inside the service at once; the next gets a 503 with
    Retry-After at once. Without it, requests beyond what the model calls can serve queue in
    the thread pool, each holding its parsed body, and memory and latency grow with the load.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop: no lock needed between the check and the count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            detail = (
                f"the service is busy ({self.max_in_flight} requests in progress, "
                "serve.max_in_flight); retry shortly"
            )
            response = JSONResponse(
                {"detail": detail}, status_code=503, headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

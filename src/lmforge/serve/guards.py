"""ASGI middleware in front of every route: the request counter, the API key and the body size cap.

Plain ASGI rather than FastAPI dependencies, so they also cover what no route handles (an unknown path, a wrong
method) and answer before any body is parsed.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from lmforge.serve.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a key: the liveness probe, and the chat page itself (static, holds nothing of the model; it asks
# for the key when the API answers 401).
OPEN_ROUTES = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/")}


async def send_error(send: Send, status: int, message: str, *, code: str | None = None,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class CountRequests:
    """lmforge_requests_total{route, status} for every HTTP request; unknown paths count as route "other"."""

    def __init__(self, app: ASGIApp, counter: Any, routes: Callable[[], set[str]]) -> None:
        self.app, self.counter, self.routes = app, counter, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}  # what a request that dies before answering counts as

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            self.counter.labels(route=path if path in self.routes() else "other", status=str(status["code"])).inc()


class RequireAPIKey:
    """`Authorization: Bearer KEY` with one of `keys` on every route but OPEN_ROUTES; 401 otherwise.

    Compared with hmac.compare_digest against every key (no early exit), so the time taken tells nothing of how
    much of a key was right.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok and bool(given)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.keys or (scope.get("method"), scope.get("path")) in OPEN_ROUTES
                or self._allowed(scope)):
            return await self.app(scope, receive, send)
        await send_error(send, 401, "missing or wrong API key (send the header `Authorization: Bearer KEY`; the "
                                    "server was started with --api-key / --api-key-file)", code="invalid_api_key",
                         headers=[(b"www-authenticate", b"Bearer")])


class LimitBody:
    """Refuse a request body over `max_bytes` with 413, before the app reads any of it.

    The body is read here (up to the cap) and replayed to the app: the routes take small JSON bodies, and a body
    sent without Content-Length (chunked) is capped the same way.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body over {self.max_bytes:,} bytes (the server's --max-body-bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_error(send, 413, too_big, code="body_too_large")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await send_error(send, 413, too_big, code="body_too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then whatever comes next: the client's disconnect

        await self.app(scope, replay, send)

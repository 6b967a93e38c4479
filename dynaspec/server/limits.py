"""ASGI middlewares that bound what one client can make the server hold: body size and concurrency.

`BodySizeLimit` answers 413 (OpenAI error body) to a request whose body is larger than `max_body_bytes`
before the app parses any of it: from its Content-Length header, or, for a chunked body, once the bytes
received pass the limit. The refused body is read and discarded (up to `drain_limit` bytes) before the
answer so the client, still sending, reads a clean 413 rather than a reset connection.

`ConcurrencyLimit` answers 503 (OpenAI error body, Retry-After) to an API request arriving while
`max_concurrency` requests (streams included) are being served; /health and /metrics are exempt so
probes and scrapes still answer under overload. It replaces uvicorn's `limit_concurrency`, whose 503
is plain text and uncounted.

Both are pure ASGI middlewares (https://www.starlette.io/middleware/#pure-asgi-middleware) and count
every refusal through `record_status(path, status)`, the request counter of /metrics.
"""

from __future__ import annotations

from typing import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynaspec.server.errors import APIError, invalid_request, too_large, unavailable

RecordStatus = Callable[[str, int], None]
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_LIMIT = 64 * 1024 * 1024


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop the rest of a request body (at most `limit` bytes)."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _refuse(error: APIError, scope: Scope, receive: Receive, send: Send, record: RecordStatus,
                  drain_limit: int) -> None:
    await _drain(receive, drain_limit)
    record(scope["path"], error.status_code)
    await error.response()(scope, receive, send)


class BodySizeLimit:
    """413 for request bodies larger than `max_body_bytes` (see module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, record_status: RecordStatus,
                 drain_limit: int = DEFAULT_DRAIN_LIMIT) -> None:
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be an integer >= 1, got {max_body_bytes!r}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.record_status = record_status
        self.drain_limit = drain_limit

    def _too_large(self, size: str) -> APIError:
        return too_large(f"request body is {size} bytes; this server accepts at most {self.max_body_bytes} "
                         "bytes (shorten the prompt or send fewer prompts per request)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                await _refuse(invalid_request(f"invalid Content-Length header {length[:40]!r}"), scope, receive,
                              send, self.record_status, 0)
            elif int(length) > self.max_body_bytes:
                await _refuse(self._too_large(length), scope, receive, send, self.record_status, self.drain_limit)
            else:
                await self.app(scope, receive, send)  # the server enforces Content-Length framing
            return
        # No Content-Length (chunked): buffer the body up to the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await _refuse(self._too_large(f"more than {self.max_body_bytes}"), scope, receive, send,
                              self.record_status, self.drain_limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls: the disconnect, as the server reports it

        await self.app(scope, replay, send)


class ConcurrencyLimit:
    """503 for API requests beyond `max_concurrency` being served at once (see module docstring)."""

    def __init__(self, app: ASGIApp, max_concurrency: int, record_status: RecordStatus,
                 exempt: frozenset[str] = frozenset({"/health", "/metrics"}), retry_after_s: int = 1) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        self.app = app
        self.max_concurrency = max_concurrency
        self.record_status = record_status
        self.exempt = exempt
        self.retry_after_s = retry_after_s
        self.active = 0  # one event loop runs every call: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_concurrency:
            error = unavailable(f"server overloaded: {self.active} requests in progress "
                                f"(limit {self.max_concurrency}); retry later", "too_many_requests_in_progress",
                                retry_after_s=self.retry_after_s)
            await _refuse(error, scope, receive, send, self.record_status, DEFAULT_DRAIN_LIMIT)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

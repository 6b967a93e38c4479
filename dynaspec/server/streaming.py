"""Text deltas for streaming, server-sent-event framing, and client-disconnect detection.

The engine returns cumulative text with stop strings trimmed. While a request runs, the end of its text
may still change: a partial stop string ("\\n" of a "\\n\\n" stop) is removed once the stop completes,
and an incomplete UTF-8 character shows as U+FFFD until its last byte arrives. So a stream releases
only the part of the text that can no longer change (vLLM's detokenizer holds text back the same way),
and the concatenated deltas equal the final, non-streamed text.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


def stable_text(text: str, stops: list[str], finished: bool) -> str:
    """The prefix of `text` that later outputs of the same request will not change."""
    if finished:
        return text
    cut = len(text)
    while cut > 0 and text[cut - 1] == "\ufffd":
        cut -= 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, cut), hold, -1):
            if text.endswith(stop[:k], 0, cut):
                hold = k
                break
    return text[: cut - hold]


class DeltaTracker:
    """Per-choice text already sent; `delta(i, text, finished)` returns what to send next."""

    def __init__(self, n: int, stops: list[str]) -> None:
        self.sent = [""] * n
        self.stops = stops

    def delta(self, index: int, text: str, finished: bool) -> str:
        ready = stable_text(text, self.stops, finished)
        sent = self.sent[index]
        if len(ready) <= len(sent) or not ready.startswith(sent):
            return ""  # nothing new (or the engine rewrote released text: never unsend)
        self.sent[index] = ready
        return ready[len(sent):]


def sse(payload: Any) -> str:
    """One server-sent event carrying JSON (`payload` is a pydantic model or a dict)."""
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json()}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body must already have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class GuardedStreamingResponse(StreamingResponse):
    """A StreamingResponse that calls `on_exit()` however it ends: finished, failed, or cancelled by a
    client disconnect, even one that comes before its body iterator first ran (an async generator that
    never started never runs its `finally`, so cleanup there would be skipped)."""

    def __init__(self, content: Any, *, on_exit: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_exit = on_exit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_exit()

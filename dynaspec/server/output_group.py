"""The engine requests behind one HTTP response, as the event loop sees them (see async_engine.py)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from dynaspec.server.errors import APIError


class OutputGroup:
    """The engine requests behind one HTTP response (n choices x prompts), seen from the event loop.

    The engine thread calls `_accepted`, `_deliver` and `_fail` through `loop.call_soon_threadsafe`;
    the handler awaits `wait_accepted()` and then iterates `updates()`.
    """

    def __init__(self, request_ids: list[str]) -> None:
        self.request_ids = request_ids
        self.latest: list[Any] = [None] * len(request_ids)  # newest RequestOutput per request
        self.finished = [False] * len(request_ids)
        self.error: APIError | None = None
        self._num_accepted = 0
        self._dirty: set[int] = set()
        self._event = asyncio.Event()

    # -- called on the event loop, scheduled by the engine thread
    def _accepted(self, index: int) -> None:
        self._num_accepted += 1
        self._event.set()

    def _deliver(self, index: int, output: Any) -> None:
        self.latest[index] = output
        self._dirty.add(index)
        self._event.set()

    def _fail(self, error: APIError) -> None:
        if self.error is None:
            self.error = error
        self._event.set()

    # -- awaited by handlers
    async def wait_accepted(self) -> None:
        """Return once the engine took every request; raise the APIError if it refused one."""
        while self.error is None and self._num_accepted < len(self.request_ids):
            await self._event.wait()
            self._event.clear()
        if self.error is not None:
            raise self.error
        self._event.set()  # outputs may already be waiting

    @property
    def done(self) -> bool:
        return all(self.finished)

    async def updates(self) -> AsyncIterator[list[tuple[int, Any]]]:
        """Yield [(index, newest RequestOutput)] for the requests that progressed, until all finished."""
        while not self.done:
            await self._event.wait()
            self._event.clear()
            if self.error is not None:
                raise self.error
            batch = [(i, self.latest[i]) for i in sorted(self._dirty)]
            self._dirty.clear()
            for i, out in batch:
                if out.finished:
                    self.finished[i] = True
            if batch:
                yield batch

    async def final(self) -> list[Any]:
        async for _ in self.updates():
            pass
        return list(self.latest)

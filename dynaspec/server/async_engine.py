"""The engine loop beside the HTTP server: one thread owns the LLMEngine, handlers talk to it by queues.

Every call into the engine (construction, add_request, abort_request, step, stats) happens on one
background thread, so the engine itself needs no locks. HTTP handlers (on the asyncio event loop)
send commands through a thread-safe `queue.Queue`; the engine thread hands results back with
`loop.call_soon_threadsafe`. This is the shape of vLLM's AsyncLLMEngine, reduced to one process.

Memory stays bounded under any load:
  * admission control: at most `max_queue` requests wait (admitted but not yet scheduled); a request
    beyond that is refused at once with 429 instead of queueing;
  * each response keeps only the newest (cumulative) output of each of its engine requests, so a slow
    client never accumulates a backlog of per-step outputs.

Failure isolation: an engine error raised for one request (add_request's ValueError) fails only that
request. An exception from `step()` cannot be pinned on one request, so every request in flight at
that moment gets a 500 and is aborted (freeing its KV blocks); the loop keeps serving new requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from dynaspec.sampling_params import SamplingParams
from dynaspec.server.errors import APIError, invalid_request, overloaded, server_error

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05  # how long the idle loop blocks on the command queue before re-checking
_STATS_PERIOD_S = 0.5  # engine.get_stats() is read at most this often while busy


@dataclass
class EngineSnapshot:
    """Numbers the engine thread publishes for /metrics and /health (read without touching the engine)."""

    num_waiting: int = 0
    num_running: int = 0
    num_pending: int = 0  # admitted, not yet handed to the engine
    kv_cache_usage: float = 0.0
    num_free_blocks: int | None = None
    num_total_blocks: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    loop_alive: bool = True


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


@dataclass
class _Live:
    """Engine-thread bookkeeping of one admitted request."""

    group: OutputGroup
    index: int
    loop: asyncio.AbstractEventLoop
    arrival: float
    num_tokens: int = 0
    last_token_time: float | None = None


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    add_special_tokens: bool
    prompt_param: str
    live: _Live


class AsyncEngine:
    """Runs `engine_factory()` and its step loop on a dedicated thread (see module docstring).

    `metrics` (a metrics.ServerMetrics or None) receives per-request timings from the engine thread.
    """

    def __init__(self, engine_factory: Callable[[], Any], max_queue: int, metrics: Any = None) -> None:
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        self._factory = engine_factory
        self.max_queue = max_queue
        self._metrics = metrics
        self._commands: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._num_pending = 0
        self._num_waiting = 0
        self._snapshot = EngineSnapshot()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_stats = 0.0
        self._stats_dirty = True
        self.tokenizer: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float | None = None) -> None:
        """Start the engine thread; block until the engine is built (re-raise its construction error)."""
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        self._thread = threading.Thread(target=self._run, name="dynaspec-engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"engine did not start within {timeout} s")
        if self._start_error is not None:
            raise RuntimeError("engine construction failed") from self._start_error

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._start_error is None

    def snapshot(self) -> EngineSnapshot:
        return self._snapshot

    @property
    def num_queued(self) -> int:
        """Requests admitted and not yet scheduled: the number `max_queue` bounds."""
        with self._lock:
            return self._num_pending + self._num_waiting

    # ------------------------------------------------------------------ event-loop side
    def submit(
        self,
        requests: list[tuple[str, str | list[int], SamplingParams]],
        *,
        add_special_tokens: bool = True,
        prompt_param: str = "prompt",
    ) -> OutputGroup:
        """Admit the requests of one response together, or refuse them all with a 429 APIError.

        String prompts are tokenized by the engine, or here (on the engine thread) without special
        tokens when `add_special_tokens` is False (chat templates already hold them). The engine's
        ValueError for a bad prompt becomes a 400 naming `prompt_param`.

        Requests handed over but not yet taken by the engine thread count as waiting, so a burst can
        never overshoot `max_queue`. Must be called on the event loop that will consume the group.
        """
        if not self.is_alive:
            raise APIError("engine is not running", status_code=503, type="server_error", code="engine_down")
        loop = asyncio.get_running_loop()
        group = OutputGroup([rid for rid, _, _ in requests])
        with self._lock:
            if self._num_pending + self._num_waiting + len(requests) > self.max_queue:
                raise overloaded(
                    f"server overloaded: {self._num_pending + self._num_waiting} requests already waiting "
                    f"(max_queue={self.max_queue}); retry later"
                )
            self._num_pending += len(requests)
        now = time.monotonic()
        for index, (rid, prompt, params) in enumerate(requests):
            live = _Live(group=group, index=index, loop=loop, arrival=now)
            self._commands.put(_Add(rid, prompt, params, add_special_tokens, prompt_param, live))
        return group

    def abort(self, request_ids: list[str]) -> None:
        """Abort these requests (no-op for finished ones); their KV blocks return to the pool."""
        for rid in request_ids:
            self._commands.put(("abort", rid))

    def call(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future:
        """Run fn(engine) on the engine thread between steps; the result comes back in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, fut))
        return fut

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            engine = self._factory()
            self.tokenizer = engine.tokenizer
        except BaseException as exc:  # surfaced by start()
            logger.exception("engine construction failed")
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        live: dict[str, _Live] = {}
        try:
            while not self._stop.is_set():
                try:
                    self._iterate(engine, live)
                except Exception as exc:  # keep serving: fail what was in flight, free its KV
                    logger.exception("engine loop error; failing %d request(s) in flight", len(live))
                    self._fail_all(engine, live, server_error(f"engine error: {type(exc).__name__}: {exc}"))
                    time.sleep(_IDLE_WAIT_S)  # a persistent fault must not spin the CPU
        finally:
            self._fail_all(engine, live, APIError("server is shutting down", status_code=503, type="server_error"))
            self._snapshot = EngineSnapshot(loop_alive=False)

    def _iterate(self, engine: Any, live: dict[str, _Live]) -> None:
        """One turn of the loop: take commands (block briefly when idle), step once, publish numbers."""
        self._handle_commands(engine, live, block=not engine.has_unfinished_requests())
        if self._stop.is_set():
            return
        if engine.has_unfinished_requests():
            self._stats_dirty = True
            self._deliver(engine.step(), live)
        now = time.monotonic()
        refresh = self._stats_dirty and (now - self._last_stats >= _STATS_PERIOD_S
                                         or not engine.has_unfinished_requests())
        if refresh:
            self._last_stats, self._stats_dirty = now, False
        self._publish(engine, refresh_stats=refresh)

    def _handle_commands(self, engine: Any, live: dict[str, _Live], block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(cmd, _Add):
                self._add(engine, live, cmd)
            elif cmd is None:
                pass  # shutdown wake-up
            elif cmd[0] == "abort":
                self._abort(engine, live, cmd[1])
            elif cmd[0] == "call":
                _, fn, fut = cmd
                try:
                    fut.set_result(fn(engine))
                except Exception as exc:
                    fut.set_exception(exc)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._num_waiting = engine.num_waiting

    def _add(self, engine: Any, live: dict[str, _Live], cmd: _Add) -> None:
        entry = cmd.live
        with self._lock:
            self._num_pending -= 1
        if entry.group.error is not None:  # a sibling was refused: don't start this one
            return
        try:
            prompt = cmd.prompt
            if isinstance(prompt, str) and not cmd.add_special_tokens:
                prompt = self.tokenizer.encode(prompt, add_special_tokens=False)
            engine.add_request(cmd.request_id, prompt, cmd.params)
        except (ValueError, TypeError) as exc:
            _call(entry.loop, entry.group._fail, invalid_request(str(exc), param=cmd.prompt_param))
            return
        except Exception as exc:
            logger.exception("add_request failed for %s", cmd.request_id)
            _call(entry.loop, entry.group._fail, server_error(f"{type(exc).__name__}: {exc}"))
            return
        live[cmd.request_id] = entry
        _call(entry.loop, entry.group._accepted, entry.index)

    def _abort(self, engine: Any, live: dict[str, _Live], request_id: str) -> None:
        if live.pop(request_id, None) is None:
            return  # finished, refused or never admitted
        try:
            engine.abort_request(request_id)
        except Exception:
            logger.exception("abort_request(%s) failed", request_id)
        if self._metrics is not None:
            self._metrics.finished.labels(finish_reason="abort").inc()

    def _fail_all(self, engine: Any, live: dict[str, _Live], error: APIError) -> None:
        for rid, entry in list(live.items()):
            try:
                engine.abort_request(rid)
            except Exception:
                logger.exception("abort_request(%s) failed", rid)
            _call(entry.loop, entry.group._fail, error)
        live.clear()

    def _deliver(self, outputs: list[Any], live: dict[str, _Live]) -> None:
        now = time.monotonic()
        m = self._metrics
        for out in outputs:
            entry = live.get(out.request_id)
            if entry is None:
                continue  # aborted meanwhile
            n = len(out.token_ids)
            new = n - entry.num_tokens
            if new > 0 and m is not None:
                if entry.last_token_time is None:
                    m.ttft.observe(now - entry.arrival)
                    m.prompt_tokens.inc(len(out.prompt_token_ids))
                else:
                    per_token = (now - entry.last_token_time) / new
                    for _ in range(new):
                        m.itl.observe(per_token)
                m.generation_tokens.inc(new)
            if new > 0:
                entry.num_tokens, entry.last_token_time = n, now
            if out.finished:
                del live[out.request_id]
                if m is not None:
                    m.finished.labels(finish_reason=str(out.finish_reason)).inc()
                    m.e2e.observe(now - entry.arrival)
            _call(entry.loop, entry.group._deliver, entry.index, out)

    def _publish(self, engine: Any, refresh_stats: bool) -> None:
        stats = self._snapshot.stats
        if refresh_stats:
            try:
                stats = dict(engine.get_stats())
            except Exception:
                logger.exception("engine.get_stats() failed")
        with self._lock:
            self._num_waiting = engine.num_waiting
            pending = self._num_pending
        self._snapshot = EngineSnapshot(
            num_waiting=engine.num_waiting,
            num_running=engine.num_running,
            num_pending=pending,
            kv_cache_usage=float(engine.kv_cache_usage),
            num_free_blocks=getattr(engine, "num_free_blocks", None),
            num_total_blocks=getattr(engine, "num_total_blocks", None),
            stats=stats,
        )


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Schedule fn(*args) on the event loop; a closed loop (server gone) is not an engine error."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass

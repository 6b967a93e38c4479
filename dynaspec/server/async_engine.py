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
request, and so does an output the engine finishes with `finish_reason == "error"`. An exception from
`step()` cannot be pinned on one request (the engine isolates per-request faults itself): every request
in flight is failed at once with a 500 naming the fault and aborted. If the engine is clean afterwards
(nothing left scheduled, every KV block free) the loop keeps serving; if it is not, or `max_faults`
steps in a row have raised, the engine is declared down: every request in flight or queued is failed
with a 503 at once, new requests get a 503 naming the fault, /health answers 503. Nothing ever waits
on a dead loop: the loop closes admission under the lock before it drains its command queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from dynaspec.sampling_params import SamplingParams
from dynaspec.server.errors import APIError, invalid_request, overloaded, server_error, unavailable
from dynaspec.server.output_group import OutputGroup

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
    fault: str | None = None  # why the engine is down, once it is


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
    `max_faults`: consecutive failing steps after which the engine is declared down (see module doc).
    `retry_after_s`: the Retry-After of a 429 (queue full).
    """

    def __init__(self, engine_factory: Callable[[], Any], max_queue: int, metrics: Any = None, *,
                 max_faults: int = 3, retry_after_s: int = 1) -> None:
        if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if not isinstance(max_faults, int) or max_faults < 1:
            raise ValueError(f"max_faults must be an integer >= 1, got {max_faults!r}")
        self._factory = engine_factory
        self.max_queue = max_queue
        self.max_faults = max_faults
        self.retry_after_s = retry_after_s
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
        self._closed = False  # set (under _lock) when the loop stops taking commands
        self.fault: str | None = None  # why the engine is down, once it is
        self.tokenizer: Any = None
        self.max_model_len: int | None = None

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
        return (self._thread is not None and self._thread.is_alive() and self._start_error is None
                and not self._closed)

    def _down_error(self) -> APIError:
        if self.fault is not None:
            return unavailable(f"engine is down after a fault ({self.fault}); restart the server", "engine_down")
        return unavailable("engine is not running", "engine_down")

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
        loop = asyncio.get_running_loop()
        group = OutputGroup([rid for rid, _, _ in requests])
        with self._lock:  # the loop drains the queue only after setting _closed under this lock
            if not self.is_alive:
                raise self._down_error()
            if self._num_pending + self._num_waiting + len(requests) > self.max_queue:
                raise overloaded(
                    f"server overloaded: {self._num_pending + self._num_waiting} requests already waiting "
                    f"(max_queue={self.max_queue}); retry later", retry_after_s=self.retry_after_s
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
        with self._lock:
            if self._closed:
                fut.set_exception(RuntimeError(self._down_error().message))
            else:
                self._commands.put(("call", fn, fut))
        return fut

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            engine = self._factory()
            self.tokenizer = engine.tokenizer
            self.max_model_len = getattr(engine, "max_model_len", None)
        except BaseException as exc:  # surfaced by start()
            logger.exception("engine construction failed")
            self._start_error = exc
            self._close()
            self._ready.set()
            return
        self._ready.set()
        live: dict[str, _Live] = {}
        closing = unavailable("server is shutting down", "shutting_down")
        faults = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._iterate(engine, live):
                        faults = 0  # a step went through
                except Exception as exc:
                    faults += 1
                    fault = f"{type(exc).__name__}: {exc}"
                    logger.exception("engine step failed (%d in a row); failing %d request(s) in flight",
                                     faults, len(live))
                    self._fail_all(engine, live, server_error(
                        f"engine fault ({fault}) aborted every request in flight; retry the request"))
                    if faults >= self.max_faults or not _is_clean(engine):
                        self.fault = fault if faults == 1 else f"{faults} steps failed in a row, last: {fault}"
                        logger.error("engine declared down: %s", self.fault)
                        closing = self._down_error()
                        break
        except BaseException as exc:  # never leave handlers waiting on a dead loop
            self.fault = f"{type(exc).__name__}: {exc}"
            closing = self._down_error()
            raise
        finally:
            self._close()
            self._fail_all(engine, live, closing)
            self._drain(closing)
            self._snapshot = EngineSnapshot(loop_alive=False, fault=self.fault)
            engine.shutdown()  # its tensor-parallel worker processes, if any

    def _close(self) -> None:
        with self._lock:
            self._closed = True

    def _drain(self, error: APIError) -> None:
        """Fail every command still queued (the loop is closed: no new ones can arrive)."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Add):
                with self._lock:
                    self._num_pending -= 1
                _call(cmd.live.loop, cmd.live.group._fail, error)
            elif isinstance(cmd, tuple) and cmd[0] == "call":
                cmd[2].set_exception(RuntimeError(error.message))

    def _iterate(self, engine: Any, live: dict[str, _Live]) -> bool:
        """One turn of the loop: take commands (block briefly when idle), step once, publish numbers.
        Returns whether a step ran."""
        self._handle_commands(engine, live, block=not engine.has_unfinished_requests())
        if self._stop.is_set():
            return False
        stepped = engine.has_unfinished_requests()
        if stepped:
            self._stats_dirty = True
            self._deliver(engine.step(), live)
        now = time.monotonic()
        refresh = self._stats_dirty and (now - self._last_stats >= _STATS_PERIOD_S
                                         or not engine.has_unfinished_requests())
        if refresh:
            self._last_stats, self._stats_dirty = now, False
        self._publish(engine, refresh_stats=refresh)
        return stepped

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
                if out.finish_reason == "error":  # the engine isolated a fault to this request
                    detail = getattr(out, "error", None) or "the engine failed this request"
                    _call(entry.loop, entry.group._fail, server_error(f"request failed: {detail}"))
                    continue
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


def _is_clean(engine: Any) -> bool:
    """After every request was aborted: nothing scheduled and every KV block back in the pool."""
    try:
        if engine.has_unfinished_requests():
            return False
        free, total = getattr(engine, "num_free_blocks", None), getattr(engine, "num_total_blocks", None)
        return free == total
    except Exception:
        logger.exception("engine state check failed")
        return False


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Schedule fn(*args) on the event loop; a closed loop (server gone) is not an engine error."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass

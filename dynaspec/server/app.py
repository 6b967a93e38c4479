"""FastAPI application factory: the OpenAI-compatible endpoints on top of an AsyncEngine.

Endpoints: POST /v1/completions, POST /v1/chat/completions (both stream as server-sent events ending
in `data: [DONE]` when `stream` is true), GET /v1/models, GET /health, GET /metrics (Prometheus text).
Request and response bodies: protocol.py; error bodies: errors.py; the engine thread: async_engine.py;
prompt bounds and off-loop tokenization: prompts.py; body size and concurrency limits: limits.py.
A client that disconnects, streaming or not, at any point (while its prompt is tokenized, while it
waits in the queue, mid-stream) has its engine requests aborted (KV blocks freed).

Overload is answered the OpenAI way and counted in /metrics: 429 + Retry-After when the queue is full,
503 (JSON) when the engine is down or too many requests are in progress, 413 for a body too large.

With an `api_key`, every /v1/* route needs `Authorization: Bearer <api_key>` (FastAPI's HTTPBearer) and
answers 401 with OpenAI's body otherwise (code "invalid_api_key" for a wrong key), counted in /metrics;
/health and /metrics stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from dynaspec.engine.startup_heap import frozen_startup_heap
from dynaspec.sampling_params import MAX_INT32
from dynaspec.server import protocol as P
from dynaspec.server.async_engine import AsyncEngine, OutputGroup
from dynaspec.server.errors import (
    APIError, check_context_length, install_error_handlers, invalid_request, model_not_found,
)
from dynaspec.server.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, ConcurrencyLimit
from dynaspec.server import logprobs_format as L
from dynaspec.server.metrics import ServerMetrics
from dynaspec.server.prompts import PromptPreparer, default_max_prompt_chars
from dynaspec.server.streaming import SSE_DONE, DeltaTracker, GuardedStreamingResponse, sse, wait_for_disconnect

CLIENT_CLOSED = 499  # nginx's code for "client closed the request", used in the request counter
_GONE = object()  # the client disconnected before its response started


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """`await work`, or _GONE if the client disconnects first (work is then cancelled and awaited, so
    its own cleanup, e.g. aborting what it admitted, has run)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return _GONE
    finally:
        gone.cancel()
        task.cancel()


def api_key_dependencies(api_key: str | None) -> list[Any]:
    """Route dependencies requiring `Authorization: Bearer <api_key>` (none when api_key is None). A
    missing or wrong key raises a 401 APIError with OpenAI's messages and codes."""
    if api_key is None:
        return []
    if not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key):
        raise ValueError("api_key must be a non-empty string without spaces")
    bearer = HTTPBearer(auto_error=False)
    expected = api_key.encode("utf-8")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None:
            raise APIError("You didn't provide an API key. You need to provide your API key in an Authorization "
                           "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", status_code=401,
                           headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode("utf-8"), expected):
            raise APIError("Incorrect API key provided.", status_code=401, code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_api_key)]


def create_app(
    engine_factory: Callable[[], Any],
    *,
    model_name: str,
    max_queue: int = 256,
    max_model_len: int | None = None,
    engine_start_timeout: float | None = 600.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_prompt_chars: int | None = None,
    max_concurrency: int | None = None,
    retry_after_s: int = 1,
    max_faults: int = 3,
    api_key: str | None = None,
) -> FastAPI:
    """Build the app. `engine_factory()` builds the LLMEngine; it is called on the engine thread at
    startup (the app's lifespan), which also stops that thread at shutdown.

    Limits: request bodies above `max_body_bytes` get a 413; a prompt above `max_prompt_chars`
    characters (default: prompts.default_max_prompt_chars of the engine's max_model_len) a 400 before
    it is tokenized; API requests beyond `max_concurrency` in progress (None: no limit) a 503; a full
    queue (`max_queue` waiting) a 429. Both overload answers carry `Retry-After: retry_after_s`.
    `max_faults` consecutive failing engine steps declare the engine down (see async_engine.py).
    `api_key`: required as `Authorization: Bearer <api_key>` on /v1/* (None: no authentication).

    `app.state.engine` is the AsyncEngine, `app.state.metrics` the ServerMetrics,
    `app.state.prompts` the PromptPreparer (set once the engine has started).
    """
    if not model_name:
        raise ValueError("model_name must be a non-empty string")
    if not isinstance(retry_after_s, int) or retry_after_s < 0:
        raise ValueError(f"retry_after_s must be an integer >= 0, got {retry_after_s!r}")
    v1 = APIRouter(prefix="/v1", dependencies=api_key_dependencies(api_key))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(app.state.engine.start, engine_start_timeout)
        limit = max_prompt_chars if max_prompt_chars is not None else default_max_prompt_chars(
            engine.max_model_len or max_model_len)
        app.state.prompts = PromptPreparer(engine.tokenizer, limit)
        try:
            with frozen_startup_heap():  # the engine is built: no full collection walks it mid-step
                yield
        finally:
            await asyncio.to_thread(app.state.engine.shutdown)

    app = FastAPI(title="dynaspec", lifespan=lifespan)
    engine = AsyncEngine(engine_factory, max_queue=max_queue, max_faults=max_faults, retry_after_s=retry_after_s)
    metrics = ServerMetrics(engine.snapshot)
    engine._metrics = metrics
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app, metrics.record_status)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes, record_status=metrics.record_status)
    if max_concurrency is not None:
        app.add_middleware(ConcurrencyLimit, max_concurrency=max_concurrency, record_status=metrics.record_status,
                           retry_after_s=retry_after_s)
    created = P.now()
    token_text = L.TokenStrings(lambda: engine.tokenizer)  # logprobs' token strings

    def check_model(name: str) -> None:
        if name != model_name:
            raise model_not_found(name, model_name)

    def sampling_params(body: P._SamplingFields, n: int, default_max_tokens: int = P.COMPLETION_DEFAULT_MAX_TOKENS
                        ) -> list:
        try:
            return [body.sampling_params(i, default_max_tokens) for i in range(n)]
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            raise invalid_request(f"{param}: {first.get('msg')}", param=param) from None

    def too_many_choices(count: int) -> APIError:
        return invalid_request(f"{count} choices in one request exceed the queue size {engine.max_queue}; "
                               "lower n or the number of prompts", param="n")

    async def admit(requests: list, prompt_param: str = "prompt") -> OutputGroup:
        if len(requests) > engine.max_queue:
            raise too_many_choices(len(requests))
        for _, prompt, params in requests:
            check_context_length(len(prompt), params.max_tokens, engine.max_model_len, prompt_param)
        group = engine.submit(requests, prompt_param=prompt_param)
        try:
            await group.wait_accepted()
        except BaseException:
            engine.abort(group.request_ids)
            raise
        return group

    async def collect(group: OutputGroup, request: Request) -> list | None:
        """Final outputs of every request of the group, or None if the client went away first."""
        results = asyncio.ensure_future(group.final())
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        try:
            await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
            if results.done():
                return results.result()  # re-raises an engine error as APIError
            return None
        finally:
            for task in (results, gone):
                task.cancel()
            if not group.done:
                engine.abort(group.request_ids)

    def usage(outs: list, n: int) -> P.UsageInfo:
        prompt = sum(len(o.prompt_token_ids) for o in outs[::n])
        completion = sum(len(o.token_ids) for o in outs)
        return P.UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def streamed(path: str, group: OutputGroup, events: AsyncIterator[str]) -> Response:
        outcome = {"status": CLIENT_CLOSED}

        async def body() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
                outcome["status"] = 200
            except APIError as exc:  # headers are gone: report in-band, as OpenAI does
                outcome["status"] = exc.status_code
                yield sse(exc.body())
                yield SSE_DONE

        def on_exit() -> None:  # however the stream ended, even before it started
            if not group.done:
                engine.abort(group.request_ids)
            metrics.record_status(path, outcome["status"])

        return GuardedStreamingResponse(body(), on_exit=on_exit, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def gone(path: str) -> Response:
        metrics.record_status(path, CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> Response:
        if not engine.is_alive:
            down = engine._down_error()
            return JSONResponse({"status": "engine not running", **down.body()}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @v1.get("/models")
    async def models() -> P.ModelList:
        return P.ModelList(data=[P.ModelCard(id=model_name, created=created, max_model_len=max_model_len)])

    @v1.post("/completions")
    async def completions(body: P.CompletionRequest, request: Request) -> Response:
        path = request.url.path
        check_model(body.model)
        body.check_supported()
        prompts = body.prompts()
        n = body.n
        params = sampling_params(body, n)
        if len(prompts) * n > engine.max_queue:
            raise too_many_choices(len(prompts) * n)
        rid = P.new_id("cmpl")

        async def prepare() -> OutputGroup:
            token_prompts = await app.state.prompts.completion_prompts(prompts)
            return await admit([(f"{rid}-{p}-{i}", prompt, params[i])
                                for p, prompt in enumerate(token_prompts) for i in range(n)])

        group = await until_disconnect(request, prepare())
        if group is _GONE:
            return gone(path)
        if body.stream:
            return streamed(path, group, completion_events(body, group, rid))
        outs = await collect(group, request)
        if outs is None:
            return gone(path)
        choices = [P.CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason,
                                      logprobs=L.completion_choice_logprobs(body, o, token_text))
                   for i, o in enumerate(outs)]
        metrics.record_status(path, 200)
        return JSONResponse(P.CompletionResponse(id=rid, created=P.now(), model=model_name, choices=choices,
                                                 usage=usage(outs, n)).model_dump())

    async def completion_events(body: P.CompletionRequest, group: OutputGroup, rid: str) -> AsyncIterator[str]:
        created_at = P.now()
        tracker = DeltaTracker(len(group.request_ids), group_stops(body))
        logprobs = L.completion_stream(body, len(group.request_ids), token_text)
        async for batch in group.updates():
            choices = []
            for i, out in batch:
                text = tracker.delta(i, out.text, out.finished)
                if text or out.finished:
                    choices.append(P.CompletionChoice(index=i, text=text, logprobs=logprobs.next(i, out),
                                                      finish_reason=out.finish_reason if out.finished else None))
            if choices:
                yield sse(P.CompletionResponse(id=rid, created=created_at, model=model_name, choices=choices))
        if body.include_usage:
            yield sse(P.CompletionResponse(id=rid, created=created_at, model=model_name, choices=[],
                                           usage=usage(group.latest, body.n)))
        yield SSE_DONE

    @v1.post("/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request) -> Response:
        path = request.url.path
        check_model(body.model)
        body.check_supported()
        n = body.n
        sampling_params(body, n)  # bad values are a 400 before the template and tokenizer run
        rid = P.new_id("chatcmpl")

        async def prepare() -> OutputGroup:
            prompt = await app.state.prompts.chat_prompt(body, model_name)
            # no max_tokens: generate until the context ends, as OpenAI does (the engine refuses a
            # prompt that leaves no room, naming its length)
            room = engine.max_model_len - len(prompt) if engine.max_model_len else MAX_INT32
            params = sampling_params(body, n, default_max_tokens=max(1, room))
            return await admit([(f"{rid}-{i}", prompt, params[i]) for i in range(n)], prompt_param="messages")

        group = await until_disconnect(request, prepare())
        if group is _GONE:
            return gone(path)
        if body.stream:
            return streamed(path, group, chat_events(body, group, rid))
        outs = await collect(group, request)
        if outs is None:
            return gone(path)
        choices = [P.ChatChoice(index=i, message=P.ChatMessageOut(content=o.text), finish_reason=o.finish_reason,
                                logprobs=L.chat_choice_logprobs(body, o, token_text))
                   for i, o in enumerate(outs)]
        metrics.record_status(path, 200)
        return JSONResponse(P.ChatCompletionResponse(id=rid, created=P.now(), model=model_name, choices=choices,
                                                     usage=usage(outs, n)).model_dump())

    async def chat_events(body: P.ChatCompletionRequest, group: OutputGroup, rid: str) -> AsyncIterator[str]:
        created_at = P.now()
        n = len(group.request_ids)

        def chunk(choices: list[P.ChatChunkChoice], usage_info: P.UsageInfo | None = None) -> str:
            return sse(P.ChatCompletionChunk(id=rid, created=created_at, model=model_name, choices=choices,
                                             usage=usage_info))

        yield chunk([P.ChatChunkChoice(index=i, delta=P.ChatDelta(role="assistant", content=""))
                     for i in range(n)])
        tracker = DeltaTracker(n, group_stops(body))
        logprobs = L.chat_stream(body, n, token_text)
        async for batch in group.updates():
            choices = []
            for i, out in batch:
                text = tracker.delta(i, out.text, out.finished)
                if text or out.finished:
                    choices.append(P.ChatChunkChoice(index=i, delta=P.ChatDelta(content=text or None),
                                                     logprobs=logprobs.next(i, out),
                                                     finish_reason=out.finish_reason if out.finished else None))
            if choices:
                yield chunk(choices)
        if body.include_usage:
            yield chunk([], usage(group.latest, n))
        yield SSE_DONE

    app.include_router(v1)
    return app


def group_stops(body: P._SamplingFields) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])

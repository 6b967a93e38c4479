"""FastAPI application factory: the OpenAI-compatible endpoints on top of an AsyncEngine.

Endpoints: POST /v1/completions, POST /v1/chat/completions (both stream as server-sent events ending
in `data: [DONE]` when `stream` is true), GET /v1/models, GET /health, GET /metrics (Prometheus text).
Request and response bodies: protocol.py; error bodies: errors.py; the engine thread: async_engine.py.
A client that disconnects, streaming or not, has its engine requests aborted (KV blocks freed).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from dynaspec.engine.startup_heap import frozen_startup_heap
from dynaspec.server import protocol as P
from dynaspec.server.async_engine import AsyncEngine, OutputGroup
from dynaspec.server.errors import APIError, install_error_handlers, invalid_request
from dynaspec.server.metrics import ServerMetrics
from dynaspec.server.streaming import SSE_DONE, DeltaTracker, sse, wait_for_disconnect

CLIENT_CLOSED = 499  # nginx's code for "client closed the request", used in the request counter


def create_app(
    engine_factory: Callable[[], Any],
    *,
    model_name: str,
    max_queue: int = 256,
    max_model_len: int | None = None,
    engine_start_timeout: float | None = 600.0,
) -> FastAPI:
    """Build the app. `engine_factory()` builds the LLMEngine; it is called on the engine thread at
    startup (the app's lifespan), which also stops that thread at shutdown.

    `app.state.engine` is the AsyncEngine, `app.state.metrics` the ServerMetrics.
    """
    if not model_name:
        raise ValueError("model_name must be a non-empty string")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(app.state.engine.start, engine_start_timeout)
        try:
            with frozen_startup_heap():  # the engine is built: no full collection walks it mid-step
                yield
        finally:
            await asyncio.to_thread(app.state.engine.shutdown)

    app = FastAPI(title="dynaspec", lifespan=lifespan)
    engine = AsyncEngine(engine_factory, max_queue=max_queue)
    metrics = ServerMetrics(engine.snapshot)
    engine._metrics = metrics
    app.state.engine = engine
    app.state.metrics = metrics
    install_error_handlers(app, metrics.record_status)
    created = P.now()

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(f"model '{name}' does not exist; this server serves '{model_name}'",
                           status_code=400, param="model", code="model_not_found")

    def sampling_params(body: P._SamplingFields, n: int) -> list:
        try:
            return [body.sampling_params(i) for i in range(n)]
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ())) or None
            raise invalid_request(f"{param}: {first.get('msg')}", param=param) from None

    async def admit(requests: list, add_special_tokens: bool = True, prompt_param: str = "prompt") -> OutputGroup:
        if len(requests) > engine.max_queue:
            raise invalid_request(f"{len(requests)} choices in one request exceed the queue size "
                                  f"{engine.max_queue}; lower n or the number of prompts", param="n")
        group = engine.submit(requests, add_special_tokens=add_special_tokens, prompt_param=prompt_param)
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

    def streamed(path: str, group: OutputGroup, events: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            status = CLIENT_CLOSED
            try:
                async for event in events:
                    yield event
                status = 200
            except APIError as exc:  # headers are gone: report in-band, as OpenAI does
                status = exc.status_code
                yield sse(exc.body())
                yield SSE_DONE
            finally:
                if not group.done:
                    engine.abort(group.request_ids)
                metrics.record_status(path, status)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> Response:
        if not engine.is_alive:
            return JSONResponse({"status": "engine not running"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> P.ModelList:
        return P.ModelList(data=[P.ModelCard(id=model_name, created=created, max_model_len=max_model_len)])

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request) -> Response:
        path = request.url.path
        check_model(body.model)
        body.check_supported()
        prompts = body.prompts()
        n = body.n
        params = sampling_params(body, n)
        rid = P.new_id("cmpl")
        subs = [(f"{rid}-{p}-{i}", prompt, params[i]) for p, prompt in enumerate(prompts) for i in range(n)]
        group = await admit(subs)
        if body.stream:
            return streamed(path, group, completion_events(body, group, rid))
        outs = await collect(group, request)
        if outs is None:
            metrics.record_status(path, CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        choices = [P.CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason)
                   for i, o in enumerate(outs)]
        metrics.record_status(path, 200)
        return JSONResponse(P.CompletionResponse(id=rid, created=P.now(), model=model_name, choices=choices,
                                                 usage=usage(outs, n)).model_dump())

    async def completion_events(body: P.CompletionRequest, group: OutputGroup, rid: str) -> AsyncIterator[str]:
        created_at = P.now()
        tracker = DeltaTracker(len(group.request_ids), group_stops(body))
        async for batch in group.updates():
            choices = []
            for i, out in batch:
                text = tracker.delta(i, out.text, out.finished)
                if text or out.finished:
                    choices.append(P.CompletionChoice(index=i, text=text,
                                                      finish_reason=out.finish_reason if out.finished else None))
            if choices:
                yield sse(P.CompletionResponse(id=rid, created=created_at, model=model_name, choices=choices))
        if body.include_usage:
            yield sse(P.CompletionResponse(id=rid, created=created_at, model=model_name, choices=[],
                                           usage=usage(group.latest, body.n)))
        yield SSE_DONE

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatCompletionRequest, request: Request) -> Response:
        path = request.url.path
        check_model(body.model)
        body.check_supported()
        prompt = render_chat(body)
        n = body.n
        params = sampling_params(body, n)
        rid = P.new_id("chatcmpl")
        group = await admit([(f"{rid}-{i}", prompt, params[i]) for i in range(n)], add_special_tokens=False,
                            prompt_param="messages")
        if body.stream:
            return streamed(path, group, chat_events(body, group, rid))
        outs = await collect(group, request)
        if outs is None:
            metrics.record_status(path, CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        choices = [P.ChatChoice(index=i, message=P.ChatMessageOut(content=o.text), finish_reason=o.finish_reason)
                   for i, o in enumerate(outs)]
        metrics.record_status(path, 200)
        return JSONResponse(P.ChatCompletionResponse(id=rid, created=P.now(), model=model_name, choices=choices,
                                                     usage=usage(outs, n)).model_dump())

    def render_chat(body: P.ChatCompletionRequest) -> str:
        tokenizer = engine.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise invalid_request(f"model '{model_name}' has no chat template; use /v1/completions",
                                  param="messages")
        try:
            # tokenize=False: only the Jinja template runs here; tokenizing happens on the engine thread
            return tokenizer.apply_chat_template([m.as_template_dict() for m in body.messages], tokenize=False,
                                                 add_generation_prompt=body.add_generation_prompt)
        except Exception as exc:  # template errors ("roles must alternate", ...) are the caller's input
            raise invalid_request(f"chat template rejected the messages: {exc}", param="messages") from None

    async def chat_events(body: P.ChatCompletionRequest, group: OutputGroup, rid: str) -> AsyncIterator[str]:
        created_at = P.now()
        n = len(group.request_ids)

        def chunk(choices: list[P.ChatChunkChoice], usage_info: P.UsageInfo | None = None) -> str:
            return sse(P.ChatCompletionChunk(id=rid, created=created_at, model=model_name, choices=choices,
                                             usage=usage_info))

        yield chunk([P.ChatChunkChoice(index=i, delta=P.ChatDelta(role="assistant", content=""))
                     for i in range(n)])
        tracker = DeltaTracker(n, group_stops(body))
        async for batch in group.updates():
            choices = []
            for i, out in batch:
                text = tracker.delta(i, out.text, out.finished)
                if text or out.finished:
                    choices.append(P.ChatChunkChoice(index=i, delta=P.ChatDelta(content=text or None),
                                                     finish_reason=out.finish_reason if out.finished else None))
            if choices:
                yield chunk(choices)
        if body.include_usage:
            yield chunk([], usage(group.latest, n))
        yield SSE_DONE

    return app


def group_stops(body: P._SamplingFields) -> list[str]:
    return [body.stop] if isinstance(body.stop, str) else list(body.stop or [])

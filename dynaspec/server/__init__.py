"""OpenAI-compatible HTTP server with Prometheus metrics (see app.py for the endpoints).

`run_server(...)` is what `dynaspec serve` calls; `create_app(...)` builds the FastAPI app for
embedding; `app_for_config(...)` builds one serving an LLMEngine made from an EngineConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynaspec.server.app import create_app
from dynaspec.server.limits import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dynaspec.config import EngineConfig


def app_for_config(engine_config: "EngineConfig", served_model_name: str | None = None,
                   max_queue: int = 256, **app_options: Any) -> "FastAPI":
    """The app serving `LLMEngine(engine_config)`, named `served_model_name` (default: the model spec).
    `app_options` go to `create_app` (max_body_bytes, max_prompt_chars, max_concurrency, ...)."""
    from dynaspec.engine.engine import LLMEngine

    name = served_model_name or str(engine_config.model)
    return create_app(lambda: LLMEngine(engine_config), model_name=name, max_queue=max_queue,
                      max_model_len=getattr(engine_config, "max_model_len", None), **app_options)


def default_max_concurrency(max_queue: int, max_num_seqs: int | None) -> int:
    """API requests served at once before 503: the queue, the running batch and a margin of 32."""
    return max_queue + (max_num_seqs or 256) + 32


def run_server(engine_config: "EngineConfig", host: str, port: int, served_model_name: str | None,
               max_queue: int, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Serve until interrupted. API requests beyond the queue, the running batch and a margin are
    refused with an OpenAI-style 503 (counted in /metrics; /health and /metrics stay exempt), so load
    never grows memory without bound; bodies above `max_body_bytes` get a 413."""
    import uvicorn

    if not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
    max_concurrency = default_max_concurrency(max_queue, getattr(engine_config, "max_num_seqs", None))
    app = app_for_config(engine_config, served_model_name, max_queue, max_body_bytes=max_body_bytes,
                         max_concurrency=max_concurrency)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


__all__ = ["app_for_config", "create_app", "default_max_concurrency", "run_server"]

"""OpenAI-compatible HTTP server with Prometheus metrics (see app.py for the endpoints).

`run_server(...)` is what `dynaspec serve` calls; `create_app(...)` builds the FastAPI app for
embedding; `app_for_config(...)` builds one serving an LLMEngine made from an EngineConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynaspec.server.app import create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dynaspec.config import EngineConfig


def app_for_config(engine_config: "EngineConfig", served_model_name: str | None = None,
                   max_queue: int = 256) -> "FastAPI":
    """The app serving `LLMEngine(engine_config)`, named `served_model_name` (default: the model spec)."""
    from dynaspec.engine.engine import LLMEngine

    name = served_model_name or str(engine_config.model)
    return create_app(lambda: LLMEngine(engine_config), model_name=name, max_queue=max_queue,
                      max_model_len=getattr(engine_config, "max_model_len", None))


def run_server(engine_config: "EngineConfig", host: str, port: int, served_model_name: str | None,
               max_queue: int) -> None:
    """Serve until interrupted. Connections beyond the queue, the running batch and a margin for
    /health and /metrics are refused by uvicorn with 503, so load never grows memory without bound."""
    import uvicorn

    if not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
    app = app_for_config(engine_config, served_model_name, max_queue)
    max_seqs = getattr(engine_config, "max_num_seqs", None) or 256
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=max_queue + max_seqs + 32,
                timeout_graceful_shutdown=5)


__all__ = ["app_for_config", "create_app", "run_server"]

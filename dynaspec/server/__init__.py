"""OpenAI-compatible HTTP server with Prometheus metrics (see app.py for the endpoints).

`run_server(...)` is what `dynaspec serve` calls; `create_app(...)` builds the FastAPI app for
embedding; `app_for_config(...)` builds one serving an LLMEngine made from an EngineConfig.
`ServerOptions` holds the serving options, validated before any model loads; `check_listen_address`
tells whether host:port can be listened on, also before the model loads.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dynaspec.server.app import create_app
from dynaspec.server.limits import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dynaspec.config import EngineConfig

MAX_QUEUE_LIMIT = 1_000_000


class ServerOptions(BaseModel):
    """What `dynaspec serve` takes besides the engine config. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    served_model_name: str | None = Field(default=None, min_length=1)
    max_queue: int = Field(default=256, ge=1, le=MAX_QUEUE_LIMIT, strict=True)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    # Clients must send `Authorization: Bearer <api_key>` on /v1/* (None: no authentication).
    api_key: str | None = None

    @field_validator("api_key")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError("the API key must be a non-empty string without spaces (clients send it as "
                             "`Authorization: Bearer <key>`)")
        return value


def check_listen_address(host: str, port: int) -> None:
    """ValueError naming the reason when host:port cannot be listened on (unknown host, port in use,
    no permission); nothing stays bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} cannot be resolved: {exc.strerror or exc}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def app_for_config(engine_config: "EngineConfig", served_model_name: str | None = None,
                   max_queue: int = 256, **app_options: Any) -> "FastAPI":
    """The app serving `LLMEngine(engine_config)`, named `served_model_name` (default: the model spec).
    `app_options` go to `create_app` (max_body_bytes, max_prompt_chars, max_concurrency, api_key, ...)."""
    from dynaspec.engine.engine import LLMEngine

    name = served_model_name or str(engine_config.model)
    return create_app(lambda: LLMEngine(engine_config), model_name=name, max_queue=max_queue,
                      max_model_len=getattr(engine_config, "max_model_len", None), **app_options)


def default_max_concurrency(max_queue: int, max_num_seqs: int | None) -> int:
    """API requests served at once before 503: the queue, the running batch and a margin of 32."""
    return max_queue + (max_num_seqs or 256) + 32


def run_server(engine_config: "EngineConfig", host: str = "127.0.0.1", port: int = 8000,
               served_model_name: str | None = None, max_queue: int = 256,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, api_key: str | None = None) -> None:
    """Serve until interrupted. API requests beyond the queue, the running batch and a margin are
    refused with an OpenAI-style 503 (counted in /metrics; /health and /metrics stay exempt), so load
    never grows memory without bound; bodies above `max_body_bytes` get a 413; with `api_key`, /v1/*
    answers 401 without `Authorization: Bearer <api_key>`. The options are checked (ServerOptions) and
    host:port is tried before the engine starts, so a bad option never costs a model load."""
    import uvicorn

    from dynaspec.config_loader import validate_model

    options = validate_model(ServerOptions, dict(
        host=host, port=port, served_model_name=served_model_name, max_queue=max_queue,
        max_body_bytes=max_body_bytes, api_key=api_key))
    check_listen_address(options.host, options.port)
    max_concurrency = default_max_concurrency(options.max_queue, getattr(engine_config, "max_num_seqs", None))
    app = app_for_config(engine_config, options.served_model_name, options.max_queue,
                         max_body_bytes=options.max_body_bytes, max_concurrency=max_concurrency,
                         api_key=options.api_key)
    uvicorn.run(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=5)


__all__ = ["ServerOptions", "app_for_config", "check_listen_address", "create_app", "default_max_concurrency",
           "run_server"]

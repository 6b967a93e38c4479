"""OpenAI-style error bodies and the FastAPI exception handlers that produce them.

Every failure a client can cause answers with the body the OpenAI API uses
(https://platform.openai.com/docs/guides/error-codes):

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

FastAPI's own 422 for request-validation failures (malformed JSON, wrong types, missing fields) is
replaced by a 400 with that body, so clients see one error shape whatever went wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response carrying this error (with its headers, e.g. Retry-After)."""
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, status_code=400, param=param, code=code)


def unsupported(param: str, what: str) -> APIError:
    return APIError(f"{what} is not supported by this server", status_code=400, param=param, code="unsupported")


def overloaded(message: str, retry_after_s: int = 1) -> APIError:
    """429: the request queue is full; the client should retry after `retry_after_s` seconds."""
    return APIError(message, status_code=429, type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(retry_after_s)})


def unavailable(message: str, code: str, retry_after_s: int | None = None) -> APIError:
    """503: the server cannot take the request now (engine down, too many connections)."""
    headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return APIError(message, status_code=503, type="server_error", code=code, headers=headers)


def model_not_found(name: str, served: str) -> APIError:
    """404 with OpenAI's `model_not_found` code (the `openai` client raises NotFoundError for it)."""
    return APIError(f"The model '{name}' does not exist; this server serves '{served}'", status_code=404,
                    param="model", code="model_not_found")


def too_large(message: str, param: str | None = None) -> APIError:
    """413: the request body is larger than the server accepts."""
    return APIError(message, status_code=413, param=param, code="request_too_large")


def server_error(message: str) -> APIError:
    return APIError(message, status_code=500, type="server_error", code="internal_error")


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper())


def _param_path(loc: tuple) -> tuple[list[str], str | None]:
    """The request field a pydantic error location points at, without FastAPI's leading "body", and
    the union member (pydantic's tag: "str", "list[int]", "ContentPart", ...) that failed, if any."""
    path: list[str] = []
    for i, part in enumerate(loc):
        if i == 0 and part == "body":
            continue
        if _is_type_tag(part):
            return path, str(part)
        path.append(str(part))
    return path, None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable line from pydantic's error list, plus the offending parameter's name.

    The several errors of a union field (one per member) become one line listing the allowed types.
    """
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    messages: dict[str, list[str]] = {}
    unions: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for err in errors:
        loc, tag = _param_path(err.get("loc", ()))
        where = ".".join(loc)
        if err.get("type") == "json_invalid":
            where = ""  # its location is a character offset, not a parameter
            messages.setdefault(where, []).append(f"request body is not valid JSON: {err.get('msg')}")
        elif tag is not None:
            unions.setdefault(where, []).append(tag)
            got.setdefault(where, type(err.get("input")).__name__)
            messages.setdefault(where, [])
        else:
            messages.setdefault(where, []).append(f"{where or 'body'}: {err.get('msg')}")
    parts = []
    for where, msgs in list(messages.items())[:5]:
        if where in unions and not msgs:
            allowed = ", ".join(dict.fromkeys(unions[where]))
            parts.append(f"{where}: wrong type or value ({got[where]}); allowed: {allowed}")
        else:
            parts.extend(msgs)
    param = next((w for w in messages if w), None)
    return "; ".join(parts), param


def install_error_handlers(app: FastAPI, record_status) -> None:
    """Register handlers turning APIError, validation errors, HTTP errors and crashes into OpenAI bodies.

    `record_status(path, status_code)` is called for every error answered (it feeds the request
    counter of metrics.py).
    """

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        record_status(request.url.path, exc.status_code)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        record_status(request.url.path, 400)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        record_status(request.url.path, exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), type=kind), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error serving %s", request.url.path)
        record_status(request.url.path, 500)
        return JSONResponse(
            error_body(f"internal server error: {type(exc).__name__}", type="server_error"), status_code=500
        )


def check_context_length(prompt_tokens: int, max_tokens: int, max_model_len: int | None, param: str) -> None:
    """OpenAI's (and vLLM's) 400 for a prompt plus `max_tokens` beyond the context: raise it when
    prompt_tokens + max_tokens > max_model_len. param: "prompt" (completions) or "messages" (chat)."""
    if max_model_len is None or prompt_tokens + max_tokens <= max_model_len:
        return
    where = "messages" if param == "messages" else "prompt"
    raise invalid_request(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in the completion). "
        f"Please reduce the length of the {where} or completion.",
        param=param,
        code="context_length_exceeded",
    )

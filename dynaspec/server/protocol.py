"""Request and response bodies of the OpenAI HTTP API that the server speaks (pydantic models).

Field names and defaults follow the OpenAI API reference for `/v1/completions` and
`/v1/chat/completions` (https://platform.openai.com/docs/api-reference). Requests are validated
strictly (no "5" for 5, no unknown fields), so a wrong type is a 400, not a silent coercion. Options
the engine cannot honour (echo, penalties, logit_bias, tools, ...) are rejected with a 400
that names them rather than ignored. Log-probabilities: `logprobs: int` (0..20) on completions (the
legacy response shape) and `logprobs: bool` + `top_logprobs: int` (0..20, needs `logprobs: true`, as
OpenAI requires) on chat; both become SamplingParams.logprobs (server/logprobs_format.py builds the shapes). `top_k`, `min_p`, `ignore_eos` and `stop_token_ids` are accepted
as extensions, as vLLM does.

Every number is bounded here, so a bad value is a 400 naming its field before anything is tokenized:
the bounds are SamplingParams' (sampling_params.py), with OpenAI's own where they are tighter
(temperature <= 2, at most 4 stop sequences). NaN and infinities are refused.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dynaspec.sampling_params import (
    MAX_INT32, MAX_LOGPROBS, MAX_SEED, MAX_STOP_STRING_CHARS, MAX_STOP_TOKEN_IDS, SamplingParams,
)
from dynaspec.server.errors import invalid_request, unsupported

MAX_N = 16  # choices per request: each is its own engine request, so bound the fan-out
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (chat: until the context ends)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """Fields shared by both endpoints that map onto SamplingParams."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED - MAX_N)  # choice i uses seed + i
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions (vLLM names)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT32)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)

    def _check_common(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise unsupported(name, name)
        if self.logit_bias:
            raise unsupported("logit_bias", "logit_bias")
        if self.stop_token_ids is not None and any(not 0 <= t <= MAX_INT32 for t in self.stop_token_ids):
            raise invalid_request(f"stop_token_ids must be token ids in [0, {MAX_INT32}]", param="stop_token_ids")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(s == "" for s in stops):
            raise invalid_request("stop strings must be non-empty", param="stop")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise invalid_request(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop")
        if any(len(s) > MAX_STOP_STRING_CHARS for s in stops):
            raise invalid_request(f"stop sequences may have at most {MAX_STOP_STRING_CHARS} characters",
                                  param="stop")

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    def _logprobs(self) -> int | None:
        """SamplingParams.logprobs: alternatives per token, None for no log-probabilities."""
        return None

    def sampling_params(self, choice: int, default_max_tokens: int = COMPLETION_DEFAULT_MAX_TOKENS) -> SamplingParams:
        """SamplingParams of choice `choice` (0..n-1). A seed s gives choice i the seed s + i, so the
        n choices differ from each other yet the whole response is reproducible. `default_max_tokens`
        applies when the request gave no limit."""
        seed = None if self.seed is None else self.seed + choice
        max_tokens = self._max_tokens()
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=-1 if self.top_k is None else self.top_k,
            min_p=0.0 if self.min_p is None else self.min_p,
            seed=seed,
            max_tokens=default_max_tokens if max_tokens is None else max_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids or [],
            ignore_eos=self.ignore_eos,
            logprobs=self._logprobs(),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        self._check_common()
        if self.echo:
            raise unsupported("echo", "echo")
        if self.best_of is not None and self.best_of != self.n:
            raise unsupported("best_of", "best_of other than n")
        if self.suffix is not None:
            raise unsupported("suffix", "suffix")

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one string, a list of strings, token ids, or lists of ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if len(p) == 0:
            raise invalid_request("prompt must not be empty", param="prompt")
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return [list(x) for x in p]

    def _logprobs(self) -> int | None:
        return self.logprobs


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_template_dict(self) -> dict[str, str]:
        content = self.content
        if content is None:
            content = ""
        elif isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True  # extension (vLLM)

    def check_supported(self) -> None:
        self._check_common()
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid_request("top_logprobs needs logprobs to be true", param="top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise invalid_request(
                "give max_tokens or max_completion_tokens, not both", param="max_completion_tokens"
            )

    def _max_tokens(self) -> int | None:
        """max_completion_tokens or max_tokens; None (no limit given): generate until the context ends."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: per generated token its text, logprob, the top alternatives (and the
    token itself) as {text: logprob}, and its character offset in the completion text."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """Chat completions' `choices[].logprobs`: one entry per generated token, top_logprobs best first."""

    content: list[ChatTokenLogprob] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dynaspec"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

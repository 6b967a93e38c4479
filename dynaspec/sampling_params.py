"""Sampling parameters of one request, validated (the vLLM `SamplingParams` field names).

Every numeric field is bounded here, at the boundary, so no value can overflow inside the engine step
(a `top_k` or a seed that does not fit in an int64 tensor or a torch generator) or turn the sampler's
arithmetic into NaN (a temperature so small that `logits / temperature` overflows). A bad value raises
pydantic's `ValidationError` (a `ValueError`) naming the field, what it got and what is allowed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GREEDY_BELOW = 1e-5
"""Temperatures below this are greedy (as in vLLM): dividing logits by them overflows float32."""
MAX_TEMPERATURE = 100.0
MAX_INT32 = 2**31 - 1
"""Upper bound of `top_k`, `max_tokens` and stop token ids: far above any vocabulary or context length."""
MAX_SEED = 2**63 - 1
"""Largest seed: the range of an int64 (torch.Generator.manual_seed overflows past 2**64 - 1)."""
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGPROBS = 20
"""Most alternatives per token `logprobs` may ask for: OpenAI's top_logprobs bound (vLLM's max_logprobs)."""


class SamplingParams(BaseModel):
    """How to pick each next token and when to stop.

    temperature == 0 means greedy (argmax); so does any temperature below 1e-5 (it is stored as 0.0).
    top_k == -1 (or 0) disables top-k, top_p == 1 disables nucleus sampling, min_p == 0 disables min-p.
    A `seed` gives the request its own random generator, so its sampled output is reproducible whatever
    else shares the batch.

    Bounds: 0 <= temperature <= 100 (finite); -1 <= top_k <= 2**31 - 1; 0 < top_p <= 1;
    0 <= min_p <= 1; 0 <= seed <= 2**63 - 1; 1 <= max_tokens <= 2**31 - 1; at most 64 stop strings
    of 1..1024 characters; at most 1024 stop token ids, each in [0, 2**31 - 1]; 0 <= logprobs <= 20.

    `logprobs` (vLLM's field): None returns no log-probabilities; N >= 0 returns, for every generated token,
    its log-probability under the target model's raw distribution and the N most likely alternatives
    (0: the generated token's only). See engine/logprobs.py.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    temperature: float = Field(default=1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_k: int = Field(default=-1, ge=-1, le=MAX_INT32)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    max_tokens: int = Field(default=16, ge=1, le=MAX_INT32)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @field_validator("temperature")
    @classmethod
    def _near_zero_is_greedy(cls, value: float) -> float:
        return 0.0 if value < GREEDY_BELOW else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must be non-empty")
        too_long = next((s for s in value if len(s) > MAX_STOP_STRING_CHARS), None)
        if too_long is not None:
            raise ValueError(
                f"a stop string has {len(too_long)} characters; at most {MAX_STOP_STRING_CHARS} are allowed"
            )
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids_in_range(cls, value: list[int]) -> list[int]:
        bad = next((t for t in value if not 0 <= t <= MAX_INT32), None)
        if bad is not None:
            raise ValueError(f"stop_token_ids must be token ids in [0, {MAX_INT32}], got {bad}")
        return value

    @model_validator(mode="after")
    def _top_k_zero_means_off(self) -> "SamplingParams":
        if self.top_k == 0:
            object.__setattr__(self, "top_k", -1)
        return self

    @property
    def is_greedy(self) -> bool:
        """Argmax decoding: temperature 0 (or below 1e-5, even if set by `model_copy(update=...)`)."""
        return self.temperature < GREEDY_BELOW

"""A request's state as it moves through the engine: waiting -> running -> finished.

The engine, not other components, owns these fields. Drafters keep their own per-request state in
their own dictionaries keyed by `request_id` (no attributes stuck onto requests from outside).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from dynaspec.runtime.detokenizer import DetokenizerState
from dynaspec.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity semantics: `request in running` must not compare every field
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    # Number of tokens (prompt + output) whose K/V is in the target's cache.
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None  # why the request ended with finish_reason "error" (its fault alone)
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0
    # Text already returned to the caller (stop strings are trimmed from it).
    output_text: str = ""
    detok: DetokenizerState = field(default_factory=DetokenizerState)
    # Per-request RNG when params.seed is set (reproducible sampling regardless of batch).
    generator: torch.Generator | None = None

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def tokens_from(self, start: int) -> list[int]:
        """all_token_ids[start:] without copying the whole prompt (drafters read only their catch-up)."""
        prompt = self.prompt_token_ids
        if start >= len(prompt):
            return self.output_token_ids[start - len(prompt) :]
        return prompt[start:] + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    @property
    def is_prefilling(self) -> bool:
        """True while some of its tokens other than the last one have no K/V yet."""
        return self.num_computed_tokens < self.num_tokens - 1

    @property
    def remaining_tokens(self) -> int:
        """Tokens it may still generate before max_tokens."""
        return self.params.max_tokens - self.num_output_tokens

"""What the engine returns for a request (vLLM's `RequestOutput` shape, flattened to one completion)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Wall-clock timestamps (time.monotonic seconds) and counters of one request."""

    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time


@dataclass
class RequestOutput:
    """Cumulative output of a request so far: `text` and `token_ids` grow step by step."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # None while running, then "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    error: str | None = None  # with finish_reason "error": what went wrong with this request (others go on)
    metrics: RequestMetrics | None = None
    new_token_ids: list[int] = field(default_factory=list)  # tokens committed in the last step
    # With SamplingParams.logprobs = N (vLLM's shape, one dict per generated token): {token id: logprob}
    # under the target's raw distribution, for the top-N tokens and the generated one; None when not asked.
    logprobs: list[dict[int, float]] | None = None  # cumulative, one per token_ids entry
    new_logprobs: list[dict[int, float]] | None = None  # those of new_token_ids

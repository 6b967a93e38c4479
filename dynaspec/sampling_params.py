"""Sampling parameters of one request, validated (the vLLM `SamplingParams` field names)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SamplingParams(BaseModel):
    """How to pick each next token and when to stop.

    temperature == 0 means greedy (argmax). top_k == -1 (or 0) disables top-k, top_p == 1 disables
    nucleus sampling, min_p == 0 disables min-p. A `seed` gives the request its own random generator,
    so its sampled output is reproducible whatever else shares the batch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_k: int = Field(default=-1, ge=-1)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0)
    max_tokens: int = Field(default=16, ge=1)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

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
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids_non_negative(cls, value: list[int]) -> list[int]:
        if any(t < 0 for t in value):
            raise ValueError("stop_token_ids must be non-negative token ids")
        return value

    @model_validator(mode="after")
    def _top_k_zero_means_off(self) -> "SamplingParams":
        if self.top_k == 0:
            object.__setattr__(self, "top_k", -1)
        return self

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

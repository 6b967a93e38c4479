"""How many tokens to draft this step: draft_len_schedule lookup and max_concurrency.

TensorRT-LLM semantics: the schedule maps batch-size thresholds to draft lengths and the entry with the
LARGEST threshold <= the number of requests decoding this step applies; e.g. {1: 4, 8: 2, 32: 0} gives
k=4 for 1..7 decoding requests, k=2 for 8..31 and k=0 (no speculation) from 32 on. When more requests
are active than `max_concurrency`, k=0.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from dynaspec.spec.config import AUTO_SCHEDULE, normalize_draft_len_schedule


class DraftLenSchedule:
    """A validated schedule with an O(log n) lookup (bisect over the sorted thresholds)."""

    def __init__(self, schedule: Mapping[Any, Any]) -> None:
        normalized = normalize_draft_len_schedule(schedule)
        self._thresholds: list[int] = list(normalized)
        self._draft_lens: list[int] = list(normalized.values())

    @property
    def thresholds(self) -> list[int]:
        return list(self._thresholds)

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self._thresholds, self._draft_lens))

    def lookup(self, batch_size: int) -> int:
        """Draft length of the entry with the largest threshold <= batch_size."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 to look up a draft length, got {batch_size}")
        # Key 1 is always present, so for batch_size >= 1 the index is >= 0.
        return self._draft_lens[bisect_right(self._thresholds, batch_size) - 1]

    def draft_len(self, batch_size: int) -> int:
        """Same as lookup() (the name DraftLenPolicy uses)."""
        return self.lookup(batch_size)

    def values(self) -> list[int]:
        return list(self._draft_lens)

    def __repr__(self) -> str:
        return f"DraftLenSchedule({self.as_dict()})"


class DraftLenPolicy:
    """Per-step draft length k from a speculative config (NGram or DraftTarget)."""

    def __init__(self, config: Any) -> None:
        if config.draft_len_schedule == AUTO_SCHEDULE:
            raise ValueError(
                "draft_len_schedule 'auto' is planned at engine start-up from measured step costs; build the "
                "policy with dynaspec.spec.auto_schedule.plan_auto_schedule (the engine does)"
            )
        self.max_draft_len: int = config.max_draft_len
        self.max_concurrency: int | None = config.max_concurrency
        self.schedule: DraftLenSchedule | None = (
            DraftLenSchedule(config.draft_len_schedule) if config.draft_len_schedule is not None else None
        )

    @classmethod
    def from_schedule(
        cls, schedule: Mapping[Any, Any], max_draft_len: int, max_concurrency: int | None = None
    ) -> "DraftLenPolicy":
        """A policy for a schedule planned at run time (draft_len_schedule: auto). Unlike a configured
        schedule it may say k = 0 at batch 1 (speculation that never pays); no value may exceed
        max_draft_len (the drafter's buffers are sized by it)."""
        schedule = DraftLenSchedule(schedule)
        above = {t: k for t, k in schedule.as_dict().items() if k > max_draft_len}
        if above:
            raise ValueError(f"schedule entries {above} exceed max_draft_len ({max_draft_len})")
        policy = cls.__new__(cls)
        policy.max_draft_len = max_draft_len
        policy.max_concurrency = max_concurrency
        policy.schedule = schedule
        return policy

    def draft_len(
        self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None
    ) -> int:
        """k for a step where `num_decoding` requests decode out of `num_active` active ones (request_ids,
        the decoding requests', are accepted for the goodput planner's signature and not used)."""
        for name, value in (("num_decoding", num_decoding), ("num_active", num_active)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if num_decoding < 1:
            raise ValueError(f"num_decoding must be >= 1 to choose a draft length, got {num_decoding}")
        if num_active < num_decoding:
            raise ValueError(
                f"num_active ({num_active}) must be >= num_decoding ({num_decoding}): "
                f"decoding requests are active requests"
            )
        if self.max_concurrency is not None and num_active > self.max_concurrency:
            return 0
        if self.schedule is None:
            return self.max_draft_len
        return self.schedule.lookup(num_decoding)

    def draft_lens_for_batch(self, num_decoding: int) -> set[int]:
        """Every k draft_len() can return when `num_decoding` requests decode (any num_active)."""
        values = {self.draft_len(num_decoding, num_decoding)}
        if self.max_concurrency is not None:
            values.add(0)
        return values

    def observe(self, k: int, drafted: list[int], accepted: list[int], request_ids: list[str] | None = None) -> None:
        """A static schedule learns nothing from a step (the goodput planner does)."""

    def release(self, request_id: str) -> None:
        """No per-request state."""

    def observe_step_time(self, batch: int, k: int, seconds: float) -> None:
        """A static schedule ignores step times (the goodput planner refines its cost model)."""

    def reachable_draft_lens(self) -> list[int]:
        """Sorted distinct k values draft_len() can return (e.g. the k's to capture CUDA graphs for)."""
        values = set(self.schedule.values()) if self.schedule is not None else {self.max_draft_len}
        if self.max_concurrency is not None:
            values.add(0)
        return sorted(values)

    def __repr__(self) -> str:
        return (
            f"DraftLenPolicy(max_draft_len={self.max_draft_len}, schedule={self.schedule}, "
            f"max_concurrency={self.max_concurrency})"
        )


def schedule_stats(policy: Any) -> dict[str, int] | None:
    """The draft_len_schedule a policy applies, JSON-ready ({"1": 4, "8": 2}); None for any other policy
    (no speculation, max_draft_len at every batch size, or the goodput planner)."""
    if not isinstance(policy, DraftLenPolicy) or policy.schedule is None:
        return None
    return {str(t): k for t, k in policy.schedule.as_dict().items()}

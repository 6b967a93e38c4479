"""The static draft-length policy: `draft_len_schedule` lookup and `max_concurrency`.

Semantics of TensorRT-LLM's first `draft_len_schedule` (PR #8194): the schedule maps batch-size thresholds
to draft lengths and the entry with the LARGEST threshold <= the number of requests decoding this step
applies; e.g. {1: 4, 8: 2, 32: 0} gives k=4 for 1..7 decoding requests, k=2 for 8..31 and k=0 (no
speculation) from 32 on. When more requests are active than `max_concurrency`, k=0.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from dynaspec.spec.config import AUTO_SCHEDULE, normalize_draft_len_schedule
from dynaspec.spec.policy import DraftLenPolicy


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


class SchedulePolicy(DraftLenPolicy):
    """Per-step draft length k from a speculative config: `draft_len_schedule` lookup, else max_draft_len;
    k = 0 above `max_concurrency`."""

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
        self.planned: Any = None  # the AutoSchedule of draft_len_schedule: auto (spec/auto_schedule.py)

    @classmethod
    def from_schedule(
        cls,
        schedule: Mapping[Any, Any],
        max_draft_len: int,
        max_concurrency: int | None = None,
        planned: Any = None,
    ) -> "SchedulePolicy":
        """A policy for a schedule planned at run time (draft_len_schedule: auto). Unlike a configured
        schedule it may say k = 0 at batch 1 (speculation that never pays); no value may exceed
        max_draft_len (the drafter's buffers are sized by it). planned: the AutoSchedule it was planned as
        (spec/auto_schedule.py), reported by stats() as `auto_schedule`."""
        schedule = DraftLenSchedule(schedule)
        above = {t: k for t, k in schedule.as_dict().items() if k > max_draft_len}
        if above:
            raise ValueError(f"schedule entries {above} exceed max_draft_len ({max_draft_len})")
        policy = cls.__new__(cls)
        policy.max_draft_len = max_draft_len
        policy.max_concurrency = max_concurrency
        policy.schedule = schedule
        policy.planned = planned
        return policy

    def draft_len(self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """k for a step where `num_decoding` requests decode out of `num_active` active ones."""
        if self.max_concurrency is not None and num_active > self.max_concurrency:
            return 0
        if self.schedule is None:
            return self.max_draft_len
        return self.schedule.lookup(num_decoding)

    def reachable_draft_lens(self, num_decoding: int) -> set[int]:
        """Every k draft_len() can return when `num_decoding` requests decode (any num_active)."""
        values = {self.draft_len(num_decoding, num_decoding)}
        if self.max_concurrency is not None:
            values.add(0)
        return values

    def possible_draft_lens(self) -> list[int]:
        """Sorted distinct k values draft_len() can return at any batch size."""
        values = set(self.schedule.values()) if self.schedule is not None else {self.max_draft_len}
        if self.max_concurrency is not None:
            values.add(0)
        return sorted(values)

    def stats(self) -> dict[str, Any]:
        """The schedule in force, JSON-ready ({"1": 4, "8": 2}); None without one (max_draft_len always)."""
        schedule = None if self.schedule is None else {str(t): k for t, k in self.schedule.as_dict().items()}
        return {**super().stats(), "draft_len_schedule": schedule, "auto_schedule": None if self.planned is None else self.planned.as_dict()}

    def __repr__(self) -> str:
        return (
            f"SchedulePolicy(max_draft_len={self.max_draft_len}, schedule={self.schedule}, "
            f"max_concurrency={self.max_concurrency})"
        )

"""Draft length per step: schedule lookup at and around every threshold, max_concurrency."""

import pytest

from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from dynaspec.spec.policy import DraftLenPolicy, DraftLenSchedule

SCHEDULE = {1: 4, 8: 2, 32: 0}


def _expected(batch: int, schedule: dict[int, int]) -> int:
    """Reference semantics by linear scan: the entry with the largest threshold <= batch."""
    return schedule[max(t for t in schedule if t <= batch)]


@pytest.mark.parametrize(
    "batch, k",
    [(1, 4), (2, 4), (7, 4), (8, 2), (9, 2), (31, 2), (32, 0), (33, 0), (10_000, 0)],
)
def test_lookup_at_and_around_thresholds(batch, k):
    schedule = DraftLenSchedule(SCHEDULE)
    assert schedule.lookup(batch) == k
    assert schedule.draft_len(batch) == k


def test_lookup_around_every_threshold_of_a_dense_schedule():
    schedule = {1: 6, 2: 5, 3: 5, 5: 4, 11: 3, 12: 2, 40: 1, 41: 0}
    s = DraftLenSchedule(schedule)
    for t in schedule:
        for batch in (t - 1, t, t + 1):
            if batch >= 1:
                assert s.lookup(batch) == _expected(batch, schedule), batch
    assert all(s.lookup(b) == _expected(b, schedule) for b in range(1, 100))


def test_schedule_sorted_even_when_given_unsorted():
    s = DraftLenSchedule({32: 0, 1: 4, 8: 2})
    assert s.thresholds == [1, 8, 32]
    assert s.as_dict() == SCHEDULE


@pytest.mark.parametrize("batch", [0, -1])
def test_batch_below_one_raises(batch):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DraftLenSchedule(SCHEDULE).lookup(batch)


def test_batch_not_int_raises():
    with pytest.raises(TypeError, match="batch_size must be an int"):
        DraftLenSchedule(SCHEDULE).lookup(2.0)


def test_schedule_needs_key_one():
    with pytest.raises(ValueError, match="must contain key 1"):
        DraftLenSchedule({2: 4})


def test_policy_without_schedule_uses_max_draft_len():
    p = DraftLenPolicy(NGramDecodingConfig(max_draft_len=5))
    assert [p.draft_len(b, b) for b in (1, 7, 1000)] == [5, 5, 5]
    assert p.max_draft_len == 5
    assert p.reachable_draft_lens() == [5]


def test_policy_with_schedule():
    p = DraftLenPolicy(NGramDecodingConfig(max_draft_len=4, draft_len_schedule=SCHEDULE))
    assert [p.draft_len(b, b) for b in (1, 7, 8, 31, 32)] == [4, 4, 2, 2, 0]
    assert p.reachable_draft_lens() == [0, 2, 4]


def test_policy_uses_decoding_count_for_schedule_and_active_count_for_concurrency():
    cfg = DraftTargetDecodingConfig(
        speculative_model="m", max_draft_len=4, draft_len_schedule={1: 4, 8: 2}, max_concurrency=10
    )
    p = DraftLenPolicy(cfg)
    assert p.draft_len(2, 10) == 4  # 10 active is not more than max_concurrency
    assert p.draft_len(2, 11) == 0  # more active than max_concurrency: no speculation
    assert p.draft_len(8, 9) == 2
    assert p.reachable_draft_lens() == [0, 2, 4]


def test_max_concurrency_without_schedule():
    p = DraftLenPolicy(NGramDecodingConfig(max_draft_len=3, max_concurrency=4))
    assert [p.draft_len(1, a) for a in (1, 4, 5)] == [3, 3, 0]
    assert p.reachable_draft_lens() == [0, 3]


def test_policy_rejects_bad_counts():
    p = DraftLenPolicy(NGramDecodingConfig())
    with pytest.raises(ValueError, match="num_decoding must be >= 1"):
        p.draft_len(0, 3)
    with pytest.raises(ValueError, match=r"num_active \(1\) must be >= num_decoding \(2\)"):
        p.draft_len(2, 1)
    with pytest.raises(TypeError, match="num_active must be an int"):
        p.draft_len(1, None)

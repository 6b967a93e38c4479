"""Draft length per step: schedule lookup at and around every threshold, max_concurrency."""

import pytest

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.policies import build_policy
from dynaspec.spec.policy import NoSpeculation, PolicyContext

from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from dynaspec.spec.schedule_policy import DraftLenSchedule, SchedulePolicy

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


def test_schedule_needs_key_one():
    with pytest.raises(ValueError, match="must contain key 1"):
        DraftLenSchedule({2: 4})


def test_policy_without_schedule_uses_max_draft_len():
    p = SchedulePolicy(NGramDecodingConfig(max_draft_len=5))
    assert [p.draft_len(b, b) for b in (1, 7, 1000)] == [5, 5, 5]
    assert p.max_draft_len == 5
    assert p.possible_draft_lens() == [5]


def test_policy_with_schedule():
    p = SchedulePolicy(NGramDecodingConfig(max_draft_len=4, draft_len_schedule=SCHEDULE))
    assert [p.draft_len(b, b) for b in (1, 7, 8, 31, 32)] == [4, 4, 2, 2, 0]
    assert p.possible_draft_lens() == [0, 2, 4]


def test_policy_uses_decoding_count_for_schedule_and_active_count_for_concurrency():
    cfg = DraftTargetDecodingConfig(
        speculative_model="m", max_draft_len=4, draft_len_schedule={1: 4, 8: 2}, max_concurrency=10
    )
    p = SchedulePolicy(cfg)
    assert p.draft_len(2, 10) == 4  # 10 active is not more than max_concurrency
    assert p.draft_len(2, 11) == 0  # more active than max_concurrency: no speculation
    assert p.draft_len(8, 9) == 2
    assert p.possible_draft_lens() == [0, 2, 4]


def test_max_concurrency_without_schedule():
    p = SchedulePolicy(NGramDecodingConfig(max_draft_len=3, max_concurrency=4))
    assert [p.draft_len(1, a) for a in (1, 4, 5)] == [3, 3, 0]
    assert p.possible_draft_lens() == [0, 3]


def test_reachable_draft_lens_per_batch_size():
    p = SchedulePolicy(NGramDecodingConfig(max_draft_len=4, draft_len_schedule=SCHEDULE, max_concurrency=40))
    assert [p.reachable_draft_lens(b) for b in (1, 8, 32)] == [{0, 4}, {0, 2}, {0}]
    assert SchedulePolicy(NGramDecodingConfig(max_draft_len=4, draft_len_schedule=SCHEDULE)).reachable_draft_lens(8) == {2}


def test_factory_builds_each_policy_from_its_table_entry():
    context = PolicyContext(step_costs=_two_cell_costs, catch_up_cost=lambda: (0.0, 0.0), backlog=lambda: (0, 0))
    assert isinstance(build_policy(None, context), NoSpeculation)
    assert type(build_policy(NGramDecodingConfig(draft_len_schedule=SCHEDULE), context)) is SchedulePolicy
    goodput = build_policy(NGramDecodingConfig(max_draft_len=1, draft_len_policy="goodput"), context)
    assert isinstance(goodput, GoodputPlanner) and goodput.reachable_draft_lens(3) == {0, 1}
    none = NoSpeculation()
    assert none.draft_len(4, 4, ["a"] * 4) == 0 and none.reachable_draft_lens(4) == {0}
    assert none.stats() == {"draft_len_schedule": None, "auto_schedule": None, "planner_decision": None,
                            "trimmed_positions": 0}


def _two_cell_costs() -> StepCostModel:
    costs = StepCostModel()
    for batch in (1, 8):
        costs.add(batch, 0, 0.010)
        costs.add(batch, 1, 0.011)
    return costs

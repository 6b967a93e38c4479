"""Both draft-length policies against the numbers of a real run, replayed: the EAGLE head for Qwen2.5-Coder-1.5B
on code-edit prompts at batch 1 on an H100 (2026-12-06, docs/results.md). Its start-up probe priced a step
at T(1, k) = 1.76 .. 3.06 ms, the real chained steps ran 1.79 .. 3.42 ms, and static k = 3 gave 1.58x no
speculation; both policies then ran k = 0 on most steps (1.03x), because they were fed chained steps' times
that also counted the step queued before them. Here the policies get the real steps' times and draws from
the measured acceptance: they must find the best static k's rate on their own, within their first 128
steps (the bench's measured batch). Costs and draws are injected: nothing here reads this machine's clock."""

from __future__ import annotations

import random

import pytest

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import planning_estimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome

K = 6
PROBED_MS = [1.76, 2.05, 2.31, 2.49, 2.72, 2.93, 3.06]  # the start-up probe's T(1, k)
REAL_MS = [1.79, 2.31, 2.56, 2.79, 3.03, 3.27, 3.42]  # median real steps at static k (bench.json)
# P(draft j accepted | drafts before it accepted), from the mean accepted lengths at k = 1..6
# (1.66, 2.29, 2.51, 2.61, 2.72, 2.84): a copy-heavy workload accepts in runs
CONDITIONAL = [0.66, 0.95, 0.35, 0.45, 0.5, 0.5]


def _accepted(rng: random.Random, k: int) -> int:
    accepted = 0
    while accepted < k and rng.random() < CONDITIONAL[accepted]:
        accepted += 1
    return accepted


def _static_rate(k: int, steps: int = 20_000) -> float:
    rng = random.Random(1)
    return sum(1 + _accepted(rng, k) for _ in range(steps)) / (steps * REAL_MS[k])


def _policy_rate(policy, steps: int, seconds=lambda k: REAL_MS[k] / 1e3) -> tuple[float, list[int]]:
    rng = random.Random(0)
    elapsed = tokens = 0.0
    chosen = []
    for _ in range(steps):
        k = policy.draft_lens(1, 1, ["r"])[0]
        accepted = _accepted(rng, k)
        policy.observe(StepOutcome(["r"], k, drafted=[k], accepted=[accepted], draft_lens=[k], seconds=seconds(k)))
        policy.refresh(1, ["r"])
        elapsed += REAL_MS[k]
        tokens += 1 + accepted
        chosen.append(k)
    return tokens / elapsed, chosen


def _make(kind: str, catch_up: CatchUpCost | None = None):
    """The policy as the engine builds it; catch_up: the drafter's start-up catch-up price, with a backlog of
    a code-edit prompt (~200 tokens) and the bench's 128 tokens to generate (None: no catch-up rule)."""
    costs = StepCostModel()
    for k, ms in enumerate(PROBED_MS):
        costs.add(1, k, ms / 1e3)
    settings = PlannerSettings()
    estimator = planning_estimator(K, None, settings)  # the engine's: cold-start prior, learned online
    backlog = None if catch_up is None else (lambda: (200, 128))
    if kind == "goodput":
        return GoodputPlanner(costs, estimator, list(range(K + 1)), settings, catch_up, backlog)
    return AdaptivePolicy(costs, estimator, K, settings, catch_up=catch_up, backlog=backlog)


@pytest.mark.parametrize("kind", ["goodput", "adaptive"])
def test_the_policy_finds_the_best_static_rate_from_real_step_times(kind):
    best = max(_static_rate(k) for k in range(K + 1))
    assert best / _static_rate(0) > 1.5  # the run's 1.58x is there to be found
    rate, chosen = _policy_rate(_make(kind), 128)
    assert rate >= 0.95 * best, (rate / best, chosen)


@pytest.mark.parametrize("kind", ["goodput", "adaptive"])
def test_steps_timed_with_the_step_queued_before_them_push_the_policy_to_k0(kind):
    """The fault of the run, for contrast: a speculative step reported at its time plus a plain step's (what
    a chained step timed from its launch read) makes speculation look like a loss, and the policy leaves it."""
    doubled = lambda k: (REAL_MS[k] + (REAL_MS[0] if k else 0.0)) / 1e3  # noqa: E731
    rate, chosen = _policy_rate(_make(kind), 128, seconds=doubled)
    assert chosen[-64:].count(0) >= 48 and rate < 0.8 * max(_static_rate(k) for k in range(K + 1))


@pytest.mark.parametrize("kind", ["goodput", "adaptive"])
@pytest.mark.parametrize("fixed_ms", [1.09, 1.88, 3.62])
def test_a_catch_up_dearer_than_two_plain_steps_does_not_hold_k0(kind, fixed_ms):
    """The head's start-up probe priced one catch-up at 1.09, 1.88 and 3.62 ms on three loads of the same
    card (2026-12-06). At 3.62 ms, two plain steps' worth, a probe from k = 0 was refused for its catch-up,
    and the goodput planner held k = 0 on all 128 steps of every batch size (1.00x where static k = 3 ran
    1.76x). A switch whose gain over the tokens left earns the catch-up back must happen whatever the probe
    rule allows."""
    best = max(_static_rate(k) for k in range(K + 1))
    rate, chosen = _policy_rate(_make(kind, CatchUpCost(0.88e-6, fixed_seconds=fixed_ms / 1e3)), 128)
    assert chosen.count(0) <= 8 and rate >= 0.93 * best, (rate / best, chosen)  # held at k = 0: 0.63x

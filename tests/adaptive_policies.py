"""The adaptive policy with injected costs and acceptance (issue 20), shared by its tests: hand-made step-cost
tables, so no test depends on this machine's timings."""

from __future__ import annotations

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.planner_settings import PlannerSettings

K = 4
COPY, CHAT = [0.95] * K, [0.05] * K  # conditional acceptance per position


def injected_costs(per_position: float, batches=(1, 2, 4, 8)) -> StepCostModel:
    """T(batch, k) = 1 s + per_position * batch * k: a verify priced by the draft positions it verifies."""
    costs = StepCostModel()
    for batch in batches:
        for k in range(K + 1):
            costs.add(batch, k, 1.0 + per_position * batch * k)
    return costs


def injected_policy(per_position: float, **settings) -> AdaptivePolicy:
    """An adaptive policy over injected_costs(per_position), its estimator blending lightly (blend_count 1)."""
    estimator = AcceptanceEstimator(K, blend_count=1.0)
    return AdaptivePolicy(injected_costs(per_position), estimator, K, PlannerSettings(**settings))

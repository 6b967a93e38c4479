"""Builds the draft-length policy a speculative config asks for: one table from policy name to builder,
as drafters are built (spec/factory.py), so the engine never tests which policy it has.

| name       | config                                   | policy                                          |
|------------|------------------------------------------|-------------------------------------------------|
| (none)     | no speculative_config                    | NoSpeculation: k = 0                            |
| `schedule` | draft_len_schedule (or max_draft_len)    | SchedulePolicy (spec/schedule_policy.py)        |
| `auto`     | draft_len_schedule: auto                 | the schedule `dynaspec tune` would write, planned at start-up (spec/auto_schedule.py) |
| `goodput`  | draft_len_policy: goodput                | GoodputPlanner (spec/planner.py)                |
| `adaptive` | draft_len_policy: adaptive               | AdaptivePolicy (spec/adaptive.py): one k_i per request |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import planning_estimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.auto_schedule import plan_auto_schedule
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.config import AUTO_SCHEDULE
from dynaspec.spec.planner import PaddedBatchFn, build_goodput_planner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import DraftLenPolicy, NoSpeculation, PolicyContext
from dynaspec.spec.schedule_policy import SchedulePolicy


def policy_name(spec: Any) -> str:
    """The builder a speculative config selects: "schedule", "auto", "goodput" or "adaptive"."""
    return AUTO_SCHEDULE if spec.draft_len_schedule == AUTO_SCHEDULE else spec.draft_len_policy


def _step_costs(spec: Any, context: PolicyContext) -> StepCostModel:
    """T(batch, k): the config's step_cost_file (written by `dynaspec tune`), else probed now."""
    if spec.step_cost_file is not None:
        return StepCostModel.load(spec.step_cost_file)
    return context.step_costs()


def _schedule(spec: Any, context: PolicyContext) -> DraftLenPolicy:
    return SchedulePolicy(spec)


def _auto(spec: Any, context: PolicyContext) -> DraftLenPolicy:
    return plan_auto_schedule(spec, _step_costs(spec, context)).policy


def _catch_up(context: PolicyContext) -> CatchUpCost:
    fixed, per_token = context.catch_up_cost()
    return CatchUpCost(per_token, fixed)


def _goodput(spec: Any, context: PolicyContext) -> DraftLenPolicy:
    return build_goodput_planner(
        spec,
        _step_costs(spec, context),
        catch_up=_catch_up(context),
        backlog=context.backlog,
        padded_batch=context.padded_batch,
    )


def build_adaptive_policy(
    spec_config: Any,
    cost_model: StepCostModel,
    padded_batch: PaddedBatchFn | None = None,
    ragged_step: Callable[[int, int], tuple[int, int] | None] | None = None,
    catch_up: CatchUpCost | None = None,
    backlog: Callable[[], tuple[int, int]] | None = None,
) -> AdaptivePolicy:
    """The engine's adaptive policy from a speculative config (max_draft_len, max_concurrency,
    acceptance_profile, adaptive_drain_tolerance) and T(batch, k); the estimator is the goodput planner's."""
    settings = PlannerSettings(max_concurrency=spec_config.max_concurrency,
                               drain_tolerance=spec_config.adaptive_drain_tolerance)
    estimator = planning_estimator(spec_config.max_draft_len, spec_config.acceptance_profile, settings)
    return AdaptivePolicy(
        cost_model, estimator, spec_config.max_draft_len, settings, padded_batch, ragged_step, catch_up, backlog
    )


def _adaptive(spec: Any, context: PolicyContext) -> DraftLenPolicy:
    return build_adaptive_policy(
        spec, _step_costs(spec, context), padded_batch=context.padded_batch, ragged_step=context.ragged_step,
        catch_up=_catch_up(context), backlog=context.backlog,
    )


_BUILDERS: dict[str, Callable[[Any, PolicyContext], DraftLenPolicy]] = {
    "schedule": _schedule,
    AUTO_SCHEDULE: _auto,
    "goodput": _goodput,
    "adaptive": _adaptive,
}


def build_policy(spec: Any | None, context: PolicyContext) -> DraftLenPolicy:
    """The policy of a speculative config (None: no speculation)."""
    if spec is None:
        return NoSpeculation()
    return _BUILDERS[policy_name(spec)](spec, context)


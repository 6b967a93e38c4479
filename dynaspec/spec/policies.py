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
from dynaspec.spec.adaptive import build_adaptive_policy
from dynaspec.spec.auto_schedule import plan_auto_schedule
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.config import AUTO_SCHEDULE
from dynaspec.spec.planner import build_goodput_planner
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


"""`draft_len_schedule: auto`: the goodput-optimal static schedule, planned at engine start-up.

The issue-6 tuner (`dynaspec tune`) run inside the engine: once CUDA graphs for every k in
0..max_draft_len are captured, T(batch, k) comes from the cost probe (runtime/cost_probe.py) or from
`step_cost_file`, per-position acceptance from `acceptance_profile`, and the same pure functions pick
k per batch size (`choose_draft_lens`: argmax of (E[accepted | k] + 1) * batch / T(batch, k), SmartSpec,
Liu et al. 2024, arXiv 2406.14066) and compress the choices into a schedule (`compress_schedule`,
spec/goodput_schedule.py). The batch sizes planned for are the cost model's measured buckets; a batch
above the largest bucket uses the largest bucket's k (the schedule's last entry).

The result runs as an ordinary static SchedulePolicy. When k = 0 wins at the smallest batch size no
config-style schedule exists (its entry 1 must be >= 1): the schedule in force is then {1: 0}, no
speculation at any batch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dynaspec.spec.acceptance_profile import load_acceptance_profile
from dynaspec.spec.config import AUTO_SCHEDULE
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.goodput_schedule import Choice, Schedule, choose_draft_lens, compress_schedule
from dynaspec.spec.schedule_policy import SchedulePolicy

logger = logging.getLogger(__name__)


@dataclass
class AutoSchedule:
    """What start-up planned: the schedule in force, the tuner's plan and choices, and their inputs."""

    schedule: dict[int, int]
    plan: Schedule
    choices: list[Choice]
    acceptance_per_position: list[float]
    acceptance_profile: str
    step_costs: str  # "probe" (measured at start-up) or the step_cost_file path
    cost_model: StepCostModel  # T(batch, k) as planned with (the engine does not refine it afterwards)
    policy: SchedulePolicy  # the schedule as a policy; its stats() carry as_dict() as `auto_schedule`

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (string keys) for get_stats() and logs."""
        return {
            "schedule": {str(t): k for t, k in self.schedule.items()},
            "acceptance_profile": self.acceptance_profile,
            "acceptance_per_position": list(self.acceptance_per_position),
            "step_costs": self.step_costs,
            "choices": [
                {"batch_size": c.batch_size, "k": c.k, "predicted_tokens_per_s": c.predicted_tokens_per_s}
                for c in self.choices
            ],
            "capped": [list(c) for c in self.plan.capped],
        }


def plan_auto_schedule(spec_config: Any, cost_model: StepCostModel) -> AutoSchedule:
    """The schedule for a speculative config with draft_len_schedule "auto", from measured step costs.

    spec_config supplies max_draft_len (the largest k considered), acceptance_profile (required) and
    max_concurrency (kept in the resulting policy).
    """
    if spec_config.draft_len_schedule != AUTO_SCHEDULE:
        raise ValueError(
            f"plan_auto_schedule needs draft_len_schedule 'auto', got {spec_config.draft_len_schedule!r}"
        )
    if spec_config.acceptance_profile is None:
        raise ValueError("draft_len_schedule 'auto' needs acceptance_profile (per-position acceptance to plan with)")
    if not cost_model.batch_sizes:
        raise ValueError("draft_len_schedule 'auto': the step-cost model is empty (no batch size measured)")
    alphas = load_acceptance_profile(spec_config.acceptance_profile)
    max_draft_len = spec_config.max_draft_len
    choices = choose_draft_lens(alphas, cost_model, cost_model.batch_sizes, max_draft_len)
    plan = compress_schedule({c.batch_size: c.k for c in choices})
    schedule = dict(plan.schedule) if plan.schedule is not None else {1: 0}
    policy = SchedulePolicy.from_schedule(schedule, max_draft_len, spec_config.max_concurrency)
    logger.info(
        "draft_len_schedule auto: %s (k per batch size %s; step costs: %s; acceptance: %s)",
        schedule, {c.batch_size: c.k for c in choices}, spec_config.step_cost_file or "probe",
        spec_config.acceptance_profile,
    )
    planned = AutoSchedule(
        schedule=schedule,
        plan=plan,
        choices=choices,
        acceptance_per_position=[float(a) for a in alphas],
        acceptance_profile=str(spec_config.acceptance_profile),
        step_costs=str(spec_config.step_cost_file) if spec_config.step_cost_file is not None else "probe",
        cost_model=cost_model,
        policy=policy,
    )
    policy.planned = planned
    return planned


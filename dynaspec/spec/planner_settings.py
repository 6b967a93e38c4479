"""The goodput planner's settings: one object, one set of defaults (the engine's).

spec/planner.py describes what each setting does; docs/lab/planner_history.md records the measurements
behind the defaults. The engine builds its planner with `PlannerSettings(hysteresis=...,
max_concurrency=...)` from the validated speculative config and every other field at its default; tests
and simulations pass their own. Validated once, here (pydantic, strict: no bools for numbers).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PlannerSettings(BaseModel):
    """Every knob of the goodput planner (spec/planner.py), at the values the engine runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # Relative goodput gain the best k needs over the k in force to replace it (hysteresis rule).
    hysteresis: float = Field(default=0.02, ge=0.0, allow_inf_nan=False)
    # More active requests than this -> k = 0 (None: no limit).
    max_concurrency: int | None = Field(default=None, ge=1)
    # Every explore_every-th decision below the largest k tries the next larger k (None: never explore).
    explore_every: int | None = Field(default=64, ge=1)
    # Fraction of the predicted time of below-max decisions that explorations may cost (None: no budget).
    explore_budget: float | None = Field(default=0.01, gt=0.0, le=1.0)
    # An exploration or probe from k = 0 may cost at most this many plain steps of drafter catch-up.
    explore_catch_up_steps: float = Field(default=2.0, ge=0.0)
    # An unvisited neighbouring k predicted within this (relative) of the k in force runs (None: no probes).
    probe_margin: float | None = Field(default=0.10, ge=0.0, lt=1.0)
    # Observations (acceptance outcomes, step times, releases) after which a goodput table is recomputed.
    replan_every: int = Field(default=16, ge=1)
    # A (batch bucket, k) cell last run more than this many decisions ago counts as unmeasured again for the
    # probe rule (None: never): a near-tie held on old acceptance data is checked again, since acceptance
    # changes along a request (spec/planner.py; docs/lab/planner_history.md, "Stuck at k = 0").
    reprobe_after: int | None = Field(default=32, ge=1)
    # Real steps a (batch bucket, k) cell needs before their median replaces probe + overhead model.
    min_observed_steps: int = Field(default=4, ge=1)
    # Goodput tables kept at most (one per batch size and set of requests met recently).
    max_tables: int = Field(default=64, ge=1)
    # Trials behind the pooled acceptance estimate (AcceptanceEstimator memory_trials).
    estimate_memory_trials: int = Field(default=256, ge=1)
    # Largest batch whose decisions blend in the requests' own acceptance (larger: the pooled estimate).
    per_request_max_batch: int = Field(default=16, ge=0)
    # A request's own estimate: a running mean of its first 1 / rate trials per position, then an EMA.
    request_ema_rate: float = Field(default=1.0 / 64, gt=0.0, le=1.0)
    # Pseudo-trials of the pooled estimate in a request's blend until finished requests tell how much
    # requests differ (AcceptanceEstimator learn_blend_count, spec/request_spread.py).
    request_blend_count: float = Field(default=32.0, gt=0.0, allow_inf_nan=False)
    # Without an acceptance profile, the pooled estimate starts at alpha 0.5 per position weighted as this many
    # trials: one early miss (an n-gram drafter with no match yet) must not read as alpha = 0 and keep the
    # planner at k = 0 until a rare exploration (with the first step setting the estimate, the Qwen pair on an
    # H200 stayed at k = 0 at batch 1 where k = 3 ran 1.8x; docs/lab/planner_history.md).
    cold_start_trials: float = Field(default=4.0, ge=0.0, allow_inf_nan=False)
    # adaptive trims drafts by the drafter's confidence in steps of at least this many decoding requests
    # (spec/draft_trimming.py: at batch 1 the host round trip costs more than the verify rows it could save).
    trim_min_batch: int = Field(default=2, ge=1)
    # ... and only at batches where verifying every draft position costs at least this share of a plain
    # step more than verifying none (the drafting is sunk once the drafts exist): a trimmed step reads the
    # confidences on the host and cannot chain, ~0.5 ms a step on an H100 (adaptive's k = 4 steps 3.6 ms
    # against static k = 4's 3.1 ms at batch 1, Qwen2.5-Coder-1.5B, 2026-12-06), a quarter of a plain step.
    trim_min_saving: float = Field(default=0.25, ge=0.0, allow_inf_nan=False)
    # ... and stops at a batch (and below) once the median of this many trimmed steps there took at least what
    # the untrimmed step is priced at: the host's read of the confidences also costs the overlap of host and
    # GPU work, which grows with the batch (H100, the Qwen head at batch 64, 2026-12-06: trimmed steps of
    # 6.3 ms verifying nothing against static k = 3's 4.3 ms verifying every draft).
    trim_verdict_steps: int = Field(default=3, ge=1)
    # adaptive, while the batch drains (no request waits or prefills): where the most-tokens-a-second allocation
    # would end the batch more than this share later than the allocation that ends it soonest, the latter
    # (spec/drain.py); None: tokens a second throughout. 0 since the drain model prices the shrinking batch and
    # the draws' spread (2026-12-07): replayed at an H100's draft-model prices, 8 seeds, adaptive / best static at
    # batch 4, 16, 64, 128 was 0.981, 0.958, 0.994, 0.989 at 0 against 0.979, 0.937, 0.978, 0.986 at 0.05, and the
    # n-gram replay 0.99-1.00 at both (scripts/lab/warm_sweep_replay.py).
    drain_tolerance: float | None = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # ... in draining batches of at most this many decoding requests: the drain is replanned whenever a request
    # ends, ~1 ms of host work at 256 on the dev CPU, done by refresh() while a step runs (a new composition's
    # first decision takes the latest drain plan's k_i: spec/allocation_tables.py). It was 64 while those plans
    # ran on the critical path; at 64 the draft-model sweep's closed batch of 128 (H100, 2026-12-07 08:23 UTC)
    # drained from 120 requests to 65 at k = 4 where static k = 1 ran 1.42x static k = 4, its end set by the
    # chat requests; planned up to 256, adaptive ran k = 0 there, 1.00x no spec (08:50 UTC, docs/lab/adaptive_runs.md).
    drain_max_batch: int = Field(default=256, ge=2)


def settings_property(name: str) -> property:
    """An attribute of an object with `settings` that reads settings.<name>; assigning it replaces the
    settings by a copy with that change (tests and benchmarks tweak a built planner this way)."""

    def get(owner: Any) -> Any:
        return getattr(owner.settings, name)

    def set_(owner: Any, value: Any) -> None:
        owner.settings = owner.settings.model_copy(update={name: value})

    return property(get, set_, doc=f"settings.{name}")

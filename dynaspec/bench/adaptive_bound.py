"""The bound of per-request draft lengths (issue 20): what an oracle that knows every request's acceptance
can gain over one k for the whole batch and over no speculation, at each concurrency, from step costs alone.

For `batch` requests, a fraction of which replays each acceptance profile (p_j: the conditional acceptance of
draft position j), survival s(j) = p_0 ... p_j (spec/adaptive_allocation.survival), and a price T(batch, B) of
a step verifying B draft positions in all:

    no spec      batch / T(batch, 0)
    uniform      max over k of (batch + sum_i sum_{j<k} s_i(j)) / T(batch, batch * k)   (best static k = the
                 uniform goodput planner's oracle)
    per request  max over B of (batch + the B largest survivals) / T(batch, B)            (plan_allocation)

All three are expected committed tokens per second of a steady step; the per-request line is the optimum
`draft_len_policy: adaptive` aims for with its estimates converged, so it bounds what the policy can gain.

trace_bound carries the bound to a trace of phases (bench-trace's diurnal day): each phase's tokens at its
concurrency's steady rate, per line; the lines are no spec, every static k held all day, the uniform oracle of
each phase (what uniform goodput aims for) and the per-request oracle of each phase. Steady steps only (no
ramps, prefill or tails), so it bounds the ratios between the lines, not their tokens/s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.adaptive_allocation import plan_allocation, survival


def mixed_survivals(batch: int, profiles: Sequence[Sequence[float]], max_draft_len: int) -> list[list[float]]:
    """Survivals of `batch` requests, request i replaying profiles[i % len(profiles)] (a 50/50 mix for two),
    positions past a profile's end reusing its last value (as the replay does)."""
    out = []
    for i in range(batch):
        alphas = list(profiles[i % len(profiles)])
        alphas += [alphas[-1]] * max(0, max_draft_len - len(alphas))
        out.append(survival(alphas[:max_draft_len]))
    return out


def bound_at(batch: int, profiles: Sequence[Sequence[float]], max_draft_len: int,
             step_seconds: Callable[[int, int], float]) -> dict[str, Any]:
    """No spec, best uniform k and per-request optimum at one concurrency; step_seconds(batch, B)."""
    survivals = mixed_survivals(batch, profiles, max_draft_len)
    no_spec = batch / step_seconds(batch, 0)
    uniform, best_k = no_spec, 0
    for k in range(1, max_draft_len + 1):
        tokens = batch + sum(sum(s[:k]) for s in survivals)
        rate = tokens / step_seconds(batch, batch * k)
        if rate > uniform:
            uniform, best_k = rate, k
    plan = plan_allocation(survivals, lambda positions, longest: step_seconds(batch, positions))
    per_request = plan.goodput
    return {
        "batch": batch, "no_spec_tokens_per_s": no_spec, "uniform_tokens_per_s": uniform, "uniform_best_k": best_k,
        "per_request_tokens_per_s": per_request, "per_request_budget": plan.budget,
        "per_request_draft_lens": sorted(set(plan.draft_lens)),
        "per_request_over_uniform": per_request / uniform, "per_request_over_no_spec": per_request / no_spec,
    }


def bound_table(batches: Sequence[int], profiles: Sequence[Sequence[float]], max_draft_len: int,
                step_seconds: Callable[[int, int], float]) -> list[dict[str, Any]]:
    """bound_at for every concurrency."""
    return [bound_at(b, profiles, max_draft_len, step_seconds) for b in batches]


def bound_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table as markdown (docs/results.md)."""
    lines = ["| concurrency | no spec tok/s | best uniform k | uniform tok/s | per-request tok/s | k_i used "
             "| per-request / uniform | per-request / no spec |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['no_spec_tokens_per_s']:.0f} | {r['uniform_best_k']} | {r['uniform_tokens_per_s']:.0f} "
            f"| {r['per_request_tokens_per_s']:.0f} | {','.join(map(str, r['per_request_draft_lens']))} "
            f"| {r['per_request_over_uniform']:.3f} | {r['per_request_over_no_spec']:.3f} |"
        )
    return "\n".join(lines)


def trace_bound(phases: Sequence[int], tokens_per_phase: Sequence[int], profiles: Sequence[Sequence[float]],
                max_draft_len: int, step_seconds: Callable[[int, int], float]) -> dict[str, Any]:
    """Tokens/s over a trace (module docstring): phase i generates tokens_per_phase[i] tokens at concurrency
    phases[i]; a line's tokens/s is all tokens over the sum of each phase's tokens / the line's rate there."""
    rows = {c: bound_at(c, profiles, max_draft_len, step_seconds) for c in sorted(set(phases))}
    static: dict[int, dict[int, float]] = {}  # k -> concurrency -> tokens/s of uniform k held there
    for c in rows:
        survivals = mixed_survivals(c, profiles, max_draft_len)
        for k in range(max_draft_len + 1):
            tokens = c + sum(sum(s[:k]) for s in survivals)
            static.setdefault(k, {})[c] = tokens / step_seconds(c, c * k)
    total = sum(tokens_per_phase)

    def over_day(rate_at: Callable[[int], float]) -> float:
        return total / sum(n / rate_at(c) for c, n in zip(phases, tokens_per_phase))

    static_day = {k: over_day(lambda c, k=k: static[k][c]) for k in static}
    best_k = max(static_day, key=static_day.get)
    uniform = over_day(lambda c: rows[c]["uniform_tokens_per_s"])
    per_request = over_day(lambda c: rows[c]["per_request_tokens_per_s"])
    return {
        "static_tokens_per_s": static_day, "best_static_k": best_k, "uniform_oracle_tokens_per_s": uniform,
        "per_request_tokens_per_s": per_request, "per_request_over_uniform": per_request / uniform,
        "per_request_over_best_static": per_request / static_day[best_k],
        "uniform_over_best_static": uniform / static_day[best_k], "per_phase": rows,
    }


def trace_bound_markdown(bound: dict[str, Any]) -> str:
    """trace_bound's day totals as a markdown table."""
    static = ", ".join(f"k={k}: {v:.0f}" for k, v in bound["static_tokens_per_s"].items())
    return "\n".join([
        "| static k all day (tok/s) | best static | uniform oracle per phase | per-request oracle per phase "
        "| per-request / uniform | per-request / best static | uniform / best static |",
        "|---|---|---|---|---|---|---|",
        f"| {static} | k={bound['best_static_k']} | {bound['uniform_oracle_tokens_per_s']:.0f} "
        f"| {bound['per_request_tokens_per_s']:.0f} | {bound['per_request_over_uniform']:.3f} "
        f"| {bound['per_request_over_best_static']:.3f} | {bound['uniform_over_best_static']:.3f} |",
    ])


def probed_costs_from_bench(result: dict[str, Any], line: str = "goodput") -> list[tuple[int, int, float]]:
    """(batch, k, probed seconds) of a `dynaspec bench` result's goodput line: its planner view records the
    start-up probe's T(batch, k) at every batch it ran, so a bound can be computed from a recorded run. A bound's
    own result (its `probed_step_seconds`, as docs/lab/data keeps them) is read as well."""
    if "probed_step_seconds" in result:
        return [(int(batch), int(k), seconds) for batch, row in result["probed_step_seconds"].items()
                for k, seconds in row.items()]
    out = []
    for point in result.get("points", []):
        view = point.get("planner_view") or {}
        if point.get("line") == line and "table" in view:
            out += [(point["batch_size"], row["k"], row["probed_seconds"]) for row in view["table"]]
    if not out:
        raise ValueError(f"no {line!r} line with a planner view in this bench result: "
                         "run it with --policy-lines goodput")
    return out


def recorded_cost_model(bench_json: Path) -> StepCostModel:
    """T(batch, k) as the start-up probe measured it in a recorded `dynaspec bench` run (probed_costs_from_bench)."""
    return StepCostModel.fit_from_measurements(probed_costs_from_bench(json.loads(Path(bench_json).read_text())))

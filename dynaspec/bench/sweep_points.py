"""The sweep's results (`dynaspec bench`): one Point per (line, batch size), the SweepResult JSON, the envelope.

Reported per point: committed output tokens per second, mean step time, mean accepted length (tokens
committed per request per decode step, "tau" of Leviathan et al. 2023, counting k = 0 steps as 1) and the
fraction of decode steps whose k was the line's nominal k at that batch. With a workload every point records
each request's output token ids, and each line's points say whether those are the no-spec line's tokens at
the same batch size (`mark_token_agreement`: greedy speculative decoding must not change them).
A side-by-side sweep (rounds > 1) merges a point's rounds into one (`merge_rounds`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "dynaspec.bench.sweep/1"


@dataclass
class Point:
    """One (line, batch) measurement; times in seconds."""

    line: str
    batch_size: int
    nominal_k: int
    decode_tokens: int
    decode_time_s: float
    num_decode_steps: int
    decode_tokens_per_s: float
    mean_step_time_s: float
    median_step_time_s: float
    mean_accepted_length: float
    acceptance_rate: float | None
    k_match_fraction: float
    k_histogram: dict[str, int]
    prefill_time_s: float
    num_preemptions: int
    # Workload mode only (None with random prompts): per-request output token ids in request order, and
    # how they compare with the "no spec" line's at the same batch size (sweep_prompts.token_agreement).
    output_token_ids: list[list[int]] | None = None
    same_tokens_as_no_spec: bool | None = None
    requests_same_as_no_spec: int | None = None
    first_divergence: int | None = None
    # Goodput line only: how often each (reason, k) decided a decode-phase step, e.g. "explore k=1".
    planner_decisions: dict[str, int] | None = None
    # Every decode-phase step as [milliseconds, decoding requests, k, drafted, accepted, the policy's reason,
    # path, trimmed, verify wait ms], in order (all rounds); drafted / accepted / path / trimmed / wait describe the
    # step the engine verified in that call (with deferred verification, the one before), the reason is the
    # planner's ("" without one), path how its forward ran ("graph", "ragged", "mixed", "chained", "eager",
    # "overlapped"), trimmed the draft positions the policy's trim left unverified, verify wait how long the
    # verification's host read took (waiting for the device: the call's milliseconds less it are host work).
    step_log: list[list] = field(default_factory=list)
    # The same rows for the steps before every request had its first token (the prefill phase: steps that prefill
    # prompt chunks beside the requests already decoding; decoding requests 0 and path "" for a step without any).
    prefill_step_log: list[list] = field(default_factory=list)
    # The whole batch, first step to last: every output token over prefill + decode time. The decode
    # phase alone starts where the policy's speculation during the prefill ramp left the requests, so a
    # policy that speculated there is charged the ragged tail but not credited the tokens; this is not.
    batch_tokens: int = 0
    batch_tokens_per_s: float = 0.0
    # Side-by-side sweeps (rounds > 1): each round's tokens/s; decode_tokens_per_s is their median.
    round_tokens_per_s: list[float] | None = None
    # Milliseconds of each full (generation-2) garbage collection during the timed batch (all rounds).
    gc_full_collections_ms: list[float] = field(default_factory=list)
    # The policy's view of this batch size after the point (DraftLenPolicy.view; None for static lines): the
    # goodput planner's table (per k the expected accepted tokens, predicted step seconds and goodput), the
    # adaptive policy's allocation, prices and overhead fit; both with their catch-up price.
    planner_view: dict[str, Any] | None = None
    # ... and before the measured batch (what its first decisions were made with: issue 20's batch-4 holds).
    planner_view_at_start: dict[str, Any] | None = None


@dataclass
class SweepResult:
    metadata: dict[str, Any]
    lines: list[dict[str, Any]]
    points: list[Point] = field(default_factory=list)
    floor: list[dict[str, float]] | None = None
    hf: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "metadata": self.metadata,
            "lines": self.lines,
            "points": [asdict(p) for p in self.points],
            "floor": self.floor,
            "hf": self.hf,
            "envelope": envelope([asdict(p) for p in self.points]),
        }


def envelope(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size: the schedule's tokens/s next to the best static k and no spec."""
    out = []
    for batch in sorted({p["batch_size"] for p in points}):
        at = {p["line"]: p["decode_tokens_per_s"] for p in points if p["batch_size"] == batch}
        static = {name: v for name, v in at.items() if name.startswith("k=")}
        best = max(static, key=static.get) if static else None
        out.append({
            "batch_size": batch,
            "no_spec_tokens_per_s": at.get("no spec"),
            "best_static_line": best,
            "best_static_tokens_per_s": static.get(best) if best else None,
            "schedule_tokens_per_s": at.get("schedule"),
        })
    return out


def mark_token_agreement(points: list[Point]) -> None:
    """Fill each point's `same_tokens_as_no_spec` fields from the "no spec" point of its batch size
    (left None where the sweep has no "no spec" line or a point recorded no tokens)."""
    from dynaspec.bench.sweep_prompts import token_agreement

    reference = {p.batch_size: p.output_token_ids for p in points if p.line == "no spec"}
    for p in points:
        ref = reference.get(p.batch_size)
        if ref is None or p.output_token_ids is None:
            continue
        agreement = token_agreement(ref, p.output_token_ids)
        p.same_tokens_as_no_spec = agreement.identical
        p.requests_same_as_no_spec = agreement.num_identical
        p.first_divergence = agreement.first_divergence


def merge_rounds(points: list[Point]) -> Point:
    """One point from the rounds of a (line, batch): totals summed, tokens/s the median of the rounds'
    (robust to a round disturbed by the shared machine), the rounds' own figures kept."""
    if not points:
        raise ValueError("merge_rounds needs at least one point")
    first = points[0]
    if len(points) == 1:
        return first
    steps = sum(p.num_decode_steps for p in points)
    time_s = sum(p.decode_time_s for p in points)
    histogram: dict[str, int] = {}
    decisions: dict[str, int] = {}
    for p in points:
        for key, count in p.k_histogram.items():
            histogram[key] = histogram.get(key, 0) + count
        for key, count in (p.planner_decisions or {}).items():
            decisions[key] = decisions.get(key, 0) + count
    nominal = sum(p.k_match_fraction * p.num_decode_steps for p in points)
    spec_steps = [(p.mean_accepted_length, p.num_decode_steps) for p in points if p.mean_accepted_length]
    rates = [p.acceptance_rate for p in points if p.acceptance_rate is not None]
    return Point(
        line=first.line,
        batch_size=first.batch_size,
        nominal_k=first.nominal_k,
        decode_tokens=sum(p.decode_tokens for p in points),
        decode_time_s=time_s,
        num_decode_steps=steps,
        decode_tokens_per_s=statistics.median(p.decode_tokens_per_s for p in points),
        mean_step_time_s=time_s / steps if steps else 0.0,
        median_step_time_s=statistics.median(r[0] / 1e3 for p in points for r in p.step_log) if steps else 0.0,
        mean_accepted_length=(
            sum(m * n for m, n in spec_steps) / sum(n for _, n in spec_steps) if spec_steps else 0.0
        ),
        acceptance_rate=statistics.mean(rates) if rates else None,
        k_match_fraction=nominal / steps if steps else 0.0,
        k_histogram=dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
        prefill_time_s=sum(p.prefill_time_s for p in points),
        num_preemptions=sum(p.num_preemptions for p in points),
        output_token_ids=first.output_token_ids,
        planner_decisions=dict(sorted(decisions.items())) if decisions else None,
        step_log=[row for p in points for row in p.step_log],
        prefill_step_log=[row for p in points for row in p.prefill_step_log],
        gc_full_collections_ms=[ms for p in points for ms in p.gc_full_collections_ms],
        batch_tokens=sum(p.batch_tokens for p in points),
        batch_tokens_per_s=statistics.median(p.batch_tokens_per_s for p in points),
        round_tokens_per_s=[p.decode_tokens_per_s for p in points],
        planner_view=points[-1].planner_view,
        planner_view_at_start=points[0].planner_view_at_start,
    )

"""Goodput-optimal static draft length per batch size: the planning step `dynaspec tune` and
`draft_len_schedule: auto` share.

Goodput planning after SmartSpec (Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large
Language Models Using Goodput", arXiv 2406.14066): with per-position conditional acceptance alpha_j
(Leviathan et al. 2023, arXiv 2211.17192) the expected committed tokens per request per step at draft
length k are E[accepted | k] + 1, so the predicted throughput of `batch` decoding requests is

    goodput(batch, k) = (E[accepted | k] + 1) * batch / T(batch, k)

where T(batch, k) is the measured step time (dynaspec.runtime.cost_model.StepCostModel).
`choose_draft_lens` picks the argmax k per batch size and `compress_schedule` turns the choices into a
TensorRT-LLM style `draft_len_schedule` (threshold -> k, the largest threshold <= batch applies). Both are
pure functions of their arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynaspec.spec.acceptance_estimator import expected_accepted_length
from dynaspec.runtime.cost_model import StepCostModel


def extend_alphas(alphas: Sequence[float], max_draft_len: int) -> list[float]:
    """alphas truncated or padded (repeating the last value, as AcceptanceEstimator does) to max_draft_len."""
    if not alphas:
        raise ValueError("acceptance per position must not be empty")
    return [float(alphas[min(j, len(alphas) - 1)]) for j in range(max_draft_len)]


def predicted_goodput(alphas: Sequence[float], cost: StepCostModel, batch: int, k: int) -> float:
    """(E[accepted | k] + 1) * batch / T(batch, k): predicted committed tokens per second."""
    return (expected_accepted_length(alphas, k) + 1.0) * batch / cost.cost(batch, k)


@dataclass
class Choice:
    """The tuner's pick at one batch size: k and the predicted tokens/s of every measured k."""

    batch_size: int
    k: int
    predicted_tokens_per_s: float
    predicted_by_k: dict[int, float]


def choose_draft_lens(
    alphas: Sequence[float], cost: StepCostModel, batch_sizes: Sequence[int], max_draft_len: int
) -> list[Choice]:
    """Per batch size the k in 0..max_draft_len (measured in `cost`) with the highest predicted goodput.

    Ties go to the smaller k (less work for the same predicted throughput).
    """
    if not batch_sizes:
        raise ValueError("batch_sizes must not be empty")
    alphas = extend_alphas(alphas, max(max_draft_len, 1))
    ks = [k for k in range(max_draft_len + 1) if cost.has(k)]
    if not ks:
        raise ValueError(f"the step-cost model measured none of k = 0..{max_draft_len}; it has {cost.draft_lens}")
    choices = []
    for batch in sorted(batch_sizes):
        by_k = {k: predicted_goodput(alphas, cost, batch, k) for k in ks}
        best = max(ks, key=lambda k: (by_k[k], -k))
        choices.append(Choice(batch, best, by_k[best], by_k))
    return choices


@dataclass
class Schedule:
    """A compressed schedule; `schedule` None means speculation does not pay at batch 1 (no config)."""

    max_draft_len: int | None
    schedule: dict[int, int] | None
    capped: list[tuple[int, int, int]] = field(default_factory=list)  # (batch, chosen k, written k)


def compress_schedule(choices: Mapping[int, int]) -> Schedule:
    """{batch: k} -> draft_len_schedule with an entry only where k changes; key 1 = the smallest batch's k.

    The config rules (spec/config.py) need schedule[1] == max_draft_len >= 1 and no larger value, so
    max_draft_len is the k chosen at the smallest batch size, and a larger k chosen at a bigger batch
    is capped to it (reported in `capped`). When k = 0 wins at the smallest batch size, speculation does
    not pay there and no schedule can say so (key 1 must be >= 1): `schedule` is None.
    """
    if not choices:
        raise ValueError("compress_schedule needs at least one batch size")
    items = sorted(choices.items())
    if items[0][0] < 1:  # (a public helper of `dynaspec tune`)
        raise ValueError(f"batch sizes must be ints >= 1, got {items[0][0]!r}")
    first = items[0][1]
    if first == 0:
        return Schedule(None, None, [(b, k, 0) for b, k in items if k > 0])
    schedule: dict[int, int] = {}
    capped = []
    previous = None
    for i, (batch, k) in enumerate(items):
        written = min(k, first)
        if written != k:
            capped.append((batch, k, written))
        if written != previous:
            schedule[1 if i == 0 else batch] = written
            previous = written
    return Schedule(first, schedule, capped)

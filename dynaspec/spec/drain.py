"""Draft lengths for a draining batch: finish the slowest request soonest, not the most tokens a second.

While requests wait, a finished request's slot is refilled at once, and the most committed tokens per second (the
goodput objective of spec/adaptive_allocation.py) is what serves them fastest. Once nothing waits and the batch's
caller closed it (an offline `LLM.generate`: LLMEngine.close_intake, Scheduler.drain_remaining), the batch only
shrinks, and its end comes when its slowest request ends. In serving, a finished request is replaced and the
goodput objective stays, bursts included. Speculation makes requests progress at different rates: a request that
accepts little commits ~1 token a step whatever k is, and every longer step slows it down. On an H100 (2026-12-06,
Qwen2.5-Coder-1.5B and its EAGLE head, 16 chat requests of 128 tokens) the goodput line's k = 3 steps committed
1.13x no spec's tokens a second while all 16 ran, then spent 39% of the time on 17% of the tokens as the batch
drained to its slowest requests: 0.86x no spec overall, where static k = 1 (kinder to the slow requests) ran 1.02x.

For an allocation k_i of a step priced T seconds, request i commits E_i = 1 + sum_{j < k_i} s_i(j) tokens a
step in expectation (s_i: its survivals) and has R_i tokens left before max_tokens, so were every step like
this one the batch would end after

    drain(k) = T * max_i R_i / E_i

seconds. Among candidate allocations (one k for every request, k = 0..max) it finds the smallest drain and
takes it where the goodput allocation's drain is more than `tolerance` longer; else the goodput allocation
stays, whose faster requests end sooner. A tolerance keeps the large wins of requests that accept well from
being traded for a sliver of the batch's end: copy-heavy requests drafting to k = 4 beside chat ones drafting
nothing cost the chat ones only the verify positions' share of a step, a few percent where verifying is cheap.
Replanned as the batch shrinks, this is a receding horizon: it prices the future steps at today's batch, which
is pessimistic about speculating later, when the batch is smaller and a step cheaper; each replan corrects it.
When all requests accept alike and have as many tokens left, it ranks as goodput does (T / E is common to all);
it departs from goodput only where requests differ.

Which request is slowest is uncertain before requests have drafted for a while: a new request's estimate is the
pooled one, and at its mean every request of a copy-next-to-chat batch looks alike, so the batch would start
drafting for all. The survivals passed here are therefore each request's slow case (the adaptive policy asks
AcceptanceEstimator.slow_case_alphas for the 1 / (batch + 1) quantile of its first-position rate, about the
slowest of `batch` requests drawn from the population): far below the mean where finished requests differed
and the request is unseen, near it where requests are alike or the request has shown its own rate. Replayed
(tests/test_drain.py, half the requests at 0.90, half at 0.10, after a warm-up batch), 0.981x no speculation
with the means and 0.999x with the slow cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynaspec.spec.adaptive_allocation import Allocation


def drain_seconds(allocation: Allocation, survivals: Sequence[Sequence[float]], remaining: Sequence[int]) -> float:
    """Predicted seconds until the last of these requests ends, were every step this allocation's."""
    slowest = 0.0
    for request, k_i, left in zip(survivals, allocation.draft_lens, remaining):
        slowest = max(slowest, max(0, left) / (1.0 + sum(request[:k_i])))
    return allocation.seconds * slowest


def drain_allocation(goodput: Allocation, candidates: Sequence[Allocation], survivals: Sequence[Sequence[float]],
                     remaining: Sequence[int], tolerance: float) -> Allocation:
    """`goodput` unless its drain_seconds exceed (1 + tolerance) x the smallest among `candidates` (the uniform
    allocations, adaptive_allocation.uniform_allocations); then that candidate (the first of equals)."""
    seconds = [drain_seconds(candidate, survivals, remaining) for candidate in candidates]
    soonest = min(range(len(candidates)), key=seconds.__getitem__)
    if drain_seconds(goodput, survivals, remaining) <= (1.0 + tolerance) * seconds[soonest]:
        return goodput
    return candidates[soonest]

"""Draft lengths for a draining batch: end the batch soonest, not the most tokens a second.

While requests wait, a finished request's slot is refilled at once, and the most committed tokens per second (the
goodput objective of spec/adaptive_allocation.py) is what serves them fastest. Once nothing waits and the batch's
caller closed it (an offline `LLM.generate`: LLMEngine.close_intake, Scheduler.drain_remaining), the batch only
shrinks, and its tokens a second are its tokens over the time its last request ends. In serving, a finished request
is replaced and the goodput objective stays, bursts included. Speculation makes requests progress at different
rates: a request that accepts little commits ~1 token a step whatever k is, and every longer step slows it down. On
an H100 (2026-12-06, Qwen2.5-Coder-1.5B and its EAGLE head, 16 chat requests of 128 tokens) the goodput line's k = 3
steps committed 1.13x no spec's tokens a second while all 16 ran, then spent 39% of the time on 17% of the tokens
as the batch drained to its slowest requests: 0.86x no spec overall, where static k = 1 (kinder to the slow
requests) ran 1.02x.

The batch's end under an allocation k_i kept to the end (`drain_seconds`). Request i commits X_i = 1 + a_i tokens
a step, a_i the drafts accepted, with mean E_i = 1 + sum_{j < k_i} s_i(j) and variance Var(a_i) = sum_{j < k_i}
(2j + 1) s_i(j) - (E_i - 1)^2 (s_i: its survivals; a_i >= j + 1 with probability s_i(j)). With R_i tokens left it
needs about n_i = R_i / E_i steps, the mean of a renewal count whose spread is sqrt(R_i Var / E_i^3) (the renewal
central limit theorem). Requests leave in the order of their n_i, and each step is priced at the requests still in
it (`price(batch, positions, longest k_i)`: the probe's price where the step runs, a batch's share of host work),
so a speculative allocation's later steps cost what a smaller batch costs; the last request then runs alone to
the batch's end, the expected largest of the requests' step counts, each about normal with mean n_i and variance

    sigma_i^2 = R_i Var / E_i^3 + (n_i^slow - n_i)^2

where n_i^slow = R_i / E_i^slow is the request one standard deviation of its rate's estimate slower (below). For
B alike requests that largest is n + z_B sigma, z_B = Phi^-1((B - 0.375) / (B + 0.25)) (Blom 1958, "Statistical
estimates and transformed beta-variables"); `expected_last_end` takes the t at which as many requests are expected
beyond t as there, which holds for requests that differ too (one far behind the rest ends near its own mean). The
two sources of slowness, a request's rate's uncertainty and its own draws, are independent. Checked against
closed batches replayed with static k at an H100's prices (the draft-model sweep of 2026-12-07 08:23, code-edit
next to chat, host work injected; the profiles' true rates, so no rate uncertainty:
scripts/lab/drain_model_check.py): the model put every static line at batch 4-128 within 0.99-1.07x of its
replayed tokens/s. Without the draws' spread it overrated k = 3-4 by 10-17% at batch 16-128 (at
64 it ranked k = 3 first, 11,518 tok/s against 9,816 replayed, where k = 2 replayed best); without the shrinking
batch it underrated speculation at 64-128 by up to 20% (k = 2 at 64: 9,440 against 10,011 replayed, below k = 0).

Among candidate allocations (one k for every request, k = 0..max) it finds the soonest end and takes it where the
goodput allocation's end is more than `tolerance` later (PlannerSettings.drain_tolerance, 0 by default: the end
is the closed batch's whole objective); else the goodput allocation stays, whose faster requests end sooner.
Replanned as the batch shrinks, this is a receding horizon: each replan corrects the last.

Which request is slowest is uncertain before requests have drafted for a while: a new request's estimate is the
prior of a request (the mean of finished requests, spec/acceptance_estimator.py), and at its mean every request of
a copy-next-to-chat batch looks alike, so the batch would start drafting for all. The `slow` survivals passed here
carry that uncertainty: the adaptive policy asks AcceptanceEstimator.slow_case_alphas for each position's rate
one standard deviation of its beta-binomial posterior below its mean: wide where finished requests differed and the
request is unseen, narrow where requests are alike or the request has shown its own rate. Replayed
(tests/test_drain.py, half the requests at 0.90, half at 0.10, after a warm-up batch), the means alone gave 0.981x
no speculation; the rule with the rates' uncertainty >= 0.99x.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from dynaspec.spec.adaptive_allocation import Allocation, Pricing

Price = Callable[[int, int, int], float]  # (decoding requests, draft positions, longest k_i) -> step seconds


def shrinking_price(pricing_at: Callable[[int], Pricing], ragged_premium_at: Callable[[int], float]) -> Price:
    """The Price of a batch's steps as its requests leave: `pricing_at(batch)` (looked up once a batch size), plus
    `ragged_premium_at(batch)` where the k_i differ."""
    pricings: dict[int, Pricing] = {}

    def price(batch: int, positions: int, longest: int) -> float:
        pricing = pricings.get(batch)
        if pricing is None:
            pricing = pricings[batch] = pricing_at(batch)
        ragged = positions != batch * longest
        return pricing(positions, longest) + (ragged_premium_at(batch) if ragged else 0.0)

    return price


def expected_last_end(means: Sequence[float], spreads: Sequence[float], counts: Sequence[int] | None = None) -> float:
    """About the expected largest of independent normal draws N(means[i], spreads[i]^2), counts[i] of each (default
    one): the t where the expected number of draws above t is Blom's 0.625 B / (B + 0.25) (Blom 1958, "Statistical
    estimates and transformed beta-variables": for B alike draws t is then mean + Phi^-1((B - 0.375) / (B + 0.25))
    spread; one draw far above the rest ends near its own mean), by bisection to a hundredth of a step over the
    draws that can matter (alike draws counted once, with their number)."""
    counts = [1] * len(means) if counts is None else counts
    count = sum(counts)
    if count == 0:
        return 0.0
    above = 0.625 * count / (count + 0.25)
    low = max(means) - 1.0  # at or below the answer: the largest mean alone is above it with probability >= 1/2
    alike: Counter[tuple[float, float]] = Counter()
    for m, s, n in zip(means, spreads, counts):
        if m + 4.0 * s > low:
            alike[m, s] += n
    high = max(m + 4.0 * s for m, s in alike)
    while high - low > 0.01:
        middle = 0.5 * (low + high)
        expected = sum(n * _above(middle, m, s) for (m, s), n in alike.items())
        low, high = (middle, high) if expected > above else (low, middle)
    return 0.5 * (low + high)


def _above(t: float, mean: float, spread: float) -> float:
    """P(N(mean, spread^2) > t)."""
    if spread <= 0.0:
        return 1.0 if mean > t else 0.0
    return 0.5 * math.erfc((t - mean) / (spread * math.sqrt(2.0)))


def drain_seconds(draft_lens: Sequence[int], survivals: Sequence[Sequence[float]],
                  slow: Sequence[Sequence[float]], remaining: Sequence[int], price: Price) -> float:
    """Predicted seconds until the last of these requests ends, each keeping its k_i (module docstring).

    survivals / slow: each request's mean survivals per position and those with its positions' rates one
    standard deviation of their estimates lower; remaining: its tokens left."""
    return _drain_seconds(draft_lens, *_steps_table(survivals, slow, remaining), price)


def _steps_table(survivals: Sequence[Sequence[float]], slow: Sequence[Sequence[float]], remaining: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(means, spreads), each (requests, 1 + positions): request i's mean steps left drafting k a step, column k,
    and their spread (module docstring). numpy over every request at once: per request in Python this was 0.9 ms
    of a drain plan of 128 requests on the dev CPU. A request with fewer positions than others repeats its last
    column (no allocation gives it more)."""
    depth = max((len(row) for row in survivals), default=0)
    mean, low = np.zeros((len(survivals), depth)), np.zeros((len(survivals), depth))  # (n, K)
    for i, (row, row_low) in enumerate(zip(survivals, slow)):
        mean[i, : len(row)], low[i, : len(row_low)] = row, row_low
    left = np.maximum(0.0, np.asarray(remaining, dtype=float))[:, None]  # (n, 1)
    accepted = np.cumsum(mean, axis=1)  # drafts accepted a step, expected, drafting 1..K
    second = np.cumsum(mean * (2.0 * np.arange(depth) + 1.0), axis=1)  # E[a^2]
    tokens = 1.0 + accepted
    variance = np.maximum(0.0, second - accepted * accepted)  # of the tokens a step commits
    steps = left / tokens
    spread = np.hypot(left / (1.0 + np.cumsum(low, axis=1)) - steps, np.sqrt(left * variance / tokens ** 3))
    return np.hstack([left, steps]), np.hstack([np.zeros_like(left), spread])


def _drain_seconds(draft_lens: Sequence[int], means_by_k: np.ndarray, spreads_by_k: np.ndarray, price: Price) -> float:
    """drain_seconds from _steps_table's columns: requests leave in the order of their mean steps left, each
    interval between leavings priced at the requests still in it (their positions, their longest k_i)."""
    ks = np.asarray(draft_lens, dtype=np.int64)
    if ks.size == 0:
        return 0.0
    rows = np.arange(ks.size)
    means, spreads = means_by_k[rows, ks], spreads_by_k[rows, ks]  # (n,)
    end = expected_last_end(means.tolist(), spreads.tolist())
    last_k = int(ks[int(np.argmax(means + spreads))])
    order = np.argsort(means, kind="stable")
    leaving, first = np.unique(means[order], return_index=True)  # the times requests leave at, ascending
    by_time = ks[order]
    positions = np.cumsum(by_time[::-1])[::-1][first]  # of the requests still in from each leaving time on
    longest = np.maximum.accumulate(by_time[::-1])[::-1][first]
    still = ks.size - first
    seconds, done = 0.0, 0.0
    for steps, n, held, top in zip(leaving.tolist(), still.tolist(), positions.tolist(), longest.tolist()):
        if steps > done:
            seconds += price(n, held, top) * (steps - done)
            done = steps
    if end > done:  # the last request alone
        seconds += price(1, last_k, last_k) * (end - done)
    return seconds


def drain_allocation(goodput: Allocation, candidates: Sequence[Allocation], survivals: Sequence[Sequence[float]],
                     slow: Sequence[Sequence[float]], remaining: Sequence[int], price: Price,
                     tolerance: float) -> Allocation:
    """`goodput` unless its drain_seconds exceed (1 + tolerance) x the smallest among `candidates` (the uniform
    allocations, adaptive_allocation.uniform_allocations); then that candidate (the first of equals), its source
    "drain". Either carries its drain_gain: how much sooner than the candidate of k = 0 for every request it ends
    the batch at the requests' mean rates (the expected gain a switch from k = 0 weighs against the drafter's
    catch-up, spec/switch_hold.py; the slow case, which keeps the choice among candidates from speculating where an
    unseen request may be slow, would count that risk twice); None where no candidate is k = 0."""
    table = _steps_table(survivals, slow, remaining)

    def ends(allocation: Allocation) -> float:
        return _drain_seconds(allocation.draft_lens, *table, price)

    seconds = [ends(candidate) for candidate in candidates]
    soonest = min(range(len(candidates)), key=seconds.__getitem__)
    goodput_ends = next((end for candidate, end in zip(candidates, seconds)
                         if candidate.draft_lens == goodput.draft_lens), None)  # often one of them: priced once
    goodput_ends = ends(goodput) if goodput_ends is None else goodput_ends
    if goodput_ends <= (1.0 + tolerance) * seconds[soonest]:
        chosen = goodput
    else:
        chosen = replace(candidates[soonest], source="drain")
    plain = next((candidate for candidate in candidates if candidate.budget == 0), None)
    if plain is None:
        return chosen
    at_mean = _steps_table(survivals, survivals, remaining)  # the gain a switch expects: at the mean rates
    gain = _drain_seconds(plain.draft_lens, *at_mean, price) - _drain_seconds(chosen.draft_lens, *at_mean, price)
    return replace(chosen, drain_gain=gain)

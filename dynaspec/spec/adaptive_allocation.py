"""Per-request draft lengths from one budget of draft positions: the pure part of `draft_len_policy: adaptive`
(spec/adaptive.py runs it; tests call it with hand-made numbers).

vLLM's adaptive verification (PR #47808, and #52228 for drafters without a confidence head) scores every
(request i, draft position j) by its survival, the probability that the target accepts it:

    s_i(j) = prod_{m <= j} alpha_i(m)            (alpha_i(m): conditional acceptance of position m)

and verifies the global top-B positions, B chosen to maximise expected committed tokens per second. The
positions of one request are taken in order (s_i is non-increasing in j, and a draft token is only worth
verifying after the ones before it), so the top-B set is a prefix of each request's draft: k_i of them.
For a step where `batch` requests decode and B positions are allocated:

    committed(B) = batch + sum of the B survivals taken        (each request commits 1 token, plus drafts)
    goodput(B)   = committed(B) / T(batch, B)                  (B = 0: batch / T(batch, 0), no speculation)

B* = argmax over B in 0..batch * max_draft_len (ties: the smaller B). The uniform goodput planner
(spec/planner.py) is the special case where every k_i must be equal.

T(batch, B, longest) (the caller's `step_seconds(B, longest)`, longest = the largest k_i): a uniform step (B =
batch * longest) runs the CUDA graph of (batch, k) and costs the probed T(batch, k) of uniform steps, which
verifies batch * (1 + k) tokens; a ragged step's batch + B tokens are verified at a price interpolated linearly
in total tokens between the uniform steps around them (`step_seconds_by_tokens`, at the CUDA graph's padded
batch where one is given), and its drafting costs what drafting to the longest k_i costs: a chain drafter (a
draft model, an EAGLE head) drafts that far for every request (spec/adaptive.py prices the two apart, from the
probe's drafting share). Interpolating T itself would price drafting per drafted position: right for n-gram
lookups, 3.1 ms too low for a k = 4 step of a draft model at batch 1 on an H100 (2026-12-07).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Pricing = Callable[[int, int], float]  # (draft positions B, longest k_i) -> predicted step seconds (> 0)


def survival(alphas: Sequence[float]) -> list[float]:
    """[s(0), s(1), ...]: s(j) = prod_{m <= j} alphas[m], the probability that draft position j is accepted."""
    out, running = [], 1.0
    for alpha in alphas:
        running *= alpha
        out.append(running)
    return out


def allocation_order(survivals: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """Every (request index, survival) pair in the order the budget takes them: highest survival first,
    the positions of one request in order (ties: the smaller request index), all positions of all requests."""
    # One sort: survivals never grow along a request's positions, so ordering by (-s, i, j) keeps each
    # request's positions in order (equal survivals: the earlier position first); C-speed at batch 256.
    pairs = sorted((-s, i, j) for i, request in enumerate(survivals) for j, s in enumerate(request))
    return [(i, -negative) for negative, i, _ in pairs]


def allocate(survivals: Sequence[Sequence[float]], budget: int) -> list[int]:
    """k_i per request: the first `budget` pairs of allocation_order (budget is capped at the positions there are)."""
    draft_lens = [0] * len(survivals)
    for i, _ in allocation_order(survivals)[: max(0, budget)]:
        draft_lens[i] += 1
    return draft_lens


@dataclass(frozen=True)
class Allocation:
    """The chosen budget and what it predicts."""

    draft_lens: list[int]  # k_i per request
    budget: int  # B* = sum(draft_lens)
    expected_tokens: float  # committed tokens expected: batch + the allocated survivals
    seconds: float  # predicted T(batch, B*)
    next_request: int | None = None  # the request that position B* + 1 would go to (None: none is left)
    next_goodput: float | None = None  # predicted goodput with that position too (None: none is left)
    # how it was chosen: "goodput" (the most tokens a second), "drain" (the drain rule over that, spec/drain.py),
    # "provisional" (a new composition answered from the latest plan, spec/allocation_tables.py)
    source: str = "goodput"
    # a uniform k next to this uniform one to probe for the host-overhead fit (spec/neighbour_probe.py; None: none)
    neighbour: int | None = None
    # a draining batch's plan: seconds sooner than k = 0 for every request its last request is predicted to end, at
    # the mean rates (spec/drain.py; what leaving k = 0 gains, against the drafter's catch-up); None: not a drain's
    drain_gain: float | None = None

    @property
    def goodput(self) -> float:
        """Expected committed tokens per second."""
        return self.expected_tokens / self.seconds

    @property
    def ragged(self) -> bool:
        return len(set(self.draft_lens)) > 1


def plan_allocation(
    survivals: Sequence[Sequence[float]], step_seconds: Pricing, max_budget: int | None = None,
    ragged_premium: float = 0.0,
) -> Allocation:
    """B* maximising committed tokens per second, and its allocation.

    survivals: per decoding request, s_i(j) for its positions j = 0..max_draft_len-1 (survival()).
    step_seconds(B, longest): predicted seconds of the step with B draft positions in all, at most `longest` a
    request (> 0; module docstring).
    max_budget: the most positions considered (default: all of them).
    ragged_premium: seconds a ragged step costs beyond step_seconds(B, longest) (spec/ragged_premium.py); a budget
    whose allocation gives every request the same k_i does not pay it.
    """
    batch = len(survivals)
    order = allocation_order(survivals)
    if max_budget is not None:
        order = order[: max(0, max_budget)]
    best_b, best_tokens, best_seconds = 0, float(batch), step_seconds(0, 0)
    tokens = float(batch)
    taken, longest, best_longest = [0] * batch, 0, 0
    for b, (i, s) in enumerate(order, start=1):
        tokens += s
        taken[i] += 1
        longest = max(longest, taken[i])
        seconds = step_seconds(b, longest) + (ragged_premium if b != batch * longest else 0.0)  # uniform: k_i = longest
        if tokens * best_seconds > best_tokens * seconds:  # tokens / seconds > best, without dividing
            best_b, best_tokens, best_seconds, best_longest = b, tokens, seconds, longest
    draft_lens = [0] * batch
    for i, _ in order[:best_b]:
        draft_lens[i] += 1
    if best_b < len(order):
        next_request, next_survival = order[best_b]
        longer = max(best_longest, draft_lens[next_request] + 1)
        premium = ragged_premium if best_b + 1 != batch * longer else 0.0
        next_goodput = (best_tokens + next_survival) / (step_seconds(best_b + 1, longer) + premium)
        return Allocation(draft_lens, best_b, best_tokens, best_seconds, next_request, next_goodput)
    return Allocation(draft_lens, best_b, best_tokens, best_seconds)


def uniform_allocations(survivals: Sequence[Sequence[float]], step_seconds: Pricing) -> list[Allocation]:
    """One allocation per k = 0 .. the shortest request's positions: k for every request, priced, with its next
    position as uniform_at_longest gives it (the uniform step one longer)."""
    batch = len(survivals)
    depth = min((len(request) for request in survivals), default=0)
    out, tokens = [], float(batch)
    for k in range(depth + 1):
        tokens += sum(request[k - 1] for request in survivals) if k else 0.0
        plain = Allocation([k] * batch, batch * k, tokens, step_seconds(batch * k, k))
        out.append(uniform_at_longest(plain, survivals, step_seconds))
    return out


def highest_goodput(allocations: Sequence[Allocation]) -> Allocation:
    """The allocation of highest goodput (the first of equals: the shortest of uniform_allocations)."""
    return max(allocations, key=lambda allocation: allocation.goodput)


def best_uniform(survivals: Sequence[Sequence[float]], step_seconds: Pricing) -> Allocation:
    """The uniform allocation (one k for every request) of highest goodput, with uniform_at_longest's next
    position (the uniform step one longer)."""
    return highest_goodput(uniform_allocations(survivals, step_seconds))


def uniform_at_longest(allocation: Allocation, survivals: Sequence[Sequence[float]],
                       step_seconds: Pricing) -> Allocation:
    """`allocation` with every request drafting as far as its longest k_i (a uniform step), re-priced, and its
    next position the uniform step one longer (every request's position k: next_goodput prices that step,
    next_request is the request whose position k survives best). Where verifying the extra positions costs next
    to nothing (spec/adaptive.py decides where), a uniform step is cheaper to run than a ragged one, and so is
    probing one position further for every request than for one."""
    batch, k = len(survivals), max(allocation.draft_lens, default=0)
    tokens = batch + sum(sum(request[:k]) for request in survivals)
    seconds = allocation.seconds if allocation.budget == batch * k else step_seconds(batch * k, k)
    following = [(request[k], i) for i, request in enumerate(survivals) if len(request) > k]
    if not following:
        return Allocation([k] * batch, batch * k, tokens, seconds)
    next_request = max(following, key=lambda pair: (pair[0], -pair[1]))[1]
    next_goodput = (tokens + sum(s for s, _ in following)) / step_seconds(batch * (k + 1), k + 1)
    return Allocation([k] * batch, batch * k, tokens, seconds, next_request, next_goodput)


def step_seconds_by_tokens(
    cost: Callable[[int, int], float],
    batch: int,
    positions: int,
    max_draft_len: int,
    padded_batch: Callable[[int, int], int] | None = None,
) -> float:
    """T of a step where `batch` requests verify batch + `positions` tokens, from cost(batch, k) of uniform
    steps (batch * (1 + k) tokens): linear in total tokens between the uniform steps around it, at the
    batch the step runs (padded_batch(batch, k) of the larger k, a CUDA graph's bucket; None: batch)."""
    k_low, rest = divmod(max(0, positions), batch)
    if k_low >= max_draft_len:
        k_low, rest = max_draft_len, 0
    k_high = k_low + (rest > 0)
    run_batch = batch if padded_batch is None else padded_batch(batch, k_high)
    low = cost(run_batch, k_low)
    if rest == 0:
        return low
    return low + (cost(run_batch, k_high) - low) * rest / batch

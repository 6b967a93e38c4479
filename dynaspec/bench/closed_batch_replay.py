"""Closed batches replayed on a draft-length policy with injected step prices and acceptance draws: how its choices
would play out against a recorded run's numbers, on the CPU, with no model (tests and scripts/lab/drain_sim.py).

A batch of `batch` requests, each generating `gen` tokens, request i accepting draft position j with probability
profiles[i % len(profiles)][j] (given the positions before it were accepted), drawn as `dynaspec bench` draws them
(KeyedDraws: common random numbers, so two policies on one seed differ by their decisions, not their luck: the
per-seed ratio of adaptive to static k = 2 at a closed batch of 16 spreads with a standard deviation of 0.029, against
0.061 with one stream drawn in call order); a step of `b` decoding requests with
draft lengths k_i costs step_ms(b, [k_i]) milliseconds. The policy sees every step as the engine shows it (its
draft lengths, drafted and accepted counts, seconds) and each request's tokens left, since nothing waits: the
batch drains. Outcomes reach the policy as the engine feeds them: a step is decided, then the step before it is
observed and its finished requests released, then the decided batch refreshed. A warm-up batch of the same mix
runs first, as `dynaspec bench` runs one, so finished requests have taught the policy how much requests differ
(spec/request_spread.py).

steady_batch_tokens_per_ms replays the other case, the one issue 20's bound describes (bench/adaptive_bound.py):
a batch held at `batch` requests, each finished request replaced at once by a new one replaying the same profile
(slot i replays profiles[i % len(profiles)], so the batch keeps the bound's mix; replaced in turn, the requests that
speculation ends sooner would leave the batch to the others), and the policy is never asked about tokens left.
It tells whether the policy's choices reach the bound when its prices are right, apart from what a real engine
adds (host work, prefill steps).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import planning_estimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import DraftLenPolicy, StepOutcome
from dynaspec.spec.replay import KeyedUniforms


def closed_batch_tokens_per_ms(
    policy: DraftLenPolicy, step_ms: Callable[[int, list[int]], float], profiles: Sequence[Sequence[float]],
    seed: int, batch: int = 16, gen: int = 128, warmup: bool = True,
) -> float:
    """Tokens per millisecond of the measured batch (the last one)."""
    draws = KeyedDraws(seed)
    ms = 0.0
    fed: list[Callable[[], None]] = []  # the last step's outcome and releases, fed while the next one runs
    for round_ in (0, 1) if warmup else (1,):
        alphas = {f"b{round_}r{i}": profiles[i % len(profiles)] for i in range(batch)}
        left = {rid: gen for rid in alphas}
        ms = 0.0
        while left:
            ids = list(left)
            draft_lens = policy.draft_lens(len(ids), len(ids), ids, remaining=[left[r] for r in ids])
            for work in fed:  # the engine's order (engine/policy_feed.py): decide, launch, feed, refresh the launched
                work()
            policy.refresh(len(ids), ids)
            accepted = [draws.accepted(rid, alphas[rid], gen - left[rid], k) for rid, k in zip(ids, draft_lens)]
            seconds = step_ms(len(ids), list(draft_lens)) / 1e3
            outcome = StepOutcome(ids, max(draft_lens), drafted=list(draft_lens), accepted=accepted,
                                  draft_lens=list(draft_lens), seconds=seconds)
            fed = [lambda outcome=outcome: policy.observe(outcome)]
            ms += seconds * 1e3
            for rid, a in zip(ids, accepted):
                left[rid] -= 1 + a
                if left[rid] <= 0:
                    del left[rid]
                    fed.append(lambda rid=rid: policy.release(rid))
    for work in fed:
        work()
    return gen * batch / ms


def steady_batch_tokens_per_ms(
    policy: DraftLenPolicy, step_ms: Callable[[int, list[int]], float], profiles: Sequence[Sequence[float]],
    seed: int, batch: int, gen: int = 64, warmup_requests: int | None = None, measured_requests: int | None = None,
) -> float:
    """Tokens per millisecond of `batch` requests held steady (module docstring), over the steps after the first
    `warmup_requests` were admitted, until `measured_requests` more were (defaults: 2 x batch each); every
    request generates `gen` tokens."""
    draws = KeyedDraws(seed)
    warmup = 2 * batch if warmup_requests is None else warmup_requests
    measured = 2 * batch if measured_requests is None else measured_requests
    slot_of: dict[str, int] = {}
    left: dict[str, int] = {}
    started = 0

    def admit(slot: int) -> None:
        nonlocal started
        rid = f"r{started}"
        slot_of[rid], left[rid] = slot, gen
        started += 1

    for slot in range(batch):
        admit(slot)
    ms = tokens = 0.0
    while started < warmup + measured:
        ids = list(left)
        draft_lens = policy.draft_lens(len(ids), len(ids), ids)
        accepted = [draws.accepted(rid, profiles[slot_of[rid] % len(profiles)], gen - left[rid], k)
                    for rid, k in zip(ids, draft_lens)]
        seconds = step_ms(len(ids), list(draft_lens)) / 1e3
        policy.observe(StepOutcome(ids, max(draft_lens), drafted=list(draft_lens), accepted=accepted,
                                   draft_lens=list(draft_lens), seconds=seconds))
        if started > warmup:  # every warm-up request admitted: the batch has turned over
            ms += seconds * 1e3
            tokens += sum(min(1 + a, left[rid]) for rid, a in zip(ids, accepted))
        for rid, a in zip(ids, accepted):
            left[rid] -= 1 + a
            if left[rid] <= 0:
                del left[rid]
                policy.release(rid)
                admit(slot_of.pop(rid))
        policy.refresh(len(left), list(left))
    return tokens / ms


class KeyedDraws:
    """Accepted lengths drawn as `dynaspec bench` replays them (spec/replay.py, common random numbers): request r's
    uniform at generated position p is the p-th number of its own stream (KeyedUniforms); its draft position j
    (0-based) at p survives with alphas[j] once the ones before it did."""

    def __init__(self, seed: int) -> None:
        self._uniforms = KeyedUniforms(seed)

    def accepted(self, request_id: Hashable, alphas: Sequence[float], position: int, k: int) -> int:
        """Drafts accepted of k drafted at `position` (tokens the request generated so far)."""
        uniforms = self._uniforms.at_least(request_id, position + k)
        accepted, last = 0, len(alphas) - 1
        while accepted < k and uniforms[position + accepted] < alphas[min(accepted, last)]:
            accepted += 1
        return accepted


def interpolated_step_ms(plain_ms: Sequence[float], full_ms: Sequence[float], full_batch: int
                         ) -> Callable[[int, list[int]], float]:
    """step_ms from T(1, k) = plain_ms[k] and T(full_batch, k) = full_ms[k], linear in the batch between them; a
    ragged step priced by its positions between k = 0 and its largest k_i."""
    def uniform(batch: int, k: int) -> float:
        return plain_ms[k] + (full_ms[k] - plain_ms[k]) * (batch - 1) / (full_batch - 1)

    def step_ms(batch: int, draft_lens: list[int]) -> float:
        top = max(draft_lens)
        if top == 0 or len(set(draft_lens)) == 1:
            return uniform(batch, top)
        return uniform(batch, 0) + (uniform(batch, top) - uniform(batch, 0)) * sum(draft_lens) / (batch * top)

    return step_ms


def replayed_adaptive_policy(step_ms: Callable[[int, list[int]], float], max_batch: int, max_draft_len: int,
                             settings: PlannerSettings, acceptance_profile: str | None = None) -> AdaptivePolicy:
    """The adaptive policy as the engine builds it, its probed T(batch, k) = step_ms for batch 1..max_batch;
    acceptance_profile: the pooled start's profile (a path), as a speculative config's `acceptance_profile`."""
    costs = StepCostModel()
    for batch in range(1, max_batch + 1):
        for k in range(max_draft_len + 1):
            costs.add(batch, k, step_ms(batch, [k] * batch) / 1e3)
    estimator = planning_estimator(max_draft_len, acceptance_profile, settings)
    return AdaptivePolicy(costs, estimator, max_draft_len, settings)

"""`draft_len_policy: adaptive`: the goodput planner's per-request form, one draft length k_i per request.

Each decision (spec/adaptive_allocation.py, after vLLM's adaptive verification, PR #47808 / #52228):
survival s_i(j) of request i's draft position j from its own acceptance estimate blended with the pooled
one (spec/acceptance_estimator.py, as the goodput planner blends at small batches; here at every batch,
since the point is to tell requests apart), verify cost T(batch, B) by total tokens from the probed
T(batch, k) table (the same PolicyContext.step_costs() or step_cost_file, at the CUDA graph's padded batch
where given), and the budget B* of draft positions that maximises expected committed tokens per second,
allocated to the (request, position) pairs of highest survival. A copy-heavy request (its n-gram drafts
accepted) gets long drafts next to a chat request that gets none, in the same step.

Host cost, as the planner's: an allocation is computed per batch of decoding request ids and reused until
`replan_every` observations arrived; `refresh()` (called while the GPU runs a step) recomputes a due one,
so draft_lens() usually finds it ready, and a new composition takes the latest plan's k_i for one decision
(spec/allocation_tables.py; a draining batch that only lost requests keeps them for a step unplanned).
Learning: observe() feeds each request's drafted / accepted counts at its own k_i (StepOutcome.draft_lens),
so a request cut short by its k_i is not read as rejected at k_i.

Prices (`step_seconds`): where the step runs (spec/probed_prices.py): a uniform step (every k_i equal; a batch of
one) at its uniform graph's probed T; a ragged one's verify in the graph of (batch bucket, padded tokens)
`ragged_step` names, interpolated between the uniform steps of that bucket at the padded total (eager, or no ragged
graph holds it: around batch + B tokens at the batch), plus drafting to its longest k_i. Refined online with the
goodput planner's host-overhead model (spec/step_overhead.py): the probe times bare forwards, real speculative steps
add the host's drafting, verification and commit (on an H100 at batch 256, n-gram: a k = 1 step took 22 ms against a
probed 13 ms); every real uniform step feeds (measured - probed) at its batch and mean draft length B / batch, and
speculative prices carry the fit's prediction; a ragged allocation also carries the ragged premium
(spec/ragged_premium.py: what ragged steps cost beyond that fit; on an H100 ~1.5 ms at batch 64 for as many
positions, since a chain drafter drafts to the longest k_i and a ragged step cannot chain), and the best uniform
allocation replaces it where that predicts more. Probed prices are cached per (batch, B): a plan at batch 256 asks
for up to 1024 of them. Switching from plain steps pays the drafter's catch-up first (spec/catch_up.py, as the
planner prices it): an allocation whose gain over the requests' remaining tokens does not earn it back stays at k =
0. Exploration, as the planner's: every `explore_every`-th decision, once the decisions since the last one earned
its cost (`explore_budget` of their step time: two steps' extra time, plus the catch-up when leaving k = 0;
unbudgeted, the H100 sweep's explorations at batch 256 cost 1.5-10 plain steps each), adds the next (request,
position) pair in survival order to B* for two steps, so positions never verified get observed (a position's
estimate only moves when it is verified: without this an estimate below the price would hold B*, or speculation
altogether, where it is for good). Probe, as the planner's: a draft position never verified yet, predicted within
`probe_margin` of B*'s goodput, is verified too (until some request verified it), so a cold-start prior that sits
just below the price does not hold k = 0 until a rare exploration; so is one not verified for `reprobe_after`
decisions (acceptance changes along a request, and k = 0 observes none), though from k = 0 such a re-probe waits, as
an exploration does, until the budget covers the drafter's catch-up; and so is a uniform k next to a uniform
allocation's, where the overhead fit has not seen two k's at that batch (spec/neighbour_probe.py). Neither touches a
step whose k the drain rule chose (spec/drain.py): it minimised the closed batch's end, and what a probe learns serves
steps that batch hardly has left (replayed at an H100's prices, 2026-12-07: the draft model at batch 128 0.92x ->
1.00x the best static line, n-gram at 4-64 0.975-0.995x -> 1.00x). `max_concurrency` applies as elsewhere: above it,
every k_i is 0. Uniform where verifying is nearly free: at a batch where verifying every draft position costs
less than `trim_min_saving` of a plain step more than verifying none (probed, without the drafting), a ragged
allocation is filled to its longest k_i for every request (adaptive_allocation.uniform_at_longest), and a probe or
exploration lengthens every request's draft by one (`_one_further`: a ragged step cannot chain, and a chain
drafter's drafts go to the host before its verify). Per-request lengths pay where verifying costs (issue 20's bound:
batch 64-128 on Llama-3.1-8B), where they stay ragged. Trimming by the drafter's confidence (a draft model, an EAGLE
head): spec/draft_trimming.py. """

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from statistics import NormalDist
from typing import Any

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.allocation_tables import AllocationTables
from dynaspec.spec.catch_up import CatchUpCost, describe_catch_up
from dynaspec.spec.draft_trimming import DraftTrimming
from dynaspec.spec.drain import drain_allocation, shrinking_price
from dynaspec.spec.neighbour_probe import NeighbourProbe
from dynaspec.spec.adaptive_allocation import (Allocation, Pricing, highest_goodput, plan_allocation, survival,
                                               uniform_allocations, uniform_at_longest)
from dynaspec.spec.planner import PaddedBatchFn
from dynaspec.spec import planner_rules as rules
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.probed_prices import ProbedPrices
from dynaspec.spec.policy import DraftLenPolicy, StepOutcome
from dynaspec.spec.ragged_premium import RaggedPremium
from dynaspec.spec.step_overhead import COLUMNS as OVERHEAD_COLUMNS
from dynaspec.spec.step_overhead import StepOverheadModel, timed_short
from dynaspec.spec.switch_hold import SwitchHold

# A speculative step over this many times its price voids the plans (observe), as does the first one above every
# batch the overhead fit has seen (priced as the largest seen, spec/step_overhead.py; it joins the fit, ragged or not):
# on an H100 (2026-12-07, diurnal trace at 128) k = 4 held 17 steps of 19-29 ms, later k = 1 15 of 12-15 ms (8 plain).
SURPRISED = 1.5
# A decision's reason by how its allocation was chosen (Allocation.source).
REASONS = {"goodput": "allocate", "drain": "drain", "provisional": "provisional"}
# The quantile one standard deviation below a mean: the drain rule's slow case of a request's rate (spec/drain.py).
ONE_SPREAD_BELOW = NormalDist().cdf(-1.0)


class AdaptivePolicy(DraftLenPolicy):
    """Per-request k_i maximising predicted goodput over a budget of draft positions (module docstring)."""

    ragged = True

    def __init__(
        self,
        cost_model: StepCostModel,
        estimator: AcceptanceEstimator,
        max_draft_len: int,
        settings: PlannerSettings | None = None,
        padded_batch: PaddedBatchFn | None = None,
        ragged_step: Callable[[int, int], tuple[int, int] | None] | None = None,
        catch_up: CatchUpCost | None = None,
        backlog: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """cost_model: T(batch, k) of uniform steps, k in 0..max_draft_len; estimator: acceptance per
        position, pooled and per request; settings: max_concurrency, replan_every, max_tables, explore_every,
        min_observed_steps (the planner's); padded_batch: (batch, k) -> the batch a step runs at (None: its
        own, eager); ragged_step: (batch, tokens) -> the ragged graph's (bucket, padded tokens) or None
        (PolicyContext.ragged_step); catch_up, backlog: the drafter's catch-up price and
        PolicyContext.backlog (None: switching from k = 0 is free)."""
        self.max_draft_len = cost_model.measured_max_draft_len(min(max_draft_len, estimator.max_draft_len))
        self.cost_model = cost_model
        self.estimator = estimator
        self.settings = PlannerSettings() if settings is None else settings
        self.overhead = StepOverheadModel()  # real - probed step seconds of uniform steps (module docstring)
        self.ragged_premium = RaggedPremium()  # what a ragged step costs beyond that
        self.catch_up = catch_up
        self.backlog = backlog
        self._plain_last = True  # the last observed decode step verified no drafts
        self._hold = SwitchHold()  # the switch rule from k = 0 and the hold a refusal puts on it
        self.prices = ProbedPrices(cost_model, self.max_draft_len, padded_batch, ragged_step)
        self._verify_cheap_at: dict[int, bool] = {}  # batch -> _verify_is_cheap
        self._tables = AllocationTables(lambda: self.settings.max_tables)  # by request ids in batch order
        self._observations = 0
        self._decisions = 0  # decisions since the last exploration
        self._explore_again = False  # the next decision explores too
        self._explore_earned = 0.0  # seconds the decisions since the last exploration earned (explore_budget)
        # draft positions j some request verified, when last (in decisions: reprobe_after)
        self._staleness = rules.Staleness(lambda: self.settings.reprobe_after, lambda: self.settings.min_observed_steps)
        self.trimming = DraftTrimming(self.max_draft_len, lambda: self.settings)
        self._neighbours = NeighbourProbe(self.max_draft_len, lambda: self.settings, lambda batch, k: self._prior(
            batch, batch * k, False, k)[0], cost_model.drafting)  # uniform k's run by bucket (spec/neighbour_probe.py)
        self.last_decision: dict[str, Any] = {}
        self._asked: tuple[Sequence[Hashable] | None, Sequence[int] | None] = (None, None)  # last draft_lens ids, left

    # ----------------------------------------------------------------- the decision
    def draft_lens(self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None,
                   remaining: Sequence[int] | None = None) -> list[int]:
        """k_i per decoding request (request_ids: theirs, in batch order; None: pooled estimates; remaining: their
        tokens left while the batch drains, spec/drain.py)."""
        settings = self.settings
        self._staleness.decide()
        if settings.max_concurrency is not None and num_active > settings.max_concurrency:
            self.last_decision = {"batch": num_decoding, "k": 0, "reason": "max_concurrency", "budget": 0}
            return [0] * num_decoding
        if rules.ramp_keeps_k0(num_decoding, num_active, lambda: max(self.allocation(num_active).draft_lens)):
            # the goodput planner's ramp rule (H100, 2026-12-07: without it, 14-24% more prefill time at 64-256)
            self.last_decision = {"batch": num_decoding, "k": 0, "reason": "ramp", "budget": 0}
            return [0] * num_decoding
        if self._plain_last and self._hold.holds(request_ids, self._observations, settings.replan_every):
            self.last_decision = {"batch": num_decoding, "k": 0, "reason": "catch-up", "budget": 0}
            return [0] * num_decoding  # a refusal of the switch from k = 0 holds for them (spec/switch_hold.py)
        self._asked = (request_ids, remaining)  # refresh() plans these requests as asked (tokens left included)
        allocation = self.allocation(num_decoding, request_ids, remaining)
        draft_lens, reason = list(allocation.draft_lens), REASONS[allocation.source]
        if allocation.budget > 0 and (self._plain_last or self._none_drafted(request_ids)) and not self._hold.pays(
                self.catch_up, self.backlog, allocation, allocation.goodput,
                lambda: num_decoding / self.step_seconds(num_decoding, 0), request_ids, self._observations):
            draft_lens, reason = [0] * num_decoding, "catch-up"
        elif allocation.source != "drain" and self._probe_due(num_decoding, allocation):
            if allocation.budget == 0 and self._plain_last:  # it spent what it was afforded (_probe_due)
                self._explore_earned = 0.0
            draft_lens = self._one_further(draft_lens, allocation, num_decoding)
            reason = "probe"
        elif allocation.source != "drain" and (k := allocation.neighbour) and self._neighbours.unvisited(
                num_decoding, k):
            draft_lens, reason = [k] * num_decoding, "probe"  # the uniform k next to it, for the overhead fit
        if allocation.source != "drain" and allocation.next_request is not None and settings.explore_every is not None:
            self._decisions += 1
            held = sum(draft_lens)
            if settings.explore_budget is not None:
                self._explore_earned += settings.explore_budget * self.step_seconds(num_decoding, held)
            due = self._decisions >= settings.explore_every and self._exploration_affordable(num_decoding, held)
            if self._explore_again or due:
                # two decisions in a row, as the planner explores: the first may only drain an overlapped step
                self._explore_again, self._decisions = not self._explore_again, 0
                if self._explore_again:
                    self._explore_earned = 0.0
                draft_lens = self._one_further(draft_lens, allocation, num_decoding)
                reason = "explore"
        self.last_decision = {
            "batch": num_decoding, "k": max(draft_lens, default=0), "reason": reason, "budget": sum(draft_lens),
            "draft_lens": {str(k): n for k, n in sorted(Counter(draft_lens).items())},
            "expected_tokens": allocation.expected_tokens, "step_seconds": allocation.seconds,
            "goodput": allocation.goodput,
        }
        return draft_lens

    def _none_drafted(self, request_ids: Sequence[Hashable] | None) -> bool:
        """Whether none of these requests drafted yet (a batch starting): the drafter has their prompts to catch up
        on, as after plain steps (H100, 2026-12-07, pure code-edit at 128: a first speculative step of 36 ms)."""
        return request_ids is not None and all(self.estimator.observations(rid)[0] == 0 for rid in request_ids)

    def _one_further(self, draft_lens: list[int], allocation: Allocation, batch: int) -> list[int]:
        """A probe's or exploration's k_i: one more position for allocation.next_request, or, from a uniform
        allocation where verifying is nearly free or a uniform step one longer costs less than a ragged one
        (its ragged premium included), for every request: on the H100 of 2026-12-06 a probe of one position
        beyond k = 3 at batch 16 made 3.97 ms steps of 3.15 ms ones. Never past max_draft_len: a probe and an
        exploration in one decision each add one, and on the H100 of 2026-12-06 (the EAGLE head, max_draft_len 6)
        such a step drafted 7 for every request, ran eager at a length no graph or warm-up covered (55 ms against
        ~3) and, as the only sample of its cell, bent the host-overhead fit for the rest of the run."""
        longest = self.max_draft_len
        if len(set(draft_lens)) == 1 and draft_lens[0] < longest and (
                self._verify_is_cheap(batch) or self._uniform_step_longer_is_cheaper(batch, sum(draft_lens))):
            return [k + 1 for k in draft_lens]
        if draft_lens[allocation.next_request] < longest:
            draft_lens[allocation.next_request] += 1
        return draft_lens

    def _uniform_step_longer_is_cheaper(self, batch: int, held: int) -> bool:
        """Whether one more position for every request costs less than one more for one request, which makes
        the step ragged (spec/ragged_premium.py)."""
        premium = self.ragged_premium.seconds(batch, self.overhead)
        if premium <= 0.0:
            return False
        now = self.step_seconds(batch, held)
        return self.step_seconds(batch, held + batch) - now <= self.step_seconds(batch, held + 1) - now + premium

    def draft_len(self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """The largest k_i (the step's k: overlapped decode asks whether it is 0)."""
        return max(self.draft_lens(num_decoding, num_active, request_ids), default=0)

    # ----------------------------------------------------------------- predictions
    def allocation(self, batch: int, request_ids: Sequence[Hashable] | None = None,
                   remaining: Sequence[int] | None = None, critical: bool = True) -> Allocation:
        """The allocation for these requests, reused until `replan_every` observations arrived; tokens left count
        only where the drain rule applies. On the critical path a new composition of named requests takes the
        latest plan's k_i (spec/allocation_tables.py), and refresh() (critical=False) plans it."""
        if remaining is not None and not self._drains(batch):
            remaining = None
        draining = remaining is not None
        key = (*(request_ids or (None,) * batch), draining)
        allocation = self._tables.get(key, self._observations, self.settings.replan_every, critical)
        if allocation is not None:
            return allocation
        if critical and request_ids is not None and not self._tables.knows(key):
            if (draft_lens := self._tables.provisional_draft_lens(request_ids, draining)) is not None:
                inherits = draining and self._tables.inherits(request_ids)  # a drain plan's requests, less leavers
                gain = self._tables.latest_drain_gain() if inherits else None  # a switch from k = 0 weighs it
                allocation = replace(self._provisional(batch, request_ids, draft_lens), drain_gain=gain)
                self._tables.put(key, self._observations, allocation, provisional=True, passes=int(inherits))
                return allocation
        allocation = self.plan(batch, request_ids, remaining)
        self._tables.put(key, self._observations, allocation, request_ids)
        return allocation

    def _provisional(self, batch: int, request_ids: Sequence[Hashable], draft_lens: list[int]) -> Allocation:
        """draft_lens priced, with no next position: a provisional decision neither probes nor explores."""
        alphas = self.estimator.alphas
        tokens = batch + sum(sum(survival(alphas(rid)[:k])) for rid, k in zip(request_ids, draft_lens) if k)
        budget = sum(draft_lens)
        premium = self.ragged_premium.seconds(batch, self.overhead) if len(set(draft_lens)) > 1 else 0.0
        seconds = self._pricing(batch)(budget, max(draft_lens, default=0)) + premium
        return Allocation(draft_lens, budget, tokens, seconds, source="provisional")

    def plan(self, batch: int, request_ids: Sequence[Hashable] | None = None,
             remaining: Sequence[int] | None = None) -> Allocation:
        """Compute the allocation now (no reuse): the most committed tokens a second, or, while the batch drains
        (remaining given) and that would end the batch over settings.drain_tolerance later, the one that
        ends it soonest (spec/drain.py)."""
        ids = request_ids or [None] * batch
        alphas = [self.estimator.alphas(rid)[: self.max_draft_len] for rid in ids]
        survivals = [survival(request) for request in alphas]
        pricing = self._pricing(batch)
        # most committed tokens a second: top-B; uniform at its longest where verifying is nearly free; the best
        # uniform allocation where the ragged premium makes that better
        premium = self.ragged_premium.seconds(batch, self.overhead)
        allocation = plan_allocation(survivals, pricing, ragged_premium=premium)
        tolerance = self.settings.drain_tolerance
        draining = remaining is not None and self._drains(batch)
        cheap = self._verify_is_cheap(batch)
        uniforms = uniform_allocations(survivals, pricing) if draining or (allocation.ragged and not cheap) else []
        if cheap:
            allocation = uniform_at_longest(allocation, survivals, pricing)
        elif allocation.ragged:
            uniform = highest_goodput(uniforms)
            if uniform.goodput >= allocation.goodput:
                allocation = uniform
        neighbour = self._neighbours.candidate(batch, 0 if allocation.ragged else allocation.draft_lens[0], lambda: {
            a.draft_lens[0]: a.goodput for a in uniforms or uniform_allocations(survivals, pricing)})
        if neighbour is not None:
            allocation = replace(allocation, neighbour=neighbour)
        if not draining:
            return allocation
        # the closed batch's end: each request's mean and its rate one standard deviation slower (spec/drain.py)
        slow = [survival(self.estimator.slow_case_alphas(rid, ONE_SPREAD_BELOW, a)) for rid, a in zip(ids, alphas)]
        price = shrinking_price(self._pricing, lambda b: self.ragged_premium.seconds(b, self.overhead))
        return drain_allocation(allocation, uniforms, survivals, slow, remaining, price, tolerance)

    def _drains(self, batch: int) -> bool:
        """Whether the drain rule (spec/drain.py) plans a draining batch of this many decoding requests."""
        return self.settings.drain_tolerance is not None and 2 <= batch <= self.settings.drain_max_batch

    def _pricing(self, batch: int, drafted: bool = False) -> Pricing:
        """(positions, longest k_i) -> step_seconds(batch, positions, longest), with the overhead fit looked up
        once; drafted: the positions exist already, their drafting is not priced (trimming)."""
        if drafted:  # the step's host work is paid whatever the trim keeps: price the verify alone
            return lambda positions, longest: self._prior(batch, positions, True, longest)[1]
        base, per_position = self.overhead.speculative_line(batch)
        plain = self.overhead.predict(batch, 0)  # step_seconds: plain steps pay their measured residual too

        def seconds(positions: int, longest: int) -> float:
            prior = self._prior(batch, positions, False, longest)[1]
            return prior + plain if positions == 0 else prior + max(0.0, base + per_position * positions)

        return seconds

    def trims_drafts_at(self, batch: int) -> bool:
        """From `trim_min_batch` requests on, where verifying is not nearly free (spec/draft_trimming.py)."""
        return self.trimming.applies_at(batch, self._verify_is_cheap)

    @property
    def calibration(self):
        """P(accepted | the drafter's probability) per position (the trimming's ConfidenceCalibration)."""
        return self.trimming.calibration

    def _verify_is_cheap(self, batch: int) -> bool:
        """Whether verifying every draft position at this batch costs less than `trim_min_saving` of a plain
        step more than verifying none (probed prices, without the drafting; once per batch size)."""
        cheap = self._verify_cheap_at.get(batch)
        if cheap is None:
            verify = self._prior(batch, batch * self.max_draft_len, True)[1] - self._prior(batch, 0, True)[1]
            cheap = self._verify_cheap_at[batch] = verify < self.settings.trim_min_saving * self._prior(batch, 0)[1]
        return cheap

    def trim_drafts(self, request_ids: Sequence[Hashable], limits: Sequence[int],
                    confidence: Sequence[Sequence[float]]) -> list[int]:
        """The drafted positions worth verifying (spec/draft_trimming.py); a probe or exploration verifies
        every one, on purpose."""
        if self.last_decision.get("reason") in ("probe", "explore"):
            return list(limits)
        alphas = [self.estimator.alphas(rid) for rid in request_ids]
        return self.trimming.kept(alphas, limits, confidence, self._pricing(len(limits), drafted=True))

    def step_seconds(self, batch: int, positions: int, longest: int | None = None) -> float:
        """Predicted T of a step of `batch` requests verifying `positions` draft positions in all, at most `longest`
        a request (None: spread evenly): the probed price where it runs (spec/probed_prices.py), plus the learned
        host overhead at (batch, positions / batch), plain steps' included. Plain steps overlap their host work with
        the GPU, and what they measure beyond the probe, launch to launch, is what a plain step costs; priced at the
        probe alone, k = 0 looked cheaper than it ran by that much while speculative steps paid their measured
        residual (on an H100, 2026-12-06, plain steps at batch 4 ran 0.16 ms over their probe, 8% of a step: a bias
        towards k = 0 the goodput planner, which prices a cell it has run at its measured median, does not have)."""
        _, prior = self._prior(batch, positions, False, longest)
        return prior + self.overhead.predict(batch, positions / batch)

    def _probe_due(self, batch: int, allocation: Allocation) -> bool:
        """The planner's probe rule (spec/planner_rules.py probe_candidate) per position: when the position
        B* + 1 would add was never verified (for any request: once verified it has a real estimate), or not
        for `reprobe_after` decisions (then until verified min_observed_steps times again), it runs too if
        its predicted goodput is within `probe_margin` of B*'s; from k = 0, only if the drafter's catch-up costs
        at most `explore_catch_up_steps` plain steps, and a position verified before (a re-probe) only once the
        exploration budget covers the catch-up and the extra step time, as an exploration's: on an H100 (the
        Qwen2.5-Coder-1.5B head, chat at batch 16, 2026-12-06) re-probes every ~35 plain steps paid catch-ups of
        4-9 ms (priced 3.8) where speculating barely paid, and adaptive ran 0.87x no spec. Such a prediction rests
        on the start-up probe and the cold-start acceptance prior (alpha 0.5): on an H100 the real Qwen2.5-Coder
        pair at batch 1 accepted 0.93 at k = 1 (1.14x no spec under the goodput policy, which probes), while this
        policy, without the rule, held k = 0 for all 128 steps of its warm-up and measured batch (2026-12-06)."""
        settings = self.settings
        if settings.probe_margin is None or allocation.next_goodput is None:
            return False
        position = allocation.draft_lens[allocation.next_request]
        if not self._staleness.unmeasured(position):
            return False  # a recent real acceptance estimate, not the prior or old data
        if allocation.next_goodput < allocation.goodput * (1.0 - settings.probe_margin):
            return False
        if allocation.budget == 0 and self._plain_last and self.catch_up is not None and self.backlog is not None:
            catch_up = self.catch_up.seconds(self.backlog()[0])
            if catch_up > settings.explore_catch_up_steps * self.step_seconds(batch, 0):
                return False
            if self._staleness.seen(position):  # a re-probe pays the catch-up out of the exploration budget
                return self._exploration_affordable(batch, 0, catch_up)
        return True

    def _exploration_affordable(self, batch: int, held: int, catch_up_seconds: float | None = None) -> bool:
        """Whether the earned budget covers exploring one more position: two steps' extra time, plus the
        drafter's catch-up when leaving k = 0 (the planner's rule, spec/planner_rules.py; catch_up_seconds:
        its price where the caller has it, the backlog being a pass over the requests)."""
        if self.settings.explore_budget is None:
            return True
        extra = rules.exploration_step_cost(self.step_seconds(batch, held), self.step_seconds(batch, held + 1))
        if not rules.exploration_affordable(extra, self._explore_earned):
            return False
        if held == 0 and self._plain_last and self.catch_up is not None and self.backlog is not None:
            extra += self.catch_up.seconds(self.backlog()[0]) if catch_up_seconds is None else catch_up_seconds
        return rules.exploration_affordable(extra, self._explore_earned)

    def _prior(self, batch: int, positions: int, drafted: bool = False,
               longest: int | None = None) -> tuple[int, float]:
        """(the batch bucket the step runs at, its probed price; drafted: without the drafting; longest: the largest
        k_i, None: the positions spread evenly), spec/probed_prices.py."""
        return self.prices.price(batch, positions, longest, drafted)

    # ----------------------------------------------------------------- engine hooks
    def observe(self, outcome: StepOutcome) -> None:
        """Each request's drafted / accepted counts, at its own k_i; the step's time (the host overhead, or on the
        first speculative step after plain ones the catch-up's price); its batch (which the window of finished
        requests follows). Every step counts towards `replan_every`, plain ones too: they move the overhead fit, and
        a plan made when a batch started would otherwise hold through a whole plain phase (H100, 2026-12-06: after
        two explorations at 64 showed verifying cheaper than priced, k = 0 held for the rest of the batch)."""
        self._observations += 1
        self.estimator.follow_batch(outcome.batch)
        positions = sum(outcome.drafted)
        if outcome.seconds is not None and outcome.batch > 0:
            if outcome.catch_up_tokens is not None:
                if self.catch_up is not None:
                    predicted = self.step_seconds(outcome.batch, positions)
                    self.catch_up.observe(outcome.catch_up_tokens, outcome.seconds - predicted, predicted)
            elif outcome.planned:  # a trimmed step prices the trimming, not the host overhead
                untrimmed = self.step_seconds(outcome.batch, sum(outcome.planned))
                if self.trimming.judge(outcome.batch, outcome.seconds - untrimmed):
                    self._tables.clear()
            else:
                longest = max(outcome.drafted, default=0)  # where it ran: spec/probed_prices.py
                _, prior = self._prior(outcome.batch, positions, False, longest)
                mean_k = positions / outcome.batch
                ragged = len(set(outcome.draft_lens)) > 1
                priced = positions and self.step_seconds(outcome.batch, positions, longest) + (  # before this sample
                    self.ragged_premium.seconds(outcome.batch, self.overhead) if ragged else 0.0)
                extrapolated = positions and 0 < self.overhead.largest_speculative_batch < outcome.batch
                if positions == 0 or not ragged or extrapolated:
                    self.overhead.add(outcome.batch, mean_k, outcome.seconds - prior, prior)
                elif not timed_short(outcome.seconds, prior):  # ragged (and not timed short)
                    self.ragged_premium.observe(outcome.batch, mean_k, outcome.seconds - prior)
                if extrapolated or (positions and outcome.seconds > SURPRISED * priced):
                    self._tables.clear()  # plans priced such steps below their cost: replan with this one
        self._plain_last = outcome.draft_len == 0
        if outcome.draft_len == 0:
            return
        self._hold.clear()
        draft_lens = outcome.draft_lens or [outcome.draft_len] * outcome.batch
        if len(set(draft_lens)) == 1:  # a uniform step: the neighbour probe's count
            self._neighbours.observed(outcome.batch, draft_lens[0])
        groups: dict[int, tuple[list[Hashable], list[int], list[int]]] = {}
        verified = len(self._staleness)
        self.trimming.observe(outcome.confidence, outcome.drafted, outcome.accepted)
        for rid, k_i, drafted, accepted in zip(outcome.request_ids, draft_lens, outcome.drafted, outcome.accepted):
            for j in range(drafted):
                self._staleness.measured(j)
            if k_i > 0:
                ids, d, a = groups.setdefault(k_i, ([], [], []))
                ids.append(rid)
                d.append(drafted)
                a.append(accepted)
        for k_i, (ids, drafted, accepted) in groups.items():
            self.estimator.update_step(ids, drafted, accepted, k_i)
        if len(self._staleness) > verified:  # plans priced that position by the prior: replan
            self._tables.clear()

    def refresh(self, num_decoding: int, request_ids: Sequence[Hashable] | None = None) -> None:
        """Recompute the allocation of these decoding requests (and the overhead fit) now if due, off the critical
        path, with the tokens left the latest decision was asked with where it was about them."""
        self.overhead.refit_if_due()
        if self._plain_last and self._hold.holds(request_ids, self._observations, self.settings.replan_every):
            return  # nothing to plan while a refusal holds for them (spec/switch_hold.py)
        asked_ids, remaining = self._asked
        if request_ids is None or asked_ids is None or list(asked_ids) != list(request_ids):
            remaining = None  # not the batch last asked about: planned without tokens left
        self.allocation(num_decoding, request_ids, remaining, critical=False)

    def release(self, request_id: Hashable) -> None:
        self.estimator.release(request_id)
        self._observations += 1

    def reachable_draft_lens(self, num_decoding: int) -> set[int]:
        """Every largest k_i a step can have (CUDA-graph capture): 0..max_draft_len."""
        return set(range(self.max_draft_len + 1))

    def view(self, batch: int) -> dict[str, Any]:
        """The allocation it would make now for `batch` requests it knows nothing of (the pooled estimate),
        the prices behind it (plain and per budget), the overhead fit, where it trims, pooled alphas, the catch-up."""
        allocation = self.plan(batch)
        budgets = sorted({0, batch, allocation.budget, batch * self.max_draft_len})
        return {
            "allocation": {"draft_lens": {str(k): n for k, n in sorted(Counter(allocation.draft_lens).items())},
                           "budget": allocation.budget, "expected_tokens": allocation.expected_tokens,
                           "step_seconds": allocation.seconds, "goodput_tokens_per_s": allocation.goodput},
            "step_seconds_by_budget": {str(b): self.step_seconds(batch, b) for b in budgets},
            # the probe's T of uniform steps where they run, the drafting share included (the planner's probed_seconds)
            "probed_seconds_by_k": {str(k): self._prior(batch, batch * k)[1] for k in range(self.max_draft_len + 1)},
            "overhead_coefficients": dict(zip(OVERHEAD_COLUMNS, self.overhead.coefficients)),
            "overhead_cells": self.overhead.cells(),
            "ragged_premium_seconds": self.ragged_premium.seconds(batch, self.overhead),
            "verify_is_cheap": self._verify_is_cheap(batch), "trims": self.trims_drafts_at(batch),
            "no_trimming_up_to_batch": self.trimming.no_trim_up_to, "pooled_alphas": self.estimator.global_alphas(),
            # what a new request is taken for: the prior's mean and strength (spec/acceptance_estimator.py)
            "request_prior_alphas": self.estimator.request_prior_alphas(),
            "request_prior_count": self.estimator.effective_blend_count,
            **describe_catch_up(self.catch_up),
        }

    def stats(self) -> dict[str, Any]:
        """The latest decision (budget, k_i histogram, predicted goodput) as get_stats()["planner_decision"]."""
        return {**super().stats(), "planner_decision": dict(self.last_decision),
                "trimmed_positions": self.trimming.trimmed_positions,
                "no_trimming_up_to_batch": self.trimming.no_trim_up_to}

    def __repr__(self) -> str:
        return f"AdaptivePolicy(max_draft_len={self.max_draft_len}, settings={self.settings!r})"

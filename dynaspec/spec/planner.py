"""Goodput planner: each step, the draft length k that maximises expected committed tokens per second.

SmartSpec (Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large Language Models Using
Goodput", arXiv 2406.14066) chooses the speculation length from the current load and the observed
acceptance by maximising goodput. For a step where `batch` requests decode:

    goodput(k) = (E[accepted | k] + 1) * batch / T(batch, k)        (k = 0: batch / T(batch, 0))

with E[accepted | k] from the per-position acceptance estimate (Leviathan et al. 2023, arXiv 2211.17192;
spec/acceptance_estimator.py) and T from the probed step-cost model (runtime/cost_model.py) refined by
real steps. It is the online counterpart of TensorRT-LLM's static `draft_len_schedule` (PR #8194).

Rules, in order (spec/planner_rules.py, one pure function each; settings in spec/planner_settings.py):
* max_concurrency: more active requests than max_concurrency -> k = 0;
* argmax: the candidate k of highest goodput (0 is always a candidate; ties go to the smaller k);
* hysteresis: per batch bucket the k in force stays unless the best k beats it by more than `hysteresis`;
* probe: an unvisited k next to the k in force, predicted within `probe_margin`, runs until measured; a
  k not run for `reprobe_after` decisions counts as unvisited again (a near-tie decided on old acceptance
  data is checked again: acceptance changes along a request, and k = 0 observes none);
* exploration: every `explore_every`-th decision below the largest k runs the next larger k for two
  steps, only where full acceptance could pay and, with `explore_budget`, once earlier decisions earned it;
* ramp: while waiting requests will lift the batch to where k = 0 is best, k = 0;
* catch-up: leaving k = 0 must earn back the drafter's catch-up over the tokens left (SmartSpec's switching
  cost; spec/catch_up.py); an exploration or probe may cost `explore_catch_up_steps` plain steps of it.

Step time: T(batch, k) is the probed cost at the step's padded batch (its CUDA graph), plus for k > 0 a
learned host overhead (spec/step_overhead.py) and what that overhead missed on the bucket's other cells;
a cell with `min_observed_steps` real steps uses their median. The engine reports no step time for the
first speculative step after plain ones (it prices catch-up instead, `observe_catch_up`).

Host cost: requests' own acceptance is blended in only up to `per_request_max_batch` decoding requests;
a goodput table is reused until `replan_every` observations arrived, and `refresh()` (called while the
GPU runs a step) recomputes a due one off the critical path. The measurements behind these choices and
the defaults are in docs/lab/planner_history.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from statistics import median
from typing import Any

from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec import planner_rules as rules
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator, planning_estimator
from dynaspec.spec.catch_up import CatchUpCost, describe_catch_up
from dynaspec.spec.planner_rules import PlannerState
from dynaspec.spec.planner_settings import PlannerSettings, settings_property
from dynaspec.spec.policy import DraftLenPolicy, StepOutcome
from dynaspec.spec.step_overhead import StepOverheadModel

# backlog() -> (tokens the drafter is behind on, tokens the decoding requests may still generate)
BacklogFn = Callable[[], tuple[int, int]]
# padded_batch(batch, k) -> the batch size the step runs at (a CUDA graph's bucket, >= batch)
PaddedBatchFn = Callable[[int, int], int]

_DEFAULTS = PlannerSettings()


class GoodputPlanner(DraftLenPolicy):
    """Per-step k maximising predicted goodput, with hysteresis (the DraftLenPolicy protocol)."""

    # settings.<name>, read or tweaked in place (assigning one replaces the settings with that change)
    hysteresis = settings_property("hysteresis")
    max_concurrency = settings_property("max_concurrency")
    explore_every = settings_property("explore_every")
    explore_budget = settings_property("explore_budget")
    probe_margin = settings_property("probe_margin")
    replan_every = settings_property("replan_every")

    def __init__(
        self,
        cost_model: StepCostModel,
        estimator: AcceptanceEstimator,
        candidate_ks: Iterable[int],
        settings: PlannerSettings | None = None,
        catch_up: CatchUpCost | None = None,
        backlog: BacklogFn | None = None,
        padded_batch: PaddedBatchFn | None = None,
    ) -> None:
        """cost_model: T(batch, k), measured for every candidate k; estimator: acceptance per position, up
        to the largest candidate; candidate_ks: the k values the engine can run (0 is added); settings: the
        rules' knobs (default: the engine's); catch_up, backlog: the drafter's catch-up price and the
        engine's backlog callback (without both, no ramp or catch-up rule); padded_batch: (batch, k) -> the
        batch size a step runs at, its CUDA graph's (None: its own, as in eager mode)."""
        self.candidate_ks: list[int] = sorted({0, *candidate_ks})
        if missing := [k for k in self.candidate_ks if not cost_model.has(k)]:  # e.g. a tune file's gap
            raise ValueError(f"candidate k values {missing} have no step-cost measurement; "
                             f"measured k values: {cost_model.draft_lens}")
        if self.candidate_ks[-1] > estimator.max_draft_len:
            raise ValueError(f"candidate k {self.candidate_ks[-1]} exceeds the acceptance estimator's "
                             f"max_draft_len ({estimator.max_draft_len})")
        self.settings = _DEFAULTS if settings is None else settings
        self.state = PlannerState()
        self.cost_model = cost_model  # the probed / tune-file costs, never mixed with real steps
        self.observed = StepCostModel(device=cost_model.device)  # real step times per (bucket, k)
        self.overhead = StepOverheadModel()
        self.estimator = estimator
        self.catch_up = catch_up
        self.backlog = backlog
        self.padded_batch = padded_batch
        self._buckets = cost_model.batch_sizes
        # (batch, request ids or None) -> (observations when computed, goodput per k)
        self._tables: dict[tuple[int, tuple[Hashable, ...] | None], tuple[int, dict[int, float]]] = {}
        self._observations = 0  # acceptance outcomes, step times and releases so far
        self._misses: dict[int, dict[int, float]] = {}  # bucket -> k -> miss, until the next real step
        # (bucket, k) cells' last real steps, in decisions (reprobe_after)
        self._staleness = rules.Staleness(lambda: self.settings.reprobe_after, lambda: self.settings.min_observed_steps)
        self.last_decision: dict[str, Any] = {}

    @property
    def max_draft_len(self) -> int:
        """Largest k the planner can return (size draft buffers by it)."""
        return self.candidate_ks[-1]

    # the k in force per batch bucket, state.held (tests set it)
    _current = property(lambda self: self.state.held, lambda self, held: setattr(self.state, "held", held))

    def bucket(self, batch: int) -> int:
        """The hysteresis bucket of a batch size: smallest measured batch >= batch, else the largest."""
        i = bisect_left(self._buckets, batch)
        return self._buckets[min(i, len(self._buckets) - 1)]

    # ----------------------------------------------------------------- the decision
    def draft_len(self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """k for a step where `num_decoding` of `num_active` requests decode (request_ids: the decoding
        requests, whose own acceptance is blended in; None: the pooled estimate)."""
        settings, state = self.settings, self.state
        self._staleness.decide()
        if rules.over_concurrency(num_active, settings.max_concurrency):
            state.last_k = 0
            self.last_decision = {"batch": num_decoding, "k": 0, "reason": "max_concurrency"}
            return 0
        goodput = self._table(num_decoding, request_ids)
        best = rules.argmax_k(goodput, self.candidate_ks)
        bucket = self.bucket(num_decoding)
        held, reason = rules.hold_or_switch(goodput, best, state.held.get(bucket), settings.hysteresis)
        held_reason = reason
        state.held[bucket] = held
        if state.explore_again is not None:
            k, reason = rules.second_exploration_step(held, reason, state.explore_again)
            state.explore_again = None
        elif (probe := self._probe(bucket, held, goodput)) is not None:
            k, reason = probe, "probe"
        else:
            k, reason = self._explore(num_decoding, held, reason, goodput)
        if k > 0 and self.catch_up is not None and self.backlog is not None:
            if rules.ramp_keeps_k0(num_decoding, num_active, lambda: self._best_k_at_active_batch(num_active)):
                k, reason = 0, "ramp"
            elif state.last_k == 0 and not self._catch_up_pays(num_decoding, k, goodput, reason):
                # a trial refused for its catch-up leaves the k in force to the switching rule, which weighs the
                # catch-up against the tokens left (a probe refused every step held k = 0 where k = 3 ran 1.75x)
                trial = reason in ("explore", "probe")
                if trial and held > 0 and self._catch_up_pays(num_decoding, held, goodput, held_reason):
                    k, reason, state.explore_again = held, held_reason, None
                else:
                    k, reason = 0, "catch-up"
            if k == 0:
                state.held[bucket], state.explore_again = 0, None
        state.last_k = k
        self.last_decision = {
            "batch": num_decoding,
            "k": k,
            "reason": reason,
            "held_k": held,
            "best_k": best,
            "goodput": goodput[k],
            "best_goodput": goodput[best],
        }
        return k

    def _probe(self, bucket: int, held: int, goodput: Mapping[int, float]) -> int | None:
        """The probe rule at this bucket (its cells' real step counts)."""
        settings = self.settings
        return rules.probe_candidate(
            held, goodput, self.candidate_ks, lambda k: self._steps_seen(bucket, k),
            settings.probe_margin, settings.min_observed_steps,
        )

    def _steps_seen(self, bucket: int, k: int) -> int:
        """The cell's real steps for the probe rule: since it went stale (not run for reprobe_after
        decisions), else all of them."""
        stale = self._staleness.stale_count((bucket, k))
        return self.observed.count(bucket, k) if stale is None else stale

    def _explore(self, batch: int, held: int, reason: str, goodput: Mapping[int, float]) -> tuple[int, str]:
        """The exploration rule: counts decisions below the largest k (and, with explore_budget, the time
        they earn); every explore_every-th tries the next larger k where it could pay and is affordable."""
        settings, state = self.settings, self.state
        if held >= self.candidate_ks[-1] or settings.explore_every is None:
            return held, reason
        state.below_max_decisions += 1
        if settings.explore_budget is not None:
            state.explore_earned += settings.explore_budget * self.step_seconds(batch, held)
        if state.below_max_decisions < settings.explore_every:
            return held, reason
        larger = rules.next_larger_k(self.candidate_ks, held)
        if not self.could_pay(batch, larger, goodput[held]):
            state.below_max_decisions = 0
        elif settings.explore_budget is None or self._exploration_affordable(batch, held, larger):
            state.below_max_decisions, state.explore_earned, state.explore_again = 0, 0.0, larger
            return larger, "explore"
        return held, reason

    def could_pay(self, batch: int, k: int, goodput_to_beat: float) -> bool:
        """Whether k could beat `goodput_to_beat` with every draft accepted (the exploration bound)."""
        return rules.could_pay(batch, k, self.step_seconds(batch, k), goodput_to_beat)

    def _exploration_affordable(self, batch: int, k: int, larger: int) -> bool:
        """Whether the earned budget covers exploring `larger` from `k`: two steps' extra time, plus the
        drafter's catch-up from k = 0 (the backlog, a pass over the requests, is asked only once the steps'
        part fits)."""
        earned = self.state.explore_earned
        extra = rules.exploration_step_cost(self.step_seconds(batch, k), self.step_seconds(batch, larger))
        if not rules.exploration_affordable(extra, earned):
            return False
        if k == 0 and self.catch_up is not None and self.backlog is not None:
            extra += self.catch_up.seconds(self.backlog()[0])
        return rules.exploration_affordable(extra, earned)

    def _best_k_at_active_batch(self, num_active: int) -> int:
        """best k at the batch the active requests will make (the ramp rule), from the reused tables."""
        return rules.argmax_k(self._table(min(num_active, self._buckets[-1]), None), self.candidate_ks)

    def _catch_up_pays(self, batch: int, k: int, goodput: Mapping[int, float], reason: str) -> bool:
        """The catch-up rule for leaving k = 0 for k at this step (reason: why k was chosen)."""
        behind, remaining = self.backlog()
        return rules.catch_up_pays(
            self.catch_up.seconds(behind), remaining, goodput, k, reason in ("explore", "probe"),
            self.step_seconds(batch, 0), self.settings.explore_catch_up_steps,
        )

    # ----------------------------------------------------------------- predictions
    def goodputs(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> dict[int, float]:
        """Predicted committed tokens per second for each candidate k at this batch size."""
        expected = self.estimator.expected_accepted_all(self._blended(batch, request_ids))
        return {k: rules.goodput(expected[k], batch, self.step_seconds(batch, k)) for k in self.candidate_ks}

    def best_k(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """Argmax of goodput without hysteresis or exploration (ties: the smaller k)."""
        return rules.argmax_k(self.goodputs(batch, request_ids), self.candidate_ks)

    def _table(self, batch: int, request_ids: Sequence[Hashable] | None) -> dict[int, float]:
        """goodputs(batch, request_ids), reused until `replan_every` observations arrived (do not mutate)."""
        ids = self._blended(batch, request_ids)
        key = (batch, None if not ids else tuple(ids))
        entry = self._tables.get(key)
        if entry is not None and self._observations - entry[0] < self.settings.replan_every:
            return entry[1]
        if len(self._tables) >= self.settings.max_tables:  # keys of requests long gone
            self._tables.clear()
        table = self.goodputs(batch, ids)
        self._tables[key] = (self._observations, table)
        return table

    def _blended(self, batch: int, request_ids: Sequence[Hashable] | None) -> Sequence[Hashable] | None:
        """The request ids whose own acceptance a batch's estimate blends in: none above
        settings.per_request_max_batch."""
        return request_ids if batch <= self.settings.per_request_max_batch else None

    def step_seconds(self, batch: int, k: int) -> float:
        """Predicted seconds of a real step at (batch, k): with min_observed_steps real steps in the cell,
        their median; else the prior (probed cost, plus for k > 0 the learned host overhead and what it
        missed on the bucket's other speculative cells), or the first steps' median when slower. k = 0 gets
        no overhead term: plain steps overlap their host work with the GPU."""
        bucket = self.bucket(batch)
        observed = self.observed.count(bucket, k)
        if observed >= self.settings.min_observed_steps:
            return self.observed.measured(bucket, k)
        prior = self._prior(batch, k)
        if k > 0:  # what the global fit misses at this bucket, seen on its other speculative cells
            prior = max(self.probed_seconds(batch, k), prior + self._bucket_miss(bucket, k))
        return max(prior, self.observed.measured(bucket, k)) if observed else prior

    def _prior(self, batch: int, k: int) -> float:
        """Probed seconds, plus the learned host overhead for speculative steps."""
        return self.probed_seconds(batch, k) + (self.overhead.predict(batch, k) if k > 0 else 0.0)

    def probed_seconds(self, batch: int, k: int) -> float:
        """The cost model's T at the batch size the step really runs: with `padded_batch` (CUDA graphs),
        the captured graph's (a step of 97 requests replays the batch-128 graph and costs what it does)."""
        return self.cost_model.cost(batch if self.padded_batch is None else self.padded_batch(batch, k), k)

    def _bucket_miss(self, bucket: int, k: int) -> float:
        """Median over this bucket's other measured speculative cells of (their median - their prior), 0
        when there is none: where visited k's ran slower than predicted, unvisited ones are predicted so."""
        misses = [miss for other, miss in self._cell_misses(bucket).items() if other != k]
        return median(misses) if misses else 0.0

    def _cell_misses(self, bucket: int) -> dict[int, float]:
        """k -> (observed median - prior) for the bucket's speculative cells with min_observed_steps real
        steps; computed once between two real steps (a decision asks for every k)."""
        misses = self._misses.get(bucket)
        if misses is None:
            minimum = self.settings.min_observed_steps
            misses = self._misses[bucket] = {
                k: self.observed.measured(bucket, k) - self._prior(bucket, k)
                for k in self.candidate_ks
                if k > 0 and self.observed.count(bucket, k) >= minimum
            }
        return misses

    def explain(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> list[dict[str, float]]:
        """Per candidate k: expected accepted, predicted and probed step seconds, predicted goodput (rows
        for logs / plots)."""
        expected = self.estimator.expected_accepted_all(self._blended(batch, request_ids))
        rows = []
        for k in self.candidate_ks:
            seconds = self.step_seconds(batch, k)
            goodput = rules.goodput(expected[k], batch, seconds)
            probed = self.probed_seconds(batch, k)
            rows.append({"k": k, "expected_accepted": expected[k], "step_seconds": seconds,
                         "probed_seconds": probed, "goodput_tokens_per_s": goodput})
        return rows

    def view(self, batch: int) -> dict[str, Any]:
        """explain(batch) as "table", the host-overhead fit's cells, and the drafter's catch-up price (zeros
        without one)."""
        return {"table": self.explain(batch), "overhead_cells": self.overhead.cells(), **describe_catch_up(self.catch_up)}

    # ----------------------------------------------------------------- engine hooks
    def observe(self, outcome: StepOutcome) -> None:
        """A decode step's outcome: its acceptance (k >= 1), and its time as a sample of T(batch, k), or,
        on the first speculative step after plain ones, as the price of the drafter's catch-up."""
        if outcome.draft_len > 0:
            self.observe_acceptance(outcome.draft_len, outcome.drafted, outcome.accepted, outcome.request_ids)
        if outcome.seconds is None:
            return
        if outcome.catch_up_tokens is None:
            self.observe_step_time(outcome.batch, outcome.draft_len, outcome.seconds)
        else:
            self.observe_catch_up(outcome.batch, outcome.draft_len, outcome.seconds, outcome.catch_up_tokens)

    def observe_acceptance(
        self,
        k: int,
        drafted: Sequence[int],
        accepted: Sequence[int],
        request_ids: Sequence[Hashable] | None = None,
    ) -> None:
        """Feed one step's outcome (the lists SpecStats.record takes) to the acceptance estimator."""
        if k == 0:
            return
        self.estimator.follow_batch(len(drafted))
        self.estimator.update_step(self._blended(len(drafted), request_ids), drafted, accepted, k)
        self._observations += 1

    def observe_last_step(self, last_step: Mapping[str, Any], request_ids: Sequence[Hashable] | None = None) -> None:
        """observe_acceptance() from SpecStats.last_step (keys k, drafted_per_request, accepted_per_request)."""
        step = last_step
        self.observe_acceptance(step["k"], step["drafted_per_request"], step["accepted_per_request"], request_ids)

    def observe_step_time(self, batch: int, k: int, seconds: float) -> None:
        """A real decode step's wall time: refines T(batch, k) online (the start-up probe times graph
        replays only, without the per-request host work that grows with the batch)."""
        self._misses.clear()  # the observed medians and the overhead fit change
        self._observations += 1
        if self.cost_model.has(k):
            probed = self.probed_seconds(batch, k)
            if not self.overhead.add(batch, k, seconds - probed, probed):
                return  # timed before its GPU work ran (StepOverheadModel.add): no sample of T either
        bucket = self.bucket(batch)
        self.observed.add(bucket, k, seconds)
        self._staleness.measured((bucket, k))

    def observe_catch_up(self, batch: int, k: int, seconds: float, tokens: int) -> None:
        """A speculative step that first caught the drafter up on `tokens` tokens took `seconds`: what it
        took beyond the predicted T(batch, k) prices catch-up per token (it is no sample of T itself)."""
        if self.catch_up is not None:
            predicted = self.step_seconds(batch, k)
            self.catch_up.observe(tokens, seconds - predicted, predicted)

    def refresh(self, num_decoding: int, request_ids: Sequence[Hashable] | None = None) -> None:
        """Recompute the goodput table of this batch (and these decoding requests), and the host-overhead
        fit, now if due (the engine calls this while the GPU runs a step, so that the next decision finds
        them fresh; in a closed batch's tail the next batch size differs, and only its table is left)."""
        self.overhead.refit_if_due()
        self._table(num_decoding, request_ids)

    def release(self, request_id: Hashable) -> None:
        """A request finished / was aborted / preempted: drop its acceptance history."""
        self.estimator.release(request_id)
        self._observations += 1

    def reachable_draft_lens(self, num_decoding: int) -> set[int]:
        """Every k draft_len() can return for this batch size (for CUDA-graph capture): all candidates."""
        return set(self.candidate_ks)

    def stats(self) -> dict[str, Any]:
        """The latest decision (k, reason, predicted goodputs) as get_stats()["planner_decision"]."""
        return {**super().stats(), "planner_decision": dict(self.last_decision)}

    def __repr__(self) -> str:
        return f"GoodputPlanner(candidate_ks={self.candidate_ks}, settings={self.settings!r})"


def build_goodput_planner(
    spec_config: Any,
    cost_model: StepCostModel,
    candidate_ks: Iterable[int] | None = None,
    explore_every: int | None = _DEFAULTS.explore_every,
    catch_up: CatchUpCost | None = None,
    backlog: BacklogFn | None = None,
    replan_every: int = _DEFAULTS.replan_every,
    probe_margin: float | None = _DEFAULTS.probe_margin,
    explore_budget: float | None = _DEFAULTS.explore_budget,
    padded_batch: PaddedBatchFn | None = None,
) -> GoodputPlanner:
    """The engine's planner from a speculative config (max_draft_len, max_concurrency, goodput_hysteresis,
    acceptance_profile) and a measured cost model, other settings at PlannerSettings' defaults. candidate_ks
    defaults to every k in 0..max_draft_len the cost model measured; the acceptance profile, when set,
    warm-starts the estimator; catch_up, backlog, padded_batch: see GoodputPlanner."""
    max_draft_len = spec_config.max_draft_len
    if candidate_ks is None:
        candidate_ks = [k for k in range(max_draft_len + 1) if cost_model.has(k)]
    candidate_ks = list(candidate_ks)
    above = [k for k in candidate_ks if k > max_draft_len]
    if above:
        raise ValueError(f"candidate k values {above} exceed max_draft_len ({max_draft_len})")
    settings = PlannerSettings(
        hysteresis=spec_config.goodput_hysteresis,
        max_concurrency=spec_config.max_concurrency,
        explore_every=explore_every,
        replan_every=replan_every,
        probe_margin=probe_margin,
        explore_budget=explore_budget,
    )
    estimator = planning_estimator(spec_config.max_draft_len, spec_config.acceptance_profile, settings)
    return GoodputPlanner(cost_model, estimator, candidate_ks, settings, catch_up, backlog, padded_batch)

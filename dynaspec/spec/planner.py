"""Goodput planner: each step, the draft length k that maximises expected committed tokens per second.

SmartSpec (Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large Language Models Using
Goodput", arXiv 2406.14066) chooses the speculation length from the current load and the observed
acceptance by maximising goodput. Here, for a step where `batch` requests decode:

    goodput(k) = (E[accepted | k] + 1) * batch / T(batch, k)        (k = 0: batch / T(batch, 0))

with E[accepted | k] from the per-position acceptance estimate (Leviathan et al. 2023; see
spec/acceptance_estimator.py) and T from the measured step-cost model (runtime/cost_model.py). It is the
online counterpart of TensorRT-LLM's static `draft_len_schedule` (PR #8194, "Dynamic draft length in spec
decode"), whose author left the choice of k to "a performance study"; this planner makes that study at
run time, and has the same call signature as DraftLenPolicy.draft_len so the engine can use either.

Rules, in order:
* more active requests than `max_concurrency` -> k = 0 (as DraftLenPolicy);
* the argmax of goodput over `candidate_ks` (0 is always a candidate, so speculation that does not pay
  falls back to k = 0; ties go to the smaller k: same goodput, less work);
* hysteresis: per batch bucket (the smallest measured batch size >= batch, like CUDA-graph padding) the
  previous k is kept unless the best k's predicted goodput exceeds the previous k's by more than
  `hysteresis` (relative), so noise in the acceptance estimate does not flap k. A hurdle h lets the
  planner hold a k up to h below the best; at 0.05 an H200 sweep (chat-like acceptance, batch 1) held
  k = 2 for 164 steps while k = 3 was predicted 2.8% better and k = 4's static line ran 6% faster, so the
  default is 0.02 (switching between captured graphs costs nothing; leaving k = 0 is priced by catch-up);
* step time: T(batch, k) starts as the probed cost (graph replays, or a tune file). Real decode steps
  refine it: once a (batch bucket, k) cell has MIN_OBSERVED_STEPS real steps, their median is used
  (before that, the slower of the prior and their median); every real step also feeds a host-overhead
  model (spec/step_overhead.py) that corrects the probed cost of speculative cells not run yet (see
  step_seconds). The engine does not report the first speculative step after plain ones: it pays the
  drafter's catch-up on every token committed meanwhile, a cost of switching, not of the cell;
* exploration: an estimate only learns about positions that are drafted, so every `explore_every`-th
  decision whose k is below the largest candidate uses the next larger candidate instead (from k = 0 that
  is the smallest k > 0). Without it a planner that settled on k = 0 would never see acceptance rise again.
  It explores only where it could pay: when the larger k would beat the k in force even if every draft
  were accepted ((k + 1) * batch / T(batch, k)). Where a speculative step costs more than that bound
  allows (large batches, whose host and compute cost per drafted token the step times have shown), no
  acceptance could make it win, so trying it would only cost time. An exploration runs two steps: the
  first pays the drafter's catch-up and is no step-time sample (see above), the second is one.
  None turns exploration off. With `explore_budget` (a fraction of time, the engine's EXPLORE_BUDGET),
  an exploration also waits until the below-max decisions since the last one have earned its predicted
  cost: that fraction of their predicted step times must cover two steps' extra time at the larger k
  plus, from k = 0, the drafter's catch-up. At small batches this changes nothing (an H200 at batch 1:
  ~1.5 ms per exploration against 2.6 ms earned in 64 steps); at batch 64 an exploration from k = 0 cost
  ~13 ms of a 5.5 ms step (mostly catch-up) and two of them took 2.5% of a chat sweep point's time, so
  there it now waits ~5 times longer.
* probe (with `probe_margin`): a k next to the k in force (k - 1 or k + 1, >= 1; next to k = 0, the
  best-predicted speculative k) whose cell at this batch bucket has fewer than MIN_OBSERVED_STEPS real
  steps and whose predicted goodput is within `probe_margin` of the k in force runs until it has them
  (or until a step slower than predicted, believed at once, takes it out of the margin). Its
  prediction rests on the probe plus what the other cells' steps missed, and that miss grows with k
  (n-gram look-ups, host work per drafted token): on an H200 at batch 64 the planner held k = 4 (13.2 ms
  a step) over an unvisited k = 3 predicted 4% worse and measured 23% faster (10.2 ms), and in another
  run held k = 0 over k = 3 predicted 1.4% worse (T 11.8 ms from the overhead fit of batches 1-16) and
  15% faster in the static line. A probe from k = 0 pays the drafter's catch-up like an exploration;
* catch-up: the drafter does no work on plain steps, so the first speculative step after them first
  catches up on every token committed meanwhile (spec/catch_up.py). When the previous decision was k = 0
  and this one is not, the planner asks the engine for the backlog (`backlog()`: tokens behind, tokens
  the decoding requests may still generate) and keeps k = 0 unless the faster k earns the catch-up back
  over those remaining tokens; an exploration from k = 0 goes ahead only if its catch-up costs at most
  EXPLORE_CATCH_UP_STEPS plain steps. Steps that caught up are timed by the engine and refine the price
  per token (`observe_catch_up`);
* ramp (with catch-up priced): while requests still waiting or prefilling (num_active > num_decoding)
  will lift the batch to a size where k = 0 is best, k = 0, whatever the previous k: speculating for the
  first decoders of a burst makes the drafter index every new prompt, for a few steps of gain (on an
  H200 at batch 256 this made the burst's prefill phase 35% slower than without speculation).

Host cost: the planner runs on the step's critical path, and on an H200 host its per-step work (per
request acceptance bookkeeping and the goodput table) made the goodput line's steps 2-7% slower than the
static line running the same k. So (a) per-request acceptance is tracked and blended only at batches of
at most PER_REQUEST_MAX_BATCH requests, where the batch's composition moves the average; above, the
pooled global estimate (its memory is ESTIMATE_MEMORY_TRIALS trials, about one step there) is that
average; (b) the goodput table of a (batch, requests) key is reused until `replan_every` observations
(acceptance outcomes, step times) arrived since it was computed; the rules above run on every step;
(c) the engine feeds a step's observations while the next step's graph runs and calls `refresh(batch)`
there, so a due table is recomputed off the critical path (engine/engine.py, `_feed_policy`).

Per-request acceptance (batches <= PER_REQUEST_MAX_BATCH): the engine names the decoding requests in
`draft_len`, `observe` and `refresh`. A request's estimate is its running mean (REQUEST_EMA_RATE)
shrunk towards the pooled one by a prior count learned from how much finished requests differed
(spec/request_spread.py). A fixed, small prior count with a 5-step memory froze a real-model request at
k = 0 after a stretch of rejections (k = 0 drafts nothing, so the estimate never recovered; CPU,
Qwen2.5-Coder-1.5B, 2026-11-27); a pooled estimate alone, at concurrency 1, is the previous requests'
acceptance, and held k = 0 through code-edit requests after chat ones for ~500 steps of H200 traces. The
learned count is large when requests are alike (the pooled estimate) and small when workloads mix
(scripts/sim_planner_request_mix.py: 0.98 x an oracle that knows each request's workload vs 0.89 pooled,
and within 0.004 of pooled where requests are alike).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from statistics import median
from typing import Any

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator, load_acceptance_profile
from dynaspec.spec.catch_up import CatchUpCost, switch_pays
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.step_overhead import StepOverheadModel

# Real steps a (bucket, k) cell needs before its median replaces probe + overhead model.
MIN_OBSERVED_STEPS = 4
# Trials behind the planner's global acceptance estimate (AcceptanceEstimator memory_trials).
ESTIMATE_MEMORY_TRIALS = 256
# An exploration from k = 0 may cost at most this many plain steps of drafter catch-up.
EXPLORE_CATCH_UP_STEPS = 2.0
# The engine's planner spends at most about this fraction of the time on explorations (explore_budget).
EXPLORE_BUDGET = 0.01
# Largest batch whose decisions blend the requests' own acceptance estimates (module docstring, host cost).
PER_REQUEST_MAX_BATCH = 16
# A request's own estimate: a running mean of its first 64 trials per position, then an EMA of that memory.
REQUEST_EMA_RATE = 1.0 / 64
# Pseudo-trials of the pooled estimate in a request's blend until finished requests tell how much requests
# differ (AcceptanceEstimator learn_blend_count, spec/request_spread.py). A request's own rate then needs
# tens of trials to outweigh the pooled one (one lucky draft of a chat-like request moves little), yet a
# request whose drafts are accepted half the time leaves k = 0 after a few (scripts/sim_planner_request_mix.py).
REQUEST_BLEND_COUNT = 32.0
# Observations (acceptance outcomes, step times) after which the engine's planner recomputes a goodput table.
REPLAN_EVERY = 16
# The engine's planner probes an unvisited neighbouring k predicted within this of the k in force.
PROBE_MARGIN = 0.10
# Goodput tables kept at most (one per batch size and set of requests met recently).
MAX_TABLES = 64

# backlog() -> (tokens the drafter is behind on, tokens the decoding requests may still generate)
BacklogFn = Callable[[], tuple[int, int]]
# padded_batch(batch, k) -> the batch size the step runs at (a CUDA graph's bucket, >= batch)
PaddedBatchFn = Callable[[int, int], int]


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


class GoodputPlanner:
    """Per-step k maximising predicted goodput, with hysteresis; a drop-in for DraftLenPolicy."""

    def __init__(
        self,
        cost_model: StepCostModel,
        estimator: AcceptanceEstimator,
        candidate_ks: Iterable[int],
        hysteresis: float = 0.02,
        max_concurrency: int | None = None,
        explore_every: int | None = 64,
        catch_up: CatchUpCost | None = None,
        backlog: BacklogFn | None = None,
        replan_every: int = 1,
        probe_margin: float | None = None,
        explore_budget: float | None = None,
        padded_batch: PaddedBatchFn | None = None,
    ) -> None:
        """
        cost_model: T(batch, k); every candidate k must be measured in it.
        estimator: acceptance per position; its max_draft_len must cover the largest candidate.
        candidate_ks: the k values the engine can run (e.g. those with captured CUDA graphs); 0 is added.
        hysteresis: relative goodput gain (>= 0) the best k needs over the current one to replace it.
        max_concurrency: more active requests than this -> k = 0 (None: no limit).
        explore_every: see the module docstring (None: never explore).
        catch_up, backlog: the drafter's catch-up price and the engine's backlog callback (see the module
        docstring); without both, switches from k = 0 are not priced.
        replan_every: a decision reuses the goodput table of its (batch, requests) until this many
        observations arrived since it was computed (1: every observation refreshes it).
        probe_margin: see the module docstring, probe (None: never probe).
        explore_budget: fraction of the predicted time of below-max decisions that explorations may cost
        (module docstring, exploration; None: explore every `explore_every` decisions whatever it costs).
        padded_batch: (batch, k) -> the batch size a step really runs at (the CUDA graph it replays);
        the probed cost is read there (None: steps run at their own batch size, as in eager mode).
        """
        if not isinstance(cost_model, StepCostModel):
            raise TypeError(f"cost_model must be a StepCostModel, got {type(cost_model).__name__}")
        if not isinstance(estimator, AcceptanceEstimator):
            raise TypeError(f"estimator must be an AcceptanceEstimator, got {type(estimator).__name__}")
        ks = {0}
        for k in candidate_ks:
            ks.add(_check_count(k, "each candidate k", 0))
        self.candidate_ks: list[int] = sorted(ks)
        missing = [k for k in self.candidate_ks if not cost_model.has(k)]
        if missing:
            raise ValueError(
                f"candidate k values {missing} have no step-cost measurement; measured k values: "
                f"{cost_model.draft_lens}"
            )
        if self.candidate_ks[-1] > estimator.max_draft_len:
            raise ValueError(
                f"candidate k {self.candidate_ks[-1]} exceeds the acceptance estimator's max_draft_len "
                f"({estimator.max_draft_len})"
            )
        if (
            isinstance(hysteresis, bool)
            or not isinstance(hysteresis, (int, float))
            or not 0 <= hysteresis < float("inf")
        ):
            raise ValueError(f"hysteresis must be a finite relative gain >= 0 (e.g. 0.05), got {hysteresis!r}")
        if max_concurrency is not None:
            _check_count(max_concurrency, "max_concurrency", 1)
        if explore_every is not None:
            _check_count(explore_every, "explore_every", 1)
        self.replan_every = _check_count(replan_every, "replan_every", 1)
        if probe_margin is not None and (
            isinstance(probe_margin, bool) or not isinstance(probe_margin, (int, float)) or not 0 <= probe_margin < 1
        ):
            raise ValueError(
                f"probe_margin must be a relative goodput in [0, 1) (e.g. 0.1) or None, got {probe_margin!r}"
            )
        self.probe_margin = probe_margin
        if explore_budget is not None and (
            isinstance(explore_budget, bool) or not isinstance(explore_budget, (int, float))
            or not 0 < explore_budget <= 1
        ):
            raise ValueError(
                f"explore_budget must be a fraction of time in (0, 1] (e.g. 0.01) or None, got {explore_budget!r}"
            )
        self.explore_budget = explore_budget
        self._explore_earned = 0.0  # seconds of exploration earned since the last one (explore_budget)
        # (batch, request ids or None) -> (observations when computed, goodput per k)
        self._tables: dict[tuple[int, tuple[Hashable, ...] | None], tuple[int, dict[int, float]]] = {}
        self._observations = 0  # acceptance outcomes, step times and releases so far
        self.cost_model = cost_model  # the probed / tune-file costs, never mixed with real steps
        self.observed = StepCostModel(device=cost_model.device)  # real step times per (bucket, k)
        self.overhead = StepOverheadModel()
        self.estimator = estimator
        self.hysteresis = float(hysteresis)
        self.max_concurrency = max_concurrency
        self.explore_every = explore_every
        self._buckets = cost_model.batch_sizes
        self._current: dict[int, int] = {}  # batch bucket -> k in force
        self._below_max_decisions = 0
        self._explore_again: int | None = None  # k of an exploration's second step, due next
        self._misses: dict[int, dict[int, float]] = {}  # bucket -> k -> miss, until the next real step
        if catch_up is not None and not isinstance(catch_up, CatchUpCost):
            raise TypeError(f"catch_up must be a CatchUpCost, got {type(catch_up).__name__}")
        if backlog is not None and not callable(backlog):
            raise TypeError(f"backlog must be a callable returning (tokens behind, tokens remaining), got {backlog!r}")
        if padded_batch is not None and not callable(padded_batch):
            raise TypeError(f"padded_batch must be a callable (batch, k) -> padded batch, got {padded_batch!r}")
        self.padded_batch = padded_batch
        self.catch_up = catch_up
        self.backlog = backlog
        self.last_decision: dict[str, Any] = {}

    @property
    def max_draft_len(self) -> int:
        """Largest k the planner can return (size draft buffers by it)."""
        return self.candidate_ks[-1]

    def bucket(self, batch: int) -> int:
        """The hysteresis bucket of a batch size: smallest measured batch >= batch, else the largest."""
        i = bisect_left(self._buckets, batch)
        return self._buckets[min(i, len(self._buckets) - 1)]

    def goodputs(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> dict[int, float]:
        """Predicted committed tokens per second for each candidate k at this batch size."""
        _check_count(batch, "batch", 1)
        expected = self.estimator.expected_accepted_all(_blended(batch, request_ids))
        return {k: (expected[k] + 1.0) * batch / self.step_seconds(batch, k) for k in self.candidate_ks}

    def _table(self, batch: int, request_ids: Sequence[Hashable] | None) -> dict[int, float]:
        """goodputs(batch, request_ids), reused until `replan_every` observations arrived (do not mutate)."""
        ids = _blended(batch, request_ids)
        key = (batch, None if not ids else tuple(ids))
        entry = self._tables.get(key)
        if entry is not None and self._observations - entry[0] < self.replan_every:
            return entry[1]
        if len(self._tables) >= MAX_TABLES:  # keys of requests long gone
            self._tables.clear()
        table = self.goodputs(batch, ids)
        self._tables[key] = (self._observations, table)
        return table

    def step_seconds(self, batch: int, k: int) -> float:
        """Predicted seconds of a real step at (batch, k).

        A cell with MIN_OBSERVED_STEPS real steps: their median. Fewer: the prior (the probed cost, plus
        for k > 0 the learned host overhead and what that overhead missed on this bucket's visited
        speculative cells), or the median of its first steps when that is slower, so a k that proved
        slow is not repeated MIN_OBSERVED_STEPS times at a new batch size. k = 0 gets no
        overhead term: plain decode steps overlap their host work with the GPU (engine/overlap.py), and
        a fit made mostly of speculative steps cannot tell per-request work of every step from that of
        speculative steps, so it would price k = 0 too high.
        """
        bucket = self.bucket(batch)
        observed = self.observed.count(bucket, k)
        if observed >= MIN_OBSERVED_STEPS:
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
        the captured graph's, since a step of 97 requests replays the batch-128 graph and costs what the
        probe measured there (interpolating between the graphs of 96 and 128 priced it ~25% cheaper)."""
        return self.cost_model.cost(batch if self.padded_batch is None else self.padded_batch(batch, k), k)

    def _bucket_miss(self, bucket: int, k: int) -> float:
        """Median over this bucket's other speculative cells with MIN_OBSERVED_STEPS real steps of
        (their median - their prior); 0 when there is none. Unvisited k's at a batch size where the
        visited ones ran slower than predicted are then predicted slower too, instead of each being
        tried once on an optimistic prior."""
        misses = [miss for other, miss in self._cell_misses(bucket).items() if other != k]
        return median(misses) if misses else 0.0

    def _cell_misses(self, bucket: int) -> dict[int, float]:
        """k -> (observed median - prior) for the bucket's speculative cells with MIN_OBSERVED_STEPS real
        steps; computed once between two real steps (a decision asks for every k)."""
        misses = self._misses.get(bucket)
        if misses is None:
            misses = self._misses[bucket] = {
                k: self.observed.measured(bucket, k) - self._prior(bucket, k)
                for k in self.candidate_ks
                if k > 0 and self.observed.count(bucket, k) >= MIN_OBSERVED_STEPS
            }
        return misses

    def explain(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> list[dict[str, float]]:
        """Per candidate k: expected accepted, predicted and probed step seconds, predicted goodput (rows
        for logs / plots)."""
        _check_count(batch, "batch", 1)
        expected = self.estimator.expected_accepted_all(_blended(batch, request_ids))
        rows = []
        for k in self.candidate_ks:
            seconds = self.step_seconds(batch, k)
            rows.append(
                {
                    "k": k,
                    "expected_accepted": expected[k],
                    "step_seconds": seconds,
                    "probed_seconds": self.probed_seconds(batch, k),
                    "goodput_tokens_per_s": (expected[k] + 1.0) * batch / seconds,
                }
            )
        return rows

    def could_pay(self, batch: int, k: int, goodput_to_beat: float) -> bool:
        """Whether k could beat `goodput_to_beat` with every draft accepted (the exploration bound)."""
        return (k + 1) * batch / self.step_seconds(batch, k) > goodput_to_beat

    def best_k(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """Argmax of goodput without hysteresis or exploration (ties: the smaller k)."""
        return self._argmax(self.goodputs(batch, request_ids))

    def _argmax(self, goodput: Mapping[int, float]) -> int:
        """The candidate k of highest goodput; ties go to the smaller k (same goodput, less work)."""
        return max(self.candidate_ks, key=lambda k: (goodput[k], -k))

    def draft_len(
        self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None
    ) -> int:
        """k for a step where `num_decoding` of `num_active` requests decode (DraftLenPolicy's signature).

        request_ids (the decoding requests) blend in their own acceptance; None uses the global estimate.
        """
        _check_count(num_decoding, "num_decoding", 1)
        _check_count(num_active, "num_active", 0)
        if num_active < num_decoding:
            raise ValueError(
                f"num_active ({num_active}) must be >= num_decoding ({num_decoding}): "
                f"decoding requests are active requests"
            )
        if request_ids is not None and len(request_ids) != num_decoding:
            raise ValueError(
                f"request_ids must name the {num_decoding} decoding requests, got {len(request_ids)} ids"
            )
        if self.max_concurrency is not None and num_active > self.max_concurrency:
            self.last_decision = {"batch": num_decoding, "k": 0, "reason": "max_concurrency"}
            return 0
        goodput = self._table(num_decoding, request_ids)
        best = self._argmax(goodput)
        bucket = self.bucket(num_decoding)
        current = self._current.get(bucket)
        if current is None or goodput[best] > goodput[current] * (1.0 + self.hysteresis):
            current = best
            reason = "argmax"
        else:
            reason = "argmax" if current == best else "hysteresis"
        self._current[bucket] = current
        chosen = current
        probe = self._neighbour_to_probe(bucket, current, goodput) if self._explore_again is None else None
        if probe is not None:
            chosen, reason = probe, "probe"
        elif self._explore_again is not None:  # the second step of an exploration
            if self._explore_again > chosen:
                chosen, reason = self._explore_again, "explore"
            self._explore_again = None
        elif chosen < self.candidate_ks[-1] and self.explore_every is not None:
            self._below_max_decisions += 1
            if self.explore_budget is not None:
                self._explore_earned += self.explore_budget * self.step_seconds(num_decoding, chosen)
            if self._below_max_decisions >= self.explore_every:
                larger = self.candidate_ks[bisect_right(self.candidate_ks, chosen)]
                if not self.could_pay(num_decoding, larger, goodput[chosen]):
                    self._below_max_decisions = 0
                elif self.explore_budget is None or self._exploration_affordable(num_decoding, chosen, larger):
                    self._below_max_decisions = 0
                    self._explore_earned = 0.0
                    chosen = larger
                    reason = "explore"
                    self._explore_again = larger
        if chosen > 0 and self.catch_up is not None and self.backlog is not None:
            if num_active > num_decoding and self._lifted_batch_best_k(num_active) == 0:
                chosen, reason, self._explore_again = 0, "ramp", None
            elif self.last_decision.get("k", 0) == 0 and not self._catch_up_pays(
                num_decoding, chosen, goodput, reason in ("explore", "probe")
            ):
                chosen, reason, self._explore_again = 0, "catch-up", None
            if chosen == 0:
                self._current[bucket] = 0
        self.last_decision = {
            "batch": num_decoding,
            "k": chosen,
            "reason": reason,
            "held_k": current,
            "best_k": best,
            "goodput": goodput[chosen],
            "best_goodput": goodput[best],
        }
        return chosen

    def _exploration_affordable(self, batch: int, k: int, larger: int) -> bool:
        """Whether the earned budget covers exploring `larger` from `k` at `batch`: two steps' extra time,
        plus the drafter's catch-up when k is 0 (priced when the planner has catch_up and backlog; the
        backlog, a pass over the requests, is only asked once the steps' part fits)."""
        extra = 2.0 * max(0.0, self.step_seconds(batch, larger) - self.step_seconds(batch, k))
        if extra > self._explore_earned:
            return False
        if k == 0 and self.catch_up is not None and self.backlog is not None:
            extra += self.catch_up.seconds(self.backlog()[0])
        return extra <= self._explore_earned

    def _neighbour_to_probe(self, bucket: int, current: int, goodput: Mapping[int, float]) -> int | None:
        """A k next to the k in force whose cell at this bucket has fewer than MIN_OBSERVED_STEPS real
        steps and whose predicted goodput is within `probe_margin` of it (the better-predicted one when
        both are), else None: its prediction then rests on the probe and on what the OTHER k's steps
        missed, which is the error to expect from k-dependent host work. Next to k = 0 is the best
        predicted speculative k: from a bucket that never speculated, every speculative prediction is an
        extrapolation of the host-overhead fit from other batch sizes."""
        if self.probe_margin is None:
            return None
        if current == 0:
            speculative = [k for k in self.candidate_ks if k > 0]
            neighbours = [max(speculative, key=lambda k: (goodput[k], -k))] if speculative else []
        else:
            neighbours = [k for k in (current - 1, current + 1) if k > 0 and k in goodput]
        floor = goodput[current] * (1.0 - self.probe_margin)
        near = [k for k in neighbours if goodput[k] >= floor and self.observed.count(bucket, k) < MIN_OBSERVED_STEPS]
        return max(near, key=lambda k: goodput[k]) if near else None

    def refresh(self, batch: int, request_ids: Sequence[Hashable] | None = None) -> None:
        """Recompute the goodput table of `batch` (and these decoding requests), and the host-overhead
        fit, now if due (the engine calls this while the GPU runs a step, so that the next decision finds
        them fresh; in a closed batch's tail the next batch size differs, and only its table is left)."""
        _check_count(batch, "batch", 1)
        self.overhead.refit_if_due()
        self._table(batch, request_ids)

    def _lifted_batch_best_k(self, num_active: int) -> int:
        """best_k at the batch the active requests will make (the ramp rule), from the reused tables."""
        return self._argmax(self._table(min(num_active, self._buckets[-1]), None))

    def _catch_up_pays(self, batch: int, k: int, goodput: Mapping[int, float], explore: bool) -> bool:
        """Whether switching from k = 0 to k earns back the drafter's catch-up (explore: an exploration or
        a probe, which may cost EXPLORE_CATCH_UP_STEPS plain steps)."""
        behind, remaining = self.backlog()
        cost = self.catch_up.seconds(behind)
        if explore:
            return cost <= EXPLORE_CATCH_UP_STEPS * self.step_seconds(batch, 0)
        return switch_pays(cost, remaining, goodput[0], goodput[k])

    # ----------------------------------------------------------------- engine hooks
    def observe(
        self,
        k: int,
        drafted: Sequence[int],
        accepted: Sequence[int],
        request_ids: Sequence[Hashable] | None = None,
    ) -> None:
        """Feed one step's outcome (the lists SpecStats.record takes) to the acceptance estimator."""
        _check_count(k, "k", 0)
        if k == 0:
            return
        self.estimator.update_step(_blended(len(drafted), request_ids), drafted, accepted, k)
        self._observations += 1

    def observe_last_step(self, last_step: Mapping[str, Any], request_ids: Sequence[Hashable] | None = None) -> None:
        """observe() from SpecStats.last_step (keys k, drafted_per_request, accepted_per_request)."""
        try:
            k = last_step["k"]
            drafted = last_step["drafted_per_request"]
            accepted = last_step["accepted_per_request"]
        except KeyError as exc:
            raise ValueError(f"last_step lacks {exc.args[0]!r}: pass SpecStats.last_step after record()") from None
        self.observe(k, drafted, accepted, request_ids)

    def observe_step_time(self, batch: int, k: int, seconds: float) -> None:
        """A real decode step's wall time: refines T(batch, k) online (the start-up probe times graph
        replays only, without the per-request host work that grows with the batch)."""
        _check_count(batch, "batch", 1)
        _check_count(k, "k", 0)
        self._misses.clear()  # the observed medians and the overhead fit change
        self._observations += 1
        self.observed.add(self.bucket(batch), k, seconds)
        if self.cost_model.has(k):
            self.overhead.add(batch, k, seconds - self.probed_seconds(batch, k))

    def observe_catch_up(self, batch: int, k: int, seconds: float, tokens: int) -> None:
        """A speculative step that first caught the drafter up on `tokens` tokens took `seconds`: what it
        took beyond the predicted T(batch, k) prices catch-up per token (it is no sample of T itself)."""
        _check_count(batch, "batch", 1)
        _check_count(k, "k", 1)
        _check_count(tokens, "tokens", 0)
        if self.catch_up is not None:
            self.catch_up.observe(tokens, seconds - self.step_seconds(batch, k))

    def release(self, request_id: Hashable) -> None:
        """A request finished / was aborted / preempted: drop its acceptance history."""
        self.estimator.release(request_id)
        self._observations += 1

    def draft_lens_for_batch(self, num_decoding: int) -> set[int]:
        """Every k draft_len() can return for this batch size (for CUDA-graph capture): all candidates."""
        _check_count(num_decoding, "num_decoding", 1)
        return set(self.candidate_ks)

    def reachable_draft_lens(self) -> list[int]:
        """Sorted k values draft_len() can return."""
        return list(self.candidate_ks)

    def __repr__(self) -> str:
        return (
            f"GoodputPlanner(candidate_ks={self.candidate_ks}, hysteresis={self.hysteresis}, "
            f"max_concurrency={self.max_concurrency}, explore_every={self.explore_every}, "
            f"explore_budget={self.explore_budget})"
        )


def build_goodput_planner(
    spec_config: Any,
    cost_model: StepCostModel,
    candidate_ks: Iterable[int] | None = None,
    explore_every: int | None = 64,
    catch_up: CatchUpCost | None = None,
    backlog: BacklogFn | None = None,
    replan_every: int = REPLAN_EVERY,
    probe_margin: float | None = PROBE_MARGIN,
    explore_budget: float | None = EXPLORE_BUDGET,
    padded_batch: PaddedBatchFn | None = None,
) -> GoodputPlanner:
    """A planner from a speculative config (max_draft_len, max_concurrency, goodput_hysteresis,
    acceptance_profile) and a measured cost model.

    candidate_ks defaults to every k in 0..max_draft_len that the cost model measured (e.g. the captured
    CUDA graphs); the acceptance profile, when set, warm-starts the estimator; catch_up / backlog price
    switches from k = 0; replan_every, probe_margin, explore_budget: see GoodputPlanner (the engine's
    planner reuses a goodput table for REPLAN_EVERY observations, probes neighbours within PROBE_MARGIN and
    spends about EXPLORE_BUDGET of the time on explorations); padded_batch: see GoodputPlanner.
    """
    max_draft_len = spec_config.max_draft_len
    if candidate_ks is None:
        candidate_ks = [k for k in range(max_draft_len + 1) if cost_model.has(k)]
    candidate_ks = list(candidate_ks)
    above = [k for k in candidate_ks if k > max_draft_len]
    if above:
        raise ValueError(f"candidate k values {above} exceed max_draft_len ({max_draft_len})")
    profile = None
    if spec_config.acceptance_profile is not None:
        profile = load_acceptance_profile(spec_config.acceptance_profile)
    estimator = AcceptanceEstimator(
        max_draft_len,
        profile=profile,
        memory_trials=ESTIMATE_MEMORY_TRIALS,
        request_ema_rate=REQUEST_EMA_RATE,
        blend_count=REQUEST_BLEND_COUNT,
        learn_blend_count=True,
    )
    return GoodputPlanner(
        cost_model,
        estimator,
        candidate_ks,
        hysteresis=spec_config.goodput_hysteresis,
        max_concurrency=spec_config.max_concurrency,
        explore_every=explore_every,
        catch_up=catch_up,
        backlog=backlog,
        replan_every=replan_every,
        probe_margin=probe_margin,
        explore_budget=explore_budget,
        padded_batch=padded_batch,
    )


def _blended(batch: int, request_ids: Sequence[Hashable] | None) -> Sequence[Hashable] | None:
    """The request ids whose own acceptance a batch's estimate blends in: none above PER_REQUEST_MAX_BATCH."""
    return request_ids if batch <= PER_REQUEST_MAX_BATCH else None

"""The goodput planner's rules as pure functions: each takes the goodput table and the values it needs and
returns a decision; none keeps or changes state (spec/planner.py applies them in order and keeps the
state, PlannerState, and the re-probe rule's Staleness, which spec/adaptive.py keeps per draft position).

The method is SmartSpec's (Liu et al. 2024, "Optimizing Speculative Decoding for Serving Large Language
Models Using Goodput", arXiv 2406.14066): per step, the draft length k of highest predicted goodput

    goodput(k) = (E[accepted | k] + 1) * batch / T(batch, k)

A goodput table maps each candidate k to its prediction; `candidate_ks` is sorted and holds 0.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dynaspec.spec.catch_up import switch_pays


class Staleness:
    """The re-probe rule's bookkeeping (PlannerSettings.reprobe_after), for the planner's (bucket, k) cells and
    adaptive's draft positions alike: when each key was last measured, counted in decisions, and the keys
    that went stale, with how often each was measured since (until min_observed_steps)."""

    def __init__(self, reprobe_after: Callable[[], int | None], min_observed_steps: Callable[[], int]) -> None:
        """Both read from the owner's settings when asked (tests replace the settings in place)."""
        self.reprobe_after, self.min_observed_steps = reprobe_after, min_observed_steps
        self.decisions = 0
        self._last: dict = {}  # key -> decision count at its last measurement
        self._reprobing: dict = {}  # stale key -> measurements since it went stale

    def __len__(self) -> int:
        """Keys measured at least once."""
        return len(self._last)

    def decide(self) -> None:
        """One decision passed."""
        self.decisions += 1

    def measured(self, key) -> None:
        """The key was measured now (a real step of the cell, a verification of the position)."""
        self._last[key] = self.decisions
        if key in self._reprobing:
            self._reprobing[key] += 1
            if self._reprobing[key] >= self.min_observed_steps():
                del self._reprobing[key]

    def stale_count(self, key) -> int | None:
        """Measurements since the key went stale (not measured for reprobe_after decisions; 0 when it just
        did), or None while it is fresh or was never measured."""
        if key in self._reprobing:
            return self._reprobing[key]
        last, after = self._last.get(key), self.reprobe_after()
        if last is not None and after is not None and self.decisions - last > after:
            self._reprobing[key] = 0
            return 0
        return None

    def seen(self, key) -> bool:
        """Measured at least once (stale or not)."""
        return key in self._last

    def unmeasured(self, key) -> bool:
        """Never measured, or stale (the probe rule's "unvisited")."""
        return key not in self._last or self.stale_count(key) is not None


@dataclass
class PlannerState:
    """What the planner remembers between decisions, for the rules to read (GoodputPlanner.state)."""

    held: dict[int, int] = field(default_factory=dict)  # batch bucket -> k in force (hysteresis)
    below_max_decisions: int = 0  # decisions below the largest k since the last exploration (or its skip)
    explore_earned: float = 0.0  # seconds of exploration earned since the last one (explore_budget)
    explore_again: int | None = None  # k of an exploration's second step, due next
    last_k: int = 0  # the previous decision's k (leaving k = 0 pays the drafter's catch-up)


def goodput(expected_accepted: float, batch: int, step_seconds: float) -> float:
    """Committed tokens per second of a step: every request commits its accepted drafts plus one token."""
    return (expected_accepted + 1.0) * batch / step_seconds


def over_concurrency(num_active: int, max_concurrency: int | None) -> bool:
    """More active requests than max_concurrency: k = 0 (TensorRT-LLM's max_concurrency)."""
    return max_concurrency is not None and num_active > max_concurrency


def argmax_k(goodputs: Mapping[int, float], candidate_ks: Sequence[int]) -> int:
    """The candidate k of highest goodput; ties go to the smaller k (same goodput, less work)."""
    return max(candidate_ks, key=lambda k: (goodputs[k], -k))


def hold_or_switch(goodputs: Mapping[int, float], best: int, held: int | None, hysteresis: float) -> tuple[int, str]:
    """Hysteresis: the k in force (`held`, None when the bucket has none) stays unless the best k's goodput
    exceeds its by more than `hysteresis` (relative). Returns (k, "argmax" | "hysteresis")."""
    if held is None or goodputs[best] > goodputs[held] * (1.0 + hysteresis):
        return best, "argmax"
    return held, "argmax" if held == best else "hysteresis"


def probe_candidate(
    held: int,
    goodputs: Mapping[int, float],
    candidate_ks: Sequence[int],
    steps_seen: Callable[[int], int],
    probe_margin: float | None,
    min_observed_steps: int,
) -> int | None:
    """Probe: a k next to the k in force (k - 1 or k + 1, >= 1; next to k = 0, the best-predicted speculative
    k) whose cell has fewer than `min_observed_steps` real steps (`steps_seen(k)`) and whose goodput is
    within `probe_margin` of the k in force (the better one when both are); None otherwise or when
    probe_margin is None. Such a prediction rests on the start-up probe and on what the other k's steps
    missed, which is the error to expect from k-dependent host work."""
    if probe_margin is None:
        return None
    if held == 0:
        speculative = [k for k in candidate_ks if k > 0]
        neighbours = [max(speculative, key=lambda k: (goodputs[k], -k))] if speculative else []
    else:
        neighbours = [k for k in (held - 1, held + 1) if k > 0 and k in goodputs]
    floor = goodputs[held] * (1.0 - probe_margin)
    near = [k for k in neighbours if goodputs[k] >= floor and steps_seen(k) < min_observed_steps]
    return max(near, key=lambda k: goodputs[k]) if near else None


def second_exploration_step(k: int, reason: str, explored: int) -> tuple[int, str]:
    """An exploration runs two steps (the first pays the drafter's catch-up and is no step-time sample):
    the second runs the explored k unless the decision is already larger."""
    return (explored, "explore") if explored > k else (k, reason)


def next_larger_k(candidate_ks: Sequence[int], k: int) -> int:
    """The smallest candidate above k (exploration tries it); k must be below the largest candidate."""
    return candidate_ks[bisect_right(candidate_ks, k)]


def could_pay(batch: int, k: int, step_seconds: float, goodput_to_beat: float) -> bool:
    """Whether k could beat `goodput_to_beat` with every draft accepted, (k + 1) * batch / T(batch, k): an
    exploration where no acceptance could make k win would only cost time."""
    return (k + 1) * batch / step_seconds > goodput_to_beat


def exploration_step_cost(step_seconds_k: float, step_seconds_larger: float) -> float:
    """Extra seconds of an exploration's two steps at the larger k over the k in force."""
    return 2.0 * max(0.0, step_seconds_larger - step_seconds_k)


def exploration_affordable(extra_seconds: float, earned_seconds: float) -> bool:
    """explore_budget: an exploration waits until the decisions since the last one earned its cost."""
    return extra_seconds <= earned_seconds


def ramp_keeps_k0(num_decoding: int, num_active: int, best_k_at_active_batch: Callable[[], int]) -> bool:
    """Ramp: while waiting or prefilling requests (num_active > num_decoding) will lift the batch to a size
    where k = 0 is best, k = 0 (speculating for a burst's first decoders makes the drafter index every
    new prompt for a few steps of gain). `best_k_at_active_batch` is only asked when requests wait."""
    return num_active > num_decoding and best_k_at_active_batch() == 0


def catch_up_pays(
    catch_up_seconds: float,
    remaining_tokens: float,
    goodputs: Mapping[int, float],
    k: int,
    trial: bool,
    plain_step_seconds: float,
    explore_catch_up_steps: float,
) -> bool:
    """Catch-up: whether leaving k = 0 for k is worth the drafter's catch-up (spec/catch_up.py). A switch
    must earn it back over the tokens still to generate (SmartSpec's switching cost); a trial (an
    exploration or a probe) may cost at most `explore_catch_up_steps` plain steps."""
    if trial:
        return catch_up_seconds <= explore_catch_up_steps * plain_step_seconds
    return switch_pays(catch_up_seconds, remaining_tokens, goodputs[0], goodputs[k])

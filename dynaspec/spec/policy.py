"""The draft-length policy protocol: how many tokens each step drafts, and what a policy learns from a step.

Every policy (no speculation, the static `draft_len_schedule`, `auto`, the goodput planner) implements
this one interface, so the engine's step loop never asks which policy it has:

```
ks = policy.draft_lens(num_decoding, num_active, request_ids, remaining=None)  # scheduler, every step: k_i
                                                              # per request (remaining: set while draining)
k = policy.draft_len(num_decoding, num_active, request_ids)   # one k for all (the default draft_lens repeats it)
policy.observe(StepOutcome(...))                              # fed while the next step's forward runs
policy.refresh(num_decoding, request_ids)                     # idem: recompute what is due, off the critical path
policy.release(request_id)                                    # a request finished / was aborted / preempted
policy.reachable_draft_lens(batch)                            # start-up: the (batch, k) CUDA graphs to capture
policy.stats()                                                # get_stats(): schedule in force, last decision
```
Policies are built from the speculative config by `spec/policies.py` (a table, as drafters are built).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from dynaspec.runtime.cost_model import StepCostModel


@dataclass(frozen=True)
class StepOutcome:
    """What one decode step did, as a policy learns from it.

    request_ids: the decoding requests, in batch order (len = the decoding batch).
    draft_len: the k the step ran at (0: a plain step; drafted/accepted are then empty).
    drafted, accepted: per decoding request, tokens drafted (<= k) and drafts accepted.
    draft_lens: per decoding request, the k_i it was allowed to verify (<= k; the scheduler's max_draft);
        empty where the engine did not say (then every request counts at k).
    seconds: wall time of a decode-only step (an overlapped plain step: from when the device could start
        it to its tokens on the host, engine/overlap.overlapped_seconds); None when the step also prefilled,
        so it is no sample of T(batch, k).
    catch_up_tokens: set on the first speculative step after plain ones: the tokens the drafter caught up
        on first (spec/catch_up.py); its time prices catch-up, it is no sample of T(batch, k) either.
    confidence: per decoding request, the drafter's probability of each draft it verified (len = drafted);
        empty where the drafter has no distribution or the policy does not trim (trims_drafts_at).
    planned: per decoding request, the k_i the policy gave before trim_drafts lowered it (draft_lens is
        after); empty where no trim ran. What the step cost answers the decision that planned it.
    """

    request_ids: Sequence[Hashable]
    draft_len: int
    drafted: Sequence[int] = ()
    accepted: Sequence[int] = ()
    seconds: float | None = None
    catch_up_tokens: int | None = None
    draft_lens: Sequence[int] = ()
    confidence: Sequence[Sequence[float]] = ()
    planned: Sequence[int] = ()

    @property
    def batch(self) -> int:
        return len(self.request_ids)


class DraftLenPolicy:
    """Base of every draft-length policy: the protocol with no-op defaults (k = 0, learns nothing)."""

    # Whether its steps give requests different draft lengths: the engine then also captures ragged
    # verify graphs keyed by total tokens (runtime/ragged_graphs.py) besides the uniform (bucket, k) ones.
    ragged: bool = False

    def draft_len(self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None) -> int:
        """k for a step where `num_decoding` of `num_active` active requests decode (request_ids: theirs)."""
        return 0

    def draft_lens(
        self, num_decoding: int, num_active: int, request_ids: Sequence[Hashable] | None = None,
        remaining: Sequence[int] | None = None,
    ) -> list[int]:
        """One k_i per decoding request, in order (what the scheduler asks). The default gives every request
        draft_len()'s k, so a uniform policy implements draft_len() only; a per-request policy (spec/adaptive.py)
        overrides this and makes draft_len() the largest k_i. remaining: per decoding request, the tokens it may
        still generate, given while the batch drains (no request waits or prefills; spec/drain.py), else None."""
        return [self.draft_len(num_decoding, num_active, request_ids)] * num_decoding

    def trims_drafts_at(self, batch: int) -> bool:
        """Whether it cuts the drafts of a step of `batch` decoding requests by the drafter's probability of
        each (trim_drafts): the engine then reads those probabilities on the host before it verifies (a wait
        for the drafting graph), reports them back, and does not chain that step (engine/chained_step.py)."""
        return False

    def trim_drafts(self, request_ids: Sequence[Hashable], limits: Sequence[int],
                    confidence: Sequence[Sequence[float]]) -> list[int]:
        """After drafting: how many of its drafts each request verifies (<= its limit), given the drafter's
        probability of each draft (confidence[i], one per drafted token). Default: all of them."""
        return list(limits)

    def observe(self, outcome: StepOutcome) -> None:
        """Learn from a finished decode step."""

    def refresh(self, num_decoding: int, request_ids: Sequence[Hashable] | None = None) -> None:
        """Recompute whatever is due for the next decision (called while the GPU runs a step)."""

    def release(self, request_id: Hashable) -> None:
        """Forget a finished, aborted or preempted request."""

    def reachable_draft_lens(self, num_decoding: int) -> set[int]:
        """Every k draft_len() (the largest k_i of draft_lens()) can return when `num_decoding` requests decode
        (CUDA-graph capture)."""
        return {0}

    def view(self, batch: int) -> dict[str, Any] | None:
        """What it would predict now for a step of `batch` decoding requests, for benchmark reports and logs
        (JSON-ready); None where it predicts nothing."""
        return None

    def stats(self) -> dict[str, Any]:
        """get_stats() entries: the schedule in force, what `auto` planned, the planner's last decision, the
        drafted positions trim_drafts left unverified."""
        return {"draft_len_schedule": None, "auto_schedule": None, "planner_decision": None, "trimmed_positions": 0}


class NoSpeculation(DraftLenPolicy):
    """The policy of an engine without a speculative config: k = 0 at every step."""


@dataclass
class PolicyContext:
    """What the engine offers a policy at start-up (spec/policies.py passes it to the builders).

    step_costs(): T(batch, k) for every batch bucket and k in 0..max_draft_len, probed now over the
        captured CUDA graphs (eager forwards on CPU); only policies that price steps call it.
    catch_up_cost(): the drafter's start-up probe of what catching up costs: (fixed seconds, seconds a token).
    backlog(): (tokens the drafter is behind on, tokens the decoding requests may still generate).
    padded_batch(batch, k): the batch size a step runs at (its CUDA graph's bucket); None in eager mode.
    ragged_step(batch, tokens): the (batch bucket, padded tokens) a ragged step of `batch` requests verifying
        `tokens` positions runs at (its ragged graph), or None where none holds it (uniform graph or eager);
        None: no ragged graphs (eager mode).
    """

    step_costs: Callable[[], StepCostModel]
    catch_up_cost: Callable[[], tuple[float, float]]
    backlog: Callable[[], tuple[int, int]]
    padded_batch: Callable[[int, int], int] | None = None
    ragged_step: Callable[[int, int], tuple[int, int] | None] | None = None

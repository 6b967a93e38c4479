"""A launched step whose forward is running: what its verification and commit need afterwards.

Deferred verification (speculative decode steps): a step whose decodes verify drafts through a captured
graph is launched and NOT waited for; `step()` returns, the caller works on the outputs it got, and the
next `step()` call verifies the launched step (the one host read), commits its tokens to the requests
(stop conditions included), schedules and LAUNCHES the next step, and only then builds the verified
step's outputs (detokenisation, RequestOutput objects) while the GPU runs the next forward, before that
step is verified in turn. The host's
output work and the caller's handling of the outputs then overlap the device instead of separating two
forwards, as vLLM's async scheduling does for its speculative steps. Tokens and their order are the
synchronous engine's: verification of step t still precedes drafting for step t + 1; outputs reach the
caller one call later, as with overlapped plain decode (engine/overlap.py).

A request aborted while its step runs is skipped when the step is committed: its K/V writes went to
blocks it owned at launch, and stream order puts any reuse of them after that forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynaspec.engine.drafting import StepDrafts
from dynaspec.engine.scheduler import SchedulerOutput
from dynaspec.engine.step_inputs import StepRows
from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.spec.verifier import ReadAhead


@dataclass
class LaunchedStep:
    """A step whose target forward was launched: its schedule, drafts and logits (valid until the next
    launch), and what the policy's outcome needs."""

    sched: SchedulerOutput
    drafts: StepDrafts
    logits: torch.Tensor | ReadAhead  # (N, vocab) float32, the forward's output rows (a chained step's: read ahead)
    rows: StepRows
    started: float  # perf_counter() when the step began (before drafting; a chained step: its predecessor's commit)
    resumed: bool  # the first speculative step after plain ones (it paid the drafter's catch-up)
    behind: int | None  # the drafter's catch-up tokens when resumed
    path: str = "eager"  # how its forward ran: "graph" (uniform), "ragged", "mixed", "chained" or "eager" (step logs)


@dataclass
class AppliedStep:
    """A verified step whose tokens are committed to its requests; its outputs are built later."""

    now: float  # time.monotonic() of the commit (first-token / finish times, failures while publishing)
    progressed: list[tuple[Request, list[int]]] = field(default_factory=list)  # (request, tokens kept)


def without_aborted(sched: SchedulerOutput, drafts: list, committed: list, logprobs: list, failures: dict[int, str]):
    """The step's requests still running, with their drafts (decodes), committed tokens, logprobs and failures
    re-indexed: a request aborted while its step ran, or failed when the step before it was published, is
    skipped. committed / logprobs / failures index the decodes, then the prefills."""
    requests = [d.request for d in sched.decodes] + [p.request for p in sched.prefills]
    live = [i for i, r in enumerate(requests) if r.status == RequestStatus.RUNNING]
    if len(live) == len(requests):
        return sched, drafts, committed, logprobs, failures
    n = len(sched.decodes)
    kept = SchedulerOutput(decodes=[sched.decodes[i] for i in live if i < n],
                           prefills=[sched.prefills[i - n] for i in live if i >= n], draft_len=sched.draft_len)
    failures = {live.index(i): message for i, message in failures.items() if i in live}
    drafts = [drafts[i] for i in live if i < n]
    return kept, drafts, [committed[i] for i in live], [logprobs[i] for i in live], failures


def defers_verification(sched: SchedulerOutput, async_scheduling: bool, runs_in_graph: bool) -> bool:
    """Whether a launched step's verification waits for the next step() call: a speculative decode-only step
    (no prefill chunk) replayed from a captured graph (uniform or ragged), with async scheduling on."""
    return async_scheduling and runs_in_graph and sched.draft_len > 0 and bool(sched.decodes) and not sched.prefills

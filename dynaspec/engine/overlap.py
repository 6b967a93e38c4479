"""Overlapped decode: the host commits step t while the device runs step t + 1.

A plain decode step (k = 0, no prefill) feeds each request exactly the token it sampled last step, so
once that token exists ON THE DEVICE the next step can be launched before the host has seen it:
its input ids are copied device-to-device from the previous step's argmax, its positions follow from
the request lengths. The host then waits for step t's ids (long finished), commits them (stop checks,
detokenisation, outputs) while step t + 1 runs. This is vLLM's async scheduling and SGLang's overlap
scheduler, restricted to where it needs no speculation about the scheduler's own decisions:

* step t + 1 continues step t's requests that still run (those that ended at step t - 1's commit left
  out), in the same order, with no request waiting to be admitted, none that could finish by length at
  step t, k = 0 from the draft-length policy, slots allocated without preemption, and a captured graph
  for the batch;
* otherwise the in-flight step is committed first (a drain) and the engine steps as usual.

A request that stops at step t (EOS, stop token, stop string) was already part of step t + 1; that
step's token for it is dropped, and its KV write went to blocks it owned when t + 1 was launched
(stream order puts any later reuse of those blocks after it). Sampling requests are sampled on the
device (verifier.sample_next_tokens, the same draws as the synchronous verifier). Greedy and seeded
requests get exactly the synchronous engine's tokens; unseeded sampling requests share the engine's
generator, whose stream then also serves the dropped tokens. Outputs reach the caller one step later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.engine.scheduler import DraftLensFor, ScheduledDecode, Scheduler, SchedulerOutput


@dataclass
class InflightStep:
    """A launched k = 0 decode step whose tokens the host has not committed yet."""

    sched: SchedulerOutput
    ids: torch.Tensor  # (B,) int64 argmax ids on the device: the next step's input ids
    host_ids: torch.Tensor  # (B,) int64 host copy, valid once `event` completed
    event: torch.cuda.Event | None  # None on CPU (the copy is synchronous there)
    launched_at: float  # perf_counter() at launch

    @property
    def requests(self) -> list[Request]:
        return [d.request for d in self.sched.decodes]

    def host_tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host_ids.tolist()


def start_copy(ids: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Begin the device-to-host copy of `ids` (B,); returns the host tensor and the event to wait on."""
    if ids.device.type != "cuda":
        return ids.clone(), None
    host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
    host.copy_(ids, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def overlapped_seconds(launched_at: float, previous_ready_at: float, ready_at: float) -> float:
    """What an overlapped step cost, as a policy prices a plain step (perf_counter() seconds): from when the
    device could start it, its launch or, when it was launched behind a step still in flight, that step's
    tokens reaching the host (previous_ready_at), to its own tokens reaching the host (ready_at). In a steady
    run that is the pipeline's period; timed from its launch, the last step of a run would count its
    predecessor's forward too (2x a step: H100, 2026-12-06, the tail of every closed batch), and timed launch
    to launch, a step launched from the scheduler and continued at once would count almost nothing."""
    return ready_at - max(launched_at, previous_ready_at)


def can_overlap(sched: SchedulerOutput) -> bool:
    """Whether a scheduled step may run overlapped: decode-only at k = 0, and no request asking for
    logprobs (their logits rows are read by the host in the synchronous step: engine/logprobs.py)."""
    if not sched.decodes or sched.prefills or sched.draft_len != 0:
        return False
    return all(d.request.params.logprobs is None for d in sched.decodes)


def continuation(
    scheduler: Scheduler,
    inflight: InflightStep,
    draft_lens_for: DraftLensFor,
    max_model_len: int,
    replayable: Callable[[int], bool],
) -> SchedulerOutput | None:
    """Step t + 1 for the requests of the in-flight step t that still run, or None when it must be drained first.
    draft_lens_for: the policy's draft_lens, asked as the scheduler asks it (remaining: drain_remaining's,
    less the token step t is producing), so a policy that plans a draining batch otherwise (spec/drain.py)
    gives the same k_i here as when it scheduled step t. replayable(batch): a captured graph takes the batch.

    Requests that ended at step t - 1's commit (a stop, max_tokens, an abort) are left out; their rows of
    step t are dropped at its commit (continued_ids gathers the others' tokens), so a batch whose requests
    finish one by one stays overlapped. Allocates each request's slot for the token step t is producing
    (its position is num_tokens, as the host has not committed that token yet).
    """
    requests = scheduler.running
    if scheduler.waiting or not requests or not _in_order_within(requests, inflight.requests):
        return None
    if not replayable(len(requests)):
        return None
    for request in requests:
        # A request on its last token ends at step t's commit, and its t + 1 row is dropped then
        # (_finish_overlapped keeps the running ones), as after an EOS.
        if request.status != RequestStatus.RUNNING:
            return None
        if request.num_tokens + 1 >= max_model_len:
            return None
    remaining = scheduler.drain_remaining(requests)
    if remaining is not None:
        remaining = [max(0, left - 1) for left in remaining]
    if any(draft_lens_for(len(requests), scheduler.num_unfinished, [r.request_id for r in requests],
                          remaining=remaining)):
        return None
    for request in requests:
        if not scheduler.block_manager.ensure_slots(request, request.num_tokens + 1):
            return None
    return SchedulerOutput(decodes=[ScheduledDecode(r, 0) for r in requests], draft_len=0)


def _in_order_within(requests: list[Request], step: list[Request]) -> bool:
    """Whether `requests` are some of `step`'s requests (the same objects) in the same order."""
    rest = iter(step)
    return all(any(r is s for s in rest) for r in requests)


def continued_ids(inflight: InflightStep, following: SchedulerOutput) -> torch.Tensor:
    """Step t's device tokens (B,) of the requests step t + 1 continues, in its order (B' <= B,); the same
    tensor when it continues them all."""
    if len(following.decodes) == len(inflight.sched.decodes):
        return inflight.ids
    row = {id(r): i for i, r in enumerate(inflight.requests)}
    rows = torch.tensor([row[id(d.request)] for d in following.decodes], dtype=torch.int64)
    return inflight.ids.index_select(0, rows.to(inflight.ids.device, non_blocking=True))

"""Speculative steps launched from the previous step's results on the device (overlapped speculation).

With deferred verification (engine/launched_step.py) step t + 1 is still drafted after the host has read
and verified step t, so the GPU waits for the host between t's verify forward and t + 1's drafting (~0.5 ms
a step at batch 1 on an H100: docs/lab/overlapped_speculation.md). For a greedy batch drafted by a chain
drafter (a draft model, an EAGLE head) whose drafts stayed on the device, all that t + 1 needs is a device
function of t's argmax rows A (B, 1 + k) and drafts D (B, k): the accepted count a = cumprod(D == A[:, :k])
.sum(1) (the greedy rule the host's verification applies to the same rows later), the bonus token A[i, a_i],
the drafter's catch-up (Drafter.propose_chained) and the verify's context L_i + a_i + 1 + k. So t + 1 is
launched first, and t is verified and committed on the host while t + 1 runs, as vLLM's and SGLang's
overlapped speculative schedulers do.

Step t's verification inputs (its rows' argmax and finiteness) are copied to the host before t + 1 is
queued (spec/verifier.ReadAhead): verifying t at the host then waits for t's forward, not for t + 1's.

A step is chained only where nothing about the batch can change in between but requests leaving it: decode-only
at one k for every request (none asking for logprobs: their verification reads the logits), no request
waiting or prefilling, the policy keeping k for the requests that go on and not trimming their drafts
(trims_drafts_at), KV blocks for 2 (1 + k) more positions per request, room under max_model_len for them,
one rank. Requests that stopped at the step before t (known once the host verified it, after t was chained)
leave: t + 1 is launched from the other requests' rows of t (their argmax rows and drafts picked on the
device), so a draining batch keeps its chain through every finish instead of pausing the device for a
synchronous step at each (H100, 2026-12-07 21:31 UTC: in the draft-model sweep's drain at batch 128 the calls
that did so took 13.8-26.0 ms against 11.7 for a chained k = 1 step, docs/lab/adaptive_runs.md). A request that
stops at step t (EOS, a stop string, max_tokens) or is aborted has its t + 1 rows dropped at t + 1's commit
(launched_step.without_aborted); the blocks t + 1 writes stay its own until then (the commit of t trims
to num_tokens + 1 + k, not num_tokens), and a released request's blocks are written by t + 1 before any
later launch can reuse them (one stream). So a request near its max_tokens does not stop the chain: its
step t + 1 may verify past max_tokens, and the commit stops it there (requiring room under max_tokens
broke the chain for the whole batch over the last 2 (1 + k) tokens of every request).
"""

from __future__ import annotations

import time

import torch

from dynaspec.engine.drafting import StepDrafts
from dynaspec.engine.launched_step import LaunchedStep
from dynaspec.engine.scheduler import ScheduledDecode, SchedulerOutput
from dynaspec.engine.step_inputs import StepRows
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.host_copy import to_device
from dynaspec.runtime.request import RequestStatus
from dynaspec.spec.drafter import DraftProposal
from dynaspec.spec.verifier import ReadAhead, finite_rows


def chain_next(launched: LaunchedStep, runner, drafter, scheduler, block_manager, policy,
               max_model_len: int) -> tuple[LaunchedStep, DraftProposal] | None:
    """Launch the step after `launched` (not verified yet) from its device-side results, or None where the
    step cannot be chained (module docstring). On success, `launched.logits` is replaced by its ReadAhead
    (the launched step's verify graph output is overwritten by the new step's)."""
    started = time.perf_counter()
    sched, k = launched.sched, launched.sched.draft_len
    on_device = launched.drafts.on_device
    if on_device is None or k == 0 or sched.prefills or not runner.takes_device_seq_lens:
        return None
    # requests that stopped at the step before t (or were aborted) leave the chain: t + 1 runs the others
    rows = [i for i, d in enumerate(sched.decodes) if d.request.status == RequestStatus.RUNNING]
    requests = [sched.decodes[i].request for i in rows]
    batch = len(requests)
    if not requests or policy.trims_drafts_at(batch):  # trimmed drafts reach the host between drafting and verifying
        return None
    if scheduler.waiting or len(scheduler.running) != batch or any(d.max_draft != k for d in sched.decodes):
        return None
    running = {r.request_id for r in scheduler.running}
    if any(r.request_id not in running for r in requests):
        return None
    if any(r.params.logprobs is not None for r in requests):  # their verification reads the logits
        return None
    if not runner.can_replay(batch, k) or any(r.num_tokens + 2 * (1 + k) > max_model_len for r in requests):
        return None
    if not all(block_manager.ensure_slots(r, r.num_tokens + 2 * (1 + k)) for r in requests):
        return None  # what was allocated is trimmed at the commit, as any reserve
    # last: the policy's decision for this step (the scheduler, which would ask it, is not run)
    if policy.draft_lens(batch, scheduler.num_unfinished, [r.request_id for r in requests],
                         remaining=scheduler.drain_remaining(requests)) != [k] * batch:
        return None
    logits = launched.logits  # (B_t * (1 + k), vocab) float32, the verify graph's output
    target_ids = logits.view(len(sched.decodes), 1 + k, -1).argmax(dim=-1)  # (B_t, 1 + k)
    # step t's verification inputs (argmax and finiteness of its rows) copied to the host before anything
    # else is queued: verifying t then waits for t's forward only, not for t + 1's (spec/verifier.ReadAhead)
    launched.logits = ReadAhead(target_ids.reshape(-1), finite_rows(logits))
    drafts = on_device.ids  # (B_t, k), still the chain's output until its next launch
    if batch < len(sched.decodes):  # the rows of the requests that go on
        index = to_device(rows, logits.device)
        target_ids, drafts = target_ids.index_select(0, index), drafts.index_select(0, index)  # (B, 1 + k), (B, k)
    accepted = (drafts == target_ids[:, :k]).to(torch.int64).cumprod(dim=1).sum(dim=1)  # (B,)
    lengths = [r.num_tokens for r in requests]
    try:
        proposal = drafter.propose_chained(requests, target_ids, accepted, drafts, lengths, k)
    except Exception:  # noqa: BLE001 - the synchronous path drafts again and names the requests it fails on
        return None
    if proposal is None:
        return None
    bonus = target_ids.gather(1, accepted.unsqueeze(1))  # (B, 1)
    ids = torch.cat([bonus, proposal.on_device.ids], dim=1).reshape(-1)  # (B * (1 + k),)
    seq_lens = to_device(lengths, logits.device) + accepted + 1 + k  # (B,)
    placeholder = UniformDecodeBatch(  # real rows' ids and contexts come from the device
        [[0] * (1 + k)] * batch, [n + 1 + k for n in lengths], [1 + k] * batch, [r.block_ids for r in requests],
    )
    rows = StepRows(list(range(batch * (1 + k))), [1 + k] * batch)
    out = runner.forward_uniform(placeholder, k, rows.logit_rows, ids, seq_lens)  # (B * (1 + k), vocab)
    step = LaunchedStep(
        SchedulerOutput(decodes=[ScheduledDecode(r, k) for r in requests], draft_len=k),
        StepDrafts(None, [None] * batch, {}, proposal.on_device), out, rows, started, resumed=False, behind=None,
        path="chained",
    )
    return step, proposal

"""Continuous batching with chunked prefill and preemption by recompute (Orca, Yu et al. OSDI'22;
vLLM's scheduler).

Every step the scheduler decides, under the `max_num_seqs` and `max_num_batched_tokens` budgets:
1. decodes: every running request whose K/V covers all but its last token runs 1 + k_i query
   positions (its last token plus up to k_i draft tokens); the k_i are asked of the draft-length policy
   (`draft_lens`, one per decoding request; uniform policies give one k to all) with the number of
   decoding requests, capped together by the token budget (the longest drafts lose their last positions
   first) and each by its max_model_len; the step's k is the largest k_i. Not by max_tokens: the commit
   stops a request there (engine/output_processor.py), a uniform step verifies the few extra positions
   for next to nothing, and capping made the last steps of every request ragged and broke chained steps
   for its whole batch (engine/chained_step.py; H100, 2026-12-06: static k = 3 at batch 64 ran 4.3 ms
   steps chained and 5.0-5.8 ms in a batch's tail);
2. prefills: running requests in the middle of a chunked prefill, then waiting requests (FCFS).
When the KV pool cannot hold a decode, the most recently admitted running request is preempted: its
blocks are freed and it goes back to the front of the waiting queue with all its tokens, to be
recomputed later (no request is lost or corrupted).
With prefix caching (engine/block_manager.py, vLLM's APC) an admitted request first takes its longest
cached prefix of full blocks and its prefill starts after them; a preempted request's full blocks stay
cached once freed, so its recompute may find them again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dynaspec.engine.block_manager import BlockManager
from dynaspec.runtime.request import Request, RequestStatus

# The draft-length policy as the scheduler calls it: (num_decoding, num_active, decoding request ids,
# remaining=...) -> [k_i per decoding request]; remaining: each decoding request's tokens left before
# max_tokens while the batch drains (nothing waits or prefills), else None (DraftLenPolicy.draft_lens).
DraftLensFor = Callable[..., Sequence[int]]


@dataclass
class ScheduledDecode:
    request: Request
    max_draft: int  # k_i: drafts this request may take this step (<= the step's k)
    planned_draft: int | None = None  # the policy's k_i before trimming by the drafter's confidence (None: untrimmed)

    @property
    def policy_draft(self) -> int:
        """The k_i the policy gave (what the drafter was asked for), before any trimming."""
        return self.max_draft if self.planned_draft is None else self.planned_draft


@dataclass
class ScheduledPrefill:
    request: Request
    num_tokens: int  # tokens of this chunk, starting at request.num_computed_tokens

    @property
    def completes_prompt(self) -> bool:
        """True when this chunk reaches the request's last token, so a new token gets sampled."""
        return self.request.num_computed_tokens + self.num_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    decodes: list[ScheduledDecode] = field(default_factory=list)
    prefills: list[ScheduledPrefill] = field(default_factory=list)
    draft_len: int = 0  # the step's k: the largest k_i the policy gave, after the token budget (0: no speculation)
    preempted: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def num_tokens(self) -> int:
        return sum(1 + d.max_draft for d in self.decodes) + sum(p.num_tokens for p in self.prefills)

    def was_preempted(self, request: Request) -> bool:
        """Whether this step preempted `request` (a look at `preempted`, empty but for preemption, not a scan of
        the running list for every request: schedule() at 256 decodes 0.80 -> 0.46 ms on the dev CPU)."""
        return bool(self.preempted) and any(request is p for p in self.preempted)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._closed = False  # the unfinished requests are a batch its caller closed (close_intake), until an add

    def add(self, request: Request) -> None:
        self._closed = False  # a request added after close_intake: the batch is open again
        self.waiting.append(request)

    def close_intake(self) -> None:
        """The unfinished requests are the whole batch: none is added before they finish (an offline generate);
        drain_remaining then gives their tokens left once nothing waits or prefills."""
        self._closed = True

    def remove(self, request: Request) -> None:
        """Drop a finished or aborted request and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def drain_remaining(self, decoding: Sequence[Request]) -> list[int] | None:
        """Tokens each of `decoding` may still generate, when they are a closed batch draining (spec/drain.py):
        every unfinished request, of a batch its caller closed (close_intake: `LLM.generate`, a benchmark's closed
        batch). None while a request waits or prefills, and for requests of a batch nobody closed: in serving a
        finished request is replaced, and the batch does not end with its slowest request. Only the caller knows:
        on an H100 (2026-12-07, the diurnal trace) a phase's first requests, admitted together, looked like a
        closed batch to a rule that judged by intake, and the adaptive policy drafted nothing for a copy-heavy
        request beside a chat one for 60-100 steps at concurrency 4 (the chat requests set the batch's end),
        until one finished; goodput drafted there, 4-6% ahead."""
        if not self._closed or len(decoding) != self.num_unfinished:
            return None
        return [r.remaining_tokens for r in decoding]

    def schedule(self, draft_lens_for: DraftLensFor) -> SchedulerOutput:
        """Plan one step. `draft_lens_for(num_decoding, num_active, request_ids, remaining=...)` is the draft-length
        policy's draft_lens (request_ids: the decoding requests', for a policy that weighs their own acceptance;
        remaining: drain_remaining's)."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        decoding = [r for r in self.running if not r.is_prefilling][: self.max_num_seqs]
        ks = list(draft_lens_for(len(decoding), self.num_unfinished, [r.request_id for r in decoding],
                                 remaining=self.drain_remaining(decoding))) if decoding else []
        if len(ks) != len(decoding):
            raise ValueError(f"the draft-length policy gave {len(ks)} draft lengths for {len(decoding)} decoding requests")
        # Keep the verify step within the token budget: 1 + k_i positions per decoding request (with one k
        # for all, the largest k such that batch * (1 + k) fits).
        cap = max(ks, default=0)
        while cap > 0 and sum(1 + min(k_i, cap) for k_i in ks) > budget:
            cap -= 1
        ks = [min(k_i, cap) for k_i in ks]
        k = out.draft_len = max(ks, default=0)

        for request, k_i in zip(decoding, ks):
            if out.was_preempted(request):  # earlier in this loop
                continue
            max_draft = max(0, min(k_i, self.max_model_len - request.num_tokens))
            # Slots for all k positions a drafter may write this step, even where fewer are verified.
            if not self._reserve(request, request.num_tokens + (k if max_draft else 0), out):
                continue
            out.decodes.append(ScheduledDecode(request, max_draft))
            budget -= 1 + max_draft

        self._schedule_prompts(out, budget, preempt=True)
        return out

    def refill(self, out: SchedulerOutput) -> None:
        """Give prompt chunks the token budget `out` no longer uses: its decodes' drafts were dropped beside its
        prefills (engine/graph_keys.plain_beside_prefills), so the positions budgeted for them would otherwise go
        unused. On an H100 (2026-12-08 00:31 UTC, a draft model at 128 requests of 128-token prompts) the
        speculative policies' prefill phase took 10 steps against no speculation's 9 (501 against 458 ms), each
        step admitting a prompt less for the drafts it then dropped. Never preempts."""
        self._schedule_prompts(out, self.max_num_batched_tokens - out.num_tokens, preempt=False)

    def _schedule_prompts(self, out: SchedulerOutput, budget: int, preempt: bool) -> None:
        """Prompt chunks within `budget` tokens: the running prompts' next chunks (a chunk `out` holds already
        grows), then waiting requests admitted, in order; preempt: whether a chunk may preempt the newest running
        requests for its KV slots (else it stops there)."""
        planned = {id(p.request): p for p in out.prefills}
        for request in [r for r in self.running if r.is_prefilling]:
            if budget <= 0:
                break
            if out.was_preempted(request):
                continue
            so_far = planned.get(id(request))
            start = request.num_computed_tokens + (0 if so_far is None else so_far.num_tokens)
            chunk = min(request.num_tokens - start, budget)
            if chunk <= 0:
                continue
            if not preempt and not self.block_manager.ensure_slots(request, start + chunk):
                return
            if preempt and not self._reserve(request, start + chunk, out):
                continue
            if so_far is None:
                out.prefills.append(ScheduledPrefill(request, chunk))
            else:
                so_far.num_tokens += chunk
            budget -= chunk

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            request = self.waiting[0]
            chunk = self.block_manager.admit(request, budget)  # after its cached prefix, if any
            if chunk is None:
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.prefills.append(ScheduledPrefill(request, chunk))
            budget -= chunk

    def _reserve(self, request: Request, num_slots: int, out: SchedulerOutput) -> bool:
        """Allocate slots for `request`, preempting the newest running requests if needed."""
        while not self.block_manager.ensure_slots(request, num_slots):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        out.preempted.append(request)
        out.decodes = [d for d in out.decodes if d.request is not request]
        out.prefills = [p for p in out.prefills if p.request is not request]

"""What the two model drafters share (spec/draft_model.py: a small model; spec/eagle.py: an EAGLE-3 head):
KV of their own on the target's block tables that catches up lazily, one whole-chain graph replay for a
greedy batch (a catch-up longer than the chain's first step takes is fed ahead eagerly first), a
step-by-step path otherwise, and how a draft token is picked from a draft distribution q (Leviathan et al.
2023, arXiv 2211.17192: q is kept for rejection sampling).

A subclass provides `_catch_up_start` (the first position to feed, after dropping what went stale),
`_chain_width` (positions the chain's first step feeds per request), `_draft_steps` (the step-by-step path),
`_feed` (positions processed without drafting), `_record` (its state after a propose) and
`_single_step_seconds` (the cost probe of one eager draft step);
`runner` (its eager forwards, with `num_forwards`) and `chain` (whole-chain graphs: `lookup`, `draft`,
`pairs`, `replays_per_pair`) are set by its attach / capture_graphs.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from dynaspec.models.attention import KERNEL_MAX_QUERY_LEN
from dynaspec.runtime.cost_probe import chain_seconds
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.keyed_noise import keyed_argmax
from dynaspec.runtime.request import Request
from dynaspec.runtime.sampler import sample, target_probs
from dynaspec.spec.catch_up import PROBE_BACKLOG_TOKENS
from dynaspec.spec.drafter import DeviceDrafts, DraftProposal, Drafter


class ChainDrafter(Drafter):
    """Base of the drafters with a model of their own and whole-chain graphs (module docstring)."""

    def __init__(self) -> None:
        self.runner: Any = None  # set by the subclass's attach
        self.chain: Any = None  # set by its capture_graphs
        self.num_propose_calls = 0
        self._state: dict[str, Any] = {}  # request id -> the subclass's state (with num_computed)
        self._step_seconds: dict[int, float] = {}  # batch -> one eager draft step (cost probe)

    # ------------------------------------------------------------------ what a subclass provides
    def _catch_up_start(self, request: Request) -> int:
        """The first position of the request to feed (its state created if new)."""
        raise NotImplementedError

    def _chain_width(self, k: int) -> int:
        """Positions per request the chain's first step feeds: catch-ups up to this long can chain."""
        raise NotImplementedError

    def _draft_steps(self, requests: list[Request], starts: list[int], k: int):
        """The step-by-step path: (tokens per request, q per drafted token per request, the drafter's
        probability of each drafted token per request: pick_drafts)."""
        raise NotImplementedError

    def _record(self, requests: list[Request], proposal: DraftProposal, k: int) -> None:
        """The state after this proposal (read its tokens lazily: a chain's are still on the device)."""
        raise NotImplementedError

    def _feed(self, requests: list[Request], starts: list[int], ends: list[int]) -> None:
        """Process request i's positions starts[i] .. ends[i] - 1 without drafting (one eager forward), its
        state then at ends[i]: the head of a catch-up too long for the chain's first step."""
        raise NotImplementedError

    def _single_step_seconds(self, batch: int, repeats: int) -> float:
        """Seconds of one eager draft step for `batch` requests (the cost probe)."""
        raise NotImplementedError

    def _feed_scratch(self, num_tokens: int) -> None:
        """One eager feed of `num_tokens` synthetic tokens on the scratch block (the catch-up probe)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ drafting
    @torch.inference_mode()
    def propose(self, requests: list[Request], k: int) -> DraftProposal:
        """k draft tokens per request: one chain replay where it serves the batch (the drafts stay on the
        device: DeviceDrafts), else step by step."""
        if self.runner is None:
            raise RuntimeError(f"{type(self).__name__}.attach() must be called before propose()")
        self.num_propose_calls += 1
        starts = [self._catch_up_start(request) for request in requests]
        if self._chain_serves(requests, k):
            self._feed_ahead(requests, starts, k)  # every catch-up then fits the chain's first step
            ids = self._draft_chain(requests, starts, k)
            proposal = DraftProposal.from_device(DeviceDrafts(ids, self.chain.confidence))
        else:
            tokens, probs, confidence = self._draft_steps(requests, starts, k)
            proposal = DraftProposal(tokens=tokens, probs=[torch.stack(p) if p else None for p in probs],
                                     confidence=confidence)
        self._record(requests, proposal, k)
        return proposal

    def _chain_serves(self, requests: list[Request], k: int) -> bool:
        """A whole-chain graph exists for (batch, k) and every request is greedy."""
        return (
            self.chain is not None
            and self.chain.lookup(len(requests), k) is not None
            and all(r.params.is_greedy for r in requests)
        )

    def _feed_ahead(self, requests: list[Request], starts: list[int], k: int) -> None:
        """Catch-ups longer than the chain's first step (a new request's prompt, tokens committed at k = 0):
        their head runs in one eager forward without drafting, so the chain still drafts the batch (its first
        step feeds the last `width` positions). The step-by-step path would instead feed the whole catch-up,
        then draft k tokens eagerly, reading each step's logits on the host (an H100 step at batch 1 of the
        EAGLE head: 5.8-11.3 ms against ~3 ms, docs/results.md). `starts` is updated in place."""
        width = self._chain_width(k)
        behind = [i for i, (r, s) in enumerate(zip(requests, starts)) if r.num_tokens - s > width]
        if not behind:
            return
        ends = [requests[i].num_tokens - width for i in behind]
        self._feed([requests[i] for i in behind], [starts[i] for i in behind], ends)
        for i, end in zip(behind, ends):
            starts[i] = end

    def _draft_chain(self, requests: list[Request], starts: list[int], k: int) -> torch.Tensor:
        """All k draft tokens of every request from one chain replay: the catch-ups padded to the chain's
        width (padding repeats the last token; its position writes the scratch block); (B, k) int64 ids on
        the device, valid until the chain's next launch."""
        width = self._chain_width(k)
        batch = UniformDecodeBatch([], [], [], [])
        for request, start in zip(requests, starts):
            fed = request.tokens_from(start)
            batch.token_ids.append(fed + [fed[-1]] * (width - len(fed)))
            batch.seq_lens.append(request.num_tokens + width - len(fed))
            batch.num_real.append(len(fed))
            batch.block_tables.append(request.block_ids)
        return self.chain.draft(batch, k)  # (B, k): no host wait here

    def compile_eager_kernels(self) -> None:
        """The eager catch-up's kernel variants, compiled at start-up (catch-ups longer than the chain's
        first step run eagerly, at any length)."""
        self.runner.compile_eager_kernels(KERNEL_MAX_QUERY_LEN)

    # ------------------------------------------------------------------ chained steps
    def _chained_inputs(self, target_ids: torch.Tensor, accepted: torch.Tensor, drafts: torch.Tensor,
                        lengths: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chain's step-0 inputs after step t, computed on the device: fed ids (B, width), seq_lens (B,),
        num_real (B,), as propose() would stage them once step t is committed."""
        raise NotImplementedError

    @torch.inference_mode()
    def propose_chained(self, requests: list[Request], target_ids: torch.Tensor, accepted: torch.Tensor,
                        drafts: torch.Tensor, lengths: list[int], k: int) -> DraftProposal | None:
        """One chain launch from step t's device-side results (Drafter.propose_chained)."""
        if self.chain is None or self.chain.lookup(len(requests), k) is None:
            return None
        ids, seq_lens, num_real = self._chained_inputs(target_ids, accepted, drafts, lengths, k)
        width = self._chain_width(k)
        placeholder = UniformDecodeBatch(  # the real rows' ids, seq_lens and num_real come from the device
            [[0] * width] * len(requests), [n + width for n in lengths], [1] * len(requests),
            [r.block_ids for r in requests],
        )
        self.num_propose_calls += 1
        ids = self.chain.draft(placeholder, k, ids.reshape(-1), seq_lens, num_real)  # (B, k)
        return DraftProposal.from_device(DeviceDrafts(ids, self.chain.confidence))

    def record_chained(self, requests: list[Request], proposal: DraftProposal, k: int) -> None:
        for request in requests:
            self._catch_up_start(request)  # the state propose() reads first (a draft model's kept prefix)
        self._record(requests, proposal, k)

    # ------------------------------------------------------------------ cost
    def measure_catch_up_cost(self, sizes: tuple[int, int] = (16, PROBE_BACKLOG_TOKENS),
                              repeats: int = 3) -> tuple[float, float]:
        """(fixed seconds, seconds a token) of a catch-up (spec/catch_up.py): the best of `repeats` eager feeds
        of a short and a long synthetic backlog on the scratch block, a line through the two. On CUDA only:
        elsewhere (0.0, 0.0), learned online (a CPU's timings would make the CPU tests' policies depend on
        the machine's load)."""
        if self.runner is None or getattr(self, "device", None) is None or self.device.type != "cuda":
            return 0.0, 0.0
        forwards = self.runner.num_forwards
        best = []
        for size in sizes:
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize(self.device)
                start = time.perf_counter()
                self._feed_scratch(size)
                torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - start)
            best.append(min(times))
        self.runner.num_forwards = forwards
        per_token = max(0.0, (best[1] - best[0]) / (sizes[1] - sizes[0]))
        return max(0.0, best[0] - per_token * sizes[0]), per_token

    def draft_seconds(self, batch: int, k: int, repeats: int = 5) -> float:
        """One chain replay where one was captured for (batch, k), else k eager single steps."""
        if k == 0:
            return 0.0
        if self.chain is not None and (batch, k) in self.chain.pairs:
            return chain_seconds(self.chain, batch, k, repeats)
        if batch not in self._step_seconds:
            self._step_seconds[batch] = self._single_step_seconds(batch, repeats)
        return k * self._step_seconds[batch]

    @property
    def num_forwards(self) -> int:
        """Draft forwards run so far (a chain replay of k steps counts k)."""
        steps = 0 if self.chain is None else sum(k * n for (_, k), n in self.chain.replays_per_pair.items())
        return steps + (0 if self.runner is None else self.runner.num_forwards)

    # ------------------------------------------------------------------ bookkeeping
    def observe(self, requests: list[Request]) -> None:
        """Nothing to do eagerly: the drafter catches up on the next propose()."""

    def catch_up_tokens(self, requests: list[Request]) -> int:
        """Positions of these requests not processed yet, beyond the one every propose feeds."""
        total = 0
        for request in requests:
            state = self._state.get(request.request_id)
            total += max(0, request.num_tokens - 1 - (state.num_computed if state else 0))
        return total

    def release(self, request: Request) -> None:
        self._state.pop(request.request_id, None)

    def reset(self) -> None:
        """Drop every request's state (nothing else is kept across requests)."""
        self._state.clear()


def pick_drafts(requests: list[Request], logits: torch.Tensor, probs: list[list[torch.Tensor]], step: int,
                generator: torch.Generator, confidence: list[list[float]]) -> list[int]:
    """Draft tokens from logits (B, vocab): greedy requests take the argmax; seeded ones the argmax of log q
    plus the noise keyed by (seed, position) that the target's verification uses (runtime/keyed_noise.py: a
    draft equal to the target's keyed sample is accepted); unseeded ones sample q (the request's generator,
    else `generator`). q (the processed draft distribution) is appended to probs[i] for rejection sampling,
    and the drafter's probability of the picked token to confidence[i] (greedy: the softmax's maximum)."""
    picked = logits.argmax(dim=-1).tolist()
    greedy_confidence = torch.softmax(logits.float(), dim=-1).amax(dim=-1).tolist()  # (B,)
    for i, request in enumerate(requests):
        if request.params.is_greedy:
            confidence[i].append(greedy_confidence[i])
            continue
        q = target_probs(logits[i : i + 1], [request.params])  # (1, vocab)
        if request.params.seed is not None:
            picked[i] = int(keyed_argmax(q, [request.params.seed], [request.num_tokens + step])[0])
        else:
            picked[i] = int(sample(q, request.generator or generator)[0])
        probs[i].append(q[0])
        confidence[i].append(float(q[0, picked[i]]))
    return picked

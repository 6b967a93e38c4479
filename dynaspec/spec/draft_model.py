"""Draft-model drafter: a smaller model of the same tokenizer proposes k tokens autoregressively
(Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318).

The draft model has its own KV tensors but shares the target's block tables (same block size, same
slots), so no second allocator is needed. Its KV catches up lazily: before drafting for a request it
feeds every token it has not seen (the prompt, accepted and bonus tokens, and tokens produced while
speculation was off at k = 0), so it is never stale when drafting resumes (TensorRT-LLM issue #16888).
Slots of drafted tokens that the target rejected are simply recomputed: the drafter compares what it
drafted with what the request actually holds and keeps only the matching prefix.

On CUDA a greedy batch drafts through ONE graph replay per propose: the whole k-step chain of
runtime/chain_graphs.py (vLLM and SGLang capture the EAGLE draft loop in CUDA graphs likewise), whose first
step feeds 1 or 2 catch-up tokens per request (the steady state); a longer catch-up is fed ahead eagerly up
to its last 2 tokens (ChainDrafter._feed_ahead). Otherwise (a sampled request in the batch, no chain for
the batch size and k) it drafts step by step: an eager or two-position-graph
first step, then k - 1 single-token steps, reading each step's tokens on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynaspec.models.decode_kernels import DecodeKernels
from dynaspec.runtime.chain_graphs import DraftChainGraphs
from dynaspec.runtime.cost_probe import forward_seconds
from dynaspec.runtime.kv_cache import kv_bytes_per_block
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.host_copy import to_device
from dynaspec.runtime.model_runner import ModelRunner, SequenceInput
from dynaspec.runtime.request import Request
from dynaspec.models.loader import LoadedModel
from dynaspec.spec.chain_drafter import ChainDrafter, pick_drafts
from dynaspec.spec.drafter import DraftProposal


@dataclass
class _DraftState:
    num_computed: int = 0  # tokens of the request whose K/V is in the draft cache
    draft_start: int = 0  # position of the first token drafted last time
    drafted: DraftProposal | None = None  # the last proposal (its row `row`: all but the last token have K/V)
    row: int = 0


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """A draft model must tokenize exactly like the target; raise ValueError naming the mismatch."""
    if target.tokenizer is not None and draft.tokenizer is not None:
        if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
            raise ValueError(
                f"draft model {draft.name!r} uses a different vocabulary than the target {target.name!r}: "
                "speculative decoding needs the same tokenizer"
            )
    target_vocab = int(target.model.vocab_size)
    draft_vocab = int(draft.model.vocab_size)
    if target.tokenizer is None or draft.tokenizer is None:
        if target_vocab != draft_vocab:
            raise ValueError(
                f"draft model {draft.name!r} has vocab_size {draft_vocab}, target {target.name!r} has "
                f"{target_vocab}: speculative decoding needs the same vocabulary"
            )


class DraftModelDrafter(ChainDrafter):
    def __init__(
        self, draft: LoadedModel, dtype: torch.dtype, device: torch.device, target_vocab_size: int, seed: int = 0
    ):
        super().__init__()
        self.loaded = draft
        # Used for sampled requests without their own seed; seeded requests use their own generator.
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.model = draft.model
        self.dtype = dtype
        self.device = device
        self.target_vocab_size = target_vocab_size
        self.runner: ModelRunner | None = None
        self.chain: DraftChainGraphs | None = None  # whole-chain graphs per (bucket, k), after capture_graphs

    def kv_bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        """The draft model's KV per block: it shares the target's block tables, so its bytes count too."""
        return kv_bytes_per_block(self.model, block_size, dtype)

    def attach(self, num_blocks: int, block_size: int, kernels: DecodeKernels) -> None:
        """Allocate the draft KV tensors once the engine has sized the shared block pool."""
        self.model.set_decode_kernels(kernels)
        self.runner = ModelRunner(self.model, num_blocks, block_size, self.dtype, self.device)

    def _single_step_seconds(self, batch: int, repeats: int) -> float:
        """One single-token draft forward for `batch` requests (the step-by-step path's steps)."""
        return forward_seconds(self.runner, batch, 0, repeats)

    def capture_graphs(self, pairs: list[tuple[int, int]], max_blocks_per_seq: int, use_graphs: bool = True) -> None:
        """CUDA graphs of drafting for the (batch bucket, k >= 1) pairs the engine can speculate at.

        First the whole-chain graph of every pair (runtime/chain_graphs.py, the greedy steady state), then,
        in the same memory pool, the step graphs of the step-by-step path that sampled batches still take
        per bucket: a two-position first step (a catch-up of 1 or 2 tokens) and a single-token step for
        each of the k - 1 chained steps after it. `use_graphs=False` builds the same fixed-shape paths
        and runs them eagerly (CPU tests).
        """
        if self.runner is None:
            raise RuntimeError("DraftModelDrafter.attach() must be called before capture_graphs()")
        pairs = sorted({(b, k) for b, k in pairs if k >= 1})
        if not pairs:
            return
        runner = self.runner
        self.chain = DraftChainGraphs(
            runner.model, runner.kv_caches, runner.block_size, max_blocks_per_seq, runner.scratch_block, pairs,
            self.device, self.target_vocab_size, use_graphs=use_graphs,
        )
        self.chain.capture()
        buckets = sorted({b for b, _ in pairs})
        runner.capture_graphs(
            [(b, q) for b in buckets for q in (0, 1)], max_blocks_per_seq, use_graphs=use_graphs, pool=self.chain.pool
        )

    def _catch_up_start(self, request: Request) -> int:
        state = self._state.setdefault(request.request_id, _DraftState())
        if state.drafted is not None:  # read here, a step after its verify: a chain's copy has landed
            written = state.drafted.tokens[state.row][:-1]  # the last drafted token was never fed to the draft model
            match = 0
            for a, b in zip(written, request.tokens_from(state.draft_start)):
                if a != b:
                    break
                match += 1
            state.num_computed = min(state.num_computed, state.draft_start + match)
            state.drafted = None
        state.num_computed = min(state.num_computed, request.num_tokens - 1)
        return state.num_computed

    def _chain_width(self, k: int) -> int:
        """The chain's first step feeds 1 or 2 catch-up tokens (the bonus token, plus the last draft when
        all k were accepted)."""
        return 2

    def _feed(self, requests: list[Request], starts: list[int], ends: list[int]) -> None:
        """The draft model over positions starts[i] .. ends[i] - 1 (its K/V written; the logits unused)."""
        seqs = [SequenceInput(r.tokens_from(s)[: e - s], e, r.block_ids) for r, s, e in zip(requests, starts, ends)]
        self.runner.forward(seqs, [])
        for request, end in zip(requests, ends):
            self._state[request.request_id].num_computed = end

    def _chained_inputs(self, target_ids, accepted, drafts, lengths, k):
        """The two-position catch-up after step t: [last draft, bonus] when all k were accepted (the last
        draft was never fed to the draft model), else [bonus, bonus] with 1 real; the context follows."""
        bonus = target_ids.gather(1, accepted.unsqueeze(1)).squeeze(1)  # (B,)
        full = accepted == k
        fed = torch.stack([torch.where(full, drafts[:, k - 1], bonus), bonus], dim=1)  # (B, 2)
        num_real = 1 + full.to(torch.int64)
        seq_lens = to_device(lengths, target_ids.device) + accepted + 3 - num_real
        return fed, seq_lens, num_real

    def _record(self, requests: list[Request], proposal: DraftProposal, k: int) -> None:
        """The drafts' K/V stays (all but the last token's): the next catch-up keeps the matching prefix."""
        for i, request in enumerate(requests):
            state = self._state[request.request_id]
            state.num_computed = request.num_tokens + k - 1
            state.draft_start = request.num_tokens
            state.drafted, state.row = proposal, i

    def _draft_steps(
        self, requests: list[Request], starts: list[int], k: int
    ) -> tuple[list[list[int]], list[list[torch.Tensor]], list[list[float]]]:
        """k draft steps one by one (any batch): the first also feeds the catch-up tokens."""
        tokens: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor]] = [[] for _ in requests]
        confidence: list[list[float]] = [[] for _ in requests]
        width = self._chain_width(k)  # the two-position first-step graph takes the chain's catch-ups
        if self.runner.can_replay(len(requests), 1) and all(r.num_tokens - s <= width for r, s in zip(requests, starts)):
            logits = self._first_step_graph(requests, starts)
        else:
            logits = self._first_step_eager(requests, starts)
        for i, token in enumerate(pick_drafts(requests, logits, probs, 0, self.generator, confidence)):
            tokens[i].append(token)
        for step in range(1, k):  # the rest of the chain, one token per request per step
            seqs = [SequenceInput([t[-1]], r.num_tokens + step, r.block_ids) for t, r in zip(tokens, requests)]
            rows = list(range(len(requests)))
            if self.runner.can_replay(len(requests), 0):
                batch = UniformDecodeBatch(
                    [s.token_ids for s in seqs], [s.seq_len for s in seqs], [1] * len(seqs), [s.block_ids for s in seqs]
                )
                logits = self.runner.forward_uniform(batch, 0, rows)
            else:
                logits = self.runner.forward(seqs, rows)
            logits = logits[:, : self.target_vocab_size]
            for i, token in enumerate(pick_drafts(requests, logits, probs, step, self.generator, confidence)):
                tokens[i].append(token)
        return tokens, probs, confidence

    def _first_step_eager(self, requests, starts) -> torch.Tensor:
        """Feed every request's catch-up tokens (any length: a whole prompt after a preemption); the
        logits of each request's last one (B, vocab)."""
        seqs = [SequenceInput(r.tokens_from(s), r.num_tokens, r.block_ids) for r, s in zip(requests, starts)]
        rows, flat = [], 0
        for seq in seqs:
            flat += len(seq.token_ids)
            rows.append(flat - 1)
        return self.runner.forward(seqs, rows)[:, : self.target_vocab_size]  # (B, vocab)

    def _first_step_graph(self, requests, starts) -> torch.Tensor:
        """Catch-up of 1 or 2 tokens per request through the two-position CUDA graph (padding the
        1-token case; its padded position writes to the scratch block); the logits (B, vocab)."""
        batch = UniformDecodeBatch([], [], [], [])
        rows = []
        for i, (request, start) in enumerate(zip(requests, starts)):
            fed = request.tokens_from(start)
            batch.token_ids.append(fed + [fed[-1]] * (2 - len(fed)))
            batch.seq_lens.append(request.num_tokens + 2 - len(fed))
            batch.num_real.append(len(fed))
            batch.block_tables.append(request.block_ids)
            rows.append(2 * i + len(fed) - 1)
        return self.runner.forward_uniform(batch, 1, rows)[:, : self.target_vocab_size]  # (B, vocab)

    def _feed_scratch(self, num_tokens: int) -> None:
        runner = self.runner
        blocks = [runner.scratch_block] * -(-num_tokens // runner.block_size)
        runner.forward([SequenceInput([0] * num_tokens, num_tokens, blocks)], [])

"""A draft model's whole k-step draft chain as ONE CUDA graph per (batch bucket, k).

Drafting k tokens with a draft model is k dependent forwards (Leviathan et al. 2023, arXiv 2211.17192).
Run step by step, each step is its own launch (or graph replay) and a host round trip to read the
argmax that feeds the next one. Here the whole chain is captured as one graph, so drafting costs one
host-to-device copy, one replay and one device-to-host copy of the (B, k) draft ids; vLLM and SGLang
capture the EAGLE draft loop in CUDA graphs likewise.

The graph of (bucket, k), per request i of the bucket (padded requests have num_real = 0):

  step 0      two positions: the 1 or 2 catch-up tokens the draft model has not seen (the bonus token,
              plus the last accepted draft when all k were accepted), exactly the layout of the draft
              runner's two-position step graph: a 1-token catch-up is padded with a second position
              whose K/V goes to the scratch block. Logits only of row 2i + num_real - 1, argmax over
              the target's vocabulary slice [0, vocab_size) -> draft 0.
  step j      (1 <= j < k) one position fed draft j - 1 from the device, at position num_tokens + j - 1
              with context num_tokens + j; argmax -> draft j.

num_tokens is the request's length (prompt + output), derived in the graph from the staged step-0
context: num_tokens = seq_len - 2 + num_real. Padded requests write every position to the scratch
block. Output: (bucket, k) int64 draft ids, valid until the next launch of a graph of the same pool.

Greedy drafting only: a sampled request needs its own generator and the draft distribution q of
every step, so the drafter (spec/draft_model.py) keeps its step-by-step path for any batch holding
one, and for catch-ups longer than two tokens. Staging, static inputs, padding and the capture loop
(largest pair first, warm-up on a side stream, one shared memory pool) are CudaGraphDecoder's;
`use_graphs=False` runs the same fixed-shape chain eagerly, so the CPU tests check its layout.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dynaspec.runtime.cuda_graphs import CudaGraphDecoder, UniformDecodeBatch

FIRST_STEP_WIDTH = 2  # positions per request in step 0: the catch-up of 1 or 2 tokens


class DraftChainGraphs(CudaGraphDecoder):
    """Per (bucket, k >= 1): the draft model's k greedy steps in one graph (see the module docstring).

    pairs: the (batch bucket, k) pairs to capture, k >= 1; vocab_size: the target's vocabulary size
    (drafts are argmaxes over the first vocab_size logits). The other arguments are CudaGraphDecoder's,
    over the draft model's KV tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        pairs: Iterable[tuple[int, int]],
        device: torch.device,
        vocab_size: int,
        use_graphs: bool = True,
        pool=None,
    ):
        pairs = list(pairs)
        short = [p for p in pairs if p[1] < 1]
        if short:
            raise ValueError(f"a draft chain needs k >= 1; got pairs {short}")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int; got {vocab_size!r}")
        self.vocab_size = vocab_size
        super().__init__(
            model, kv_caches, block_size, max_blocks_per_seq, scratch_block, pairs, device, use_graphs, pool
        )

    shares_output = False  # (bucket, k) draft ids: small, and their width differs per k

    def input_width(self, k: int) -> int:
        """Every chain stages the two positions of its first step, whatever k."""
        return FIRST_STEP_WIDTH

    def draft(self, batch: UniformDecodeBatch, k: int, device_token_ids: torch.Tensor | None = None,
              device_seq_lens: torch.Tensor | None = None, device_num_real: torch.Tensor | None = None) -> torch.Tensor:
        """Run the (bucket, k) chain for this batch; (B, k) int64 draft ids on the device.

        batch: B requests, each with token_ids = its 1 or 2 catch-up tokens padded to 2 (repeat the last),
        seq_lens = num_tokens + 2 - num_real, num_real = 1 or 2, its block table (covering num_tokens +
        k - 1 slots); device_*: those inputs on the device instead (a chained step, engine/chained_step.py).
        The result lives in the graphs' pool: copy it before the next launch; `confidence`
        then holds the drafts' (B, k) probabilities under the draft model.
        """
        key, real = self._stage(batch, k, device_token_ids, device_seq_lens, device_num_real)
        ids, confidence = self._launch(key)
        self.confidence = confidence[:real]  # (B, k) float32: the draft model's probability of each draft
        return ids[:real]

    def _forward(self, bucket: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The captured chain (no host synchronisation); (bucket, k) int64 draft ids and (bucket, k) float32
        their probabilities."""
        width = FIRST_STEP_WIDTH
        steps = self.arange[:width]  # (2,)
        seq_lens = self.seq_lens[:bucket]  # (bucket,) step-0 context
        num_real = self.num_real[:bucket]  # (bucket,) 1 or 2; 0 for padding
        positions = (seq_lens - width).unsqueeze(1) + steps  # (bucket, 2)
        real = steps.unsqueeze(0) < num_real.unsqueeze(1)  # (bucket, 2)
        hidden = self._model_step(self.input_ids[: bucket * width], positions, real, seq_lens)  # (bucket * 2, H)
        last = self.arange[:bucket] * width + (num_real - 1).clamp(min=0)  # (bucket,) row of the last real token
        ids, confidence = self._pick(hidden.index_select(0, last))  # (bucket,)
        drafted, confidences = [ids], [confidence]
        num_tokens = seq_lens - width + num_real  # (bucket,) the request's length; 0 for padding
        is_real = (num_real > 0).unsqueeze(1)  # (bucket, 1)
        for j in range(1, k):
            position = (num_tokens + (j - 1)).unsqueeze(1)  # (bucket, 1)
            hidden = self._model_step(ids, position, is_real, num_tokens + j)  # (bucket, H)
            ids, confidence = self._pick(hidden)
            drafted.append(ids)
            confidences.append(confidence)
        return torch.stack(drafted, dim=1), torch.stack(confidences, dim=1)  # (bucket, k) int64, float32

    def _pick(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (N, H) -> (N,) int64 argmax of the logits over the target's vocabulary slice, and (N,)
        float32 its probability (the softmax's maximum)."""
        logits = self.model.compute_logits(hidden)[:, : self.vocab_size]
        return logits.argmax(dim=-1), torch.softmax(logits, dim=-1).amax(dim=-1)

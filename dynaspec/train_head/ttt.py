"""EAGLE-3's training-time test (Li et al. 2025, arXiv 2503.01840, section 3.2): the head is unrolled for
several depths, each depth fed the head's own outputs of the depth before, with a loss at every depth.

Depth 0 is the catch-up the drafter runs (runtime/eagle_graphs.py): head position p is fed token x_p and
g = fc(target features of p - 1) and predicts x_{p+1}. Depth j >= 1 is draft step j: position p is fed x_p
(the draft, when the drafts before it were right) and g = h^{j-1}_{p-1}, the depth-(j-1) output at p - 1.
At inference, draft step j at position P sees the head's K/V of positions <= P - j from the catch-up and
one position of each earlier draft step (P - j + i from step i) plus its own, so depth j's query p attends
to depth-0 keys at positions <= p - j and depth-i keys at position p - j + i (1 <= i <= j): the mask built
by `ttt_mask` (SpecForge and the EAGLE-3 code lay it out the same way). Labels are the target's own tokens
(self-distillation); a depth-j prediction at p counts where p >= j and x_{p+1} is an answer token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynaspec.models.eagle_head import EagleHead, dense_attention, target_embed
from dynaspec.train_head.record import Example


@dataclass
class Batch:
    """Padded examples: ids (B, T) tokens x_0..x_{T-1}, features (B, T, n * H) with features[:, p] the target's
    features of p - 1 (zeros at p = 0), labels (B, T) x_{p+1}, answer (B, T) True where x_{p+1} is an answer
    token of the example (the loss positions at depth 0)."""

    ids: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    answer: torch.Tensor

    @property
    def num_positions(self) -> int:
        return int(self.answer.sum())


def make_batch(examples: list[Example], device: torch.device, dtype: torch.dtype, max_len: int | None = None) -> Batch:
    """Head positions 0 .. L - 2 of each example (x_{L-1} has no label), right-padded, cut at max_len."""
    lengths = [len(e.token_ids) - 1 for e in examples]
    width = max(lengths) if max_len is None else min(max(lengths), max_len)
    n_features = examples[0].features.shape[1]
    ids = torch.zeros(len(examples), width, dtype=torch.int64)
    labels = torch.zeros(len(examples), width, dtype=torch.int64)
    answer = torch.zeros(len(examples), width, dtype=torch.bool)
    features = torch.zeros(len(examples), width, n_features, dtype=dtype, device=device)  # filled on the device
    for b, (example, length) in enumerate(zip(examples, lengths)):
        n = min(length, width)
        tokens = torch.tensor(example.token_ids[: n + 1])
        ids[b, :n] = tokens[:n]
        labels[b, :n] = tokens[1 : n + 1]
        positions = torch.arange(n)
        answer[b, :n] = positions + 1 >= example.prompt_len
        features[b, 1:n] = example.features[: n - 1].to(device)  # copied in the recorded dtype, cast there
    return Batch(ids.to(device), features, labels.to(device), answer.to(device))


def ttt_mask(length: int, depth: int, device: torch.device) -> torch.Tensor:
    """(T, (depth + 1) T) bool: which keys depth `depth`'s query p sees (module docstring)."""
    p = torch.arange(length, device=device).unsqueeze(1)  # (T, 1)
    q = torch.arange(length, device=device).unsqueeze(0)  # (1, T)
    blocks = [q <= p - depth]  # depth-0 keys
    for i in range(1, depth + 1):
        blocks.append(q == p - depth + i)  # depth-i key (its own key when i == depth)
    return torch.cat(blocks, dim=1)


def unroll(head: EagleHead, target: torch.nn.Module, batch: Batch, depths: int) -> list[torch.Tensor]:
    """The head's output h (B, T, H) at every depth 0 .. depths - 1 (differentiable in the head)."""
    layer = head.midlayer
    batch_size, length = batch.ids.shape
    positions = torch.arange(length, device=batch.ids.device).expand(batch_size, length)
    with torch.no_grad():
        embeds = target_embed(target, batch.ids).to(head.fc.weight.dtype)  # (B, T, H), frozen
    valid = positions > 0
    g = head.project(batch.features, valid)  # (B, T, H)
    keys, values, outputs = [], [], []
    for depth in range(depths):
        q, k, v = layer.qkv(embeds, g, positions)  # (B, T, heads, D), (B, T, kv_heads, D)
        keys.append(k)
        values.append(v)
        mask = ttt_mask(length, depth, q.device)
        attn = dense_attention(q, torch.cat(keys, dim=1), torch.cat(values, dim=1), mask, layer.scaling)
        h = layer.finish(g, attn)  # (B, T, H)
        outputs.append(h)
        g = F.pad(h[:, :-1], (0, 0, 1, 0))  # g[p] = h[p - 1], zeros at p = 0
    return outputs


def depth_mask(batch: Batch, depth: int) -> torch.Tensor:
    """(B, T) bool: the positions whose depth-`depth` prediction is scored (p >= depth, x_{p+1} an answer token,
    and the depth-0 start p - depth within the example)."""
    positions = torch.arange(batch.ids.shape[1], device=batch.ids.device)
    return batch.answer & (positions >= depth).unsqueeze(0)


def ttt_loss(head: EagleHead, target: torch.nn.Module, batch: Batch, depths: int, decay: float = 0.8):
    """sum_j decay^j x cross-entropy at depth j against the target's tokens; also the per-depth accuracy
    (a list of (correct, counted))."""
    total = torch.zeros((), device=batch.ids.device)
    accuracy = []
    for depth, h in enumerate(unroll(head, target, batch, depths)):
        mask = depth_mask(batch, depth)
        if not mask.any():
            accuracy.append((0, 0))
            continue
        logits = target.compute_logits(head.norm(h[mask]))  # (N, vocab) float32, rows scored only
        labels = batch.labels[mask]
        total = total + decay**depth * F.cross_entropy(logits, labels)
        accuracy.append((int((logits.argmax(-1) == labels).sum()), int(mask.sum())))
    return total, accuracy


@torch.no_grad()
def acceptance_estimate(head: EagleHead, target: torch.nn.Module, batches: list[Batch], depths: int) -> dict:
    """On held-out batches: the fraction of positions where the head's greedy prediction at depth j equals the
    target's token (given the drafts before it were right), and the mean accepted length at k = 1 .. depths
    (over every start position whose k drafts are all answer tokens: drafts accepted before the first miss)."""
    correct = [0] * depths
    counted = [0] * depths
    accepted_sum = [0.0] * depths
    starts = 0
    for batch in batches:
        hits = []
        for depth, h in enumerate(unroll(head, target, batch, depths)):
            predicted = target.compute_logits(head.norm(h)).argmax(-1)  # (B, T)
            hit = predicted == batch.labels
            mask = depth_mask(batch, depth)
            correct[depth] += int((hit & mask).sum())
            counted[depth] += int(mask.sum())
            hits.append(hit)
        # A draft chain started after position s (head position s is its last catch-up): depth j predicts
        # x_{s+j+1} at position s + j. Starts where all `depths` drafts are answer tokens.
        length = batch.ids.shape[1] - depths + 1
        if length <= 0:
            continue
        run = torch.ones_like(batch.answer[:, :length])
        valid = batch.answer[:, :length] & batch.answer[:, depths - 1 : depths - 1 + length]
        starts += int(valid.sum())
        for j in range(depths):
            run = run & hits[j][:, j : j + length]
            accepted_sum[j] += float((run & valid).sum())
    rates = [c / n if n else 0.0 for c, n in zip(correct, counted)]
    mean_accepted = [sum(accepted_sum[: k + 1]) / starts if starts else 0.0 for k in range(depths)]
    return {"accuracy_per_depth": rates, "mean_accepted_length": {k + 1: mean_accepted[k] for k in range(depths)},
            "held_out_positions": counted[0], "held_out_starts": starts}

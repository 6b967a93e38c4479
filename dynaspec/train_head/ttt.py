"""EAGLE-3's training-time test (Li et al. 2025, arXiv 2503.01840, section 3.2): the head is unrolled for
several depths, each depth fed the head's own outputs of the depth before, with a loss at every depth.

Depth 0 is the catch-up the drafter runs (runtime/eagle_graphs.py): head position p is fed token x_p and
g = fc(target features of p - 1) and predicts x_{p+1}. Depth j >= 1 is draft step j: position p is fed x_p
(the draft, when the drafts before it were right) and g = h^{j-1}_{p-1}, the depth-(j-1) output at p - 1.
At inference, draft step j at position P sees the head's K/V of positions <= P - j from the catch-up and
one position of each earlier draft step (P - j + i from step i) plus its own, so depth j's query p attends
to depth-0 keys at positions <= p - j and depth-i keys at position p - j + i (1 <= i <= j): the mask built
by `window_mask` (SpecForge and the EAGLE-3 code lay it out the same way). Labels are the target's own
next-token distribution at p (soft labels, train_head/soft_labels.py), or its answer's token x_{p+1}
(self-distillation either way); a depth-j prediction at p counts where p >= j and x_{p+1} is an answer token.

Only the answer is scored, so queries run on each example's answer window (`answer_window`: its answer
positions and the depths - 1 before them): a prompt position feeds depth 0's keys and values and nothing else.
A 1,000-token prompt before a 300-token answer then costs one K/V projection instead of `depths` full layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynaspec.models.eagle_head import EagleHead, dense_attention, draft_logits, target_embed
from dynaspec.train_head.record import Example
from dynaspec.train_head.soft_labels import soft_cross_entropy, target_log_probs


@dataclass
class Batch:
    """Padded examples: ids (B, T) tokens x_0..x_{T-1}, features (B, T, n * H) with features[:, p] the target's
    features of p - 1 (zeros at p = 0), labels (B, T) x_{p+1}, answer (B, T) True where x_{p+1} is an answer
    token of the example (the loss positions at depth 0); lengths: each example's real positions, first_scored:
    its first answer position (prompt_len - 1), both on the host; final: with soft labels (train_head/soft_labels.py),
    the target's stream after its last layer at p, whose next-token distribution labels position p."""

    ids: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    answer: torch.Tensor
    lengths: list[int]
    first_scored: list[int]
    final: torch.Tensor | None = None  # (B, T, H) the target's stream after its last layer at p: soft labels

    @property
    def num_positions(self) -> int:
        return int(self.answer.sum())


def make_batch(examples: list[Example], device: torch.device, dtype: torch.dtype, max_len: int | None = None,
               soft_labels: bool = False) -> Batch:
    """Head positions 0 .. L - 2 of each example (x_{L-1} has no label), right-padded, cut at max_len; with
    soft_labels, the examples' final streams too (each example must have recorded one)."""
    lengths = [len(e.token_ids) - 1 for e in examples]
    width = max(lengths) if max_len is None else min(max(lengths), max_len)
    n_features = examples[0].features.shape[1]
    ids = torch.zeros(len(examples), width, dtype=torch.int64)
    labels = torch.zeros(len(examples), width, dtype=torch.int64)
    answer = torch.zeros(len(examples), width, dtype=torch.bool)
    features = torch.zeros(len(examples), width, n_features, dtype=dtype, device=device)  # filled on the device
    final = None
    if soft_labels:
        hidden = examples[0].final.shape[1]
        final = torch.zeros(len(examples), width, hidden, dtype=examples[0].final.dtype, device=device)
    kept = []
    for b, (example, length) in enumerate(zip(examples, lengths)):
        n = min(length, width)
        kept.append(n)
        tokens = torch.tensor(example.token_ids[: n + 1])
        ids[b, :n] = tokens[:n]
        labels[b, :n] = tokens[1 : n + 1]
        positions = torch.arange(n)
        answer[b, :n] = positions + 1 >= example.prompt_len
        features[b, 1:n] = example.features[: n - 1].to(device)  # copied in the recorded dtype, cast there
        if final is not None:
            final[b, :n] = example.final[:n].to(device)
    first = [min(max(e.prompt_len - 1, 0), n) for e, n in zip(examples, kept)]
    return Batch(ids.to(device), features, labels.to(device), answer.to(device), kept, first, final)


@dataclass
class Unrolled:
    """The head's output at every depth, on each example's answer window: outputs[j] (B, W, H) is depth j at
    the absolute positions `positions` (B, W) (clamped on padding, where `valid` (B, W) is False)."""

    outputs: list[torch.Tensor]
    positions: torch.Tensor
    valid: torch.Tensor

    def scored(self, batch: Batch, depth: int) -> torch.Tensor:
        """(B, W) bool: the window rows whose depth-`depth` prediction is scored (depth_mask, in the window)."""
        return self.valid & depth_mask(batch, depth).gather(1, self.positions)

    def labels(self, batch: Batch) -> torch.Tensor:
        """(B, W) the target's next token at each window row."""
        return batch.labels.gather(1, self.positions)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) per position -> (B, W, ...) at the window's rows."""
        index = self.positions.view(*self.positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    def at(self, depth: int, example: int, position: int) -> torch.Tensor:
        """Depth `depth`'s h (H,) at an absolute position of an example (one inside its window)."""
        row = int(position - self.positions[example, 0])
        if not 0 <= row < self.positions.shape[1] or int(self.positions[example, row]) != position:
            raise IndexError(f"position {position} of example {example} is outside its answer window")
        return self.outputs[depth][example, row]


def answer_window(batch: Batch, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's positions first_scored - (depths - 1) .. length - 1 (from 0), right-padded: (B, W) absolute
    positions (clamped to T - 1 on padding) and (B, W) valid. Depth j is scored from first_scored on and reads
    only depth-i rows at positions >= first_scored - (depths - 1) + i, so no scored row needs a position before
    the window, and prompt rows (most of a long prompt) run only depth 0's K/V."""
    starts = [max(0, first - (depths - 1)) for first in batch.first_scored]
    widths = [max(1, length - start) for start, length in zip(starts, batch.lengths)]
    device = batch.ids.device
    offsets = torch.arange(max(widths), device=device)  # (W,)
    positions = torch.tensor(starts, device=device).unsqueeze(1) + offsets  # (B, W)
    valid = offsets.unsqueeze(0) < torch.tensor(widths, device=device).unsqueeze(1)
    return positions.clamp(max=batch.ids.shape[1] - 1), valid


def window_mask(positions: torch.Tensor, length: int, depth: int) -> torch.Tensor:
    """(B, W, T + depth W) bool: which keys window row a (at position p) sees at depth `depth` (module
    docstring): depth-0 keys at every position <= p - depth, and the depth-i key (1 <= i <= depth) of window row
    a - depth + i (its own key when i == depth)."""
    width = positions.shape[1]
    keys = torch.arange(length, device=positions.device)
    blocks = [keys.view(1, 1, -1) <= (positions - depth).unsqueeze(2)]  # (B, W, T)
    rows = torch.arange(width, device=positions.device)
    for i in range(1, depth + 1):
        diagonal = rows.unsqueeze(0) == rows.unsqueeze(1) - depth + i  # (W, W)
        blocks.append(diagonal.unsqueeze(0).expand(positions.shape[0], -1, -1))
    return torch.cat(blocks, dim=2)


def unroll(head: EagleHead, target: torch.nn.Module, batch: Batch, depths: int) -> Unrolled:
    """The head's output h at every depth 0 .. depths - 1 on the answer windows (differentiable in the head).
    Depth 0's keys and values cover every position (the catch-up's KV); its queries, and every deeper depth,
    only the window rows."""
    layer = head.midlayer
    batch_size, length = batch.ids.shape
    all_positions = torch.arange(length, device=batch.ids.device).expand(batch_size, length)
    with torch.no_grad():
        embeds = target_embed(target, batch.ids).to(head.fc.weight.dtype)  # (B, T, H), frozen
    g_all = head.project(batch.features, all_positions > 0)  # (B, T, H)
    _, k0, v0 = layer.qkv(embeds, g_all, all_positions)  # (B, T, kv_heads, D)
    positions, valid = answer_window(batch, depths)  # (B, W)

    def rows(x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B, W, ...)
        index = positions.view(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    embeds, g = rows(embeds), rows(g_all)  # (B, W, H)
    keys, values, outputs = [k0], [v0], []
    for depth in range(depths):
        q, k, v = layer.qkv(embeds, g, positions)  # (B, W, heads, D), (B, W, kv_heads, D)
        if depth > 0:
            keys.append(k)
            values.append(v)
        mask = window_mask(positions, length, depth)
        attn = dense_attention(q, torch.cat(keys, dim=1), torch.cat(values, dim=1), mask, layer.scaling)
        h = layer.finish(g, attn)  # (B, W, H)
        outputs.append(h)
        g = F.pad(h[:, :-1], (0, 0, 1, 0))  # g[a] = h[a - 1]; zeros at a window's first row (never scored deeper)
    return Unrolled(outputs, positions, valid)


def depth_mask(batch: Batch, depth: int) -> torch.Tensor:
    """(B, T) bool: the positions whose depth-`depth` prediction is scored (p >= depth, x_{p+1} an answer token,
    and the depth-0 start p - depth within the example)."""
    positions = torch.arange(batch.ids.shape[1], device=batch.ids.device)
    return batch.answer & (positions >= depth).unsqueeze(0)


def ttt_loss(head: EagleHead, target: torch.nn.Module, batch: Batch, depths: int, decay: float = 0.8):
    """sum_j decay^j x the mean loss at depth j: with batch.final, the cross-entropy against the target's
    next-token distribution over the head's vocabulary (soft labels, train_head/soft_labels.py); else against
    the answer's next token (a token outside the draft vocabulary is left out of the loss, and counts as a
    miss). Also the per-depth accuracy against the answer's tokens as (correct, counted) tensors (no host
    synchronisation beyond selecting the scored rows)."""
    total = torch.zeros((), device=batch.ids.device)
    accuracy = []
    unrolled = unroll(head, target, batch, depths)
    labels = unrolled.labels(batch)  # (B, W)
    first = unrolled.scored(batch, 0)  # (B, W): every deeper depth scores a subset of these rows
    soft = None if batch.final is None else target_log_probs(head, target, unrolled.rows(batch.final)[first])
    # (B, W) over the head's vocabulary, -100 (ignored) where it lacks the token: the hard labels
    wanted_all = head.to_draft(labels) if soft is None else None
    for depth, h in enumerate(unrolled.outputs):
        mask = unrolled.scored(batch, depth)  # (B, W)
        logits = draft_logits(head, target, h[mask])  # (N, head vocab) float32, rows scored only
        scored = labels[mask]
        if soft is not None:  # (N0, head vocab) log p_target at depth 0's rows -> this depth's
            loss = soft_cross_entropy(logits, soft[mask[first]]) / max(logits.shape[0], 1)
        else:
            wanted = wanted_all[mask]
            counted = (wanted != -100).sum()
            loss = F.cross_entropy(logits, wanted, reduction="sum") / counted.clamp(min=1)  # a mean, 0 with no row
        total = total + decay**depth * loss
        accuracy.append(((head.to_target(logits.argmax(-1)) == scored).sum(), mask.sum()))
    return total, accuracy


@torch.no_grad()
def acceptance_estimate(head: EagleHead, target: torch.nn.Module, batches: list[Batch], depths: int) -> dict:
    """On held-out batches: the fraction of positions where the head's greedy prediction at depth j equals the
    target's token (given the drafts before it were right), and the mean accepted length at k = 1 .. depths
    (over every start position whose k drafts are all answer tokens: drafts accepted before the first miss).
    The held-out prompts are answered greedily (trainer.py), so the target's token is its greedy one: what a
    greedy bench verifies."""
    correct = [0] * depths
    counted = [0] * depths
    accepted_sum = [0.0] * depths
    starts = 0
    for batch in batches:
        unrolled = unroll(head, target, batch, depths)
        labels = unrolled.labels(batch)
        batch_size, length = batch.ids.shape
        # window rows back to positions; padding rows go to a spare column T, dropped
        columns = torch.where(unrolled.valid, unrolled.positions, length)
        hits = []
        for depth, h in enumerate(unrolled.outputs):
            hit = head.to_target(draft_logits(head, target, h).argmax(-1)) == labels  # (B, W)
            mask = unrolled.scored(batch, depth)
            correct[depth] += int((hit & mask).sum())
            counted[depth] += int(mask.sum())
            full = torch.zeros(batch_size, length + 1, dtype=torch.bool, device=hit.device)
            hits.append(full.scatter_(1, columns, hit & unrolled.valid)[:, :length])  # (B, T)
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

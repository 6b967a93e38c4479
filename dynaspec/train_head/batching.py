"""Length-grouped batches for train-head: a batch is padded to its longest example (ttt.make_batch), so
examples of similar length go together.

The recorded examples' lengths spread widely (a 40-token question with a short answer next to a 1,000-token
stdlib module with a 1,000-token answer), and with a random batch of 8 most positions of the padded
(8, longest) tensors are padding that the head's forward, its TTT unroll and their backward still compute.
As transformers' `group_by_length` (its LengthGroupedSampler): each epoch shuffles the examples, cuts the
order into windows of `window_batches` batches, sorts each window by length and cuts it into batches; the
batches are then shuffled, so the order of lengths the optimizer sees stays random across the epoch while
each batch holds neighbours in length.
"""

from __future__ import annotations

import random


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random,
                           window_batches: int = 32) -> list[list[int]]:
    """One epoch: every index of `lengths` in exactly one batch of batch_size (the last may be smaller),
    batches of neighbouring lengths, in a shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * window_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def padded_positions(batches: list[list[int]], lengths: list[int]) -> int:
    """Positions the padded batches hold (each batch: its size times its longest length)."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)

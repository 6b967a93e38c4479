"""train-head's length-grouped batches (train_head/batching.py): an epoch uses every example once, in
batches of neighbouring lengths, which hold far fewer padded positions than random batches."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from dynaspec.train_head.batching import length_grouped_batches, padded_positions


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 2048), min_size=1, max_size=300), st.integers(1, 16), st.integers(1, 8))
def test_an_epoch_uses_every_example_once(lengths, batch_size, window_batches):
    batches = length_grouped_batches(lengths, batch_size, random.Random(0), window_batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert sum(len(batch) < batch_size for batch in batches) <= -(-len(lengths) // (batch_size * window_batches))


def test_grouped_batches_hold_far_less_padding_than_random_ones():
    # train-head's mix: short questions with short answers, long stdlib modules with long answers
    gen = random.Random(1)
    lengths = [gen.randint(30, 200) for _ in range(600)] + [gen.randint(600, 2000) for _ in range(600)]
    order = list(range(len(lengths)))
    random.Random(2).shuffle(order)
    shuffled = [order[i : i + 8] for i in range(0, len(order), 8)]
    grouped = length_grouped_batches(lengths, 8, random.Random(3))
    assert padded_positions(grouped, lengths) < 0.75 * padded_positions(shuffled, lengths)
    assert padded_positions(grouped, lengths) < 1.1 * sum(lengths)  # nearly no padding left


def test_the_batch_order_is_shuffled_not_sorted():
    lengths = list(range(1, 801))
    batches = length_grouped_batches(lengths, 8, random.Random(0))
    longest = [max(lengths[i] for i in batch) for batch in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    spreads = sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spreads[len(spreads) // 2] < 40  # neighbours in length (random batches of 8 of 1..800: ~600)


def test_epochs_differ():
    lengths = [random.Random(4).randint(1, 500) for _ in range(64)]
    rng = random.Random(0)
    assert length_grouped_batches(lengths, 8, rng) != length_grouped_batches(lengths, 8, rng)

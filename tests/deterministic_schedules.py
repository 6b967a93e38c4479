"""Run one model over the same token sequences under different step schedules and collect every token
row's logits, so tests can demand bit-identical rows (deterministic mode, issue 22).

A schedule is a list of steps; a step is a list of (sequence index, number of new tokens). Each schedule
gets a fresh NaN-filled paged KV cache whose blocks are handed out in a shuffled order (so the physical
block ids differ between schedules too) and a model forward per step over the flat batch, exactly as the
engine runs decode (q_len 1), verify (q_len 1 + k), ragged and chunked-prefill steps.
"""

from __future__ import annotations

import random

import torch

from dynaspec.models.attention_metadata import AttentionMetadata

BLOCK_SIZE = 16


def random_sequences(num_seqs: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = random.Random(seed)
    return [[gen.randrange(vocab) for _ in range(length)] for _ in range(num_seqs)]


def run_schedule(model, sequences: list[list[int]], steps: list[list[tuple[int, int]]], device, dtype,
                 seed: int = 0) -> dict[tuple[int, int], torch.Tensor]:
    """{(sequence, position): logits row (vocab,) float32 on the CPU} of every row the steps computed."""
    length = max(len(s) for s in sequences)
    blocks_per_seq = -(-length // BLOCK_SIZE)
    num_blocks = blocks_per_seq * len(sequences) + 2
    order = list(range(num_blocks))
    random.Random(seed).shuffle(order)
    tables = [order[i * blocks_per_seq:(i + 1) * blocks_per_seq] for i in range(len(sequences))]
    caches = [torch.full((2, num_blocks, BLOCK_SIZE, model.num_kv_heads, model.head_dim), float("nan"),
                         dtype=dtype, device=device) for _ in range(model.num_layers)]
    done = [0] * len(sequences)
    rows: dict[tuple[int, int], torch.Tensor] = {}
    with torch.inference_mode():
        for step in steps:
            ids, positions, keys = [], [], []
            for seq, n in step:
                start = done[seq]
                ids += sequences[seq][start:start + n]
                positions += list(range(start, start + n))
                keys += [(seq, p) for p in range(start, start + n)]
                done[seq] = start + n
            meta = AttentionMetadata.build([n for _, n in step], [done[s] for s, _ in step],
                                           [tables[s] for s, _ in step], BLOCK_SIZE, device)
            hidden = model(torch.tensor(ids, device=device), torch.tensor(positions, device=device), caches, meta)
            logits = model.compute_logits(hidden).cpu()  # (T, vocab)
            for key, row in zip(keys, logits):
                rows[key] = row
    return rows


def decode_steps(seqs: list[int], length: int) -> list[list[tuple[int, int]]]:
    """Every sequence of `seqs` one token per step, all in each step (plain decode from position 0)."""
    return [[(s, 1) for s in seqs] for _ in range(length)]


def verify_steps(seq: int, length: int, prompt: int, k_cycle: list[int]) -> list[list[tuple[int, int]]]:
    """A prompt prefilled at once, then steps of 1 + k tokens with k cycling through `k_cycle`."""
    steps, done, i = [[(seq, prompt)]], prompt, 0
    while done < length:
        n = min(1 + k_cycle[i % len(k_cycle)], length - done)
        steps.append([(seq, n)])
        done += n
        i += 1
    return steps


def ragged_steps(num_seqs: int, length: int, seed: int) -> list[list[tuple[int, int]]]:
    """All sequences in every step, each with its own random 1..7 new tokens (speculation's ragged
    verify, mixed with short prefill chunks), until every sequence is done."""
    gen = random.Random(seed)
    done, steps = [0] * num_seqs, []
    while min(done) < length:
        step = []
        for s in range(num_seqs):
            if done[s] < length:
                n = min(gen.randint(1, 7), length - done[s])
                step.append((s, n))
                done[s] += n
        steps.append(step)
    return steps


def chunked_prefill_steps(seqs: list[int], length: int, chunk: int) -> list[list[tuple[int, int]]]:
    """Each sequence in chunks of `chunk` tokens, all sequences in each step."""
    steps, done = [], 0
    while done < length:
        n = min(chunk, length - done)
        steps.append([(s, n) for s in seqs])
        done += n
    return steps


def mismatches(reference: dict, other: dict) -> list[tuple[int, int]]:
    """Keys of `other` whose rows are not bit-identical (torch.equal) to `reference`'s."""
    return [key for key, row in other.items() if not torch.equal(row, reference[key])]

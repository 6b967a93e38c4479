"""Gumbel noise keyed by (request seed, sequence position): sampling that speculation cannot change.

The Gumbel-max trick (Gumbel 1954; as used for sampling by Maddison et al. 2014, "A* Sampling") makes
argmax_v(log p(v) + g(v)), with g(v) ~ Gumbel(0, 1) i.i.d., an exact sample of p. When g is a function of
(seed, position t, v) only (a counter-based generator, as Philox is for Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3"), the token a seeded request gets at position t depends on nothing
else: not on which drafts a step verified, the draft length, the batch, the step or a preemption. So
verifying a draft token d at t is "accept iff d equals argmax(log p_t + g_t)", and on rejection that
argmax is emitted: a seeded request's tokens are those of plain decoding with the same seed, and for a
one-hot drafter (n-gram) P(accept) = p_t(d), as in rejection sampling (Leviathan et al. 2023).

The generator here is a 32-bit integer hash (the murmur3 finaliser) of the key, evaluated with int64
tensor arithmetic on the logits' device: one uniform u = (h + 0.5) / 2**32 per (row, vocabulary entry),
g = -log(-log u).
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32) (wrapping products are
    masked back to their low 32 bits)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def row_keys(seeds: list[int], positions: list[int], device: torch.device) -> torch.Tensor:
    """(R,) int64 32-bit keys of (seed, position) rows: seeds up to 2**63 - 1, positions >= 0."""
    lo = torch.tensor([s & _MASK for s in seeds], dtype=torch.int64)
    hi = torch.tensor([(s >> 32) & _MASK for s in seeds], dtype=torch.int64)
    pos = torch.tensor([p & _MASK for p in positions], dtype=torch.int64)
    key = _fmix32(lo ^ _fmix32(hi ^ 0x5BD1E995))
    return _fmix32(key ^ _fmix32(pos ^ 0x27D4EB2F)).to(device, non_blocking=True)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(R, vocab) float32 Gumbel(0, 1) noise, a pure function of each row's key and the vocabulary index."""
    index = torch.arange(vocab, dtype=torch.int64, device=keys.device)
    h = _fmix32((keys.unsqueeze(1) ^ ((index * _GOLDEN) & _MASK)) & _MASK)  # (R, V) in [0, 2**32)
    u = (h.to(torch.float64) + 0.5) / 2.0**32
    return (-torch.log(-torch.log(u))).to(torch.float32)


def keyed_argmax(probs: torch.Tensor, seeds: list[int], positions: list[int]) -> torch.Tensor:
    """(R,) argmax_v(log probs[r, v] + g(seeds[r], positions[r], v)): a sample of each row's distribution
    that depends on its key alone. probs: (R, V) processed probabilities (zeros are never chosen)."""
    noise = gumbel_noise(row_keys(seeds, positions, probs.device), probs.shape[-1])
    return (torch.log(probs.float()) + noise).argmax(dim=-1)

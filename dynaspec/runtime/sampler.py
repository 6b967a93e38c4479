"""Turning logits into the distribution a request samples from, and sampling it.

`target_probs` applies temperature, top-k, top-p (nucleus, Holtzman et al. 2020) and min-p per row,
vectorised over the batch as in vLLM's sampler. The same processed distribution is what the
speculative verifier compares draft tokens against, so speculation preserves exactly the distribution
that plain sampling would use. Greedy rows (temperature 0) are handled by argmax, never sampled.
"""

from __future__ import annotations

import torch

from dynaspec.sampling_params import SamplingParams


def row_params(params: list[SamplingParams], device: torch.device) -> dict[str, torch.Tensor]:
    """Per-row sampling parameters as tensors: temperature, top_k (vocab when off), top_p, min_p."""
    return {
        "temperature": torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=device),
        "top_k": torch.tensor([p.top_k for p in params], dtype=torch.int64, device=device),
        "top_p": torch.tensor([p.top_p for p in params], device=device),
        "min_p": torch.tensor([p.min_p for p in params], device=device),
    }


def target_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """(N, V) logits + one SamplingParams per row -> (N, V) float32 probabilities."""
    logits = logits.float()
    rows = row_params(params, logits.device)
    logits = logits / rows["temperature"].unsqueeze(1)
    vocab = logits.shape[-1]
    needs_sort = any(p.top_k > 0 or p.top_p < 1.0 for p in params)
    if needs_sort:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        top_k = torch.where(rows["top_k"] > 0, rows["top_k"], torch.full_like(rows["top_k"], vocab))
        ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
        drop = ranks >= top_k.unsqueeze(1)
        sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Nucleus: keep the smallest prefix whose mass reaches top_p (always keep the first token).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= rows["top_p"].unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if any(p.min_p > 0 for p in params):
        threshold = probs.max(dim=-1, keepdim=True).values * rows["min_p"].unsqueeze(1)
        probs = torch.where(probs < threshold, torch.zeros_like(probs), probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(N, V) probabilities -> (N,) sampled ids, drawn with `generator` (reproducible when seeded)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

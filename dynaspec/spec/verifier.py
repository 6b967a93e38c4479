"""Verification of draft tokens: greedy matching and lossless rejection sampling.

Rejection sampling follows Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding" (arXiv 2211.17192), with the vocabulary of vLLM's rejection sampler:

* accepted tokens: draft token x_j (sampled from the draft distribution q_j) is accepted with probability
  min(1, p_j(x_j) / q_j(x_j)), left to right, until the first rejection;
* recovered token: at the first rejected position j, a token is sampled from norm(max(p_j - q_j, 0));
* bonus token: when every draft is accepted, one more token is sampled from p_d (the target's row after
  the last draft).

The committed tokens of a request are its accepted drafts plus one recovered or bonus token, so 1..d+1
tokens, and their distribution is exactly the target's. A one-hot proposal (n-gram; probs None) has
q_j = onehot(x_j): x_j is accepted with probability p_j(x_j), and the recovered token is sampled from p_j
with x_j removed.

Greedy requests: drafts are accepted while they equal the target's argmax; the committed tokens end with
the target argmax at the first mismatch (or the bonus argmax after the last draft).

Inputs per request i with d_i = len(draft_tokens[i]) drafts: the target's d_i + 1 rows, either
processed probabilities (temperature / top-k / top-p / min-p already applied by the sampler), or for
greedy requests logits or argmax ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class VerifyOutput:
    """tokens[i]: committed tokens of request i (accepted drafts + 1); num_accepted[i]: drafts accepted."""

    tokens: list[list[int]]
    num_accepted: list[int]


def greedy_accept(target_ids: Sequence[int], draft: Sequence[int]) -> tuple[list[int], int]:
    """Accept drafts while they equal the target argmax; append the target's token after them."""
    if len(target_ids) != len(draft) + 1:
        raise ValueError(f"greedy_accept needs len(draft) + 1 = {len(draft) + 1} target ids, got {len(target_ids)}")
    n = 0
    while n < len(draft) and draft[n] == target_ids[n]:
        n += 1
    return list(draft[:n]) + [int(target_ids[n])], n


def _uniforms(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`count` float64 uniforms in [0, 1) drawn from `generator` (on its own device), moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(count, generator=generator, dtype=torch.float64, device=gen_device).to(device)


def _sample_rows(dist: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample one index per row of non-negative weights `dist` (R, V) with uniforms u (R,).

    Zero-weight entries are never chosen. Rows are normalised here (they need not sum to 1).
    """
    cdf = torch.cumsum(dist.to(torch.float64), dim=-1)  # (R, V)
    target = (u * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # (R,)
    # Guard against rounding at the top end: never go past the last positive-weight entry.
    positive = dist > 0
    last_positive = dist.shape[-1] - 1 - torch.argmax(positive.flip(-1).to(torch.int8), dim=-1)
    return torch.minimum(idx, last_positive)


def _check_inputs(
    target: Sequence[torch.Tensor],
    draft_tokens: Sequence[Sequence[int]],
    draft_probs: Sequence[torch.Tensor | None],
    greedy: Sequence[bool],
    generators: Sequence[torch.Generator | None],
) -> None:
    n = len(draft_tokens)
    for name, seq in (("target", target), ("draft_probs", draft_probs), ("greedy", greedy), ("generators", generators)):
        if len(seq) != n:
            raise ValueError(f"verify needs one {name} entry per request: {n} requests, {len(seq)} {name} entries")
    for i in range(n):
        d = len(draft_tokens[i])
        t = target[i]
        if t.shape[0] != d + 1 or t.dim() not in (1, 2):
            raise ValueError(
                f"target[{i}] must have d + 1 = {d + 1} rows ((d+1, vocab) probabilities, or (d+1,) argmax ids "
                f"for a greedy request), got shape {tuple(t.shape)}"
            )
        if t.dim() == 1 and not greedy[i]:
            raise ValueError(f"request {i} samples, so target[{i}] must be (d+1, vocab) probabilities, not ids")
        if t.dim() == 1 and t.is_floating_point():
            raise ValueError(f"target[{i}] is 1-D, so it must hold integer argmax ids, got {t.dtype}")
        q = draft_probs[i]
        if q is not None and not greedy[i] and (q.dim() != 2 or q.shape[0] != d or q.shape[1] != t.shape[1]):
            raise ValueError(
                f"draft_probs[{i}] must be (d, vocab) = ({d}, {t.shape[1]}), got shape {tuple(q.shape)}"
            )


def verify(
    target: torch.Tensor | Sequence[torch.Tensor],
    draft_tokens: Sequence[Sequence[int]],
    draft_probs: Sequence[torch.Tensor | None] | None,
    greedy: Sequence[bool],
    generators: Sequence[torch.Generator | None] | None = None,
    generator: torch.Generator | None = None,
) -> VerifyOutput:
    """Verify a batch of drafts; request i has d_i = len(draft_tokens[i]) drafts (possibly 0).

    target: per request a (d_i+1, V) tensor of processed target probabilities (logits also do for greedy
        requests) or a (d_i+1,) int tensor of argmax ids (greedy requests only); or one flat
        (sum(d_i+1), V) tensor holding the requests' rows one after another.
    draft_probs: per request the (d_i, V) draft distribution q, or None for a one-hot proposal
        (None for the whole argument: all one-hot).
    greedy: per request, True for argmax verification (temperature 0).
    generators: per request its torch.Generator (seeded requests) or None to use `generator`
        (None: torch's default generator). A sampling request draws exactly d_i + 1 uniforms from it.
    """
    n = len(draft_tokens)
    if isinstance(target, torch.Tensor):
        rows = [len(d) + 1 for d in draft_tokens]
        if target.dim() != 2 or target.shape[0] != sum(rows):
            raise ValueError(
                f"a flat target must be (sum(d_i+1), vocab) = ({sum(rows)}, V), got shape {tuple(target.shape)}"
            )
        target = list(torch.split(target, rows))
    if draft_probs is None:
        draft_probs = [None] * n
    if generators is None:
        generators = [None] * n
    _check_inputs(target, draft_tokens, draft_probs, greedy, generators)

    tokens: list[list[int]] = [[] for _ in range(n)]
    accepted = [0] * n
    greedy_idx = [i for i in range(n) if greedy[i]]
    sample_idx = [i for i in range(n) if not greedy[i]]
    if greedy_idx:
        _verify_greedy(target, draft_tokens, greedy_idx, tokens, accepted)
    if sample_idx:
        _verify_sampled(target, draft_tokens, draft_probs, generators, generator, sample_idx, tokens, accepted)
    return VerifyOutput(tokens=tokens, num_accepted=accepted)


def sample_next_tokens(
    probs: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The d = 0 case of `verify` for sampling requests, left on the device: (R,) token ids from the
    processed probabilities `probs` (R, V), one uniform drawn from each row's generator (or `generator`)
    exactly as `verify` draws it, so the tokens equal verify's without a device-to-host sync."""
    if len(generators) != probs.shape[0]:
        raise ValueError(f"sample_next_tokens needs one generator entry per row: {probs.shape[0]} rows, {len(generators)}")
    u = torch.cat([_uniforms(1, g or generator, probs.device) for g in generators])
    return _sample_rows(probs.float(), u)


def _verify_greedy(target, draft_tokens, idx, tokens, accepted) -> None:
    ids = [target[i] if target[i].dim() == 1 else target[i].argmax(dim=-1) for i in idx]
    flat = torch.cat([t.to(torch.int64) for t in ids]).tolist()  # one transfer for all greedy rows
    pos = 0
    for i in idx:
        d = len(draft_tokens[i])
        tokens[i], accepted[i] = greedy_accept(flat[pos : pos + d + 1], draft_tokens[i])
        pos += d + 1


def _verify_sampled(target, draft_tokens, draft_probs, generators, generator, idx, tokens, accepted) -> None:
    device = target[idx[0]].device
    p_flat = torch.cat([target[i].float() for i in idx])  # (sum(d_i+1), V)
    lens = [len(draft_tokens[i]) for i in idx]
    offsets = [0]
    for d in lens:
        offsets.append(offsets[-1] + d + 1)
    # Uniforms: d_i for the acceptance tests + 1 for the recovered/bonus token, from each request's RNG,
    # laid out like the target rows (row j of request r <-> u[offsets[r] + j]).
    u = torch.cat([_uniforms(d + 1, generators[i] or generator, device) for i, d in zip(idx, lens)])

    # Acceptance test at every draft position: accept x iff u * q(x) < p(x)  (<=> u < min(1, p/q)).
    accept_list: list[bool] = []
    if sum(lens):
        rows = torch.tensor([offsets[r] + j for r, d in enumerate(lens) for j in range(d)], device=device)
        ids = torch.tensor([t for i in idx for t in draft_tokens[i]], device=device, dtype=torch.int64)
        p_x = p_flat[rows, ids].double()  # (sum d_i,)
        q_x = torch.cat(
            [
                torch.ones(d, dtype=torch.float64, device=device)
                if draft_probs[i] is None
                else draft_probs[i].to(device).double()[torch.arange(d, device=device), ids[offsets[r] - r : offsets[r] - r + d]]
                for r, (i, d) in enumerate(zip(idx, lens))
            ]
        )  # (sum d_i,)
        accept_list = (u[rows] * q_x < p_x).tolist()

    # Per request: count accepted drafts; the final token comes from row n_acc (recovered or bonus).
    final_rows, final_u = [], []
    onehot_r, onehot_tok, dense_r, dense_q = [], [], [], []
    k = 0
    for r, (i, d) in enumerate(zip(idx, lens)):
        n_acc = 0
        while n_acc < d and accept_list[k + n_acc]:
            n_acc += 1
        k += d
        accepted[i] = n_acc
        tokens[i] = list(draft_tokens[i][:n_acc])
        final_rows.append(offsets[r] + n_acc)
        final_u.append(offsets[r] + d)  # the request's last uniform
        if n_acc < d:  # rejected at position n_acc: subtract q there
            if draft_probs[i] is None:
                onehot_r.append(r)
                onehot_tok.append(draft_tokens[i][n_acc])
            else:
                dense_r.append(r)
                dense_q.append(draft_probs[i][n_acc].to(device).float())

    p_final = p_flat[torch.tensor(final_rows, device=device)]  # (R, V)
    q_final = torch.zeros_like(p_final)
    if onehot_r:
        q_final[torch.tensor(onehot_r, device=device), torch.tensor(onehot_tok, device=device)] = 1.0
    if dense_r:
        q_final[torch.tensor(dense_r, device=device)] = torch.stack(dense_q)
    residual = torch.clamp(p_final - q_final, min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # A rejection implies p(x) < q(x), so the residual has mass; fall back to p against rounding.
    residual = torch.where(mass > 0, residual, p_final)
    last = _sample_rows(residual, u[torch.tensor(final_u, device=device)]).tolist()
    for r, i in enumerate(idx):
        tokens[i].append(int(last[r]))

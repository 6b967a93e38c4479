"""Verification of draft tokens: greedy matching and lossless rejection sampling, in one call.

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
with x_j removed. Greedy requests: drafts are accepted while they equal the target's argmax; the committed
tokens end with the target argmax at the first mismatch (or the bonus argmax after the last draft).

Layout (ragged-ready, as vLLM's): request i has d_i drafts and d_i + 1 consecutive target rows in one flat
(sum(d_i + 1), V) tensor; a prefill that completes its prompt is the d = 0 case. The argmax of every row,
the sampled requests' committed rows (rejection sampling runs on the device) and the rows' finiteness come
back to the host in ONE copy; greedy matching then runs on host lists.

`verify` is what the engine calls: it decides greedy vs sampled (the only place), turns the sampled rows'
logits into the processed distribution (runtime/sampler.py) and runs `rejection_sample`. A SEEDED sampling
request is verified like a greedy one on log p + Gumbel noise keyed by (seed, position)
(runtime/keyed_noise.py): its tokens are then those of plain decoding with the same seed whatever was
drafted, at any batch and through preemption; unseeded requests go through rejection sampling. Its `acceptance` strategy is the target's own verdict, or (benchmarks only) accepted
lengths replayed from a recorded profile (spec/replay.py), never a branch of the step loop.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch

from dynaspec.runtime.keyed_noise import gumbel_noise, keyed_argmax, row_keys
from dynaspec.runtime.sampler import target_probs
from dynaspec.sampling_params import SamplingParams


@dataclass
class VerifyOutput:
    """tokens[i]: committed tokens of request i (accepted drafts + 1); num_accepted[i]: drafts accepted;
    failed[i] (when validity was checked): request i's rows were not finite, so it commits nothing."""

    tokens: list[list[int]]
    num_accepted: list[int]
    failed: list[bool] = field(default_factory=list)


@dataclass
class VerifyBatch:
    """One step's requests to verify, in the order of their rows in the logits.

    drafts[i]: d_i draft token ids; draft_probs[i]: (d_i, V) draft distribution q or None (one-hot);
    params[i], generators[i]: the request's sampling parameters and its seeded generator (or None);
    request_ids[i], positions[i]: its id and the sequence index of its first draft (for replay).
    """

    drafts: list[list[int]]
    draft_probs: list[torch.Tensor | None]
    params: list[SamplingParams]
    generators: list[torch.Generator | None]
    request_ids: list[Hashable]
    positions: list[int]


class ReadAhead:
    """A greedy step's verification inputs, read ahead: every row's argmax id and finiteness, copied to the
    host (pinned memory and an event on CUDA) when the step's logits are ready and BEFORE later work is
    queued. Verifying the step then waits for its own forward only; computing them from the logits at
    verification would queue the argmax behind whatever was launched meanwhile (a chained step,
    engine/chained_step.py), and the host would wait for that too."""

    def __init__(self, ids: torch.Tensor, finite: torch.Tensor) -> None:
        """ids (N,) int64 argmax of each row and finite (N,) bool, on the logits' device."""
        packed = torch.stack([ids.to(torch.int64), finite.to(torch.int64)])  # (2, N)
        self._event: torch.cuda.Event | None = None
        if packed.device.type == "cuda":
            self._host = torch.empty(packed.shape, dtype=torch.int64, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = packed

    @classmethod
    def of(cls, logits: torch.Tensor) -> ReadAhead:
        """From (N, V) logits."""
        return cls(logits.argmax(dim=-1), finite_rows(logits))

    def verify(self, batch: VerifyBatch, acceptance: TargetAcceptance | None = None) -> VerifyOutput:
        """`verify` for a batch of greedy requests (seeded ones need the logits: ValueError)."""
        if not all(p.is_greedy for p in batch.params):
            raise ValueError("a read-ahead step verifies greedy requests only (sampled ones need the logits)")
        if self._event is not None:
            self._event.synchronize()
        ids, finite = self._host[0], self._host[1].to(torch.bool)
        counts = [len(d) + 1 for d in batch.drafts]
        if sum(counts) != ids.shape[0]:
            raise ValueError(f"the read-ahead step has {ids.shape[0]} rows, the batch verifies {sum(counts)}")
        forced = (acceptance or _TARGET).forced_lengths(batch)
        return rejection_sample(list(ids.split(counts)), batch.drafts, batch.draft_probs, [True] * len(counts),
                                forced_accepted=forced, row_finite=finite)


class TargetAcceptance:
    """The acceptance strategy of a real run: the target decides (greedy match, rejection sampling)."""

    name: str | None = None

    def complete_drafts(
        self, drafts: list[list[int]], probs: list[torch.Tensor | None], limits: list[int], fill: list[int]
    ) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """The drafts to verify (unchanged: only what the drafter proposed)."""
        return drafts, probs

    def forced_lengths(self, batch: VerifyBatch) -> list[int | None] | None:
        """Accepted lengths decided without the target (None: the target decides every one)."""
        return None

    def release(self, request_id: Hashable) -> None:
        """Forget a finished request."""


def verify(
    logits: torch.Tensor | ReadAhead,
    batch: VerifyBatch,
    generator: torch.Generator | None = None,
    acceptance: TargetAcceptance | None = None,
) -> VerifyOutput:
    """Verify one step: logits (sum(d_i + 1), V) hold request i's d_i + 1 rows one after another (or the
    greedy rows' ReadAhead).

    generator: draws of sampling requests without their own seeded generator.
    acceptance: the strategy (default: the target decides; spec/replay.py's for benchmarks).
    """
    if isinstance(logits, ReadAhead):
        return logits.verify(batch, acceptance)
    counts = [len(d) + 1 for d in batch.drafts]
    starts = _starts(counts)
    keyed = [i for i, p in enumerate(batch.params) if not p.is_greedy and p.seed is not None]
    sampled = [i for i, p in enumerate(batch.params) if not p.is_greedy and p.seed is None]
    work = logits  # (N, V): greedy rows stay logits (argmax on the device)
    if keyed or sampled:
        chosen = keyed + sampled
        rows = torch.tensor([starts[i] + j for i in chosen for j in range(counts[i])]).to(logits.device, non_blocking=True)
        probs = target_probs(logits.index_select(0, rows), [batch.params[i] for i in chosen for _ in range(counts[i])])
        if keyed:  # Gumbel-max with noise keyed by (seed, position): verified like greedy (runtime/keyed_noise.py)
            num_keyed = sum(counts[i] for i in keyed)
            seeds = [batch.params[i].seed for i in keyed for _ in range(counts[i])]
            positions = [batch.positions[i] + j for i in keyed for j in range(counts[i])]
            noise = gumbel_noise(row_keys(seeds, positions, logits.device), logits.shape[-1])  # (keyed rows, V)
            probs = torch.cat([torch.log(probs[:num_keyed]) + noise, probs[num_keyed:]])
        work = logits.clone().index_copy_(0, rows, probs)  # sampled rows: processed probabilities
    greedy = [p.is_greedy or p.seed is not None for p in batch.params]  # the one place greedy vs sampled is decided
    forced = (acceptance or _TARGET).forced_lengths(batch)
    return rejection_sample(
        work, batch.drafts, batch.draft_probs, greedy, batch.generators, generator, forced,
        row_finite=finite_rows(logits),
    )


_TARGET = TargetAcceptance()


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each row of (N, V) logits is finite throughout. One float32 sum a row: a row holds an inf
    or a NaN exactly when its sum is not finite (inf + -inf is NaN), and a sum of finite logits overflows only
    past ~3e38. isfinite(logits).all(-1) writes and reads an (N, V) mask: on a 2-core CPU, 320 rows of a 32k
    vocabulary (batch 64 at k = 4) took 23 ms that way and 0.8 ms this way."""
    return torch.isfinite(logits.sum(dim=-1, dtype=torch.float32))


def greedy_accept(target_ids: Sequence[int], draft: Sequence[int]) -> tuple[list[int], int]:
    """Accept drafts while they equal the target argmax; append the target's token after them."""
    if len(target_ids) != len(draft) + 1:
        raise ValueError(f"greedy_accept needs len(draft) + 1 = {len(draft) + 1} target ids, got {len(target_ids)}")
    n = 0
    while n < len(draft) and draft[n] == target_ids[n]:
        n += 1
    return list(draft[:n]) + [int(target_ids[n])], n


def next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    positions: Sequence[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The d = 0 case of `verify`, left on the device (no host sync): (R,) token ids from (R, V) logits,
    argmax for greedy rows, the keyed Gumbel-max sample at positions[r] for seeded rows, and one uniform
    from each other sampled row's generator exactly as `verify` draws it, so the tokens equal verify's (the
    overlapped decode step launches the next step from them)."""
    ids = logits.argmax(dim=-1)  # (R,)
    keyed = [i for i, p in enumerate(params) if not p.is_greedy and p.seed is not None]
    if keyed:
        rows = torch.tensor(keyed).to(ids.device, non_blocking=True)
        probs = target_probs(logits.index_select(0, rows), [params[i] for i in keyed])
        ids.index_copy_(0, rows, keyed_argmax(probs, [params[i].seed for i in keyed], [positions[i] for i in keyed]))
    sampled = [i for i, p in enumerate(params) if not p.is_greedy and p.seed is None]
    if sampled:
        rows = torch.tensor(sampled).to(ids.device, non_blocking=True)
        probs = target_probs(logits.index_select(0, rows), [params[i] for i in sampled])
        u = torch.cat([_uniforms(1, generators[i] or generator, probs.device) for i in sampled])
        ids.index_copy_(0, rows, _sample_rows(probs.float(), u))
    return ids


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


def _check_inputs(target, draft_tokens, draft_probs, greedy, generators) -> None:
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


def rejection_sample(
    target: torch.Tensor | Sequence[torch.Tensor],
    draft_tokens: Sequence[Sequence[int]],
    draft_probs: Sequence[torch.Tensor | None] | None,
    greedy: Sequence[bool],
    generators: Sequence[torch.Generator | None] | None = None,
    generator: torch.Generator | None = None,
    forced_accepted: Sequence[int | None] | None = None,
    row_finite: torch.Tensor | None = None,
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
    forced_accepted: per request an accepted length decided elsewhere (acceptance replay), whose final
        token is then the target's argmax after it; None entries (or None): the target decides.
    row_finite: (sum(d_i+1),) bool on the device, False for a row that is not finite: its request commits
        nothing and is reported in `failed` (read with the tokens, no extra sync).

    Greedy requests compare their drafts with the argmax ids on the host; sampling requests are verified
    on the device; the argmax ids, the sampled requests' committed rows and the row flags are read by the
    host in ONE copy (few kernels a step: a batch-1 step is bound by launches, not by this arithmetic).
    """
    n = len(draft_tokens)
    counts = [len(d) + 1 for d in draft_tokens]
    flat = target if isinstance(target, torch.Tensor) else None
    draft_probs = [None] * n if draft_probs is None else draft_probs
    generators = [None] * n if generators is None else generators
    if flat is not None:
        if flat.dim() != 2 or flat.shape[0] != sum(counts):
            raise ValueError(
                f"a flat target must be (sum(d_i+1), vocab) = ({sum(counts)}, V), got shape {tuple(flat.shape)}"
            )
        if len(greedy) != n:
            raise ValueError(f"verify needs one greedy entry per request: {n} requests, {len(greedy)} greedy entries")
    else:
        _check_inputs(target, draft_tokens, draft_probs, greedy, generators)
    if n == 0:
        return VerifyOutput(tokens=[], num_accepted=[])

    device = target.device if flat is not None else target[0].device
    starts = _starts(counts)
    greedy_idx = [i for i in range(n) if greedy[i]]
    sample_idx = [i for i in range(n) if not greedy[i]]
    parts: list[torch.Tensor] = []
    if greedy_idx or forced_accepted is not None:
        parts.append(_row_argmax(flat, target))  # (sum(d_i+1),)
    width = max(counts)
    if sample_idx:
        drafts = [list(draft_tokens[i]) for i in sample_idx]
        if flat is not None:
            rows = torch.tensor([starts[i] + j for i in sample_idx for j in range(counts[i])]).to(device, non_blocking=True)
            p_flat = flat.index_select(0, rows).float()
        else:
            p_flat = torch.cat([target[i].float() for i in sample_idx])
        accepted, final = _sampled_rows(
            p_flat, drafts, [draft_probs[i] for i in sample_idx], [generators[i] or generator for i in sample_idx], device
        )
        parts.append(_layout(drafts, accepted, final, width).flatten())  # (S * (1 + width),)
    if row_finite is not None:
        parts.append(row_finite.to(torch.int64))
    host = torch.cat(parts).tolist()  # the one device-to-host read of the step's verification
    ids = host[: sum(counts)] if greedy_idx or forced_accepted is not None else []
    tokens: list[list[int]] = [[] for _ in range(n)]
    accepted_counts = [0] * n
    for i in greedy_idx:
        tokens[i], accepted_counts[i] = greedy_accept(ids[starts[i] : starts[i] + counts[i]], draft_tokens[i])
    offset = len(ids)
    for i in sample_idx:
        row = host[offset : offset + 1 + width]
        offset += 1 + width
        tokens[i], accepted_counts[i] = row[1 : row[0] + 2], row[0]
    if forced_accepted is not None:
        for i, f in enumerate(forced_accepted):
            if f is not None:
                tokens[i], accepted_counts[i] = list(draft_tokens[i][:f]) + [ids[starts[i] + f]], f
    failed: list[bool] = []
    if row_finite is not None:
        finite = host[offset:]
        failed = [not all(finite[starts[i] : starts[i] + counts[i]]) for i in range(n)]
        for i in range(n):
            if failed[i]:
                tokens[i], accepted_counts[i] = [], 0
    return VerifyOutput(tokens=tokens, num_accepted=accepted_counts, failed=failed)


def _starts(counts: list[int]) -> list[int]:
    """Index of each request's first row in the flat layout (exclusive prefix sums; linear, per step)."""
    return [0, *accumulate(counts)][: len(counts)]


def _padded(drafts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, D) draft ids padded with 0, (R,) draft lengths, (R,) offsets of each request's first row."""
    lens = [len(d) for d in drafts]
    width = max(lens)
    pad = torch.tensor([d + [0] * (width - len(d)) for d in drafts], dtype=torch.int64).reshape(len(drafts), width)
    starts, offset = [], 0
    for d in lens:
        starts.append(offset)
        offset += d + 1
    offsets = torch.tensor(starts, dtype=torch.int64)
    return pad.to(device, non_blocking=True), torch.tensor(lens).to(device, non_blocking=True), offsets.to(device, non_blocking=True)


def _accepted_prefix(accept: torch.Tensor) -> torch.Tensor:
    """(R, D) bool per draft position -> (R,) length of the all-True prefix."""
    return accept.to(torch.int64).cumprod(dim=1).sum(dim=1)


def _row_argmax(flat: torch.Tensor | None, target) -> torch.Tensor:
    """(sum(d_i+1),) argmax id of every target row (1-D targets are ids already)."""
    if flat is not None:
        return flat.argmax(dim=-1)
    return torch.cat([t.to(torch.int64) if t.dim() == 1 else t.argmax(dim=-1) for t in target])


def _sampled_rows(p_flat, drafts, draft_probs, generators, device):
    """Sampling requests (rejection sampling) over their rows p_flat (sum(d+1), V) of processed target
    probabilities: accepted length and recovered / bonus token, on the device.
    Uniforms: d + 1 per request from its generator, laid out like the target rows (row j <-> u[offset + j])."""
    lens = [len(d) for d in drafts]
    u = torch.cat([_uniforms(d + 1, g, device) for g, d in zip(generators, lens)])  # (sum(d+1),)
    pad, lens_t, offsets = _padded(drafts, device)
    num, width = pad.shape
    accepted = torch.zeros(num, dtype=torch.int64, device=device)
    dense = [r for r, q in enumerate(draft_probs) if q is not None and lens[r] > 0]
    if width:
        # Acceptance test at every draft position: accept x iff u * q(x) < p(x)  (<=> u < min(1, p/q)).
        req = torch.tensor([r for r, d in enumerate(lens) for _ in range(d)]).to(device, non_blocking=True)
        pos = torch.tensor([j for d in lens for j in range(d)]).to(device, non_blocking=True)
        flat_rows = offsets[req] + pos  # (sum d,)
        ids = pad[req, pos]
        p_x = p_flat[flat_rows, ids].double()
        q_x = torch.cat([
            torch.ones(d, dtype=torch.float64, device=device) if draft_probs[r] is None
            else draft_probs[r].to(device).double()[torch.arange(d, device=device), pad[r, :d]]
            for r, d in enumerate(lens)
        ])  # (sum d,)
        accept = torch.zeros(num, width, dtype=torch.bool, device=device)
        accept[req, pos] = u[flat_rows] * q_x < p_x
        accepted = _accepted_prefix(accept)
    p_final = p_flat[offsets + accepted]  # (R, V): the recovered (rejection) or bonus row
    rejected = accepted < lens_t
    q_final = torch.zeros_like(p_final)
    if width:
        onehot = torch.tensor([q is None for q in draft_probs]).to(device, non_blocking=True) & rejected
        at = pad.gather(1, accepted.clamp(max=width - 1).unsqueeze(1))  # (R, 1) the rejected draft
        q_final.scatter_(1, at, onehot.to(q_final.dtype).unsqueeze(1))
    if dense:
        q_rows = torch.cat([
            draft_probs[r].to(device).float().index_select(0, accepted[r : r + 1].clamp(max=lens[r] - 1))
            for r in dense
        ])  # (len(dense), V): q at each dense request's first rejected position
        where = torch.tensor(dense).to(device, non_blocking=True)
        q_final.index_copy_(0, where, q_rows * rejected.index_select(0, where).to(q_rows.dtype).unsqueeze(1))
    residual = torch.clamp(p_final - q_final, min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)
    # A rejection implies p(x) < q(x), so the residual has mass; fall back to p against rounding.
    residual = torch.where(mass > 0, residual, p_final)
    return accepted, _sample_rows(residual, u[offsets + lens_t])


def _layout(drafts: list[list[int]], accepted: torch.Tensor, final: torch.Tensor, width: int) -> torch.Tensor:
    """(R, 1 + width) rows [accepted, drafts[:accepted]..., final, -1...] for the host read."""
    device = accepted.device
    pad = torch.tensor([d + [-1] * (width - len(d)) for d in drafts], dtype=torch.int64).to(device, non_blocking=True)
    cols = torch.arange(width, device=device).unsqueeze(0)
    n = accepted.unsqueeze(1)
    tokens = torch.where(cols < n, pad, torch.where(cols == n, final.unsqueeze(1), torch.full_like(pad, -1)))
    return torch.cat([accepted.unsqueeze(1), tokens], dim=1)

"""Real prompts for the throughput sweep (`dynaspec bench --workload NAME`), and the greedy-identity check.

In workload mode each batch runs real prompts instead of random token ids, so drafts are accepted by the
model's own predictions (no replayed profile): the conversations of `dynaspec.bench.workloads` (code-edit,
chat, summarise, humaneval) go through the target tokenizer's chat template once, and a batch of `b`
requests takes the first `b` of them, cycled when the workload has fewer. The untimed warm-up batch
before each point takes other prompts of the same workload (`warmup_for_batch`: conversations drawn with
the next seed, none equal to a measured one), so an online policy warms up on the workload it is measured
on, as in a server that has served it for a while, and a shared n-gram pool never sees the measured
prompts; random token ids warmed up a real model on text it accepts nothing of, and the goodput planner's
acceptance estimate carried that into the point (CPU, Qwen2.5-Coder-1.5B, batch 4: k = 0 held on every
step in two runs where k = 3 was 40% faster). Every line of the sweep gets the
same prompts at the same batch size, so with greedy decoding each speculative line must commit exactly the
no-spec line's tokens (speculative decoding is lossless: Leviathan et al. 2023, arXiv 2211.17192);
`token_agreement` measures whether it did.

Several workloads joined by commas (`code-edit,chat`) mix them request by request: the prompts alternate
between the workloads, so every batch of two or more holds both kinds (issue 20's mixed batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynaspec.bench.workloads import WORKLOADS, warmup_workload, workload

# Warm-up prompts are searched among this many times as many conversations as the measured ones.
WARMUP_DRAW_FACTOR = 4


def workload_names(name: str) -> list[str]:
    """The workloads of `name` ("code-edit" or "code-edit,chat"); ValueError naming the allowed ones."""
    names = [part.strip() for part in name.split(",")]
    allowed = f"choose from {', '.join(WORKLOADS)}, or several of them joined by commas (their prompts alternate)"
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r} in {name!r}; {allowed}")
    if len(set(names)) != len(names):
        raise ValueError(f"workload {name!r} names one workload twice; {allowed}")
    return names


def _interleaved(names: list[str], count: int, seed: int, draw=workload) -> list:
    """Up to `count` conversations taking turns between the workloads `names` (a workload may hold fewer
    than asked: then as many rounds as the shortest has); draw: workloads.workload, or warmup_workload."""
    if len(names) == 1:
        return draw(names[0], count, seed)
    drawn = [draw(n, -(-count // len(names)), seed) for n in names]
    rounds = min(len(d) for d in drawn)
    return [d[r] for r in range(rounds) for d in drawn][:count]


@dataclass(frozen=True)
class WorkloadPrompts:
    """The distinct prompts (token ids, chat template applied) of one workload, in batch-filling order."""

    name: str
    token_ids: tuple[tuple[int, ...], ...]
    warmup_token_ids: tuple[tuple[int, ...], ...] = ()  # other prompts of the workload, for warm-ups

    def __post_init__(self) -> None:
        workload_names(self.name)
        if not self.token_ids or any(len(p) == 0 for p in self.token_ids):
            raise ValueError(f"workload {self.name!r} needs at least one non-empty prompt")

    def for_batch(self, batch: int) -> list[list[int]]:
        """The prompts of a batch of `batch` requests: the first `batch` prompts, cycled when fewer."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        return [list(self.token_ids[i % len(self.token_ids)]) for i in range(batch)]

    def warmup_for_batch(self, batch: int) -> list[list[int]] | None:
        """Warm-up prompts of a batch of `batch` requests (cycled), or None when the workload has no prompt
        besides the measured ones (the caller then warms up on random token ids)."""
        if not self.warmup_token_ids:
            return None
        return [list(self.warmup_token_ids[i % len(self.warmup_token_ids)]) for i in range(batch)]

    @property
    def max_len(self) -> int:
        """The longest prompt, warm-ups included (the engine's max_model_len is sized by it)."""
        return max(len(p) for p in self.token_ids + self.warmup_token_ids)

    def mean_len(self, batch: int) -> float:
        """Mean prompt tokens of a batch of `batch` requests."""
        prompts = self.for_batch(batch)
        return sum(len(p) for p in prompts) / len(prompts)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for the sweep's metadata."""
        lengths = [len(p) for p in self.token_ids]
        return {
            "name": self.name,
            "num_distinct_prompts": len(lengths),
            "prompt_tokens_min": min(lengths),
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
            "prompt_tokens_max": max(lengths),
            "num_distinct_warmup_prompts": len(self.warmup_token_ids),
            "chat_template": True,
        }


def workload_prompts(tokenizer, name: str, num_prompts: int, seed: int = 0) -> WorkloadPrompts:
    """`num_prompts` conversations of workload `name`, tokenized through `tokenizer`'s chat template.

    ValueError when there is no tokenizer or it has no chat template (the workloads are conversations).
    """
    names = workload_names(name)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"workload {name!r} is chat conversations: the model needs a tokenizer with a chat template "
            "(random presets and bare checkpoints have none); run without --workload for random prompts"
        )
    def tokenized(conversations) -> list[tuple[int, ...]]:
        return [
            tuple(int(t) for t in tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
            for c in conversations
        ]

    ids = tokenized(_interleaved(names, num_prompts, seed))
    measured = set(ids)
    warmup: list[tuple[int, ...]] = []
    for prompt in tokenized(_interleaved(names, WARMUP_DRAW_FACTOR * num_prompts, seed + 1, warmup_workload)):
        if prompt not in measured and prompt not in warmup:
            warmup.append(prompt)
            if len(warmup) == num_prompts:
                break
    return WorkloadPrompts(name, tuple(ids), tuple(warmup))


@dataclass(frozen=True)
class TokenAgreement:
    """How one line's greedy outputs compare with the reference (no spec) outputs of the same requests."""

    identical: bool  # every request committed exactly the reference tokens
    num_identical: int  # requests whose tokens equal the reference's
    first_divergence: int | None  # earliest output position where any request differs; None if identical


def token_agreement(reference: Sequence[Sequence[int]], tokens: Sequence[Sequence[int]]) -> TokenAgreement:
    """Compare per-request output token ids with the reference's, request by request (same order)."""
    if len(reference) != len(tokens):
        raise ValueError(f"reference has {len(reference)} requests, compared outputs {len(tokens)}")
    num_identical = 0
    first: int | None = None
    for ref, out in zip(reference, tokens):
        ref, out = list(ref), list(out)
        if ref == out:
            num_identical += 1
            continue
        diverge = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
        first = diverge if first is None else min(first, diverge)
    return TokenAgreement(num_identical == len(reference), num_identical, first)

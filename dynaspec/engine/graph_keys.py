"""The keys of the CUDA graphs an engine captures, from its configuration and its policy's reachable draft
lengths: uniform decode / verify graphs by (batch bucket, k) (runtime/cuda_graphs.py), ragged verify graphs
by (batch bucket, padded tokens) (runtime/ragged_graphs.py), mixed prefill + decode graphs by (decode bucket,
padded prefill rows) (runtime/mixed_graphs.py); and which of them a step runs in."""

from __future__ import annotations

from collections.abc import Callable

from dynaspec.runtime.cuda_graphs import BATCH_BUCKETS, bucket_for
from dynaspec.runtime.mixed_graphs import prefill_buckets
from dynaspec.runtime.ragged_graphs import token_buckets


def uniform_pairs(draft_lens: Callable[[int], set[int]], max_batch: int, max_tokens: int) -> list[tuple[int, int]]:
    """(batch bucket, k) for every batch 1..max_batch and every k draft_lens(batch) gives, k lowered until
    batch * (1 + k) fits the step's token budget."""
    buckets = [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]
    pairs: set[tuple[int, int]] = set()
    for batch in range(1, max_batch + 1):
        for k in draft_lens(batch):
            while k > 0 and batch * (1 + k) > max_tokens:
                k -= 1
            pairs.add((bucket_for(batch, buckets), k))
    return sorted(pairs)


def ragged_keys(captured: list[tuple[int, int]], max_draft_len: int, max_tokens: int) -> list[tuple[int, int]]:
    """Every speculative bucket of two or more requests among the captured pairs, with its token buckets
    within the step's token budget."""
    buckets = {b for b, k in captured if k > 0 and b > 1}
    return [(b, t) for b in sorted(buckets) for t in token_buckets(b, max_draft_len, max_tokens)]


def mixed_keys(captured: list[tuple[int, int]], max_tokens: int) -> list[tuple[int, int]]:
    """Every bucket captured at k = 0, with every prefill bucket of the step's token budget (a step's prompt
    rows may exceed max_model_len: the graph splits its padding over as many pad slots as a block-table row
    needs, runtime/mixed_graphs.pad_slots). Not a bucket a static k > 0 captures alone: given mixed graphs
    (and plain_beside_prefills), static k = 4 ran 0.60x no spec at concurrency 128 in the diurnal trace
    against 0.69x without (H100, 2026-12-07 07:23 against 05:11 UTC), its eager speculative steps slower
    beside them; at concurrency 2-4 it gained 5-9%."""
    buckets = sorted({b for b, k in captured if k == 0})
    return [(b, p) for b in buckets for p in prefill_buckets(max_tokens)]


def runs_mixed(runner, sched) -> bool:
    """Whether a k = 0 step with prefill chunks (a SchedulerOutput) runs in a mixed graph (cudagraph_mode FULL)."""
    rows = sum(p.num_tokens for p in sched.prefills)
    return runner.mixed_key(len(sched.decodes), len(sched.prefills), rows) is not None


def plain_beside_prefills(runner, sched) -> bool:
    """Drop a step's drafts when it prefills too and, at k = 0, a mixed graph takes it; True when it did.

    Mixed graphs hold k = 0 decodes only, so a step that prefills new prompts beside speculative decodes runs
    eager: on an H100, random Llama-3.1-8B, 3 decodes at k = 4 beside a 128-token prompt took 20-27 ms eager
    against 8 ms for the same step at k = 0 in its mixed graph (2026-12-07, the diurnal trace at concurrency
    4, every speculative line, once per arrival). The decodes' drafts would have gained them ~1-2 tokens
    each, a fraction of one captured step; they draft again in the next step (the drafter catches up then).
    Mutates `sched` (a SchedulerOutput): every decode's k_i and the step's k become 0."""
    if not sched.prefills or sched.draft_len == 0 or not runs_mixed(runner, sched):
        return False
    for decode in sched.decodes:
        decode.max_draft, decode.planned_draft = 0, None
    sched.draft_len = 0
    return True


def runs_ragged(runner, lengths: list[int], k: int) -> bool:
    """Whether a decode step with drafts of these lengths runs in a ragged graph: they differ (or all fall short
    of k: drafts trimmed) and a ragged graph holds fewer positions than the uniform (bucket, k) graph would pad
    them to."""
    if min(lengths) == max(lengths) == k:
        return False
    key = runner.ragged_key(len(lengths), len(lengths) + sum(lengths))
    if key is None:
        return False
    uniform = runner.graphs.lookup(len(lengths), k) if runner.graphs is not None else None
    return uniform is None or key[1] < uniform[0] * (1 + k)


def forward_path(runner, sched, lengths: list[int]) -> str:
    """How a launched step's forward runs: "ragged" or "graph" (uniform) for a decode-only step a captured
    graph holds, "mixed" for a k = 0 step with prefill chunks a mixed graph holds, else "eager". lengths: each
    decode's drafts (StepDrafts.lengths)."""
    k = sched.draft_len
    if not sched.prefills and runs_ragged(runner, lengths, k):
        return "ragged"
    if not sched.prefills and runner.can_replay(len(sched.decodes), k):
        return "graph"
    if k == 0 and sched.prefills and runs_mixed(runner, sched):
        return "mixed"
    return "eager"

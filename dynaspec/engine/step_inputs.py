"""The target forward's inputs for one scheduled step, and the verification batch over its logit rows.

Row layout of the step's logits (what `verify` reads): each decode's 1 + d_i rows (its last token, then
its d_i drafts), then one row per prefill chunk that completes its prompt; a mid-prompt chunk has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynaspec.engine.scheduler import SchedulerOutput
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.mixed_graphs import MixedBatch
from dynaspec.runtime.model_runner import SequenceInput
from dynaspec.runtime.ragged_graphs import RaggedDecodeBatch
from dynaspec.runtime.request import Request
from dynaspec.spec.verifier import VerifyBatch


@dataclass
class StepRows:
    """logit_rows: flat input positions whose logits the step computes; counts[n]: rows of scheduled
    request n (decodes first, then prefills; 0 for a mid-prompt chunk)."""

    logit_rows: list[int]
    counts: list[int]


def flat_inputs(sched: SchedulerOutput, drafts: list[list[int]]) -> tuple[list[SequenceInput], StepRows]:
    """Varlen inputs (eager forward): every decode's last token + drafts, then the prefill chunks."""
    seqs: list[SequenceInput] = []
    rows = StepRows([], [])
    flat = 0
    for decode, draft in zip(sched.decodes, drafts):
        request = decode.request
        tokens = [request.last_token_id] + draft
        seqs.append(SequenceInput(tokens, request.num_tokens + len(draft), request.block_ids))
        rows.counts.append(len(tokens))
        rows.logit_rows.extend(range(flat, flat + len(tokens)))
        flat += len(tokens)
    for prefill in sched.prefills:
        request = prefill.request
        start = request.num_computed_tokens
        tokens = request.all_token_ids[start : start + prefill.num_tokens]
        seqs.append(SequenceInput(tokens, start + prefill.num_tokens, request.block_ids))
        flat += len(tokens)
        rows.counts.append(1 if prefill.completes_prompt else 0)
        if prefill.completes_prompt:
            rows.logit_rows.append(flat - 1)
    return seqs, rows


def uniform_inputs(sched: SchedulerOutput, drafts: list[list[int]] | None) -> tuple[UniformDecodeBatch, StepRows]:
    """Decode-only step padded to exactly 1 + k positions per request (the CUDA graph layout). drafts None:
    every request has k drafts that are still on the device (engine/drafting.py's StepDrafts.input_ids
    replaces these rows' ids on the device); the host rows then hold the last token as placeholders."""
    k = sched.draft_len
    batch = UniformDecodeBatch([], [], [], [])
    rows = StepRows([], [])
    for i, decode in enumerate(sched.decodes):
        request = decode.request
        last = request.last_token_id
        draft = [last] * k if drafts is None else drafts[i]
        batch.token_ids.append([last] + draft + [last] * (k - len(draft)))
        batch.seq_lens.append(request.num_tokens + k)
        batch.num_real.append(1 + len(draft))
        batch.block_tables.append(request.block_ids)
        rows.counts.append(1 + len(draft))
        rows.logit_rows.extend(range(i * (1 + k), i * (1 + k) + 1 + len(draft)))
    return batch, rows


def mixed_inputs(sched: SchedulerOutput) -> tuple[MixedBatch, StepRows]:
    """A step of k = 0 decodes and prefill chunks in the mixed graph layout (runtime/mixed_graphs.py); its
    rows as flat_inputs' (each decode's, then the last of each chunk that completes its prompt)."""
    batch = MixedBatch([], [], [], [], [], [])
    rows = StepRows([], [])
    for decode in sched.decodes:
        request = decode.request
        batch.decode_tokens.append(request.last_token_id)
        batch.decode_seq_lens.append(request.num_tokens)
        batch.decode_tables.append(request.block_ids)
        rows.counts.append(1)
    for prefill in sched.prefills:
        request = prefill.request
        start = request.num_computed_tokens
        batch.chunk_tokens.append(request.all_token_ids[start : start + prefill.num_tokens])
        batch.chunk_seq_lens.append(start + prefill.num_tokens)
        batch.chunk_tables.append(request.block_ids)
        rows.counts.append(1 if prefill.completes_prompt else 0)
    rows.logit_rows = list(range(sum(rows.counts)))
    return batch, rows


def ragged_inputs(sched: SchedulerOutput, drafts: list[list[int]]) -> tuple[RaggedDecodeBatch, StepRows]:
    """Decode-only step with 1 + d_i positions per request, every one real (the ragged graph layout)."""
    batch = RaggedDecodeBatch([], [], [])
    rows = StepRows([], [])
    for decode, draft in zip(sched.decodes, drafts):
        request = decode.request
        batch.token_ids.append([request.last_token_id] + draft)
        batch.seq_lens.append(request.num_tokens + len(draft))
        batch.block_tables.append(request.block_ids)
        rows.counts.append(1 + len(draft))
    rows.logit_rows = list(range(sum(rows.counts)))
    return batch, rows


def verify_batch(
    requests: list[Request], drafts: list[list[int]], draft_probs: list[torch.Tensor | None], counts: list[int]
) -> tuple[VerifyBatch, list[int]]:
    """The verification batch of the scheduled requests that have logit rows (counts[n] > 0), and their
    indices into `requests`. drafts / draft_probs: the decodes' (prefills draft nothing)."""
    rows = [n for n, count in enumerate(counts) if count > 0]
    drafts = drafts + [[] for _ in range(len(requests) - len(drafts))]
    draft_probs = draft_probs + [None] * (len(requests) - len(draft_probs))
    batch = VerifyBatch(
        drafts=[drafts[n] for n in rows],
        draft_probs=[draft_probs[n] for n in rows],
        params=[requests[n].params for n in rows],
        generators=[requests[n].generator for n in rows],
        request_ids=[requests[n].request_id for n in rows],
        positions=[requests[n].num_tokens for n in rows],
    )
    return batch, rows

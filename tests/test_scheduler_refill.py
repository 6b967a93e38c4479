"""Scheduler.refill: a step whose decodes' drafts were dropped beside its prefills (engine/graph_keys.py
plain_beside_prefills: a mixed graph runs it at k = 0) gives their budget to prompt chunks, as if the policy had
said k = 0 from the start."""

from __future__ import annotations

from dynaspec.engine.block_manager import BlockManager
from dynaspec.engine.scheduler import Scheduler
from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.sampling_params import SamplingParams


def _scheduler(budget: int, blocks: int = 256) -> Scheduler:
    scheduler = Scheduler(BlockManager(blocks, 4), max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=64)
    for i in range(4):  # decoding: every prompt token but the last computed
        request = Request(f"d{i}", None, list(range(8)), SamplingParams(max_tokens=16))
        request.output_token_ids = [1]
        request.num_computed_tokens = request.num_tokens - 1
        request.status = RequestStatus.RUNNING
        assert scheduler.block_manager.ensure_slots(request, request.num_tokens)
        scheduler.running.append(request)
    for i in range(3):
        scheduler.add(Request(f"p{i}", None, list(range(12)), SamplingParams(max_tokens=16)))
    return scheduler


def _chunks(out) -> list[tuple[str, int]]:
    return [(p.request.request_id, p.num_tokens) for p in out.prefills]


def _drop_drafts(out) -> None:
    """What plain_beside_prefills does to a step a mixed graph takes."""
    for decode in out.decodes:
        decode.max_draft, decode.planned_draft = 0, None
    out.draft_len = 0


def test_dropped_drafts_budget_goes_to_prompts_as_if_k_were_zero():
    for budget in (40, 34, 30):  # whole prompts; a chunk cut short that grows; the last prompt not admitted
        plain = _scheduler(budget).schedule(lambda n, active, ids, remaining=None: [0] * n)
        scheduler = _scheduler(budget)
        out = scheduler.schedule(lambda n, active, ids, remaining=None: [3] * n)  # 16 positions for the decodes
        assert out.num_tokens == budget and sum(c for _, c in _chunks(out)) == budget - 16
        _drop_drafts(out)
        scheduler.refill(out)
        assert _chunks(out) == _chunks(plain) and out.num_tokens == plain.num_tokens == budget, budget
        assert [r.request_id for r in scheduler.running] == [r.request_id for r in _scheduler(budget).running] + [
            p for p, _ in _chunks(plain)]
    assert _chunks(plain) == [("p0", 12), ("p1", 12), ("p2", 2)]


def test_refill_stops_where_the_kv_pool_is_short_and_preempts_nothing():
    """17 blocks of 4 slots: the decodes hold 12 (9 tokens + 3 draft slots each), p0's 12 tokens 3, p1's first 6
    tokens 2; growing p1's chunk needs a block no one frees, and preempting a request for it would undo work."""
    scheduler = _scheduler(34, blocks=17)
    out = scheduler.schedule(lambda n, active, ids, remaining=None: [3] * n)
    assert _chunks(out) == [("p0", 12), ("p1", 6)] and scheduler.block_manager.pool.num_free == 0
    _drop_drafts(out)
    scheduler.refill(out)
    assert _chunks(out) == [("p0", 12), ("p1", 6)] and not out.preempted and len(out.decodes) == 4
    assert [r.request_id for r in scheduler.waiting] == ["p2"]

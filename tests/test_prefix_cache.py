"""Automatic prefix caching (engine/prefix_cache.py, engine/block_manager.py; vLLM's APC design).

Outputs are token-identical with prefix caching on and off (greedy and seeded sampling, no speculation,
n-gram and a draft model, through preemption and eviction), and the shared blocks are really reused:
fewer fresh blocks allocated, the same physical blocks in every table, a hit rate above 0, hits for a
request that arrives after the first one finished.
"""

from __future__ import annotations

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.engine.block_manager import BlockManager
from dynaspec.engine.prefix_cache import BlockPool, hash_block
from dynaspec.runtime.request import Request
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from dynaspec.spec.draft_model import DraftModelDrafter
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

BLOCK = 4
PREFIX = 48  # shared prompt tokens: 12 full blocks


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-cache")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    """n prompts sharing a PREFIX-token prefix (with a repeated motif, so n-gram drafts exist)."""
    gen = torch.Generator().manual_seed(seed)
    motif = torch.randint(0, 512, (8,), generator=gen).tolist()
    prefix = motif * 3 + torch.randint(0, 512, (PREFIX - 24,), generator=gen).tolist()
    return [prefix + torch.randint(0, 512, (3 + 2 * i,), generator=gen).tolist() + motif[:5] for i in range(n)]


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _seeded(n: int) -> list[SamplingParams]:
    return [SamplingParams(temperature=0.9, top_p=0.95, seed=500 + i, max_tokens=12, ignore_eos=True) for i in range(n)]


SPECS = {
    "none": lambda c: None,
    "ngram": lambda c: NGramDecodingConfig(max_draft_len=3),
    "draft-model": lambda c: DraftTargetDecodingConfig(max_draft_len=3, speculative_model=c["draft"]),
}


def _llm(ckpts, caching: bool, spec: str = "none", **options) -> LLM:
    options = {"block_size": BLOCK, "max_model_len": 128, **options}
    return LLM(model=ckpts["target"], enable_prefix_caching=caching, speculative_config=SPECS[spec](ckpts), **options)


def _tokens(llm: LLM, prompts, params) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def plain(ckpts):
    """Caching off, no speculation: the reference tokens (a first prompt, then the others)."""
    llm = _llm(ckpts, caching=False)
    prompts = _prompts(5)
    return {
        "greedy": _tokens(llm, prompts[:1], GREEDY) + _tokens(llm, prompts[1:], GREEDY),
        "seeded": _tokens(llm, prompts, _seeded(5)),
    }


# ---------------------------------------------------------------------------------------- the pool
def test_block_hash_is_chained_over_the_parent():
    a, b = hash_block(None, [1, 2, 3, 4]), hash_block(None, [5, 6, 7, 8])
    assert hash_block(None, [1, 2, 3, 4]) == a
    assert hash_block(a, [5, 6, 7, 8]) != b  # same tokens, different prefix: a different block
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(a, [5, 6, 7, 9])


def test_freed_blocks_stay_cached_until_an_allocation_evicts_the_least_recently_freed():
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.allocate(3)
    for i, block in enumerate(blocks):
        pool.register(block, bytes([i]))
    pool.release(blocks)  # freed in this order: 0 least recently
    assert pool.num_free == 4 and pool.num_cached == 3
    assert pool.cached_prefix([b"\x00", b"\x01", b"\x02", b"\x09"]) == blocks
    pool.share([blocks[1]])  # a hit takes it out of the free queue
    assert pool.num_free == 3 and pool.refcount(blocks[1]) == 1
    assert pool.allocate(1) == [3]  # never-used block first: it was at the head
    assert pool.allocate(1) == [blocks[0]] and pool.num_evicted == 1
    assert pool.cached_prefix([b"\x00"]) == [] and pool.cached_prefix([b"\x01"]) == [blocks[1]]
    pool.release([blocks[1]])
    assert pool.cached_prefix([b"\x01"]) == [blocks[1]]


def test_duplicate_content_keeps_the_first_cached_block():
    pool = BlockPool(2, enable_caching=True)
    first, second = pool.allocate(2)
    pool.register(first, b"h")
    pool.register(second, b"h")
    assert pool.cached_prefix([b"h"]) == [first] and pool.num_cached == 1


def test_caching_off_registers_nothing():
    pool = BlockPool(2, enable_caching=False)
    (block,) = pool.allocate(1)
    pool.register(block, b"h")
    assert pool.num_cached == 0 and pool.cached_prefix([b"h"]) == []


def _request(rid: str, tokens: list[int]) -> Request:
    return Request(rid, None, list(tokens), SamplingParams(max_tokens=4))


def test_only_full_blocks_of_computed_tokens_are_registered_and_reused_but_never_the_last_token():
    manager = BlockManager(16, BLOCK, enable_prefix_caching=True)
    first = _request("a", list(range(10)))
    assert manager.admit(first, 100) == 10 and len(first.block_ids) == 3
    first.num_computed_tokens = 7  # e.g. drafts occupy slots 7..: only block 0 is full of computed tokens
    manager.ensure_slots(first, 14)  # draft slots reserved past the committed length
    manager.cache_computed_blocks(first)
    assert manager.pool.num_cached == 1
    first.num_computed_tokens = 10
    manager.cache_computed_blocks(first)
    assert manager.pool.num_cached == 2

    second = _request("b", list(range(9)) + [99])  # shares 9 tokens: 2 full blocks
    assert manager.admit(second, 100) == 2 and second.num_computed_tokens == 8
    assert second.block_ids[:2] == first.block_ids[:2] and manager.pool.refcount(first.block_ids[0]) == 2
    exact = _request("c", list(range(8)))  # all 8 tokens cached, but the last must be computed
    assert manager.admit(exact, 100) == 4 and exact.num_computed_tokens == 4
    assert manager.stats() == {"prefix_cache_queries": 28, "prefix_cache_hits": 12, "prefix_cache_hit_rate": 12 / 28}


def test_admission_counts_revived_cached_blocks_against_the_free_pool():
    manager = BlockManager(4, BLOCK, enable_prefix_caching=True)
    first = _request("a", list(range(13)))
    assert manager.admit(first, 100) == 13
    first.num_computed_tokens = 13
    manager.cache_computed_blocks(first)
    manager.free(first)  # 3 cached + 1 plain free block
    second = _request("b", list(range(12)) + list(range(50, 62)))  # 3 hits + 3 fresh blocks: 6 > 4
    assert manager.admit(second, 100) is None and second.block_ids == [] and manager.num_free_blocks == 4
    assert manager.stats()["prefix_cache_queries"] == 13  # a refused admission is no query
    assert manager.admit(second, 4) == 4 and second.num_computed_tokens == 12 and len(second.block_ids) == 4


# ---------------------------------------------------------------------------------------- the engine
def test_shared_prefix_blocks_are_reused_copy_free(ckpts, plain):
    on, off = _llm(ckpts, caching=True), _llm(ckpts, caching=False)
    prompts = _prompts(5)
    counts = {}
    for name, llm in (("on", on), ("off", off)):
        assert _tokens(llm, prompts[:1], GREEDY) == plain["greedy"][:1]  # fills the cache; then finishes
        before = llm.engine.block_manager.num_allocated_blocks
        assert _tokens(llm, prompts[1:], GREEDY) == plain["greedy"][1:]  # arrive after the first finished
        counts[name] = llm.engine.block_manager.num_allocated_blocks - before
    assert counts["off"] - counts["on"] == 4 * (PREFIX // BLOCK)  # each request reuses the 12 prefix blocks
    stats = on.get_stats()
    assert stats["prefix_cache_hits"] == 4 * PREFIX and stats["prefix_cache_hit_rate"] > 0
    assert stats["prefix_cache_queries"] == sum(len(p) for p in prompts)
    assert off.get_stats()["prefix_cache_queries"] == 0 and off.get_stats()["prefix_cache_hit_rate"] == 0.0
    assert on.engine.num_free_blocks == on.engine.num_total_blocks  # cached blocks are free blocks

    engine = on.engine  # the same physical blocks in every table while the requests run
    for i, prompt in enumerate(prompts[1:4]):
        engine.add_request(f"live-{i}", prompt, GREEDY)
    engine.step()
    tables = [engine.requests[f"live-{i}"].block_ids[: PREFIX // BLOCK] for i in range(3)]
    assert tables[0] == tables[1] == tables[2]
    assert all(engine.block_manager.pool.refcount(b) == 3 for b in tables[0])
    for i in range(3):
        engine.abort_request(f"live-{i}")
    assert engine.num_free_blocks == engine.num_total_blocks


def test_requests_admitted_later_in_one_call_hit_the_blocks_of_earlier_chunks(ckpts, plain):
    """With a small token budget the first request's prefill is chunked; later ones find its full blocks."""
    llm = _llm(ckpts, caching=True, max_num_batched_tokens=32)
    assert _tokens(llm, _prompts(5), GREEDY) == plain["greedy"]
    assert llm.get_stats()["prefix_cache_hits"] > 0


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_greedy_and_seeded_tokens_equal_with_caching_on_and_off(ckpts, plain, spec):
    prompts = _prompts(5)
    for caching in (True, False):
        llm = _llm(ckpts, caching=caching, spec=spec)
        greedy = _tokens(llm, prompts[:1], GREEDY) + _tokens(llm, prompts[1:], GREEDY)
        assert greedy == plain["greedy"], (spec, caching)
        assert _tokens(llm, prompts, _seeded(5)) == plain["seeded"], (spec, caching)
        stats = llm.get_stats()
        assert (stats["prefix_cache_hits"] > 0) == caching
        if spec != "none":
            assert stats["num_drafted"] > 0


def test_draft_model_recomputes_its_own_kv_for_cached_blocks(ckpts, plain, monkeypatch):
    """A request whose prefix the target found cached still has the draft model catch up from token 0
    (its own per-request state), so the draft K/V of shared blocks never depends on who wrote it."""
    starts: dict[str, int] = {}
    original = DraftModelDrafter._catch_up_start

    def spy(self, request):
        start = original(self, request)
        starts.setdefault(request.request_id, start)
        return start

    monkeypatch.setattr(DraftModelDrafter, "_catch_up_start", spy)
    llm = _llm(ckpts, caching=True, spec="draft-model")
    prompts = _prompts(5)
    assert _tokens(llm, prompts[:1], GREEDY) + _tokens(llm, prompts[1:], GREEDY) == plain["greedy"]
    assert llm.get_stats()["prefix_cache_hits"] == 4 * PREFIX
    assert len(starts) == 5 and set(starts.values()) == {0}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_preemption_and_eviction_keep_tokens_identical(ckpts, plain, spec):
    """A pool too small for the batch: requests are preempted (their full blocks stay cached and their
    recompute may hit them) and cached blocks are evicted to serve allocations."""
    prompts = _prompts(5)
    for caching in (True, False):
        llm = _llm(ckpts, caching=caching, spec=spec, num_kv_blocks=22, max_model_len=80, max_num_batched_tokens=64)
        first = llm.generate(prompts[:1], GREEDY)
        rest = llm.generate(prompts[1:], GREEDY)
        assert [o.token_ids for o in first + rest] == plain["greedy"], caching
        assert sum(o.metrics.num_preemptions for o in rest) > 0
        assert _tokens(llm, prompts, _seeded(5)) == plain["seeded"], caching
        assert llm.engine.num_free_blocks == llm.engine.num_total_blocks
        if caching:
            assert llm.engine.block_manager.pool.num_evicted > 0 and llm.get_stats()["prefix_cache_hits"] > 0

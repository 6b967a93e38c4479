"""The n-gram drafter proposes exactly what the reference implementation (tests/ngram_reference.py, the
drafter before the fast indexing rewrite) proposes: randomized requests, every pool option, step by step."""

import itertools
import random

import pytest

from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.ngram import NGramDrafter, NGramPool
from tests import ngram_reference as reference

# (max_draft_len, max_matching_ngram_size, max_continuations_per_key)
SHAPES = [(1, 1, 8), (3, 2, 2), (2, 3, 1), (4, 3, 8), (5, 4, 3)]
POOL_SIZES = [3, 40, 65536]  # 3 and 40 evict all the time


def _new_request(rng: random.Random, rid: str, vocab: int) -> Request:
    prompt = _tokens(rng, rng.randint(1, 40), vocab)
    return Request(
        request_id=rid,
        prompt=None,
        prompt_token_ids=prompt,
        params=SamplingParams(max_tokens=rng.randint(2, 60)),
        output_token_ids=[],
        status=RequestStatus.RUNNING,
    )


def _tokens(rng: random.Random, count: int, vocab: int) -> list[int]:
    """Random tokens from a small vocabulary (many repeated n-grams), sometimes a whole repeated run."""
    out: list[int] = []
    while len(out) < count:
        if out and rng.random() < 0.3:
            start = rng.randrange(len(out))
            out.extend(out[start : start + rng.randint(1, 6)])
        else:
            out.append(rng.randrange(vocab))
    return out[:count]


def _commit(rng: random.Random, request: Request, draft: list[int], k: int, vocab: int) -> None:
    """1..k+1 new tokens: an accepted prefix of the draft (when there is one), then fresh tokens."""
    count = min(rng.randint(1, k + 1), request.remaining_tokens)
    accepted = draft[: rng.randint(0, len(draft))]
    new = (accepted + _tokens(rng, count, vocab))[:count]
    request.output_token_ids.extend(new)
    if request.remaining_tokens <= 0:
        request.status = RequestStatus.FINISHED


def _assert_same_pool(ref_pool, new_pool: NGramPool, where: str) -> None:
    """Same patterns, same continuations in the same order, same entry count (via the public API)."""
    assert new_pool.num_entries == ref_pool.num_entries, where
    assert len(new_pool) == len(ref_pool), where
    for pattern, conts in ref_pool._map.items():
        assert pattern in new_pool, where
        assert new_pool.continuations(pattern) == conts, (where, pattern)


def _run(config: NGramDecodingConfig, per_key: int, seed: int, steps: int = 60) -> int:
    """Drive both drafters through the same randomized schedule; returns the number of proposals checked."""
    rng = random.Random(seed)
    vocab = rng.choice([3, 5, 12])
    ref, new = reference.NGramDrafter(config, per_key), NGramDrafter(config, per_key)
    running: list[Request] = []
    next_id = itertools.count()
    checked = 0
    for step in range(steps):
        while len(running) < 6 and rng.random() < 0.7:
            running.append(_new_request(rng, f"r{next(next_id) % 9}", vocab))  # ids are reused
        if not running:
            continue
        batch = [r for r in running if rng.random() < 0.8]
        k = rng.randint(1, config.max_draft_len)
        drafts = ref.propose(batch, k).tokens if batch else []
        assert (new.propose(batch, k).tokens if batch else []) == drafts, (seed, step)
        checked += len(drafts)
        for request, draft in zip(batch, drafts):
            _commit(rng, request, draft, k, vocab)
        for request in running:  # requests outside the batch (prefills, k = 0) may advance too
            if request not in batch and request.status != RequestStatus.FINISHED and rng.random() < 0.3:
                _commit(rng, request, [], k, vocab)
        if rng.random() < 0.8:  # otherwise a k = 0 step: no observe, propose catches up later
            ref.observe(running)
            new.observe(running)
        for request in list(running):
            if request.status == RequestStatus.FINISHED or rng.random() < 0.05:  # finished or aborted
                ref.release(request)
                new.release(request)
                running.remove(request)
        for request in running:
            _assert_same_pool(ref.pool(request.request_id), new.pool(request.request_id), f"{seed}/{step}")
    return checked


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "draft{}-ngram{}-perkey{}".format(*s))
@pytest.mark.parametrize("max_pool_entries", POOL_SIZES)
def test_same_proposals_as_reference(shape, max_pool_entries):
    draft_len, ngram, per_key = shape
    checked = 0
    for seed, (keep_all, use_oldest, public) in enumerate(itertools.product((True, False), repeat=3)):
        config = NGramDecodingConfig(
            max_draft_len=draft_len,
            max_matching_ngram_size=ngram,
            is_keep_all=keep_all,
            is_use_oldest=use_oldest,
            is_public_pool=public,
            max_pool_entries=max_pool_entries,
        )
        checked += _run(config, per_key, seed=1000 * draft_len + max_pool_entries + seed)
    assert checked > 500


def _pool_pair(keep_all, use_oldest, max_entries, max_per_key=3):
    kw = dict(keep_all=keep_all, use_oldest=use_oldest, max_entries=max_entries, max_per_key=max_per_key)
    return reference.NGramPool(**kw), NGramPool(**kw)


POOL_OPTIONS = list(itertools.product((True, False), (True, False), (4, 1000)))


@pytest.mark.parametrize("keep_all,use_oldest,max_entries", POOL_OPTIONS)
def test_pool_insert_matches_reference_on_arbitrary_continuations(keep_all, use_oldest, max_entries):
    """NGramPool.insert on its own: continuations of mixed lengths (empty too), prefixes of each other."""
    rng = random.Random(7)
    ref, new = _pool_pair(keep_all, use_oldest, max_entries)
    for i in range(3000):
        pattern = tuple(rng.randrange(2) for _ in range(rng.randint(1, 2)))
        cont = tuple(rng.randrange(3) for _ in range(rng.choice([0, 1, 1, 2, 3, 4])))
        if rng.random() < 0.2:
            assert new.lookup(pattern) == ref.lookup(pattern)
        ref.insert(pattern, cont)
        new.insert(pattern, cont)
        _assert_same_pool(ref, new, f"#{i}")


@pytest.mark.parametrize("keep_all,use_oldest,max_entries", POOL_OPTIONS)
def test_pool_index_is_the_inserts_it_documents(keep_all, use_oldest, max_entries):
    """NGramPool.index(tokens, first, cut, ...) == the insert loop of its docstring, for any first / cut
    (not only the drafter's), interleaved with inserts and lookups."""
    rng = random.Random(11)
    ref, new = _pool_pair(keep_all, use_oldest, max_entries, max_per_key=2)
    for i in range(400):
        tokens = tuple(rng.randrange(3) for _ in range(rng.randint(1, 12)))
        first, cut = rng.randrange(len(tokens) + 1), rng.randrange(len(tokens) + 2)
        draft, ngram = rng.randint(1, 4), rng.randint(1, 3)
        for e in range(first, len(tokens)):
            for n in range(1, min(ngram, e) + 1):
                ref.insert(tokens[e - n : e], tokens[e : e + draft])
        new.index(tokens, first, cut, draft, ngram)
        _assert_same_pool(ref, new, f"#{i}")
        pattern = tokens[-rng.randint(1, min(3, len(tokens))) :]
        assert new.lookup(pattern) == ref.lookup(pattern)
        cont = tokens[: rng.randint(0, 4)]
        ref.insert(pattern, cont)
        new.insert(pattern, cont)

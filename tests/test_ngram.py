"""NGramDrafter: TensorRT-LLM pool semantics, one flag at a time, on hand-built token sequences."""

import pytest

from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.drafter import DraftProposal, Drafter
from dynaspec.spec.ngram import NGramDrafter, NGramPool


def _req(tokens, rid="r0", output=(), max_tokens=100) -> Request:
    return Request(
        request_id=rid,
        prompt=None,
        prompt_token_ids=list(tokens),
        params=SamplingParams(max_tokens=max_tokens),
        output_token_ids=list(output),
        status=RequestStatus.RUNNING,
    )


def _drafter(**kw) -> NGramDrafter:
    return NGramDrafter(NGramDecodingConfig(**kw))


def _propose(drafter, request, k=None) -> list[int]:
    proposal = drafter.propose([request], k or drafter.max_draft_len)
    assert proposal.probs == [None]
    return proposal.tokens[0]


def test_is_a_drafter_and_does_not_mutate_request():
    d = _drafter()
    assert isinstance(d, Drafter)
    r = _req([1, 2, 3, 4, 5, 1, 2], output=[3])
    before = (list(r.prompt_token_ids), list(r.output_token_ids), r.num_computed_tokens, vars(r).keys())
    d.propose([r], 4)
    d.observe([r])
    assert before == (list(r.prompt_token_ids), list(r.output_token_ids), r.num_computed_tokens, vars(r).keys())


def test_prompt_lookup_continues_earlier_occurrence():
    d = _drafter(max_draft_len=3, max_matching_ngram_size=2)
    # suffix (1, 2) occurred at the start followed by 3 4 5
    assert _propose(d, _req([1, 2, 3, 4, 5, 9, 1, 2])) == [3, 4, 5]


def test_k_smaller_than_max_truncates():
    d = _drafter(max_draft_len=4)
    r = _req([1, 2, 3, 4, 5, 6, 7, 1, 2])
    assert _propose(d, r, k=2) == [3, 4]
    assert _propose(d, r, k=1) == [3]
    assert _propose(d, r, k=4) == [3, 4, 5, 6]


def test_no_match_gives_empty_draft():
    d = _drafter()
    assert _propose(d, _req([1, 2, 3, 4])) == []
    proposal = d.propose([_req([5, 6, 7], rid="a"), _req([8, 9, 8], rid="b")], 2)
    assert proposal.tokens == [[], [9, 8]]


def test_longest_match_first():
    d = _drafter(max_draft_len=2, max_matching_ngram_size=3)
    # (3,) alone was last followed by 8 8 (oldest: 4 4); the 3-gram (1, 2, 3) was followed by 5 5.
    r = _req([3, 4, 4, 1, 2, 3, 5, 5, 7, 3, 8, 8, 1, 2, 3])
    assert _propose(d, r) == [5, 5]
    # With only unigrams the oldest continuation of 3 is used.
    assert _propose(_drafter(max_draft_len=2, max_matching_ngram_size=1), r) == [4, 4]


def test_falls_back_to_shorter_ngrams():
    d = _drafter(max_draft_len=2, max_matching_ngram_size=3)
    # (6, 2, 3) and (2, 3)... only the unigram 3 matches earlier text.
    assert _propose(d, _req([3, 7, 7, 9, 6, 3])) == [7, 7]


def test_use_oldest_vs_newest():
    tokens = [5, 1, 1, 9, 5, 2, 2, 9, 5]
    assert _propose(_drafter(max_draft_len=2, max_matching_ngram_size=1, is_use_oldest=True), _req(tokens)) == [1, 1]
    assert _propose(_drafter(max_draft_len=2, max_matching_ngram_size=1, is_use_oldest=False), _req(tokens)) == [2, 2]


def test_keep_all_false_keeps_only_the_longest():
    # 5 is first followed by a continuation cut short at the end of request a (one token), then, in
    # request b, by a full one. keep_all=False keeps only the longest; keep_all=True keeps both and
    # oldest-first proposes the short, older one.
    a, b, c = _req([5, 1], rid="a"), _req([5, 2, 2, 9], rid="b"), _req([7, 5], rid="c")
    for keep_all, expected in ((False, [2, 2]), (True, [1])):
        d = _drafter(max_draft_len=2, max_matching_ngram_size=1, is_keep_all=keep_all)
        d.observe([a])
        d.release(a)
        d.observe([b])
        assert _propose(d, c) == expected, keep_all
        assert len(d.pool("c").continuations((5,))) == (2 if keep_all else 1)


def test_keep_all_false_equal_length_tie_follows_use_oldest():
    tokens = [5, 1, 1, 9, 5, 2, 2, 9, 5]
    for use_oldest, expected in ((True, [1, 1]), (False, [2, 2])):
        d = _drafter(max_draft_len=2, max_matching_ngram_size=1, is_keep_all=False, is_use_oldest=use_oldest)
        assert _propose(d, _req(tokens)) == expected
        assert len(d.pool("r0").continuations((5,))) == 1


def test_cut_short_continuation_is_extended_in_place_keeping_its_age():
    d = _drafter(max_draft_len=3, max_matching_ngram_size=1, is_use_oldest=True)
    r = _req([4, 1])
    d.observe([r])
    assert d.pool("r0").continuations((4,)) == [(1,)]
    for token in (2, 3, 9):
        r.output_token_ids.append(token)
        d.observe([r])
    assert d.pool("r0").continuations((4,)) == [(1, 2, 3)]
    r.output_token_ids.extend([4, 7, 7, 7, 4])
    d.observe([r])
    assert d.pool("r0").continuations((4,)) == [(1, 2, 3), (7, 7, 7)]
    assert _propose(d, r) == [1, 2, 3]  # the oldest, not the newer one


def test_pool_keeps_learning_through_observe_only_steps():
    """k = 0 steps call only observe(); the tokens generated meanwhile must be in the pool afterwards."""
    d = _drafter(max_draft_len=2, max_matching_ngram_size=2)
    r = _req([10, 11, 12])
    assert _propose(d, r) == []
    for token in (20, 21, 22, 23, 20):  # generated while speculation was off
        r.output_token_ids.append(token)
        d.observe([r])
    assert _propose(d, r) == [21, 22]


def test_propose_indexes_unseen_tokens_itself():
    d = _drafter(max_draft_len=2, max_matching_ngram_size=1)
    r = _req([1, 2, 3])
    assert _propose(d, r) == []
    r.output_token_ids.extend([7, 8, 1])  # no observe() in between
    assert _propose(d, r) == [2, 3]


def test_public_pool_shares_across_requests():
    d = _drafter(max_draft_len=3, max_matching_ngram_size=2, is_public_pool=True)
    d.observe([_req([1, 2, 3, 4, 5], rid="a")])
    assert _propose(d, _req([9, 1, 2], rid="b")) == [3, 4, 5]


def test_private_pool_is_per_request_and_freed_on_release():
    d = _drafter(max_draft_len=3, max_matching_ngram_size=2, is_public_pool=False)
    a = _req([1, 2, 3, 4, 5, 1, 2], rid="a")
    d.observe([a])
    assert _propose(d, _req([9, 1, 2], rid="b")) == []  # b cannot see a's pool
    assert _propose(d, a) == [3, 4, 5]
    assert d.num_tracked_requests() == 2
    d.release(a)
    assert "a" not in d._private and d.num_tracked_requests() == 1


def test_release_then_readmit_reindexes():
    d = _drafter(max_draft_len=2, max_matching_ngram_size=1, is_public_pool=False)
    r = _req([1, 2, 3, 1])
    assert _propose(d, r) == [2, 3]
    d.release(r)  # e.g. preempted by recompute
    assert _propose(d, r) == [2, 3]


def test_finished_requests_are_not_tracked_by_observe():
    d = _drafter()
    r = _req([1, 2, 3])
    r.status = RequestStatus.FINISHED
    d.observe([r])
    assert d.num_tracked_requests() == 0


def test_draft_does_not_stop_at_max_tokens():
    """Near max_tokens the drafter still proposes up to k: the commit stops the request at max_tokens
    (engine/output_processor.py), the step stays uniform, and a short draft all accepted would read as a
    rejection at its end to the acceptance estimate."""
    d = _drafter(max_draft_len=4)
    r = _req([1, 2, 3, 4, 5, 6, 1], output=[2], max_tokens=3)  # 2 tokens left
    assert _propose(d, r) == [3, 4, 5, 6]
    r.output_token_ids.append(3)  # 1 left
    assert _propose(d, r) == [4, 5, 6, 1]


def test_eviction_bounds_pool_and_drops_least_recently_used():
    pool = NGramPool(keep_all=True, use_oldest=True, max_entries=3, max_per_key=8)
    pool.insert((1,), (10,))
    pool.insert((2,), (20,))
    pool.insert((3,), (30,))
    assert pool.lookup((1,)) == (10,)  # a use: (2,) is now the least recently used
    pool.insert((4,), (40,))
    assert pool.num_entries == 3 and (2,) not in pool and (1,) in pool and (4,) in pool


def test_eviction_through_drafter_config():
    d = _drafter(max_draft_len=1, max_matching_ngram_size=1, max_pool_entries=4)
    r = _req(list(range(100)) + [0])
    d.observe([r])
    pool = d.pool("r0")
    assert pool.num_entries <= 4 and len(pool) <= 4
    assert _propose(d, r) == []  # the pattern (0,) -> (1,) was evicted long ago
    assert pool.continuations((98,)) == [(99,)]


def test_keep_all_per_key_bound():
    oldest = NGramPool(keep_all=True, use_oldest=True, max_entries=100, max_per_key=2)
    newest = NGramPool(keep_all=True, use_oldest=False, max_entries=100, max_per_key=2)
    for pool in (oldest, newest):
        for cont in ((1,), (2,), (3,)):
            pool.insert((0,), cont)
    assert oldest.continuations((0,)) == [(1,), (2,)] and oldest.lookup((0,)) == (1,)
    assert newest.continuations((0,)) == [(2,), (3,)] and newest.lookup((0,)) == (3,)


def test_prefix_of_known_continuation_adds_nothing():
    pool = NGramPool(keep_all=True, use_oldest=True, max_entries=100, max_per_key=8)
    pool.insert((0,), (1, 2, 3))
    pool.insert((0,), (1, 2))
    pool.insert((0,), (1, 2, 3))
    assert pool.continuations((0,)) == [(1, 2, 3)] and pool.num_entries == 1


def test_incremental_indexing_equals_one_shot_indexing():
    """O(new tokens) updates (cut-short continuations extended later) must store the same continuations
    as indexing the whole sequence at once."""
    import random

    rng = random.Random(0)
    tokens = [rng.randrange(6) for _ in range(300)]
    for keep_all in (True, False):
        for use_oldest in (True, False):
            cfg = NGramDecodingConfig(
                max_draft_len=3, max_matching_ngram_size=3, is_keep_all=keep_all, is_use_oldest=use_oldest
            )
            once, step = NGramDrafter(cfg, max_continuations_per_key=10_000), NGramDrafter(cfg, 10_000)
            once.observe([_req(tokens)])
            r = _req(tokens[:5])
            for t in tokens[5:]:
                r.output_token_ids.append(t)
                step.observe([r])
            a, b = once.pool("r0"), step.pool("r0")
            patterns = {tuple(tokens[i : i + n]) for n in (1, 2, 3) for i in range(len(tokens) - n + 1)}
            assert len(a) == len(b) and all((p in a) == (p in b) for p in patterns), (keep_all, use_oldest)
            assert all(set(a.continuations(p)) == set(b.continuations(p)) for p in patterns), (keep_all, use_oldest)
            assert a.num_entries == b.num_entries


def test_batch_proposal_shape():
    d = _drafter(max_draft_len=3)
    reqs = [_req([1, 2, 1], rid="a"), _req([4, 4, 4, 4], rid="b"), _req([6], rid="c")]
    proposal = d.propose(reqs, 2)
    assert isinstance(proposal, DraftProposal)
    # b: the longest suffix (4, 4, 4) wins although its only continuation was cut short to one token
    assert proposal.tokens == [[2, 1], [4], []]
    assert proposal.num_drafted == [2, 1, 0] and proposal.max_len == 2 and len(proposal) == 3


def test_wrong_config_type():
    with pytest.raises(TypeError, match="needs an NGramDecodingConfig"):
        NGramDrafter({"max_draft_len": 4})


def test_reset_forgets_what_finished_requests_taught_the_shared_pool():
    d = _drafter(max_draft_len=2)
    first = _req([1, 2, 3, 4, 5, 6], rid="a")
    _propose(d, first)  # indexes a's tokens into the shared pool
    d.release(first)  # release keeps the shared pool: later requests draft from a's text
    assert _propose(d, _req([9, 3, 4], rid="b")) == [5, 6]
    d.reset()
    assert len(d.pool("c")) == 0 and d.num_tracked_requests() == 0
    assert _propose(d, _req([9, 3, 4], rid="c")) == []  # only its own tokens now: 3, 4 never followed


def test_tokens_from_reads_the_tail_without_the_whole_prompt():
    """Request.tokens_from(start) == all_token_ids[start:] on both sides of the prompt's end."""
    request = Request(request_id="r", prompt=None, prompt_token_ids=[1, 2, 3], params=SamplingParams())
    request.output_token_ids = [4, 5]
    for start in range(0, 7):
        assert request.tokens_from(start) == request.all_token_ids[start:]

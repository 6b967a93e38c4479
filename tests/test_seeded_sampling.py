"""Seeded sampling that speculation cannot change (runtime/keyed_noise.py): a seeded request's tokens are
those of plain decoding with the same seed, with any drafter and schedule, alone or in a batch, through
preemption, and call after call; the keyed Gumbel-max draws still follow the target distribution."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from dynaspec import LLM, SamplingParams
from dynaspec.runtime.keyed_noise import gumbel_noise, keyed_argmax, row_keys
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    repeat = torch.randint(0, 512, (6,), generator=gen).tolist()
    # copy-heavy prompts (a repeated motif) so that n-gram drafts exist and get verified
    return [repeat * 3 + torch.randint(0, 512, (3 + 5 * i,), generator=gen).tolist() for i in range(n)]


def _params(n: int) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0.9, top_p=0.95, top_k=40, seed=1000 + i, max_tokens=20 + 3 * i, ignore_eos=True)
        for i in range(n)
    ]


def _tokens(llm: LLM, prompts, params) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


SPECS = {
    "ngram-schedule": lambda c: NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 3: 1, 6: 0}),
    "draft-model": lambda c: DraftTargetDecodingConfig(max_draft_len=3, speculative_model=c["draft"]),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_seeded_tokens_equal_plain_decoding_alone_in_a_batch_and_call_after_call(ckpts, spec):
    prompts, params = _prompts(6), _params(6)
    plain = _tokens(LLM(model=ckpts["target"], block_size=4), prompts, params)
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=SPECS[spec](ckpts))
    assert _tokens(llm, prompts, params) == plain
    assert _tokens(llm, prompts, params) == plain  # again: the public n-gram pool has seen the first call
    assert [_tokens(llm, [p], [q])[0] for p, q in zip(prompts[:3], params[:3])] == plain[:3]  # alone
    assert llm.get_stats()["num_drafted"] > 0


def test_seeded_tokens_survive_preemption(ckpts):
    prompts, params = _prompts(6), _params(6)
    plain = _tokens(LLM(model=ckpts["target"], block_size=4), prompts, params)
    spec = NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 4: 0})
    small = LLM(model=ckpts["target"], block_size=4, num_kv_blocks=30, max_model_len=100, speculative_config=spec)
    outputs = small.generate(prompts, params)
    assert sum(o.metrics.num_preemptions for o in outputs) > 0
    assert [o.token_ids for o in outputs] == plain


def test_keyed_noise_is_a_pure_function_of_seed_position_and_index():
    keys = row_keys([5, 5, 6, 2**63 - 1], [10, 11, 10, 10], torch.device("cpu"))
    noise = gumbel_noise(keys, 64)
    assert torch.equal(noise, gumbel_noise(row_keys([5, 5, 6, 2**63 - 1], [10, 11, 10, 10], torch.device("cpu")), 64))
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
    assert torch.equal(gumbel_noise(keys[:1], 64), noise[:1])  # the same row alone: the same noise


def test_keyed_gumbel_max_samples_the_distribution():
    """Across seeds, argmax(log p + keyed noise) follows p (chi-square), including a zero-probability entry."""
    p = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    draws = 8000
    ids = keyed_argmax(p.expand(draws, -1), list(range(draws)), [3] * draws)
    counts = torch.bincount(ids, minlength=5)
    assert counts[4] == 0
    assert chisquare(counts[:4].numpy(), (p[:4] * draws).numpy()).pvalue > 1e-3
    # and across positions of one seed
    ids = keyed_argmax(p.expand(draws, -1), [42] * draws, list(range(draws)))
    assert chisquare(torch.bincount(ids, minlength=5)[:4].numpy(), (p[:4] * draws).numpy()).pvalue > 1e-3

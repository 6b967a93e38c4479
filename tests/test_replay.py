"""Acceptance replay with common random numbers: draws keyed by (request, sequence position)."""

from __future__ import annotations

import json

import pytest

from dynaspec import LLM, NGramDecodingConfig, SamplingParams
from dynaspec.spec.replay import AcceptanceReplay
from tests.tiny_models import make_tiny_checkpoint


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"acceptance_per_position": [0.8, 0.6, 0.5, 0.4]}))
    return str(path)


def test_draws_depend_on_request_and_position_not_on_call_order(profile):
    one, two = AcceptanceReplay(profile), AcceptanceReplay(profile)
    keys = [(f"r{i}", pos) for i in range(5) for pos in range(0, 300, 7)]
    first = {key: one.num_accepted(4, *key) for key in keys}
    second = {key: two.num_accepted(4, *key) for key in reversed(keys)}
    assert first == second
    assert len(set(first.values())) > 1  # not a constant
    other_seed = AcceptanceReplay(profile, seed=1)
    assert {key: other_seed.num_accepted(4, *key) for key in keys} != first


def test_shorter_chains_are_coupled_to_longer_ones(profile):
    """At one position, a chain of k drafts accepts min(what a chain of 4 accepts, k): lines with different
    k differ by their k, not by their draws."""
    replay = AcceptanceReplay(profile)
    for pos in range(0, 2000, 3):
        longest = replay.num_accepted(4, "req", pos)
        for k in range(1, 4):
            assert replay.num_accepted(k, "req", pos) == min(longest, k)


def test_positional_draws_follow_the_profile(profile):
    """Accepted-length frequencies match the profile's chain probabilities (chi-square, 3 dof, p ~ 1e-4)."""
    alphas = [0.8, 0.6, 0.5]
    replay = AcceptanceReplay(profile)
    # Non-overlapping chains of 3 positions across many requests: independent draws.
    counts = [0, 0, 0, 0]
    n = 0
    for r in range(40):
        for pos in range(0, 600, 3):
            counts[replay.num_accepted(3, f"q{r}", pos)] += 1
            n += 1
    expected = [1 - alphas[0], alphas[0] * (1 - alphas[1]), alphas[0] * alphas[1] * (1 - alphas[2])]
    expected.append(alphas[0] * alphas[1] * alphas[2])
    chi2 = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, expected))
    assert chi2 < 21.1, (counts, [round(n * p) for p in expected])


def test_release_restarts_the_stream_and_input_errors(profile):
    replay = AcceptanceReplay(profile)
    before = [replay.num_accepted(4, "a", pos) for pos in range(0, 400, 5)]
    replay.release("a")
    replay.release("never-seen")  # nothing to forget: no error
    assert [replay.num_accepted(4, "a", pos) for pos in range(0, 400, 5)] == before
    with pytest.raises(RuntimeError, match="needs the request id"):
        replay.num_accepted(2, None, 3)


def test_a_requests_accepted_lengths_do_not_depend_on_its_batch(tmp_path, profile):
    """The engine passes each chain's position: a request replays the same accepted lengths (so, with the
    replay's tokens, the same output) alone or among others; one random stream in call order would not."""
    ckpt = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    # Private pools: the drafts (and so the replayed tokens) of a request depend on its own tokens only.
    spec = NGramDecodingConfig(max_draft_len=3, is_public_pool=False, replay_acceptance_profile=profile)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 8, 9, 8, 9, 8, 1], [3, 3, 4, 3, 3, 4, 2]]

    def outputs(which: list[int]) -> dict[int, list[int]]:
        llm = LLM(model=ckpt, block_size=4, speculative_config=spec)
        engine = llm.engine
        for i in which:
            engine.add_request(f"req-{i}", prompts[i], params)
        done: dict[int, list[int]] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[int(out.request_id.split("-")[1])] = list(out.token_ids)
        return done

    together, alone = outputs([0, 1, 2]), outputs([2])
    assert together[2] == alone[2]
    assert outputs([1, 2, 0]) == together  # another arrival order

"""Ragged verify graphs keyed by (batch bucket, padded total tokens) (issue 20): layout, lookup, pricing,
and (CUDA) lossless replay inside the engine with per-request draft lengths."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.models.loader import load_model
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.runtime.model_runner import ModelRunner, SequenceInput
from dynaspec.runtime.ragged_graphs import RaggedDecodeBatch, slots, token_buckets
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.adaptive import AdaptivePolicy
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from tests.tiny_models import make_tiny_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_token_buckets_cover_every_ragged_total_of_a_bucket():
    assert token_buckets(4, 2) == [5, 6, 7, 8, 9, 10, 11, 12]  # 8 positions above the batch: one each
    buckets = token_buckets(64, 6)
    assert len(buckets) == 8 and buckets[-1] == 64 * 7 and buckets[0] > 64
    assert token_buckets(64, 6, max_tokens=200)[-1] == 200  # capped at the step's token budget
    assert token_buckets(1, 0) == []


def test_slots_leave_room_for_any_padding():
    # 4 requests of at most 3 rows in a 12-token graph: even one real token leaves 11 pad rows -> 4 pad slots
    assert slots(4, 12, 3) == 4 + 4


def _runner(tmp_path, keys, max_query_len):
    loaded = load_model(str(make_tiny_checkpoint(tmp_path, "llama")), dtype=torch.float32, device="cpu")
    runner = ModelRunner(loaded.model, num_blocks=32, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    runner.capture_ragged_graphs(keys, max_query_len, max_blocks_per_seq=8, use_graphs=False)
    return runner


def test_lookup_picks_the_smallest_graph_that_holds_the_step(tmp_path):
    runner = _runner(tmp_path, [(2, 4), (2, 6), (4, 8), (4, 12)], max_query_len=3)
    assert runner.ragged_key(2, 3) == (2, 4)
    assert runner.ragged_key(2, 5) == (2, 6)
    assert runner.ragged_key(2, 7) == (4, 8)  # no batch-2 graph holds 7 tokens: the next bucket's
    assert runner.ragged_key(3, 9) == (4, 12)
    assert runner.ragged_key(4, 13) is None
    assert runner.ragged_key(5, 6) is None


def test_ragged_layout_matches_the_flat_forward_and_pads_only_the_scratch_block(tmp_path):
    """Staging + in-graph positions / slots / per-request query lengths (run eagerly on CPU) give the flat
    forward's logits for 3 requests drafting 2, 0 and 1 tokens (padded from 6 to 8 tokens), and the padding
    writes K/V only into the scratch block."""
    runner = _runner(tmp_path, [(4, 8)], max_query_len=3)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 9, 3)]
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    runner.forward([SequenceInput(p, len(p), t) for p, t in zip(prompts, tables)], [0])  # prefill the KV
    feeds = [[7, 11, 12], [8], [9, 31]]
    seqs = [SequenceInput(f, len(p) + len(f), t) for f, p, t in zip(feeds, prompts, tables)]
    expected = runner.forward(seqs, list(range(6)))
    kv_after_flat = [kv.clone() for kv in runner.kv_caches]

    runner.forward([SequenceInput(p, len(p), t) for p, t in zip(prompts, tables)], [0])  # same KV again
    for kv, flat in zip(runner.kv_caches, kv_after_flat):
        kv[:, runner.scratch_block].fill_(float("nan"))  # only padding may touch it
        flat[:, runner.scratch_block].fill_(float("nan"))
    got = runner.forward_ragged(RaggedDecodeBatch(feeds, [s.seq_len for s in seqs], tables))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert runner.ragged_graphs.replays_per_pair == {(4, 8): 1}
    for kv, flat in zip(runner.kv_caches, kv_after_flat):
        real = list(range(runner.scratch_block))
        torch.testing.assert_close(kv[:, real], flat[:, real], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(kv[:, runner.scratch_block, :2]).all()  # the pad rows (positions 0, 1) wrote there


def test_a_step_no_graph_holds_is_refused_with_the_reason(tmp_path):
    runner = _runner(tmp_path, [(2, 4)], max_query_len=3)
    with pytest.raises(ValueError, match="no ragged CUDA graph for 2 requests and 5 tokens"):
        runner.forward_ragged(RaggedDecodeBatch([[1, 2, 3], [4, 5]], [8, 8], [[0, 1], [2, 3]]))


# --- pricing by the graph a step runs in, refined online ---------------------------------------------

def _policy(ragged_step) -> AdaptivePolicy:
    costs = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(3):
            costs.add(batch, k, 0.01 + 0.001 * batch * (1 + k))
    estimator = AcceptanceEstimator(2)
    return AdaptivePolicy(costs, estimator, 2, PlannerSettings(min_observed_steps=3), ragged_step=ragged_step)


def test_a_ragged_step_is_priced_at_its_graphs_padded_total():
    policy = _policy(lambda batch, tokens: (4, 8) if batch <= 4 and tokens <= 8 else None)
    # 3 requests + 2 drafts = 5 tokens run in the (4, 8) graph: priced as 4 requests verifying 8 tokens
    assert policy.step_seconds(3, 2) == pytest.approx(0.01 + 0.001 * 8)
    # no ragged graph holds 3 + 6 tokens: the uniform steps around it at the batch itself
    assert policy.step_seconds(3, 6) == pytest.approx(0.01 + 0.001 * 9)
    assert policy.step_seconds(3, 0) == pytest.approx(0.01 + 0.001 * 3)  # k = 0: the plain graph


def test_real_step_times_add_the_learned_host_overhead_to_speculative_prices():
    """Real uniform speculative steps took 0.05 s where the probe said less: once the overhead model has its
    samples, speculative prices carry the learned overhead (one cell seen: a constant); plain steps do not.
    Ragged steps teach the ragged premium instead (spec/ragged_premium.py), which only ragged budgets pay."""
    policy = _policy(lambda batch, tokens: (4, tokens) if batch <= 4 and tokens <= 8 else None)
    prior = policy.step_seconds(3, 6)
    near = policy.step_seconds(3, 2)
    for n in range(3):
        assert policy.step_seconds(3, 6) == prior  # fewer samples than the model's minimum: the probe
        policy.observe(StepOutcome(request_ids=["a", "b", "c"], draft_len=2, drafted=[2, 2, 2],
                                   accepted=[1, 0, 0], draft_lens=[2, 2, 2], seconds=0.05))
    assert policy.step_seconds(3, 6) == pytest.approx(0.05)
    overhead = 0.05 - prior
    assert policy.step_seconds(4, 3) == pytest.approx(0.01 + 0.001 * 7 + overhead)  # another graph
    assert policy.step_seconds(3, 2) == pytest.approx(near + overhead)
    assert policy.step_seconds(3, 0) == pytest.approx(0.01 + 0.001 * 3)  # plain steps overlap their host work
    policy.observe(StepOutcome(request_ids=["a", "b", "c"], draft_len=2, drafted=[2, 0, 0], accepted=[1, 0, 0],
                               draft_lens=[2, 0, 0], seconds=0.05 + 0.03))
    assert policy.step_seconds(3, 2) == pytest.approx(near + overhead)  # the uniform fit is unchanged
    assert policy.ragged_premium.seconds(3, policy.overhead) == pytest.approx(0.08 - near - overhead)


def test_leaving_k0_waits_until_the_gain_earns_the_catch_up_back():
    """After plain steps the drafter is 10,000 tokens behind at 1 ms a token (10 s): an allocation that
    saves a little per step over 40 remaining tokens stays at k = 0; with nothing behind it drafts. The "no"
    holds for the same requests while k stays 0 (in an engine their backlog only grows); other requests are
    priced again."""
    backlog = {"behind": 10_000}
    policy = _policy(None)
    policy.catch_up, policy.backlog = CatchUpCost(0.001), lambda: (backlog["behind"], 40)
    policy.estimator.alphas = lambda rid=None: [0.9, 0.9]
    assert policy.draft_lens(2, 2, ["a", "b"]) == [0, 0]
    assert policy.last_decision["reason"] == "catch-up"
    backlog["behind"] = 0
    assert policy.draft_lens(2, 2, ["a", "b"]) == [0, 0]  # remembered
    assert policy.draft_lens(2, 2, ["a", "c"]) == [2, 2]


# --- CUDA: the engine replays ragged graphs, losslessly ----------------------------------------------

@cuda
@pytest.mark.cuda
def test_engine_runs_ragged_steps_in_graphs_losslessly(tmp_path):
    """Copy-heavy and random prompts mixed under `adaptive` with injected per-request acceptance: steps are
    ragged, run in ragged graphs, and the greedy tokens equal plain decoding's (float32)."""
    target = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 512, (4 + i,), generator=gen).tolist() * 5 if i % 2 == 0
               else torch.randint(0, 512, (14 + 3 * i,), generator=gen).tolist() for i in range(6)]

    def run(spec) -> list[list[int]]:
        engine = LLMEngine(EngineConfig(model=target, dtype="float32", device="cuda", max_num_seqs=8,
                                        block_size=16, speculative_config=spec))
        if spec is not None:
            engine.policy.estimator.alphas = lambda rid=None: [0.95] * 4 if str(rid).startswith("copy") else [0.05] * 4
            engine.policy.catch_up = CatchUpCost(0.0)  # no timed price in the decisions
        for i, prompt in enumerate(prompts):
            engine.add_request(f"{'copy' if i % 2 == 0 else 'chat'}{i}", prompt,
                               SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        done: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            done.update((o.request_id, list(o.token_ids)) for o in engine.step() if o.finished)
        if spec is not None:
            assert engine.get_stats()["ragged_steps"] > 0
            assert engine.runner.ragged_graphs.num_replays > 0
        return [done[k] for k in sorted(done)]

    spec = NGramDecodingConfig(max_draft_len=4, max_matching_ngram_size=3, draft_len_policy="adaptive")
    assert run(spec) == run(None)

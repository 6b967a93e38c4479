"""CUDA graph replay equals eager execution token for token, for every captured (bucket, k)."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch, bucket_for, collections_paused
from dynaspec.engine.engine import LLMEngine
from dynaspec.runtime.model_runner import ModelRunner, SequenceInput
from dynaspec.models.loader import load_model
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests.arrivals import run_with_arrivals
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bucket_for_picks_smallest_fitting_bucket():
    assert bucket_for(1, [1, 2, 4]) == 1
    assert bucket_for(3, [1, 2, 4]) == 4
    assert bucket_for(5, [1, 2, 4]) is None


def test_graph_pairs_follow_the_schedule(tmp_path):
    path = str(make_tiny_checkpoint(tmp_path, "llama"))
    spec = NGramDecodingConfig(max_draft_len=4, draft_len_schedule={1: 4, 3: 2, 6: 0})
    engine = LLMEngine(EngineConfig(model=path, max_num_seqs=8, speculative_config=spec))
    # batch 1..2 -> k 4 (buckets 1, 2); 3..5 -> k 2 (buckets 4, 8); 6..8 -> k 0 (bucket 8)
    assert engine.graph_pairs() == [(1, 4), (2, 4), (4, 2), (8, 0), (8, 2)]
    plain = LLMEngine(EngineConfig(model=path, max_num_seqs=4))
    assert plain.graph_pairs() == [(1, 0), (2, 0), (4, 0)]


def _run(engine: LLMEngine, prompts, arrivals) -> dict[str, list[int]]:
    return run_with_arrivals(engine, prompts, arrivals, lambda i, n: (
        f"r{n}", SamplingParams(temperature=0, max_tokens=8 + 3 * (n % 5), ignore_eos=True)))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("drafter", ["none", "ngram", "draft", "goodput"])
def test_graph_replay_equals_eager(tmp_path, drafter):
    target = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    near = str(make_perturbed_checkpoint(tmp_path, "llama", seed=0, noise=0.004))
    spec = {
        "none": None,
        "ngram": NGramDecodingConfig(max_draft_len=4, draft_len_schedule={1: 4, 3: 2, 6: 0}),
        "draft": DraftTargetDecodingConfig(max_draft_len=4, speculative_model=near, draft_len_schedule={1: 4, 3: 2, 6: 0}),
        # the start-up cost probe replays every captured graph with idle inputs
        "goodput": DraftTargetDecodingConfig(max_draft_len=3, speculative_model=near, draft_len_policy="goodput"),
    }[drafter]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (5 + 7 * i,), generator=gen).tolist() for i in range(8)]
    arrivals = {0: [0], 3: [1], 6: [2, 3], 10: [4, 5, 6, 7], 30: [0, 1]}
    common = dict(model=target, dtype="float32", device="cuda", max_num_seqs=8, block_size=16, speculative_config=spec)
    eager = _run(LLMEngine(EngineConfig(enforce_eager=True, **common)), prompts, arrivals)
    engine = LLMEngine(EngineConfig(**common))
    graphed = _run(engine, prompts, arrivals)
    assert graphed == eager
    replayed = engine.runner.graphs.replays_per_pair
    if drafter in ("none", "ngram"):
        assert set(replayed) == set(engine.runner.graphs.graphs), (replayed, engine.graph_pairs())
    elif drafter == "draft":
        # A chained step (engine/chained_step.py) continues its batch through requests that stop inside it, so
        # which buckets the tail meets depends on the chaining (H100, 2026-12-07: the batch of 5 at k = 2 ran
        # twice at bucket 8 and the batch of 3 the eager engine ran never formed): every k ran from a graph.
        assert {k for _, k in replayed} == {k for _, k in engine.runner.graphs.graphs}, (replayed, engine.graph_pairs())
    else:  # the planner prices a step at the batch of the graph it replays (3 requests: the batch-4 graph)
        planner = engine.policy
        assert planner.padded_batch(3, 2) == 4
        assert planner.probed_seconds(3, 2) == planner.cost_model.cost(4, 2)


@pytest.mark.parametrize("k", [0, 2])
def test_fixed_shape_layout_matches_the_flat_forward(tmp_path, k):
    """The graph path's staging + in-graph positions/slots (run eagerly on CPU) give the same logits as
    the flat forward, with a padded request (3 -> bucket 4) and a request with fewer real drafts."""
    loaded = load_model(str(make_tiny_checkpoint(tmp_path, "llama")), dtype=torch.float32, device="cpu")
    runner = ModelRunner(loaded.model, num_blocks=32, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    runner.capture_graphs([(4, k)], max_blocks_per_seq=8, use_graphs=False)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 9, 3)]
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    runner.forward([SequenceInput(p, len(p), t) for p, t in zip(prompts, tables)], [0])  # prefill the KV
    feeds = [[7] + [11, 12, 13][:k], [8] + [21, 22][: max(k - 1, 0)], [9] + [31, 32][:k]]
    seqs = [SequenceInput(f, len(p) + len(f), t) for f, p, t in zip(feeds, prompts, tables)]
    rows = list(range(sum(len(f) for f in feeds)))
    expected = runner.forward(seqs, rows)
    batch = UniformDecodeBatch(
        [f + [f[-1]] * (1 + k - len(f)) for f in feeds],
        [len(p) + 1 + k for p in prompts],
        [len(f) for f in feeds],
        tables,
    )
    uniform_rows = [i * (1 + k) + j for i, f in enumerate(feeds) for j in range(len(f))]
    got = runner.forward_uniform(batch, k, uniform_rows)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert runner.graphs.replays_per_pair == {(4, k): 1}


@cuda
@pytest.mark.cuda
def test_overlapped_decode_equals_synchronous_on_cuda(tmp_path):
    """Overlapped k = 0 steps (device argmax / device sampling, pinned copies, events) give the tokens
    of the synchronous graph engine, greedy and seeded sampling mixed, with requests finishing early."""
    target = str(make_tiny_checkpoint(tmp_path, "llama", seed=0))
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 512, (4 + 5 * i,), generator=gen).tolist() for i in range(6)]

    def run(async_scheduling: bool) -> dict[str, list[int]]:
        engine = LLMEngine(EngineConfig(model=target, dtype="float32", device="cuda", max_num_seqs=8,
                                        async_scheduling=async_scheduling))
        for i, prompt in enumerate(prompts):
            params = SamplingParams(temperature=0.9 if i % 2 else 0.0, top_p=0.95, seed=100 + i,
                                    max_tokens=6 + 5 * i, ignore_eos=True)
            engine.add_request(f"r{i}", prompt, params)
        results = {}
        while engine.has_unfinished_requests():
            results.update((o.request_id, o.token_ids) for o in engine.step() if o.finished)
        return results

    assert run(True) == run(False)


def test_captures_run_with_collections_paused():
    """No cyclic collection (which could free a dropped engine's graphs) runs during a capture."""
    import gc

    assert gc.isenabled()
    with collections_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collections_paused():
            pass
        assert not gc.isenabled()  # restored as it was
    finally:
        gc.enable()

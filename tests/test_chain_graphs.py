"""The draft model's whole-chain graph (runtime/chain_graphs.py) drafts exactly what the step-by-step
path drafts: on CPU through the same fixed-shape chain run eagerly (`use_graphs=False`), on CUDA as one
captured graph per (bucket, k) against the eager engine."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.runtime.chain_graphs import DraftChainGraphs
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.engine.engine import LLMEngine
from dynaspec.runtime.model_runner import ModelRunner
from dynaspec.models.loader import load_model
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig
from tests.arrivals import run_with_arrivals
from tests.draft_spy import spy_drafts
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        # a perturbed copy of the target: drafts accepted often but not always, so catch-ups of 1
        # (a rejection) and 2 (all k accepted: the last draft + the bonus token) both occur
        "near": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 512, (3 + 4 * i,), generator=gen).tolist() for i in range(n)]


# Requests arrive over time and finish at different lengths: decoding batches of 1..5 (buckets 1, 2, 4,
# 8: batches 3 and 5 are padded), new requests (long catch-ups, fed ahead eagerly) among old ones.
ARRIVALS = {0: [0], 2: [1], 4: [2], 6: [3, 4], 8: [5]}


def _engine(ckpts, k: int, chain: bool, device: str = "cpu", **kwargs) -> LLMEngine:
    spec = DraftTargetDecodingConfig(max_draft_len=k, speculative_model=ckpts["near"])
    config = EngineConfig(
        model=ckpts["target"], block_size=4, max_num_seqs=8, dtype="float32", device=device, speculative_config=spec,
        **kwargs,
    )
    engine = LLMEngine(config)
    if chain and device == "cpu":  # the fixed-shape graph paths, run eagerly
        pairs = [(b, kk) for b, kk in engine.graph_pairs() if kk > 0]
        engine.drafter.capture_graphs(pairs, engine.max_blocks_per_seq, use_graphs=False)
    return engine


def _record(engine: LLMEngine) -> dict[str, list]:
    """Spy on the drafter: every proposal, every catch-up length, every chain launch (pair, real batch)."""
    drafter = engine.drafter
    seen: dict[str, list] = {"proposals": [], "confidence": [], "catch_ups": [], "chain": [], "via_chain": []}
    propose, catch_up = drafter.propose, drafter._catch_up_start

    def spy_propose(requests, k):
        launched = len(seen["chain"])
        proposal = propose(requests, k)
        seen["proposals"].append(([r.request_id for r in requests], k, proposal.tokens))
        seen["confidence"].append([p for row in proposal.confidence for p in row])
        seen["via_chain"].append(len(seen["chain"]) > launched)
        return proposal

    def spy_catch_up(request):
        start = catch_up(request)
        seen["catch_ups"].append(request.num_tokens - start)
        return start

    drafter.propose, drafter._catch_up_start = spy_propose, spy_catch_up
    if drafter.chain is not None:
        stage = drafter.chain._stage

        def spy_stage(batch, k, *device_inputs):
            key, real = stage(batch, k, *device_inputs)
            seen["chain"].append((key, real))
            return key, real

        drafter.chain._stage = spy_stage
    return seen


def _run(engine: LLMEngine, params_for=None) -> dict[str, list[int]]:
    def request_for(i: int, _submitted: int) -> tuple[str, SamplingParams]:
        greedy = SamplingParams(temperature=0.0, max_tokens=24 + 4 * i, ignore_eos=True)
        return f"r{i}", params_for(i) if params_for else greedy

    return run_with_arrivals(engine, _prompts(6), ARRIVALS, request_for)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_chain_drafts_equal_step_by_step_drafts(ckpts, k):
    """Same proposals, call by call, and same outputs as the step-by-step path; the chain served every
    batch it has a graph for: the steady state (catch-ups of 1 and 2 tokens, padded buckets) and, after
    one eager forward over all but the last two positions (ChainDrafter._feed_ahead), new requests' long
    catch-ups; the step graphs drafted only batches without a chain graph."""
    plain = _engine(ckpts, k, chain=False)
    plain_seen = _record(plain)
    expected = _run(plain)
    chained = _engine(ckpts, k, chain=True)
    seen = _record(chained)
    feeds: list[list[int]] = []  # per feed ahead: how many positions each request was left behind by
    feed = chained.drafter._feed

    def spy_feed(requests, starts, ends):
        feeds.append([r.num_tokens - e for r, e in zip(requests, ends)])
        return feed(requests, starts, ends)

    chained.drafter._feed = spy_feed
    got = _run(chained)
    assert got == expected
    assert seen["proposals"] == plain_seen["proposals"]
    # the draft model's probability of each draft: the chain's (softmax max in the graph) = the eager path's
    flat = [p for step in seen["confidence"] for p in step]
    assert flat == pytest.approx([p for step in plain_seen["confidence"] for p in step], abs=1e-5)
    assert all(0 < p <= 1 for p in flat)
    assert {1, 2} <= set(seen["catch_ups"])  # both first-step layouts ran
    assert any(c > 2 for c in seen["catch_ups"])  # and new requests' long catch-ups
    assert feeds and all(behind == [2] * len(behind) for behind in feeds)  # fed ahead: the chain takes the last 2
    chain = chained.drafter.chain
    assert {key[1] for key, _ in seen["chain"]} == {k}
    assert any(real < key[0] for key, real in seen["chain"])  # a batch padded up to its bucket
    # Every propose is one chain launch or, for a batch without a chain graph, one step-by-step draft.
    step_graphs = chained.drafter.runner.graphs.replays_per_pair
    assert chain.num_replays == len(seen["chain"]) > len(seen["proposals"]) // 2
    stepwise = len(seen["proposals"]) - chain.num_replays
    assert sum(n for (_, q), n in step_graphs.items() if q == 1) == 0  # two-position step graph unused
    assert sum(n for (_, q), n in step_graphs.items() if q == 0) == stepwise * (k - 1)
    assert chained.drafter.num_forwards == plain.drafter.num_forwards + len(feeds)  # one more forward a feed


@pytest.mark.parametrize("k", [1, 3])
def test_chain_drafts_reach_the_verify_forward_on_the_device(ckpts, k):
    """With the target's fixed-shape verify paths too (run eagerly), a chained greedy batch hands its drafts
    to the verify forward as device ids (engine/drafting.py: StepDrafts.input_ids), reads them on the host
    only after launching it, and the outputs still equal the step-by-step engine's."""
    expected = _run(_engine(ckpts, k, chain=False))
    chained = _engine(ckpts, k, chain=True)
    chained.runner.capture_graphs(chained.graph_pairs(), chained.max_blocks_per_seq, use_graphs=False)
    handed: list[bool] = []
    forward_uniform = chained.runner.forward_uniform

    def spy(batch, k, logit_rows, device_token_ids=None, device_seq_lens=None):
        handed.append(device_token_ids is not None)
        if device_token_ids is not None:  # the host rows hold placeholders; the device ids hold the drafts
            assert device_token_ids.shape == (len(batch.token_ids) * (1 + k),)
            assert all(row[1:] == [row[0]] * k for row in batch.token_ids)
        return forward_uniform(batch, k, logit_rows, device_token_ids, device_seq_lens)

    chained.runner.forward_uniform = spy
    assert _run(chained) == expected
    # every step: drafts are no longer capped at max_tokens, so no step of this greedy workload is ragged
    # (a ragged or sampled batch's drafts go through the host: tests/test_chained_step.py, test_adaptive.py)
    assert handed and all(handed)


def test_sampled_batches_keep_the_step_by_step_path(ckpts):
    """A batch holding a sampled request drafts step by step (it needs q and the request's generator);
    all-greedy batches take the chain; outputs equal the step-by-step engine's, sampled ones included."""
    def params(i: int) -> SamplingParams:
        if i in (1, 3):
            return SamplingParams(temperature=0.8, seed=40 + i, max_tokens=24 + 4 * i, ignore_eos=True)
        return SamplingParams(temperature=0.0, max_tokens=24 + 4 * i, ignore_eos=True)

    plain = _engine(ckpts, 3, chain=False)
    expected = _run(plain, params)
    chained = _engine(ckpts, 3, chain=True)
    seen = _record(chained)
    assert _run(chained, params) == expected
    with_sampled = [bool({"r1", "r3"} & set(ids)) for ids, _, _ in seen["proposals"]]
    assert any(with_sampled) and not any(s and c for s, c in zip(with_sampled, seen["via_chain"]))
    assert any(c for s, c in zip(with_sampled, seen["via_chain"]) if not s)  # greedy-only batches: the chain
    assert sum(n for (_, q), n in chained.drafter.runner.graphs.replays_per_pair.items() if q == 1) > 0


def test_chain_replays_are_counted_per_pair(tmp_path):
    """The chain runs as one launch per propose (count), returns (B, k) ids over the target vocabulary,
    and rejects k = 0 pairs and a bad vocabulary size."""
    loaded = load_model(str(make_tiny_checkpoint(tmp_path, "llama")), dtype=torch.float32, device="cpu")
    runner = ModelRunner(loaded.model, num_blocks=16, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    args = (runner.model, runner.kv_caches, 4, 6, runner.scratch_block)
    with pytest.raises(ValueError, match="k >= 1"):
        DraftChainGraphs(*args, [(2, 0)], runner.device, 512, use_graphs=False)
    with pytest.raises(ValueError, match="vocab_size"):
        DraftChainGraphs(*args, [(2, 1)], runner.device, 0, use_graphs=False)
    chain = DraftChainGraphs(*args, [(2, 3), (4, 3)], runner.device, 100, use_graphs=False)
    chain.capture()
    batch = UniformDecodeBatch([[5, 6], [7, 7]], [6, 5], [2, 1], [[0, 1], [2, 3]])
    ids = chain.draft(batch, 3)
    assert ids.shape == (2, 3) and ids.dtype == torch.int64
    assert int(ids.max()) < 100  # argmax over the target's vocabulary slice only
    assert chain.replays_per_pair == {(2, 3): 1}
    with pytest.raises(ValueError, match="no CUDA graph"):
        chain.draft(batch, 2)


def test_cost_probe_times_one_chain_launch_per_pair(ckpts):
    """T(batch, k) with a chain for the pair adds one chain launch (idle inputs), not k draft steps."""
    engine = _engine(ckpts, 3, chain=True)
    chain = engine.drafter.chain
    timed: list[tuple[int, int]] = []
    idle_replay = chain.idle_replay
    chain.idle_replay = lambda bucket, k: timed.append((bucket, k)) or idle_replay(bucket, k)
    before = engine.drafter.runner.num_forwards
    costs = engine.measure_step_costs([(1, 3), (2, 3), (3, 3)], repeats=1)
    assert timed == [(1, 3), (2, 3)]  # (3, 3) is no chain pair: k single-token steps instead
    assert engine.drafter.runner.num_forwards == before + 2  # that one step's warm-up + timed repeat
    assert costs.batch_sizes == [1, 2, 3]


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("k", [1, 3, 5])
def test_chain_graph_equals_eager_on_cuda(ckpts, k):
    """Engine output and every proposal with the captured chain graphs equal the eager engine's token
    for token; the chain graphs were replayed (one per steady-state propose)."""
    eager = _engine(ckpts, k, chain=False, device="cuda", enforce_eager=True)
    eager_drafts = spy_drafts(eager.drafter)
    expected = _run(eager)
    graphed = _engine(ckpts, k, chain=True, device="cuda")
    seen = _record(graphed)
    drafts = spy_drafts(graphed.drafter)  # chained steps draft through propose_chained, in another order
    assert _run(graphed) == expected
    assert drafts.drafts_equal(eager_drafts) and drafts.calls > 0
    chain = graphed.drafter.chain
    assert chain is not None and chain.use_graphs and set(chain.graphs) == {p for p in graphed.graph_pairs() if p[1] > 0}
    assert chain.num_replays == len(seen["chain"]) > 0
    assert sum(n for (_, q), n in graphed.drafter.runner.graphs.replays_per_pair.items() if q == 1) == 0

"""Mixed steps (k = 0 decodes beside prefill chunks) in the fixed-shape layout of runtime/mixed_graphs.py:
token-identical to the eager engine, on CPU through the same fixed-shape forward run eagerly, on CUDA as
captured graphs (cudagraph_mode FULL); and the configuration errors."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.runtime.mixed_graphs import CHUNK_SLOTS, MixedBatch, MixedGraphDecoder, pad_slots, prefill_buckets
from dynaspec.runtime.model_runner import ModelRunner
from dynaspec.models.loader import load_model
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from tests.arrivals import run_with_arrivals
from tests.tiny_models import make_tiny_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Requests arrive while others decode: prompts of 5..60 tokens, chunked by a 48-token budget, so steps mix
# decodes with whole prompts, with a prompt's middle chunk (no logits) and with several chunks at once.
ARRIVALS = {0: [0], 2: [1, 2], 5: [3], 6: [4, 5, 6], 11: [7], 14: [8, 9]}


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("mixed"), "llama", seed=0))


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 512, (5 + (i * 13) % 56,), generator=gen).tolist() for i in range(10)]


def _engine(target: str, fixed_shape: bool, spec=None, device: str = "cpu", max_num_seqs: int = 8,
            max_num_batched_tokens: int = 48, **options) -> LLMEngine:
    engine = LLMEngine(EngineConfig(model=target, block_size=4, max_num_seqs=max_num_seqs,
                                    max_num_batched_tokens=max_num_batched_tokens, dtype="float32", device=device,
                                    speculative_config=spec, **options))
    if fixed_shape and device == "cpu":  # the graphs' fixed-shape forwards, run eagerly
        engine.runner.capture_graphs(engine.graph_pairs(), engine.max_blocks_per_seq, use_graphs=False)
        engine.runner.capture_mixed_graphs(engine._mixed_keys(), engine.max_blocks_per_seq, use_graphs=False)
    return engine


def _run(engine: LLMEngine) -> dict[str, list[int]]:
    return run_with_arrivals(engine, _prompts(), ARRIVALS, lambda i, n: (
        f"r{i}", SamplingParams(temperature=0.0, max_tokens=6 + 3 * (i % 4), ignore_eos=True)))


def _spy(engine: LLMEngine, cut_short: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(decodes, chunks, prompt rows) of every mixed step that went through the mixed layout; cut_short: the
    tokens (decodes + prompt rows) of each such step whose last chunk does not complete its prompt."""
    seen: list[tuple[int, int, int]] = []
    forward_mixed = engine.runner.forward_mixed

    def spy(batch: MixedBatch, completes: list[bool]):
        seen.append((len(batch.decode_tokens), len(batch.chunk_tokens), sum(len(t) for t in batch.chunk_tokens)))
        if cut_short is not None and completes and not completes[-1]:
            cut_short.append(seen[-1][0] + seen[-1][2])
        return forward_mixed(batch, completes)

    engine.runner.forward_mixed = spy
    return seen


# {1: 3, 8: 0}: k = 3 but with all 8 requests decoding (max_num_seqs), so k = 0 graphs (and mixed ones) exist
SPECS = [None, NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 3: 0}),
         NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 8: 0})]
SPEC_IDS = ["no-spec", "ngram-schedule-to-k0", "ngram-k3-k0-reachable"]


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_mixed_layout_is_token_identical_to_the_eager_engine(target, spec):
    expected = _run(_engine(target, fixed_shape=False, spec=spec))
    engine = _engine(target, fixed_shape=True, spec=spec)
    seen = _spy(engine)
    assert _run(engine) == expected
    assert any(d > 0 and c > 0 for d, c, _ in seen)  # decodes beside chunks
    assert any(c > 1 for _, c, _ in seen)  # several chunks in one step
    assert any(d == 0 for d, _, _ in seen)  # prefill-only steps too


def test_lookup_and_buckets(target):
    assert prefill_buckets(48) == [48] and prefill_buckets(2048) == [64, 128, 256, 512, 1024, 2048]
    assert prefill_buckets(300) == [64, 128, 256, 300]
    loaded = load_model(target, dtype=torch.float32, device="cpu")
    runner = ModelRunner(loaded.model, num_blocks=32, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    mixed = MixedGraphDecoder(runner.model, runner.kv_caches, 4, 32, runner.scratch_block, [(2, 64), (4, 64), (4, 128)],
                              runner.device, use_graphs=False)
    assert mixed.lookup(1, 2, 10) == (2, 64) and mixed.lookup(3, 1, 65) == (4, 128)
    assert mixed.lookup(5, 1, 10) is None and mixed.lookup(1, 1, 129) is None
    assert mixed.lookup(1, CHUNK_SLOTS + 1, 10) is None
    with pytest.raises(ValueError, match="no mixed CUDA graph"):
        mixed.run(MixedBatch([1] * 5, [3] * 5, [[0]] * 5, [[1, 2]], [2], [[1]]))
    # a pad slot holds a block-table row's 8 blocks x 4 slots: 256 prefill rows need 8 of them
    short_rows = MixedGraphDecoder(runner.model, runner.kv_caches, 4, 8, runner.scratch_block, [(2, 32), (2, 256)],
                                   runner.device, use_graphs=False)
    assert short_rows.pad_slots == 8 and mixed.pad_slots == 1
    assert pad_slots(256, 32) == 8 and pad_slots(257, 32) == 9 and pad_slots(10, 32) == 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])])
def test_prompt_rows_past_max_model_len_prefill_through_the_mixed_layout(target, device):
    """A step's prompt rows may exceed max_model_len (many short prompts at once): the mixed graphs reach the
    token budget, their padding split over pad slots that each fit a block-table row, so such steps leave the
    eager path with the eager engine's tokens. (Capped at max_model_len, as before, every prefill step of the
    bench's closed batches ran eager: max_model_len 197 against 2,048-token steps.)"""
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (20,), generator=gen).tolist() for _ in range(12)]

    def run(fixed_shape: bool) -> tuple[dict[str, list[int]], list[tuple[int, int, int]]]:
        graphs = dict(cudagraph_mode="FULL") if fixed_shape else dict(enforce_eager=True)
        engine = _engine(target, fixed_shape, device=device, max_num_seqs=12, max_num_batched_tokens=96,
                         max_model_len=32, **(graphs if device == "cuda" else {}))
        seen = _spy(engine) if fixed_shape else []
        if fixed_shape:
            assert max(p for _, p in engine._mixed_keys()) == 96 and engine.runner.mixed_graphs.pad_slots > 1
        return run_with_arrivals(engine, prompts, {0: list(range(4)), 2: list(range(4, 12))}, lambda i, n: (
            f"m{i}", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))), seen

    (tokens, seen), (expected, _) = run(fixed_shape=True), run(fixed_shape=False)
    assert tokens == expected
    assert max(rows for _, _, rows in seen) > 32  # more prompt rows than max_model_len in one mixed step


def test_full_mode_refuses_what_it_cannot_capture():
    with pytest.raises(ValueError, match="cudagraph_mode='FULL'.*deterministic=True.*FULL_DECODE_ONLY"):
        EngineConfig(cudagraph_mode="FULL", deterministic=True)
    with pytest.raises(ValueError, match="cudagraph_mode='FULL'.*tensor_parallel_size=2"):
        EngineConfig(cudagraph_mode="FULL", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="FULL_DECODE_ONLY"):
        EngineConfig(cudagraph_mode="PIECEWISE")


def test_speculative_decodes_beside_prefills_run_at_k0_in_the_mixed_layout(target):
    """A step that prefills beside decodes the schedule gives k = 3 runs at k = 0 in the mixed layout (with
    drafts it would run eager: engine/graph_keys.plain_beside_prefills); the others speculate as before, and
    the tokens are those of the eager engine, which drafts in those steps. A static k captures no k = 0
    graphs, so no mixed ones: its steps that prefill keep their drafts (eager)."""
    spec = NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3, 8: 0})
    eager = _engine(target, fixed_shape=False, spec=spec)
    expected = _run(eager)
    engine = _engine(target, fixed_shape=True, spec=spec)
    cut_short: list[int] = []
    seen = _spy(engine, cut_short)
    assert _run(engine) == expected == _run(_engine(target, fixed_shape=False))
    assert any(d > 0 and c > 0 for d, c, _ in seen)  # speculative decodes went through the k = 0 mixed layout
    # a prompt cut short means the step's budget ran out: the positions of the drafts it dropped went to prompts
    # (Scheduler.refill; before, such steps held up to 3 positions a decode fewer than the 48-token budget)
    assert cut_short and set(cut_short) == {48}, cut_short
    assert 0 < engine.get_stats()["num_drafted"] < eager.get_stats()["num_drafted"]
    static = _engine(target, fixed_shape=True, spec=NGramDecodingConfig(max_draft_len=3))
    assert not static.runner.mixed_graphs.pairs  # (the test captures them with the keys the engine would use)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_captured_mixed_graphs_equal_the_eager_engine_on_cuda(target, spec):
    expected = _run(_engine(target, fixed_shape=False, spec=spec, device="cuda", enforce_eager=True))
    engine = _engine(target, fixed_shape=True, spec=spec, device="cuda", cudagraph_mode="FULL")
    seen = _spy(engine)
    assert engine.runner.mixed_graphs is not None and engine.runner.mixed_graphs.graphs
    assert _run(engine) == expected
    assert any(d > 0 and c > 0 for d, c, _ in seen)


@pytest.mark.parametrize("command", [["generate", "hi"], ["bench"], ["bench-trace", "--drafter", "ngram"]])
def test_cli_names_the_allowed_cudagraph_modes(command):
    from typer.testing import CliRunner

    from dynaspec.cli import app

    result = CliRunner().invoke(app, [*command, "--cudagraph-mode", "PIECEWISE", "--device", "cpu"])
    assert result.exit_code != 0
    assert "FULL_DECODE_ONLY" in " ".join(result.output.split()) and "PIECEWISE" in result.output


def test_default_mode_is_full_where_mixed_graphs_apply():
    assert EngineConfig().cudagraph_mode == "FULL"
    assert EngineConfig(deterministic=True).cudagraph_mode == "FULL_DECODE_ONLY"
    assert EngineConfig(tensor_parallel_size=2).cudagraph_mode == "FULL_DECODE_ONLY"
    assert EngineConfig(cudagraph_mode="FULL_DECODE_ONLY").cudagraph_mode == "FULL_DECODE_ONLY"


def test_a_burst_of_short_prompts_prefills_through_the_mixed_layout(target):
    """A closed batch's prefill phase: 48 prompts of 3 tokens under a 96-token budget make a step of 11 chunks
    beside 32 decodes (each budgeted 1 + k = 2 tokens). With 8 chunk slots such steps ran eager and a policy's
    decodes speculated beside them (the bench's batches of 128-token prompts fill a 2,048-token step with 16);
    they now go through the mixed layout at k = 0, with the eager engine's tokens."""
    spec = NGramDecodingConfig(max_draft_len=1, draft_len_schedule={1: 1, 48: 0})
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 512, (3,), generator=gen).tolist() for _ in range(48)]

    def run(fixed_shape: bool, spy: bool = False) -> tuple[dict[str, list[int]], list[tuple[int, int]]]:
        engine = _engine(target, fixed_shape, spec=spec, max_num_seqs=48, max_num_batched_tokens=96)
        seen = _spy(engine) if spy else []
        return run_with_arrivals(engine, prompts, {0: list(range(48))}, lambda i, n: (
            f"b{i}", SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))), seen

    (expected, _), (tokens, seen) = run(fixed_shape=False), run(fixed_shape=True, spy=True)
    assert tokens == expected
    assert any(d > 0 and c > 8 for d, c, _ in seen)  # more than 8 chunks beside decodes, at k = 0

"""Deferred verification (engine/launched_step.py): a speculative step replayed from a graph is verified by the
next step() call, after which the following step is launched before the outputs are built. Token-identical to
the synchronous engine, on CPU through the graphs' fixed-shape forwards run eagerly (as tests/test_overlap.py)."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import NGramDecodingConfig
from tests.arrivals import run_with_abort
from tests.tiny_models import make_tiny_checkpoint

# Replayed acceptance (benchmark only, deterministic in the seed) so that steps commit several tokens.
NGRAM = NGramDecodingConfig(max_draft_len=3, draft_len_schedule={1: 3},
                            replay_acceptance_profile="acceptance_ngram_code-edit")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("deferred"), "llama"))


def _engine(path: str, deferred: bool, spec=NGRAM) -> LLMEngine:
    config = EngineConfig(model=path, max_num_seqs=8, block_size=4, async_scheduling=deferred, speculative_config=spec)
    engine = LLMEngine(config)
    engine.runner.capture_graphs(engine.graph_pairs(), engine.max_blocks_per_seq, use_graphs=False)
    if engine.policy.ragged:
        engine.runner.capture_ragged_graphs(engine._ragged_keys(), 1 + engine.max_draft_len, engine.max_blocks_per_seq,
                                            use_graphs=False)
    return engine


def _count_deferred(engine: LLMEngine) -> list[int]:
    """Appends 1 per step whose verification was deferred to the next step() call."""
    deferred: list[int] = []
    schedule_and_run = engine._schedule_and_run

    def spy(earlier=None):
        outputs = schedule_and_run(earlier)
        if engine._launched is not None:
            deferred.append(1)
        return outputs

    engine._schedule_and_run = spy
    return deferred


_run = run_with_abort


def _copying_prompts() -> list[list[int]]:
    """Prompts that repeat a span, so n-gram drafts exist and are sometimes accepted."""
    gen = torch.Generator().manual_seed(5)
    prompts = []
    for i in range(6):
        span = torch.randint(0, 512, (4 + i,), generator=gen).tolist()
        prompts.append(span * 3 + span[:2])
    return prompts


def test_deferred_steps_are_token_identical_with_arrivals_stops_and_an_abort(tiny):
    prompts = _copying_prompts()
    greedy = [SamplingParams(temperature=0, max_tokens=8 + 3 * i, ignore_eos=True) for i in range(6)]
    arrivals = [0, 0, 1, 4, 4, 9]
    first = _run(_engine(tiny, deferred=False), prompts, greedy, arrivals)
    params = [SamplingParams(temperature=0, max_tokens=p.max_tokens, stop_token_ids=[first[f"r{i}"][5]])
              for i, p in enumerate(greedy)]  # a stop inside a multi-token commit, the next step already launched
    params[1] = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)  # still running when aborted
    expected = _run(_engine(tiny, deferred=False), prompts, params, arrivals, abort_at=4)
    engine = _engine(tiny, deferred=True)
    deferred = _count_deferred(engine)
    got = _run(engine, prompts, params, arrivals, abort_at=4)
    assert got == expected and "r1" not in got
    assert sum(deferred) > 5 and engine.get_stats()["num_accepted"] > 0
    assert engine.num_free_blocks == engine.num_total_blocks and not engine.has_unfinished_requests()
    assert engine._launched is None


def test_deferred_rejection_sampling_reproduces_the_synchronous_draws(tiny):
    """Seeded sampling requests: verification of step t still precedes drafting for step t + 1, so the same
    draws are made in the same order."""
    prompts = _copying_prompts()
    params = [SamplingParams(temperature=0.9, seed=3 + i, max_tokens=10, ignore_eos=True) if i % 2
              else SamplingParams(temperature=0, max_tokens=10, ignore_eos=True) for i in range(6)]
    arrivals = [0, 0, 0, 2, 2, 5]
    expected = _run(_engine(tiny, deferred=False), prompts, params, arrivals)
    engine = _engine(tiny, deferred=True)
    deferred = _count_deferred(engine)
    assert _run(engine, prompts, params, arrivals) == expected
    assert sum(deferred) > 5


def test_ragged_steps_defer_too(tiny):
    spec = NGramDecodingConfig(max_draft_len=3, draft_len_policy="adaptive")
    prompts = _copying_prompts()
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True) for _ in range(6)]
    expected = _run(_engine(tiny, deferred=False, spec=spec), prompts, params, [0] * 6)
    engine = _engine(tiny, deferred=True, spec=spec)
    deferred = _count_deferred(engine)
    assert _run(engine, prompts, params, [0] * 6) == expected
    assert sum(deferred) > 0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("spec", [NGRAM, NGramDecodingConfig(max_draft_len=3, draft_len_policy="adaptive")],
                         ids=["ngram-replay", "adaptive"])
def test_deferred_graph_steps_are_token_identical_on_cuda(tiny, spec):
    """Captured graphs on the GPU (float32): the launched step's logits live in the graphs' shared output
    buffer until the next launch, which deferred verification must not precede."""
    def engine(deferred: bool) -> LLMEngine:
        return LLMEngine(EngineConfig(model=tiny, max_num_seqs=8, block_size=4, async_scheduling=deferred,
                                      speculative_config=spec, device="cuda", dtype="float32"))

    prompts = _copying_prompts()
    params = [SamplingParams(temperature=0.9, seed=3 + i, max_tokens=12, ignore_eos=True) if i % 2
              else SamplingParams(temperature=0, max_tokens=12, ignore_eos=True) for i in range(6)]
    arrivals = [0, 0, 1, 3, 3, 6]
    expected = _run(engine(False), prompts, params, arrivals)
    deferred_engine = engine(True)
    deferred = _count_deferred(deferred_engine)
    assert _run(deferred_engine, prompts, params, arrivals) == expected
    assert sum(deferred) > 0


def test_a_request_failing_when_its_outputs_are_built_leaves_the_launched_step_cleanly(tiny):
    """Its next step was already launched when its text failed to build: that step skips it; the other
    requests' tokens and the error are the synchronous engine's."""
    def failing(engine: LLMEngine) -> LLMEngine:
        update = engine.output_processor.update_texts

        def update_texts(requests):
            if any(r.request_id == "r2" and r.num_output_tokens >= 4 for r in requests):
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
            update(requests)

        engine.output_processor.update_texts = update_texts
        return engine

    prompts = _copying_prompts()
    params = [SamplingParams(temperature=0, max_tokens=14, ignore_eos=True) for _ in range(6)]
    errors: dict[str, str | None] = {}

    def run(engine):
        results, step = {}, 0
        while step == 0 or engine.has_unfinished_requests():
            if step == 0:
                for i in range(6):
                    engine.add_request(f"r{i}", prompts[i], params[i])
            for out in engine.step():
                if out.finished:
                    results[out.request_id] = (out.token_ids, out.finish_reason)
                    errors[out.request_id] = out.error
            step += 1
        return results

    expected = run(failing(_engine(tiny, deferred=False)))
    engine = failing(_engine(tiny, deferred=True))
    deferred = _count_deferred(engine)
    got = run(engine)
    assert got == expected and got["r2"][1] == "error" and "detokenizing" in errors["r2"]
    assert sum(deferred) > 3
    assert engine.num_free_blocks == engine.num_total_blocks

"""The EAGLE-3 head's parts, on tiny random models: the target's feature tap equals HF's hidden states, the
trainer's training-time-test unroll computes what the drafter's paged catch-up and draft steps compute,
the saved head round-trips, and a head made for another target is refused with a clear message."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dynaspec import EagleDecodingConfig
from dynaspec.config import EngineConfig
from dynaspec.models.eagle_head import (
    EagleHeadConfig,
    draft_logits,
    head_logits,
    load_head,
    random_head,
    read_head_config,
    save_head,
)
from dynaspec.models.feature_tap import FeatureTap, default_layers_to_capture
from dynaspec.models.loader import load_model
from dynaspec.runtime.eagle_graphs import EagleHeadRunner
from dynaspec.sampling_params import SamplingParams
from dynaspec.train_head.record import record_answers
from dynaspec.train_head.record import Example
from dynaspec.train_head.ttt import answer_window, make_batch, ttt_loss, unroll, window_mask
from tests.tiny_models import make_tiny_checkpoint, make_tiny_hf_model


@pytest.fixture(scope="module")
def target_dir(eagle_target_dir):
    return eagle_target_dir


@pytest.fixture(scope="module")
def loaded(eagle_target):
    return eagle_target


@pytest.fixture(scope="module")
def example(loaded, target_dir):
    """One self-distilled example recorded through the engine (prefill + 12 decode steps)."""
    config = EngineConfig(model=str(target_dir), block_size=4, num_kv_blocks=32, max_model_len=64, device="cpu",
                          dtype="float32")
    prompt = torch.randint(3, 512, (9,), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    (recorded,) = record_answers(loaded, config, (0, 1, 2), [prompt], params, record_final=True)
    return recorded


def test_default_layers_are_eagle3s():
    assert default_layers_to_capture(28) == (1, 13, 24)  # vLLM's (2, 14, 25) as layer inputs
    assert default_layers_to_capture(30) == (1, 14, 26)
    assert default_layers_to_capture(2) == (0, 1)


def test_recorded_features_equal_hf_hidden_states(example, target_dir):
    """What the tap wrote during prefill and decode steps is HF's hidden_states[i + 1] of each position (HF
    norms its last entry: the last layer is left out)."""
    hf = make_tiny_hf_model("llama", seed=0, num_hidden_layers=4)
    ids = torch.tensor([example.token_ids[:-1]])
    with torch.no_grad():
        states = hf(ids, output_hidden_states=True).hidden_states
    expected = torch.cat([states[i + 1][0] for i in (0, 1, 2)], dim=-1)  # (L - 1, 3H)
    assert example.features.shape == expected.shape
    torch.testing.assert_close(example.features, expected, rtol=1e-4, atol=1e-4)
    assert len(example.token_ids) == example.prompt_len + 12


def test_window_mask_is_what_draft_step_j_sees():
    positions = torch.arange(2, 7).unsqueeze(0)  # one example's window: positions 2..6 (rows 0..4)
    mask = window_mask(positions, 7, 2)  # (1, 5, 7 + 2 * 5): depth-0 keys, depth-1 rows, depth-2 rows
    row, p = 4, 6
    assert mask[0, row, :7].tolist() == [q <= p - 2 for q in range(7)]  # catch-up keys <= p - 2
    assert mask[0, row, 7:12].tolist() == [False, False, False, True, False]  # draft step 1 at p - 1 (row 3)
    assert mask[0, row, 12:].tolist() == [False, False, False, False, True]  # itself
    assert mask.any(dim=2).all()  # no query without a key


def _paged_steps(loaded, head, example, block_size=4, dtype=torch.float32, device=torch.device("cpu")):
    """h of the drafter's own paged forwards: catch up on 0..s, then draft steps fed the target's tokens."""
    hidden = loaded.hf_config.hidden_size
    tokens, blocks = example.token_ids, -(-len(example.token_ids) // block_size) + 1
    tap = FeatureTap((0, 1, 2), hidden, (blocks + 1) * block_size, dtype, device)
    table = list(range(blocks))
    slots = torch.arange(len(tokens) - 1, device=device)
    for i, cache in enumerate(tap.caches):
        cache[slots] = example.features[:, i * hidden : (i + 1) * hidden].to(device, dtype)
    runner = EagleHeadRunner(head, loaded.model, tap, blocks, block_size, dtype, device)

    def steps(s: int, depths: int) -> list[torch.Tensor]:
        h = runner.catch_up([tokens[: s + 1]], [0], [table])  # (1, H)
        out = [h[0]]
        for j in range(1, depths):
            h = runner.draft_step(torch.tensor([tokens[s + j]], device=device), h, [s + j], [table])
            out.append(h[0])
        return out

    return runner, table, steps


def test_unroll_equals_the_drafters_paged_steps(loaded, example):
    """Depth j of the training unroll at position s + j == the drafter after catching up on 0..s and j draft
    steps fed the target's tokens (the drafts it scores are the ones that were right)."""
    hf_config = loaded.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1, 2]), hf_config, seed=3, std=0.2)
    head.eval()
    batch = make_batch([example], torch.device("cpu"), torch.float32)
    with torch.no_grad():
        unrolled = unroll(head, loaded.model, batch, 3)  # 3 x (1, W, H) on the answer window
    runner, table, steps = _paged_steps(loaded, head, example)
    tokens = example.token_ids
    for s in (example.prompt_len - 1, example.prompt_len + 3):
        for j, h in enumerate(steps(s, 3)):
            torch.testing.assert_close(h, unrolled.at(j, 0, s + j), rtol=1e-4, atol=1e-4)
    # a catch-up in two pieces (what lazy catch-up after a k = 0 phase does) equals one piece
    runner.catch_up([tokens[:5]], [0], [table])
    h = runner.catch_up([tokens[5:12]], [5], [table])
    torch.testing.assert_close(h[0], unrolled.at(0, 0, 11), rtol=1e-4, atol=1e-4)


def test_every_scored_row_of_a_padded_batch_is_the_drafters(loaded, example):
    """Two examples of other prompt lengths in one padded batch (their answer windows start at other
    positions): every row the loss scores, at every depth, is what the drafter computes there; and the loss is
    the mean cross-entropy of exactly those rows."""
    hf_config = loaded.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1, 2]), hf_config, seed=4, std=0.2)
    head.eval()
    # the same tokens read with a longer prompt: a later answer window, and padding in the batch
    shifted = Example(example.token_ids[:-2], example.prompt_len + 4, example.features[:-2])
    batch = make_batch([example, shifted], torch.device("cpu"), torch.float32)
    depths = 4
    positions, valid = answer_window(batch, depths)
    assert positions[0, 0] == example.prompt_len - depths and positions[1, 0] == shifted.prompt_len - depths
    assert not valid[1].all() and valid[0].all()  # the shorter example is padded
    with torch.no_grad():
        unrolled = unroll(head, loaded.model, batch, depths)
        loss, accuracy = ttt_loss(head, loaded.model, batch, depths)
    expected_loss = 0.0
    for b, ex in enumerate([example, shifted]):
        _, _, steps = _paged_steps(loaded, head, ex)
        for s in range(ex.prompt_len - 1, len(ex.token_ids) - 1):  # every start whose first draft is scored
            for j, h in enumerate(steps(s, min(depths, len(ex.token_ids) - 1 - s))):
                torch.testing.assert_close(h, unrolled.at(j, b, s + j), rtol=1e-4, atol=1e-4)
    labels = unrolled.labels(batch)
    for depth in range(depths):
        mask = unrolled.scored(batch, depth)
        assert int(accuracy[depth][1]) == int(mask.sum()) == int(batch.answer[:, depth:].sum())
        with torch.no_grad():
            logits = loaded.model.compute_logits(head.norm(unrolled.outputs[depth][mask]))
        expected_loss += 0.8**depth * float(torch.nn.functional.cross_entropy(logits, labels[mask]))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)


def test_head_round_trips_and_a_mismatch_is_refused(loaded, tmp_path, target_dir):
    hf_config = loaded.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, str(target_dir)), hf_config, seed=5)
    out = save_head(head, tmp_path / "head")
    back = load_head(out, hf_config, str(target_dir), torch.float32, torch.device("cpu"))
    for (name, a), (_, b) in zip(head.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert read_head_config(out).layers_to_capture == list(default_layers_to_capture(4))
    assert not any(n.startswith(("embed", "lm_head")) for n in back.state_dict())  # the target's, not saved

    other = load_model(str(make_tiny_checkpoint(tmp_path, "llama", seed=1, hidden_size=32, head_dim=8)),
                       dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"trained for .*hidden_size 64 \(head\) != 32 \(target\).*train-head"):
        load_head(out, other.hf_config, "other", torch.float32, torch.device("cpu"))
    from dynaspec import LLM

    with pytest.raises(ValueError, match="hidden_size 64"):
        LLM(model=other.path.as_posix(), speculative_config=EagleDecodingConfig(max_draft_len=2, speculative_model=str(out)))


def test_config_validation_errors(tmp_path, loaded):
    with pytest.raises(ValueError, match="needs config.json and model.safetensors"):
        EagleDecodingConfig(max_draft_len=2, speculative_model=str(tmp_path))
    head_dir = save_head(random_head(EagleHeadConfig.for_target(loaded.hf_config, "t"), loaded.hf_config), tmp_path / "h")
    config = json.loads((head_dir / "config.json").read_text())
    (head_dir / "config.json").write_text(json.dumps({**config, "architecture": "Medusa"}))
    with pytest.raises(ValueError, match="architecture must be 'Eagle3Head'"):
        EagleDecodingConfig(max_draft_len=2, speculative_model=str(head_dir))
    (head_dir / "config.json").write_text(json.dumps({**config, "hidden_size": -1}))
    with pytest.raises(ValueError, match="hidden_size"):
        EagleDecodingConfig(max_draft_len=2, speculative_model=str(head_dir))
    (head_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="distinct layer indices"):
        EagleDecodingConfig(max_draft_len=2, speculative_model=str(head_dir), eagle3_layers_to_capture=[1, 1])
    with pytest.raises(ValueError, match="max_draft_len"):
        EagleDecodingConfig(max_draft_len=0, speculative_model=str(head_dir))
    from dynaspec.config_loader import build_spec_config

    built = build_spec_config({"decoding_type": "Eagle", "max_draft_len": 3, "speculative_model_dir": str(head_dir)})
    assert isinstance(built, EagleDecodingConfig) and built.speculative_model == str(head_dir)


def test_time_limit_cuts_the_steps_by_the_injected_clock(loaded, example):
    """time_limit_s: steps 5..25 are timed (here 1 s each by the injected clock), and the step count is cut
    to what fits the limit (25 done + 15 s left = 40 steps); the learning rate has decayed to 0 at the last."""
    from dynaspec.train_head.trainer import TrainOptions, _optimize, _StepPlan

    head = random_head(EagleHeadConfig.for_target(loaded.hf_config, loaded.name, [0, 1, 2]), loaded.hf_config, 0)
    options = TrainOptions(model="tiny", sources=["chat"], num_prompts=2, out=None, steps=100, lr=1e-3,
                           ttt_steps=2, batch_size=1, time_limit_s=40.0)
    ticks = iter([5.0, 25.0])  # the end of step 5, the end of step 25 (began at 0)
    logged: list[str] = []
    seen: list[tuple[int, int]] = []
    _, steps_run = _optimize(head.train(), loaded.model, [example], options, torch.device("cpu"),
                             lambda phase, done, total: seen.append((done, total)), logged.append, lambda: next(ticks), 0.0)
    assert steps_run == 40 and seen[-1] == (40, 40) and seen[0] == (1, 100)
    assert logged and "100 steps would not end within the time limit (40 s): training 40 steps" in logged[0]
    plan = _StepPlan(40, 0.05)
    assert plan.factor(0) == 0.5 and plan.factor(39) == pytest.approx(0.5 * (1 + math.cos(37 / 38 * math.pi)))
    assert not _StepPlan(10, 0.05).fit(seconds_per_step=1.0, seconds_left=100.0, done=5)  # fits: not cut


def test_a_bfloat16_target_trains_the_head_as_a_float32_one(loaded, example, target_dir):
    """Mixed precision (a 16-bit target: autocast, float32 master weights) learns as float32 does: 30 steps on one
    example take the loss from ~13.5 to ~1.25 in both. (Autocast caches its bf16 copies of the weights until its
    context exits: with one context around the whole loop the forward kept the initial weights and the loss
    stayed at ~13.4, the bug this pins.)"""
    from dynaspec.train_head.trainer import TrainOptions, _optimize

    bf16 = load_model(str(target_dir), dtype=torch.bfloat16, device="cpu")
    options = TrainOptions(model="tiny", sources=["chat"], num_prompts=2, out=None, steps=30, lr=1e-3, ttt_steps=2,
                           batch_size=1, warmup_fraction=0.0, labels="tokens")
    final = {}
    for name, target in (("float32", loaded.model), ("bfloat16", bf16.model)):
        head = random_head(EagleHeadConfig.for_target(loaded.hf_config, loaded.name, [0, 1, 2]), loaded.hf_config, 0)
        final[name], _ = _optimize(head.float().train(), target, [example], options, torch.device("cpu"),
                                   lambda *_: None, lambda _: None, lambda: 0.0, 0.0)
    assert final["float32"] < 3.0
    assert final["bfloat16"] == pytest.approx(final["float32"], abs=0.5)


def test_answering_stops_when_asked_and_keeps_what_finished(loaded, target_dir):
    """record_answers(should_stop=...): asked after every step; when True the unfinished requests are aborted
    and the answers finished so far come back (train-head stops answering at half its time limit)."""
    config = EngineConfig(model=str(target_dir), block_size=4, num_kv_blocks=48, max_model_len=64, device="cpu",
                          dtype="float32")
    prompts = [torch.randint(3, 512, (6,), generator=torch.Generator().manual_seed(s)).tolist() for s in (1, 2)]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (3, 40)]
    steps = iter(range(1000))
    recorded = record_answers(loaded, config, (0, 1), prompts, params, should_stop=lambda: next(steps) >= 6)
    assert len(recorded) == 1 and recorded[0].token_ids[:6] == prompts[0]  # the short answer; the long one aborted
    assert len(recorded[0].token_ids) == 6 + 3


def test_a_draft_vocabulary_head_round_trips_and_maps_its_ids(loaded, tmp_path, target_dir, example):
    """EAGLE-3's draft vocabulary: an lm_head of its own over the kept tokens; head_logits puts its logits at
    those tokens (-inf elsewhere); the map is saved, checked at load, and the loss leaves out the tokens the
    head cannot predict."""
    hf_config = loaded.hf_config
    config = EagleHeadConfig.for_target(hf_config, str(target_dir), [0, 1, 2], draft_vocab_size=40)
    assert EagleHeadConfig.for_target(hf_config, "t", draft_vocab_size=10**6).draft_vocab_size is None  # >= vocab
    head = random_head(config, hf_config, seed=2, std=0.2).eval()
    kept = torch.randperm(hf_config.vocab_size, generator=torch.Generator().manual_seed(0))[:40].sort().values
    head.draft_to_target.copy_(kept)
    back = load_head(save_head(head, tmp_path / "small"), hf_config, str(target_dir), torch.float32,
                     torch.device("cpu"))
    assert torch.equal(back.draft_to_target, kept) and torch.equal(back.lm_head.weight, head.lm_head.weight)

    hidden = torch.randn(3, hf_config.hidden_size)
    with torch.no_grad():
        small, full = draft_logits(head, loaded.model, hidden), head_logits(head, loaded.model, hidden)
    assert small.shape == (3, 40) and full.shape == (3, hf_config.vocab_size)
    assert torch.equal(full[:, kept], small) and int(torch.isfinite(full).sum()) == 3 * 40
    assert torch.equal(head.to_target(small.argmax(-1)), full.argmax(-1))
    assert head.to_draft(kept[5:7]).tolist() == [5, 6]
    missing = next(t for t in range(hf_config.vocab_size) if t not in set(kept.tolist()))
    assert head.to_draft(torch.tensor([missing])).tolist() == [-100]

    batch = make_batch([example], torch.device("cpu"), torch.float32)
    with torch.no_grad():
        loss, accuracy = ttt_loss(head, loaded.model, batch, 2)
        unrolled = unroll(head, loaded.model, batch, 2)
        expected = 0.0
        for depth in range(2):
            mask = unrolled.scored(batch, depth)
            wanted = head.to_draft(unrolled.labels(batch)[mask])
            logits = draft_logits(head, loaded.model, unrolled.outputs[depth][mask])
            expected += 0.8**depth * float(torch.nn.functional.cross_entropy(logits[wanted >= 0], wanted[wanted >= 0]))
    assert float(loss) == pytest.approx(expected, rel=1e-5)

    with torch.no_grad():
        head.draft_to_target.copy_(kept.flip(0))  # not increasing
    with pytest.raises(ValueError, match="draft_to_target must be increasing"):
        load_head(save_head(head, tmp_path / "bad"), hf_config, str(target_dir), torch.float32, torch.device("cpu"))


def test_the_fused_inference_path_computes_what_the_separate_projections_do(loaded, example):
    """EagleDecoderLayer.set_decode_kernels with a GEMV path: q/k/v and gate/up as one projection each over
    fused copies of the weights (on the CPU through F.linear): the drafter's hidden states equal the
    separate projections' to float32 rounding, catch-up and draft steps alike; the parameters are untouched."""
    from dynaspec.models.decode_kernels import GEMV_PROJECTIONS, DecodeKernels

    hf_config = loaded.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1, 2]), hf_config, seed=3, std=0.2).eval()
    before = {name: p.clone() for name, p in head.named_parameters()}
    _, _, separate = _paged_steps(loaded, head, example)
    expected = [h.clone() for h in separate(example.prompt_len + 2, 3)]
    head.midlayer.set_decode_kernels(DecodeKernels(dependent_launch=True, gemv=frozenset(GEMV_PROJECTIONS)))
    assert head.midlayer._fused_qkv is not None
    _, _, fused = _paged_steps(loaded, head, example)
    for got, want in zip(fused(example.prompt_len + 2, 3), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, before[name]) for name, p in head.named_parameters())
    head.midlayer.set_decode_kernels(DecodeKernels())  # off again: the separate projections
    assert head.midlayer._fused_qkv is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_fused_inference_path_on_the_gpu_matches_the_separate_projections(target_dir, example):
    """bf16 on the GPU with the card's decode kernels (on Hopper: PDL and the small-step GEMV, the head's
    q/k/v and gate/up fused): catch-up and draft steps' hidden states equal the separate projections' to
    bf16 rounding."""
    from dynaspec.models.decode_kernels import decode_kernels_for

    device = torch.device("cuda")
    target = load_model(str(target_dir), dtype=torch.bfloat16, device="cuda")
    hf_config = target.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1, 2]), hf_config, seed=3, std=0.2)
    head = head.to(device=device, dtype=torch.bfloat16).eval()
    _, _, separate = _paged_steps(target, head, example, dtype=torch.bfloat16, device=device)
    expected = [h.float() for h in separate(example.prompt_len + 2, 3)]
    kernels = decode_kernels_for(device, True)
    head.midlayer.set_decode_kernels(kernels)
    head.norm.decode_kernels = kernels
    assert (head.midlayer._fused_qkv is not None) == bool(kernels.gemv)
    _, _, fused = _paged_steps(target, head, example, dtype=torch.bfloat16, device=device)
    for got, want in zip(fused(example.prompt_len + 2, 3), expected):
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-2)

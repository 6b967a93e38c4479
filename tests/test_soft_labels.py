"""Soft labels for the EAGLE-3 head (train_head/soft_labels.py): the final stream recorded in the engine's pass
gives the target's own next-token distribution (HF transformers' logits of the same tokens), the TTT loss is the
cross-entropy against it at every scored row and depth, training drives it towards the target's entropy (the
KL towards 0), and the labels option is validated where it enters."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.models.eagle_head import EagleHeadConfig, draft_logits, random_head
from dynaspec.models.loader import load_model
from dynaspec.sampling_params import SamplingParams
from dynaspec.train_head.record import Example, record_answers
from dynaspec.train_head.soft_labels import target_log_probs
from dynaspec.train_head.ttt import make_batch, ttt_loss, unroll
from tests.tiny_models import make_tiny_hf_model


@pytest.fixture(scope="module")
def examples(eagle_target, eagle_target_dir):
    """Two answers recorded through the engine with the final stream: one greedy, one sampled."""
    config = EngineConfig(model=str(eagle_target_dir), block_size=4, num_kv_blocks=64, max_model_len=64, device="cpu",
                          dtype="float32")
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in (9, 6)]
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True, seed=5)]
    return record_answers(eagle_target, config, (0, 1), prompts, params, record_final=True)


def hf_log_probs(example: Example) -> torch.Tensor:
    """(L - 1, vocab) HF transformers' next-token log-probabilities at positions 0 .. L - 2 of the example."""
    hf = make_tiny_hf_model("llama", seed=0, num_hidden_layers=4)
    with torch.no_grad():
        logits = hf(torch.tensor([example.token_ids[:-1]])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def test_the_recorded_final_stream_is_the_targets_next_token_distribution(eagle_target, examples):
    """target_log_probs(final) equals HF's log-softmax at every position, the prompt's and the answer's (prefill
    and decode steps wrote them); with a draft vocabulary, its columns of it (not renormalised)."""
    hf_config = eagle_target.hf_config
    for example in examples:
        assert example.final.shape == (len(example.token_ids) - 1, hf_config.hidden_size)
        assert example.features.shape[1] == 2 * hf_config.hidden_size  # the head's layers only
        expected = hf_log_probs(example)
        full_head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1]), hf_config)
        got = target_log_probs(full_head, eagle_target.model, example.final)
        torch.testing.assert_close(got[:, : expected.shape[1]], expected, rtol=1e-4, atol=1e-4)
        small = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1], draft_vocab_size=100), hf_config)
        small.draft_to_target.copy_(torch.arange(0, 300, 3))
        torch.testing.assert_close(target_log_probs(small, eagle_target.model, example.final), expected[:, 0:300:3],
                                   rtol=1e-4, atol=1e-4)


def test_the_soft_loss_is_the_cross_entropy_against_the_targets_distribution(eagle_target, examples):
    """ttt_loss with soft labels: sum_j 0.8^j x the mean over depth j's scored rows of -sum_v p_target(v) log q(v),
    p_target from HF's logits at the row's position, q the head's softmax there."""
    hf_config = eagle_target.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1]), hf_config, seed=3, std=0.2).eval()
    batch = make_batch(list(examples), torch.device("cpu"), torch.float32, soft_labels=True)
    depths = 3
    with torch.no_grad():
        loss, _ = ttt_loss(head, eagle_target.model, batch, depths)
        unrolled = unroll(head, eagle_target.model, batch, depths)
    per_example = [hf_log_probs(e) for e in examples]
    expected = 0.0
    for depth in range(depths):
        mask = unrolled.scored(batch, depth)
        rows = [(b, int(p)) for b, p in zip(*torch.nonzero(mask, as_tuple=True))]
        with torch.no_grad():
            q = torch.log_softmax(draft_logits(head, eagle_target.model, unrolled.outputs[depth][mask]), dim=-1)
        p = torch.stack([per_example[b][int(unrolled.positions[b, a])] for b, a in rows])  # (N, vocab)
        expected += 0.8**depth * float(-(p.exp() * q[:, : p.shape[1]]).sum(-1).mean())
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_training_on_soft_labels_closes_the_gap_to_the_targets_entropy(eagle_target, examples, eagle_target_dir):
    """30 steps on one answer: the soft loss falls towards the target's entropy at the scored rows (the KL of
    target to head falls), in float32 and with a bfloat16 target (autocast) alike."""
    from dynaspec.train_head.trainer import TrainOptions, _optimize

    example = examples[0]
    batch = make_batch([example], torch.device("cpu"), torch.float32, soft_labels=True)
    answer = hf_log_probs(example)[example.prompt_len - 1 :]  # rows scored at depth 0
    entropy = float(-(answer.exp() * answer).sum(-1).mean())
    options = TrainOptions(model="tiny", sources=["chat"], num_prompts=2, out=None, steps=30, lr=1e-3, ttt_steps=1,
                           batch_size=1, warmup_fraction=0.0, labels="target")
    bf16 = load_model(str(eagle_target_dir), dtype=torch.bfloat16, device="cpu")
    gaps = {}
    for name, target in (("float32", eagle_target.model), ("bfloat16", bf16.model)):
        head = random_head(EagleHeadConfig.for_target(eagle_target.hf_config, "t", [0, 1]), eagle_target.hf_config, 0).float()
        with torch.no_grad():
            before = float(ttt_loss(head, eagle_target.model, batch, 1)[0])
        _optimize(head.train(), target, [example], options, torch.device("cpu"), lambda *_: None, lambda _: None,
                  lambda: 0.0, 0.0)
        with torch.no_grad():
            after = float(ttt_loss(head.eval(), eagle_target.model, batch, 1)[0])
        gaps[name] = (before - entropy, after - entropy)
    for before, after in gaps.values():
        assert 0 <= after < 0.25 * before, gaps

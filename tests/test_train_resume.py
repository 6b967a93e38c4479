"""Training a head over several runs (train_head/example_store.py): a run saves what it recorded, a later
one trains on it and continues the first run's head, with clear errors where the pieces do not fit."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from dynaspec.cli import app
from dynaspec.train_head.example_store import load_examples, save_examples
from dynaspec.train_head.record import Example
from tests.tiny_models import make_word_target

VOCAB = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    target, prompts = make_word_target(root, VOCAB, num_prompts=16, spread=7)
    return {"target": str(target), "prompts": str(prompts), "root": root}


def _train(tiny, *extra: str):
    return CliRunner().invoke(app, [
        "train-head", "--model", tiny["target"], "--max-tokens", "12", "--ttt-steps", "2", "--batch-size", "4",
        "--device", "cpu", "--dtype", "float32", "--draft-vocab-size", "24", *extra,
    ])


def test_a_second_run_trains_on_the_saved_answers_and_continues_the_head(tiny):
    root = tiny["root"]
    first = _train(tiny, "--workload", tiny["prompts"], "--num-prompts", "16", "--steps", "10",
                   "--out", str(root / "first"), "--save-examples", str(root / "answers.safetensors"))
    assert first.exit_code == 0, first.output
    assert "answers saved to" in first.output
    recorded = re.search(r"held out \((\d+) prompts", first.output).group(1)
    # a learning rate too small to move the weights: what the second run writes is the head it started from
    second = _train(tiny, "--load-examples", str(root / "answers.safetensors"), "--init-head", str(root / "first"),
                    "--steps", "2", "--lr", "1e-12", "--out", str(root / "second"))
    assert second.exit_code == 0, second.output
    assert "continuing the head of" in second.output and "loaded " in second.output
    assert "training prompts" not in second.output  # nothing answered again
    assert re.search(r"held out \((\d+) prompts", second.output).group(1) == recorded  # the same held-out split
    before = load_file(str(root / "first" / "model.safetensors"))
    after = load_file(str(root / "second" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert torch.equal(before["draft_to_target"], after["draft_to_target"])  # its draft vocabulary kept
    for name in before:
        assert torch.allclose(before[name].float(), after[name].float(), atol=1e-6), name
    # a real learning rate moves them
    third = _train(tiny, "--load-examples", str(root / "answers.safetensors"), "--init-head", str(root / "first"),
                   "--steps", "3", "--lr", "1e-3", "--out", str(root / "third"))
    assert third.exit_code == 0, third.output
    moved = load_file(str(root / "third" / "model.safetensors"))
    assert any(not torch.allclose(before[n].float(), moved[n].float()) for n in before if n != "draft_to_target")


def test_examples_round_trip_with_their_split():
    gen = torch.Generator().manual_seed(0)

    def example(n: int, prompt_len: int, final: bool = True) -> Example:
        return Example(torch.randint(0, 99, (n,), generator=gen).tolist(), prompt_len,
                       torch.randn(n - 1, 6, generator=gen).to(torch.bfloat16),
                       torch.randn(n - 1, 3, generator=gen).to(torch.bfloat16) if final else None)

    train, held = [example(9, 3), example(5, 2)], [example(7, 4, final=False)]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = save_examples(Path(folder) / "a.safetensors", train, held, "tiny-target", [0, 2])
        loaded_train, loaded_held = load_examples(path, "tiny-target", [0, 2])
        with pytest.raises(ValueError, match="holds answers of 'tiny-target', not of the target 'other'"):
            load_examples(path, "other", [0, 2])
        with pytest.raises(ValueError, match=r"features of layers \[0, 2\], not of \[0, 1\]"):
            load_examples(path, "tiny-target", [0, 1])
    for got, want in zip(loaded_train + loaded_held, train + held):
        assert got.token_ids == want.token_ids and got.prompt_len == want.prompt_len
        assert got.features.dtype == torch.bfloat16 and torch.equal(got.features, want.features)
        assert (got.final is None) == (want.final is None)  # the final stream (soft labels) where recorded
        assert got.final is None or torch.equal(got.final, want.final)
    assert len(loaded_train) == 2 and len(loaded_held) == 1


def _error(result) -> str:
    """The command's error line (rich wraps it to the terminal's width)."""
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_bad_combinations_are_one_line_errors(tiny, tmp_path):
    missing = _train(tiny, "--load-examples", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "h"))
    assert "no such file (write one with --save-examples)" in _error(missing)
    both = _train(tiny, "--load-examples", "a", "--save-examples", "b", "--out", str(tmp_path / "h"))
    assert "would only copy the file: give one of them" in _error(both)
    not_a_head = _train(tiny, "--workload", tiny["prompts"], "--num-prompts", "4", "--init-head", str(tmp_path),
                        "--out", str(tmp_path / "h"))
    assert "needs config.json and model.safetensors" in _error(not_a_head)
    labels = _train(tiny, "--workload", tiny["prompts"], "--num-prompts", "4", "--labels", "argmax",
                    "--out", str(tmp_path / "h"))
    assert "--labels: Input should be 'target' or 'tokens' (got 'argmax')" in _error(labels)


def test_answers_saved_without_the_final_stream_train_on_tokens_only(tiny):
    """Answers recorded with --labels tokens carry no final stream: training on them with soft labels is refused
    with what to do instead, and with --labels tokens it runs."""
    root = tiny["root"]
    path = root / "tokens-only.safetensors"
    first = _train(tiny, "--workload", tiny["prompts"], "--num-prompts", "16", "--steps", "1", "--labels", "tokens",
                   "--out", str(root / "tokens-first"), "--save-examples", str(path))
    assert first.exit_code == 0, first.output
    soft = _train(tiny, "--load-examples", str(path), "--steps", "1", "--out", str(root / "tokens-soft"))
    assert "saved without the target's final hidden states, which --labels target needs" in _error(soft)
    hard = _train(tiny, "--load-examples", str(path), "--steps", "1", "--labels", "tokens",
                  "--out", str(root / "tokens-hard"))
    assert hard.exit_code == 0, hard.output


def test_another_answer_seed_draws_new_answers_to_the_same_prompts_and_split(tiny):
    """A later session continuing a head (--init-head) answers the same training prompts again with other
    sampling seeds (--answer-seed): new answers, the same held-out prompts (answered greedily), so the
    held-out estimate stays clean."""
    root = tiny["root"]

    def answers(name: str, *seed: str):
        path = root / f"{name}.safetensors"
        run = _train(tiny, "--workload", tiny["prompts"], "--num-prompts", "16", "--steps", "1", "--temperature",
                     "0.8", "--answers-per-prompt", "2", "--out", str(root / name), "--save-examples", str(path),
                     *seed)
        assert run.exit_code == 0, run.output
        with safe_open(str(path), framework="pt") as handle:  # the run's own target name and tapped layers
            meta = json.loads(handle.metadata()["dynaspec_train_head_examples"])
        train, held = load_examples(path, meta["target"], meta["layers"])
        return [e.token_ids for e in train], [e.token_ids for e in held]

    first_train, first_held = answers("seed-default")
    again_train, again_held = answers("seed-zero", "--answer-seed", "0")
    other_train, other_held = answers("seed-other", "--answer-seed", "1000")
    assert again_train == first_train and again_held == first_held  # the default is --seed's range
    assert other_held == first_held  # same held-out prompts, greedy answers
    assert other_train != first_train  # new answers (some may end at once and be dropped: counts differ)

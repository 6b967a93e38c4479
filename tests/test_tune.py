"""`dynaspec tune`: goodput selection and schedule compression (pure), acceptance counting on a real engine,
and the CLI end to end on a tiny random checkpoint with a hand-written acceptance profile (CPU)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from dynaspec.bench.tune import (
    PositionCounts,
    choose_draft_lens,
    compress_schedule,
    measure_acceptance,
    tuned_spec_config,
)
from dynaspec.cli import app
from dynaspec.spec.config import parse_speculative_config
from dynaspec.runtime.cost_model import StepCostModel
from tests.tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tune"), "llama")


def _synthetic_costs() -> StepCostModel:
    # Memory-bound at batch 1 (k nearly free), compute-bound at 64 (cost ~ batch * (1 + k)).
    cost = StepCostModel()
    for batch in (1, 4, 16, 64):
        for k in range(5):
            cost.add(batch, k, 0.01 + 0.0001 * batch * (1 + k) ** 1.5)
    return cost


def test_choose_picks_argmax_per_batch():
    alphas = [0.8, 0.7, 0.6, 0.5]
    cost = _synthetic_costs()
    choices = choose_draft_lens(alphas, cost, [1, 4, 16, 64], 4)
    for c in choices:
        brute = {}
        for k in range(5):
            e, survive = 0.0, 1.0
            for a in alphas[:k]:
                survive *= a
                e += survive
            brute[k] = (e + 1) * c.batch_size / cost.cost(c.batch_size, k)
        assert c.k == max(brute, key=brute.get)
        assert c.predicted_tokens_per_s == pytest.approx(brute[c.k])
    ks = [c.k for c in choices]
    assert ks[0] == 4 and ks[-1] < ks[0]  # long drafts pay when memory-bound, not when compute-bound
    assert ks == sorted(ks, reverse=True)


def test_zero_acceptance_never_speculates():
    choices = choose_draft_lens([0.0], _synthetic_costs(), [1, 64], 4)
    assert [c.k for c in choices] == [0, 0]
    assert compress_schedule({c.batch_size: c.k for c in choices}).schedule is None


def test_compress_keeps_only_changes_and_caps():
    plan = compress_schedule({1: 4, 2: 4, 4: 3, 8: 3, 16: 0, 32: 0})
    assert plan.max_draft_len == 4 and plan.schedule == {1: 4, 4: 3, 16: 0} and plan.capped == []
    # The smallest batch measured is 2: its k applies from 1. A larger k later is capped to it.
    plan = compress_schedule({2: 2, 8: 5, 16: 1})
    assert plan.schedule == {1: 2, 16: 1} and plan.capped == [(8, 5, 2)]
    for plan in (compress_schedule({1: 4, 4: 3, 16: 0}), compress_schedule({2: 2, 8: 5, 16: 1})):
        spec = tuned_spec_config({"decoding_type": "NGram", "max_draft_len": 6}, plan)
        config = parse_speculative_config(spec)
        assert config.draft_len_schedule == plan.schedule and config.max_draft_len == plan.max_draft_len
    with pytest.raises(ValueError, match="batch sizes must be ints >= 1"):
        compress_schedule({0: 1})
    with pytest.raises(ValueError, match="at least one batch size"):
        compress_schedule({})


def test_position_counts_treat_short_drafts_as_rejections():
    counts = PositionCounts(3)
    counts.add(3, 3)  # all accepted
    counts.add(3, 1)  # position 1 rejected
    counts.add(0, 0)  # n-gram miss: position 0 paid for, no token
    assert counts.trials == [3, 2, 1] and counts.successes == [2, 1, 1]
    assert counts.alphas() == pytest.approx([2 / 3, 1 / 2, 1.0])
    with pytest.raises(ValueError):
        counts.add(2, 3)


def test_measure_acceptance_on_a_real_engine(tiny_dir):
    from dynaspec.bench.cli_tune import _llm

    spec = parse_speculative_config({"decoding_type": "NGram", "max_draft_len": 3})
    llm = _llm(str(tiny_dir), spec, 2, 128, "cpu", "float32", 0)
    # Repetitive prompts: prompt lookup finds matches, the random model accepts some.
    prompts = [[5, 6, 7, 8] * 6, [9, 10, 11] * 8]
    counts = measure_acceptance(llm, prompts, max_tokens=12, batch_size=2)
    assert counts.trials[0] > 0
    assert all(0.0 <= a <= 1.0 for a in counts.alphas())
    assert all(s <= t for s, t in zip(counts.successes, counts.trials))


def _profile(tmp_path, alphas):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"name": "hand", "acceptance_per_position": alphas}))
    return path


def test_cli_end_to_end(tiny_dir, tmp_path):
    out, png = tmp_path / "schedule.yaml", tmp_path / "tune.png"
    args = [
        "tune", "--model", str(tiny_dir), "--drafter", "ngram", "--acceptance-profile",
        str(_profile(tmp_path, [0.9, 0.8, 0.7])), "--batch-sizes", "1,2", "--max-draft-len", "2",
        "--cost-prompt-len", "8", "--cost-gen-len", "6", "--device", "cpu", "--out", str(out), "--plot", str(png),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "chosen k" in result.output
    text = out.read_text()
    assert "predicted tok/s" in text and "median of real decode steps" in text
    cost = StepCostModel.load(tmp_path / "schedule.step_costs.json")
    assert cost.batch_sizes == [1, 2] and cost.draft_lens == [0, 1, 2]
    # The written schedule is the argmax plan of the written costs and the profile's acceptance.
    plan = compress_schedule({c.batch_size: c.k for c in choose_draft_lens([0.9, 0.8], cost, [1, 2], 2)})
    spec = yaml.safe_load(text)["speculative_config"]
    if plan.schedule is None:  # speculation did not pay on this CPU at batch 1: said so, no config
        assert spec is None and "does not pay" in text
        spec = {"decoding_type": "NGram", "max_draft_len": 2}
    else:
        config = parse_speculative_config(spec)
        assert config.decoding_type == "NGram" and config.draft_len_schedule == plan.schedule
        assert config.max_draft_len == plan.max_draft_len
        spec.pop("draft_len_schedule")
    # The step-cost file works as step_cost_file of the goodput policy.
    goodput = dict(spec, draft_len_policy="goodput", step_cost_file=str(tmp_path / "schedule.step_costs.json"))
    assert parse_speculative_config(goodput).step_cost_file.endswith("schedule.step_costs.json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--drafter", "ngram"], "exactly one acceptance source"),
        (["--drafter", "ngram", "--workload-name", "poetry"], "--workload-name must be one of"),
        (["--acceptance-profile", "PROFILE"], "tune needs a drafter"),
        (["--drafter", "draft-model", "--acceptance-profile", "PROFILE"], "needs --draft-model"),
        (["--drafter", "ngram", "--acceptance-profile", "PROFILE", "--cost", "guess"], "--cost must be one of"),
        (["--drafter", "ngram", "--acceptance-profile", "PROFILE", "--batch-sizes", "1,x"], "not an int"),
        (["--drafter", "ngram", "--acceptance-profile", "PROFILE", "--max-draft-len", "0"], "max_draft_len"),
        (["--drafter", "ngram", "--workload", "missing.jsonl"], "does not exist"),
    ],
)
def test_cli_bad_arguments(tmp_path, extra, message):
    profile = str(_profile(tmp_path, [0.5]))
    args = ["tune", "--model", "unused", "--out", str(tmp_path / "s.yaml")]
    args += [profile if a == "PROFILE" else a for a in extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_cli_rejects_a_malformed_workload_line(tmp_path):
    workload = tmp_path / "prompts.jsonl"
    workload.write_text('{"prompt": "hello"}\n{"text": "no"}\n')
    args = ["tune", "--model", "unused", "--drafter", "ngram", "--workload", str(workload), "--out", str(tmp_path / "s.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "line 2" in result.output


def test_cli_cost_probe(tiny_dir, tmp_path):
    out = tmp_path / "probe.yaml"
    args = [
        "tune", "--model", str(tiny_dir), "--drafter", "ngram", "--acceptance-profile",
        str(_profile(tmp_path, [1.0])), "--batch-sizes", "1,3", "--max-draft-len", "2", "--cost", "probe",
        "--device", "cpu", "--out", str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "the engine's cost probe" in out.read_text()
    cost = StepCostModel.load(tmp_path / "probe.step_costs.json")
    assert cost.batch_sizes == [1, 3] and cost.draft_lens == [0, 1, 2]
    # A profile shorter than max_draft_len repeats its last value.
    assert json.loads((tmp_path / "probe.acceptance.json").read_text())["acceptance_per_position"] == [1.0, 1.0]


def test_cli_workload_needs_a_tokenizer(tiny_dir, tmp_path):
    workload = tmp_path / "prompts.jsonl"
    workload.write_text('{"prompt": "hello"}\n')
    args = [
        "tune", "--model", str(tiny_dir), "--drafter", "ngram", "--workload", str(workload), "--device", "cpu",
        "--max-model-len", "128", "--max-tokens", "8", "--batch-sizes", "1", "--out", str(tmp_path / "s.yaml"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "no tokenizer" in result.output


def test_cli_measures_acceptance_on_a_real_workload(smollm2_dir, tmp_path):
    """A user's prompts.jsonl (plain prompts and chat messages) through SmolLM2's tokenizer and chat
    template: acceptance is measured by running them, and the schedule follows from it."""
    workload = tmp_path / "prompts.jsonl"
    code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n# add and sub again, with type hints:\n"
    chat = {"messages": [{"role": "user", "content": "Repeat exactly: red, green, blue, red, green, blue, red"}]}
    workload.write_text(json.dumps({"prompt": code}) + "\n" + json.dumps(chat) + "\n")
    out = tmp_path / "real.yaml"
    args = [
        "tune", "--model", str(smollm2_dir), "--drafter", "ngram", "--workload", str(workload),
        "--num-prompts", "2", "--max-tokens", "16", "--batch-sizes", "1,2", "--max-draft-len", "2",
        "--cost", "probe", "--device", "cpu", "--out", str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    alphas = json.loads((tmp_path / "real.acceptance.json").read_text())["acceptance_per_position"]
    assert len(alphas) == 2 and all(0.0 <= a <= 1.0 for a in alphas)
    assert alphas[0] > 0.0  # the prompts repeat themselves: n-gram drafts were accepted
    assert f"measured on 2 prompts of {workload}" in out.read_text()
    cost = StepCostModel.load(tmp_path / "real.step_costs.json")
    plan = compress_schedule({c.batch_size: c.k for c in choose_draft_lens(alphas, cost, [1, 2], 2)})
    spec = yaml.safe_load(out.read_text())["speculative_config"]
    if plan.schedule is None:
        assert spec is None
    else:
        assert parse_speculative_config(spec).draft_len_schedule == plan.schedule

"""`draft_len_schedule: auto`: config parsing and validation, the plan equals `dynaspec tune`'s pure
functions, the engine runs the planned schedule (visible in get_stats and the CLI) and stays lossless."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dynaspec import LLM, NGramDecodingConfig, SamplingParams
from dynaspec.cli import _engine_config, app
from dynaspec.config import EngineConfig
from dynaspec.spec.auto_schedule import plan_auto_schedule
from dynaspec.spec.config import parse_speculative_config
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.goodput_schedule import choose_draft_lens, compress_schedule
from dynaspec.spec.schedule_policy import DraftLenSchedule, SchedulePolicy
from tests.tiny_models import make_tiny_checkpoint

ALPHAS = [0.8, 0.7, 0.6, 0.5]
GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("auto"), "llama"))


@pytest.fixture()
def profile(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"acceptance_per_position": ALPHAS}))
    return str(path)


def _costs() -> StepCostModel:
    # Verify cost grows with batch * (1 + k): long drafts pay at batch 1, none from batch 4 on.
    cost = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(5):
            cost.add(batch, k, 0.01 + 0.002 * batch * (1 + k) ** 1.5)
    return cost


def _expected(cost: StepCostModel, alphas, max_draft_len: int) -> dict[int, int]:
    choices = choose_draft_lens(alphas, cost, cost.batch_sizes, max_draft_len)
    plan = compress_schedule({c.batch_size: c.k for c in choices})
    return plan.schedule if plan.schedule is not None else {1: 0}


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        motif = torch.randint(0, 512, (3 + i % 4,), generator=gen).tolist()
        out.append((motif * (2 + i % 3))[: 4 + 5 * i] + [i])
    return out


# ------------------------------------------------------------------------------------------ config
def test_auto_in_python_yaml_and_cli(tmp_path, profile):
    assert NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile=profile).draft_len_schedule == "auto"
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(
        f"speculative_config:\n  decoding_type: NGram\n  max_draft_len: 4\n  draft_len_schedule: auto\n"
        f"  acceptance_profile: {profile}\n"
    )
    loaded = yaml.safe_load(spec_yaml.read_text())["speculative_config"]
    assert parse_speculative_config(loaded).draft_len_schedule == "auto"
    engine_yaml = tmp_path / "engine.yaml"
    engine_yaml.write_text(yaml.safe_dump({"model": "m", "speculative_config": loaded}))
    assert EngineConfig.from_yaml(engine_yaml).speculative_config.draft_len_schedule == "auto"
    # The CLI's --draft-len-schedule replaces the file's schedule; 'auto' (any case) included.
    spec_yaml.write_text(f"decoding_type: NGram\nmax_draft_len: 4\nacceptance_profile: {profile}\n")
    config = _engine_config("m", None, spec_yaml, "AUTO")
    assert config.speculative_config.draft_len_schedule == "auto"
    assert _engine_config("m", None, spec_yaml, "1:4,8:0").speculative_config.draft_len_schedule == {1: 4, 8: 0}
    # Auto is not tied to max_draft_len the way an explicit schedule is, and it may read a cost file.
    config = NGramDecodingConfig(max_draft_len=6, draft_len_schedule="auto", acceptance_profile=profile,
                                 step_cost_file="costs.json")
    assert config.step_cost_file == "costs.json"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"draft_len_schedule": "auto"}, "needs acceptance_profile"),
        ({"draft_len_schedule": "auto", "acceptance_profile": "p.json", "draft_len_policy": "goodput"},
         "draft_len_policy='goodput' chooses k itself"),
        ({"draft_len_schedule": "automatic"}, "neither 'auto' nor comma-separated 'threshold:draft_len' pairs"),
        ({"draft_len_schedule": ""}, "neither 'auto'"),
        ({"step_cost_file": "c.json"}, "only used with draft_len_policy='goodput' or draft_len_schedule='auto'"),
        ({"replay_acceptance_profile": "a,,b"}, "empty profile name"),
    ],
)
def test_bad_configs_name_the_problem(fields, message):
    with pytest.raises(ValueError, match=message):
        NGramDecodingConfig(max_draft_len=4, **fields)


def test_cli_refuses_other_schedule_words(tmp_path):
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text("decoding_type: NGram\n")
    with pytest.raises(ValueError, match="neither 'auto'"):
        _engine_config("m", None, spec_yaml, "tuned")


def test_a_static_policy_cannot_take_auto(profile):
    with pytest.raises(ValueError, match="planned at engine start-up"):
        SchedulePolicy(NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile=profile))


# ------------------------------------------------------------------------------------------ planning
def test_plan_is_tunes_choice_and_compression(profile):
    cost = _costs()
    config = NGramDecodingConfig(max_draft_len=4, draft_len_schedule="auto", acceptance_profile=profile,
                                 max_concurrency=32)
    auto = plan_auto_schedule(config, cost)
    expected = _expected(cost, ALPHAS, 4)
    assert auto.schedule == expected == {1: 2, 2: 1, 4: 0}
    assert [c.k for c in auto.choices] == [2, 1, 0, 0]
    assert auto.policy.schedule.as_dict() == expected and auto.policy.max_concurrency == 32
    lookup = DraftLenSchedule(expected)
    for batch in range(1, 20):
        assert auto.policy.draft_len(batch, batch) == lookup.lookup(batch)
    assert auto.policy.draft_len(2, 33) == 0  # max_concurrency still applies
    summary = auto.as_dict()
    assert summary["schedule"] == {"1": 2, "2": 1, "4": 0} and summary["step_costs"] == "probe"
    assert json.loads(json.dumps(summary)) == summary


def test_plan_without_paying_speculation_runs_k0(tmp_path):
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({"acceptance_per_position": [0.0]}))
    config = NGramDecodingConfig(max_draft_len=4, draft_len_schedule="auto", acceptance_profile=str(zero))
    auto = plan_auto_schedule(config, _costs())
    assert auto.plan.schedule is None and auto.schedule == {1: 0}
    assert [auto.policy.draft_len(b, b) for b in (1, 2, 64)] == [0, 0, 0]


# ------------------------------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def baseline(tiny):
    llm = LLM(model=tiny, block_size=4)
    return [o.token_ids for o in llm.generate(_prompts(8), GREEDY)]


def test_engine_runs_the_schedule_planned_from_a_cost_file(tiny, baseline, profile, tmp_path):
    cost_file = tmp_path / "costs.json"
    _costs().save(cost_file)
    spec = NGramDecodingConfig(max_draft_len=4, draft_len_schedule="auto", acceptance_profile=profile,
                               step_cost_file=str(cost_file))
    llm = LLM(model=tiny, block_size=4, speculative_config=spec)
    stats = llm.get_stats()
    assert stats["draft_len_schedule"] == {"1": 2, "2": 1, "4": 0}
    assert stats["auto_schedule"]["step_costs"] == str(cost_file)
    assert [o.token_ids for o in llm.generate(_prompts(8), GREEDY)] == baseline
    for n in (1, 2):
        assert [o.token_ids for o in llm.generate(_prompts(n), GREEDY)] == baseline[:n]
    lookup = DraftLenSchedule({1: 2, 2: 1, 4: 0})
    histogram = llm.get_stats()["k_histogram"]
    assert {"1", "2", "8"} <= set(histogram), histogram
    for batch, ks in histogram.items():
        assert set(ks) == {str(lookup.lookup(int(batch)))}, (batch, ks)
    assert llm.get_stats()["num_drafted"] > 0


def test_engine_probes_costs_when_no_file_is_given(tiny, baseline, profile):
    spec = NGramDecodingConfig(max_draft_len=3, draft_len_schedule="auto", acceptance_profile=profile)
    llm = LLM(model=tiny, block_size=4, speculative_config=spec)
    auto = llm.engine.policy.planned
    assert auto.step_costs == "probe"
    assert auto.cost_model.batch_sizes and set(auto.cost_model.draft_lens) == {0, 1, 2, 3}
    assert auto.schedule == _expected(auto.cost_model, ALPHAS, 3)
    assert llm.get_stats()["draft_len_schedule"] == {str(t): k for t, k in auto.schedule.items()}
    assert [o.token_ids for o in llm.generate(_prompts(3), GREEDY)] == baseline[:3]


def test_a_missing_profile_file_fails_when_the_config_is_validated(tmp_path):
    """Before any model load or cost probe (issue 24: it used to fail after a 277 s probe)."""
    with pytest.raises(ValueError, match="does not exist"):
        NGramDecodingConfig(draft_len_schedule="auto", acceptance_profile=str(tmp_path / "nope.json"))


def test_static_schedules_and_goodput_report_what_they_run(tiny):
    llm = LLM(model=tiny, block_size=4, speculative_config=NGramDecodingConfig(max_draft_len=2, draft_len_schedule={1: 2, 4: 0}))
    stats = llm.get_stats()
    assert stats["draft_len_schedule"] == {"1": 2, "4": 0} and stats["auto_schedule"] is None
    stats = LLM(model=tiny, block_size=4).get_stats()
    assert stats["draft_len_schedule"] is None and stats["auto_schedule"] is None


def test_cli_generate_prints_the_auto_schedule(smollm2_prepared, profile, tmp_path):
    cost_file = tmp_path / "costs.json"
    _costs().save(cost_file)
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(
        f"speculative_config:\n  decoding_type: NGram\n  max_draft_len: 4\n  acceptance_profile: {profile}\n"
        f"  step_cost_file: {cost_file}\n"
    )
    result = CliRunner().invoke(app, [
        "generate", "def f(x): return x\n" * 3, "--model", str(smollm2_prepared.path), "--max-tokens", "6",
        "--spec-config", str(spec_yaml), "--draft-len-schedule", "auto", "--no-chat",
    ])
    assert result.exit_code == 0, result.output
    assert "draft_len_schedule (auto): {1: 2, 2: 1, 4: 0}" in result.output
    assert "1->2, 2->1, 4->0, 8->0" in result.output

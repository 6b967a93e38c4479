"""`dynaspec bench`: the throughput sweep, its JSON / markdown / PNG outputs, the CLI and its errors.

CPU, tiny random checkpoint (tests/tiny_models.py), batches [1, 2] x k [0, 1, 2], short prompts.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from dynaspec.bench import report
from dynaspec.bench.cli_bench import parse_int_list
from dynaspec.bench.hf_baseline import hf_decode_throughput, hf_model_sharing_weights
from dynaspec.bench.plots import plot_sweep
from dynaspec.bench.sweep import SweepSettings, build_lines, default_batch_sizes, floor_points, run_sweep
from dynaspec.cli import app
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.models.presets import num_parameters
from tests.tiny_models import make_tiny_checkpoint, make_tiny_config

PROMPT_LEN, GEN_LEN = 12, 10
POINT_FIELDS = {
    "line", "batch_size", "nominal_k", "decode_tokens", "decode_time_s", "num_decode_steps", "decode_tokens_per_s",
    "mean_step_time_s", "median_step_time_s", "mean_accepted_length", "acceptance_rate", "k_match_fraction",
    "k_histogram", "prefill_time_s", "num_preemptions",
    # workload mode only (None here, with random prompts)
    "output_token_ids", "same_tokens_as_no_spec", "requests_same_as_no_spec", "first_divergence",
    "planner_decisions",  # goodput line only
    "step_log", "round_tokens_per_s",  # every decode step; rounds of a side-by-side sweep (None otherwise)
    "prefill_step_log",  # every step before each request had its first token
    "gc_full_collections_ms",  # full garbage collections during the timed batch
    "planner_view", "planner_view_at_start",  # policies that predict (goodput, adaptive): DraftLenPolicy.view
    "batch_tokens", "batch_tokens_per_s",  # the whole batch, prefill phase included
}
METADATA_FIELDS = {
    "model", "model_name", "is_random", "drafter", "draft_model", "acceptance_replay", "replay_profile", "device",
    "device_name", "dtype", "date", "command_line", "prompt_len", "gen_len", "batch_sizes", "caveats",
    "weight_bytes", "kv_bytes_per_token", "copy_bandwidth_bytes_per_s",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("bench"), "llama")


@pytest.fixture(scope="module")
def sweep_result(tiny_dir):
    settings = SweepSettings(
        model=str(tiny_dir),
        speculative_config={"decoding_type": "NGram", "max_draft_len": 2, "draft_len_schedule": {1: 2, 2: 1}},
        batch_sizes=[1, 2], draft_lens=[0, 1, 2], prompt_len=PROMPT_LEN, gen_len=GEN_LEN, device="cpu",
        command_line="pytest",
    )
    return run_sweep(settings).to_dict()


def test_sweep_measures_every_line_and_batch(sweep_result):
    assert [line["name"] for line in sweep_result["lines"]] == ["no spec", "k=1", "k=2", "schedule"]
    points = {(p["line"], p["batch_size"]): p for p in sweep_result["points"]}
    assert set(points) == {(line, b) for line in ("no spec", "k=1", "k=2", "schedule") for b in (1, 2)}
    for (line, batch), p in points.items():
        assert set(p) == POINT_FIELDS
        assert p["output_token_ids"] is None and p["same_tokens_as_no_spec"] is None
        assert p["planner_decisions"] is None
        assert p["decode_tokens_per_s"] > 0 and p["mean_step_time_s"] > 0
        # The decode phase starts after every request has its first token: the rest of gen_len is decoded.
        assert p["decode_tokens"] == batch * (GEN_LEN - 1)
        assert p["decode_tokens_per_s"] == pytest.approx(p["decode_tokens"] / p["decode_time_s"])
        # The whole batch: every token (the first ones too) over prefill + decode time.
        assert p["batch_tokens"] == batch * GEN_LEN
        assert p["batch_tokens_per_s"] == pytest.approx(
            p["batch_tokens"] / (p["prefill_time_s"] + p["decode_time_s"]))
        assert sum(p["k_histogram"].values()) == p["num_decode_steps"]
        # The prefill phase's steps, logged as the decode phase's: here one step prefills every prompt, and no
        # request decodes beside it (its row's decoding requests 0, no path); their times are the phase's.
        assert [row[1:] for row in p["prefill_step_log"]] == [[0, 0, 0, 0, "", "", 0, 0.0]]
        assert sum(row[0] for row in p["prefill_step_log"]) == pytest.approx(p["prefill_time_s"] * 1e3, abs=1e-2)
        assert 0.0 <= p["k_match_fraction"] <= 1.0
        assert p["mean_accepted_length"] >= 1.0
    # No spec: one token per request per step, every step at k = 0.
    for batch in (1, 2):
        p = points[("no spec", batch)]
        assert p["num_decode_steps"] == GEN_LEN - 1 and p["mean_accepted_length"] == 1.0
        assert p["k_histogram"] == {"0": GEN_LEN - 1} and p["acceptance_rate"] is None
    # The schedule's nominal k follows {1: 2, 2: 1}; static lines keep their k while the batch is full.
    assert points[("schedule", 1)]["nominal_k"] == 2 and points[("schedule", 2)]["nominal_k"] == 1
    assert points[("k=2", 1)]["nominal_k"] == 2 and points[("k=2", 1)]["k_histogram"].get("2", 0) >= 1
    assert max(int(k) for p in points.values() for k in p["k_histogram"]) <= 2


def test_sweep_json_metadata_and_envelope(sweep_result, tmp_path):
    path = report.write_json(sweep_result, tmp_path / "bench.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "dynaspec.bench.sweep/1"
    assert METADATA_FIELDS <= set(data["metadata"])
    meta = data["metadata"]
    assert meta["is_random"] is False and meta["acceptance_replay"] is False and meta["caveats"] == []
    assert meta["device"] == "cpu" and meta["copy_bandwidth_bytes_per_s"] is None and data["floor"] is None
    assert meta["command_line"] == "pytest" and meta["drafter"] == "NGram"
    assert meta["weight_bytes"] == 4 * num_parameters(make_tiny_config("llama"))  # float32, every parameter
    # kv bytes per token of the tiny llama: 2 (K, V) x 2 layers x 2 kv heads x 16 head_dim x 4 bytes.
    assert meta["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    env = {e["batch_size"]: e for e in data["envelope"]}
    assert set(env) == {1, 2}
    for batch, e in env.items():
        static = {p["line"]: p["decode_tokens_per_s"] for p in data["points"] if p["batch_size"] == batch
                  and p["line"].startswith("k=")}
        assert e["best_static_tokens_per_s"] == max(static.values())
        assert e["best_static_line"] == max(static, key=static.get)


def test_markdown_and_plots(sweep_result, tmp_path):
    md = report.write_markdown(sweep_result, tmp_path / "bench.md").read_text()
    assert "| batch | no spec tok/s | k=1 tok/s | k=2 tok/s | schedule tok/s |" in md
    assert md.count("\n| schedule | ") == 2 and "Envelope" in md
    paths = plot_sweep(sweep_result, tmp_path / "plots")
    assert [p.name for p in paths] == ["bench_tokens_per_s.png", "bench_step_time.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_caveats_reach_every_output(sweep_result, tmp_path):
    result = json.loads(json.dumps(sweep_result))
    result["metadata"].update(is_random=True, acceptance_replay=True, replay_profile={"name": "copy-heavy"})
    from dynaspec.bench.sweep import caveats

    result["metadata"]["caveats"] = caveats(result["metadata"])
    assert any("RANDOM WEIGHTS" in c for c in result["metadata"]["caveats"])
    assert any("ACCEPTANCE REPLAYED" in c and "copy-heavy" in c for c in result["metadata"]["caveats"])
    md = report.markdown(result)
    assert "RANDOM WEIGHTS" in report.title(result) and "ACCEPTANCE REPLAYED" in report.title(result)
    assert md.count("ACCEPTANCE REPLAYED") >= 4  # title, banner, and each table caption
    for table in report.rich_tables(result):
        assert "RANDOM WEIGHTS" in str(table.title) and "ACCEPTANCE REPLAYED" in str(table.caption)


def test_acceptance_profile_goes_into_the_config(tmp_path):
    profile = tmp_path / "copy.json"
    profile.write_text(json.dumps({"name": "copy", "acceptance_per_position": [0.9, 0.8]}))
    spec = NGramDecodingConfig(max_draft_len=2, draft_len_schedule={1: 2, 4: 0})
    lines = build_lines(spec, [0, 2], True, str(profile))
    assert [line.name for line in lines] == ["no spec", "k=2", "schedule"]
    assert lines[0].speculative_config is None
    assert lines[1].speculative_config.replay_acceptance_profile == str(profile)
    assert lines[1].speculative_config.draft_len_schedule == {1: 2}
    assert lines[2].speculative_config.draft_len_schedule == {1: 2, 4: 0}
    assert [lines[2].nominal_k(b) for b in (1, 3, 4, 8)] == [2, 2, 0, 0]


def test_replayed_sweep_is_labelled(tiny_dir, tmp_path):
    profile = tmp_path / "always.json"
    profile.write_text(json.dumps({"name": "always", "acceptance_per_position": [1.0, 1.0]}))
    settings = SweepSettings(
        model=str(tiny_dir), speculative_config={"decoding_type": "NGram", "max_draft_len": 2}, batch_sizes=[1],
        draft_lens=[2], prompt_len=PROMPT_LEN, gen_len=GEN_LEN, device="cpu", acceptance_profile=str(profile),
        warmup=False,
    )
    result = run_sweep(settings).to_dict()
    meta = result["metadata"]
    assert meta["acceptance_replay"] is True and meta["replay_profile"]["name"] == "always"
    assert meta["replay_profile"]["acceptance_per_position"] == [1.0, 1.0]
    assert any("ACCEPTANCE REPLAYED" in c for c in meta["caveats"])
    (point,) = result["points"]
    # Every draft is accepted: 3 tokens per step while the remaining budget allows.
    assert point["acceptance_rate"] == 1.0 and point["mean_accepted_length"] > 2.5


def test_goodput_line_records_the_planner_decisions(tiny_dir, tmp_path):
    profile = tmp_path / "always.json"
    profile.write_text(json.dumps({"name": "always", "acceptance_per_position": [1.0, 1.0]}))
    settings = SweepSettings(
        model=str(tiny_dir), batch_sizes=[2], draft_lens=[0], prompt_len=PROMPT_LEN, gen_len=GEN_LEN,
        device="cpu", acceptance_profile=str(profile), warmup=False,
        speculative_config={"decoding_type": "NGram", "max_draft_len": 2, "draft_len_policy": "goodput",
                            "acceptance_profile": str(profile)},
    )
    points = {p["line"]: p for p in run_sweep(settings).to_dict()["points"]}
    assert points["no spec"]["planner_decisions"] is None
    decisions = points["goodput"]["planner_decisions"]
    assert sum(decisions.values()) == points["goodput"]["num_decode_steps"]
    assert all(re.fullmatch(r"(argmax|hysteresis|explore|probe|max_concurrency|catch-up|ramp) k=[0-2]", key) for key in decisions)
    view = points["goodput"]["planner_view"]
    assert [row["k"] for row in view["table"]] == [0, 1, 2] and view["catch_up_seconds_per_token"] >= 0
    assert points["no spec"]["planner_view"] is None
    # the view before the measured batch too: what its first decisions were made with
    start = points["goodput"]["planner_view_at_start"]
    assert [row["k"] for row in start["table"]] == [0, 1, 2] and points["no spec"]["planner_view_at_start"] is None


def test_side_by_side_rounds_share_weights_and_merge(tiny_dir, monkeypatch):
    """rounds > 1: engines built up front on one copy of the weights, lines interleaved in rotated order,
    each point the merge of its rounds (median tokens/s, summed totals, every step logged)."""
    import dynaspec.bench.sweep as sweep_module

    built, order = [], []
    real_build, real_measure = sweep_module._build_engine, sweep_module._measure

    def build(*args, **kwargs):
        engine = real_build(*args, **kwargs)
        built.append(engine)
        return engine

    def measure(engine, line, batch, *args, **kwargs):
        order.append((line.name, batch))
        return real_measure(engine, line, batch, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "_build_engine", build)
    monkeypatch.setattr(sweep_module, "_measure", measure)
    settings = SweepSettings(
        model=str(tiny_dir), speculative_config={"decoding_type": "NGram", "max_draft_len": 2},
        batch_sizes=[1, 2], draft_lens=[0, 2], include_schedule=False, prompt_len=PROMPT_LEN, gen_len=GEN_LEN,
        device="cpu", rounds=2, warmup=False,
    )
    result = run_sweep(settings).to_dict()
    assert len(built) == 2 and built[1].loaded is built[0].loaded  # one copy of the weights
    assert order == [("no spec", 1), ("k=2", 1), ("k=2", 1), ("no spec", 1),
                     ("no spec", 2), ("k=2", 2), ("k=2", 2), ("no spec", 2)]
    for point in result["points"]:
        rounds = point["round_tokens_per_s"]
        assert len(rounds) == 2 and point["decode_tokens_per_s"] == pytest.approx(sorted(rounds)[0] / 2 + sorted(rounds)[1] / 2)
        assert len(point["step_log"]) == point["num_decode_steps"] == sum(point["k_histogram"].values())
        assert point["decode_tokens"] == 2 * point["batch_size"] * (GEN_LEN - 1)  # first token: prefill
        assert point["batch_tokens"] == 2 * point["batch_size"] * GEN_LEN
        assert point["batch_tokens_per_s"] > 0  # the median of the rounds' (see the one-round test for bounds)
        assert all(row[1] <= point["batch_size"] and row[0] > 0 for row in point["step_log"])
    spec = {p["batch_size"]: p for p in result["points"] if p["line"] == "k=2"}
    assert {row[2] for row in spec[1]["step_log"]} <= {0, 2} and any(row[2] == 2 for row in spec[1]["step_log"])
    # drafted / accepted per step: at most k per request, adding up to the point's acceptance rate
    for point in spec.values():
        log = point["step_log"]
        assert all(0 <= row[4] <= row[3] <= 2 * row[1] and isinstance(row[5], str) for row in log)
        assert {row[6] for row in log} == {"eager"} and {row[7] for row in log} == {0}  # CPU: no graphs, no trim
        # the verification's host read happens inside the step() call the row times
        assert all(isinstance(row[8], float) and 0.0 <= row[8] <= row[0] for row in log)
        drafted, accepted = sum(row[3] for row in log), sum(row[4] for row in log)
        assert point["acceptance_rate"] == (accepted / drafted if drafted else None)


def test_engine_refuses_a_shared_model_of_another_kind(tiny_dir):
    from dynaspec.config import EngineConfig
    from dynaspec.engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(tiny_dir), device="cpu", max_model_len=64, num_kv_blocks=16))
    with pytest.raises(ValueError, match="shared model must be the engine's model"):
        LLMEngine(EngineConfig(model=str(tiny_dir), device="cpu", dtype="bfloat16", max_model_len=64,
                               num_kv_blocks=16), loaded=engine.loaded)
    with pytest.raises(TypeError, match="loaded must be a LoadedModel"):
        LLMEngine(EngineConfig(model=str(tiny_dir), device="cpu"), loaded=engine.loaded.model)


def test_hf_baseline_shares_weights_and_matches_greedy(tiny_dir):
    from dynaspec.llm import LLM
    from dynaspec.sampling_params import SamplingParams

    llm = LLM(model=str(tiny_dir), device="cpu")
    model, hf_config = llm.engine.loaded.model, llm.engine.loaded.hf_config
    hf = hf_model_sharing_weights(model, hf_config)
    assert hf.model.layers[0].mlp.up_proj.weight.data_ptr() == model.model.layers[0].mlp.up_proj.weight.data_ptr()
    prompt = [5, 17, 33, 2, 99, 100, 7]
    ours = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].token_ids
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert theirs[0, len(prompt):].tolist() == ours
    rows = hf_decode_throughput(model, hf_config, [1, 2], PROMPT_LEN, 6)
    # batch 1: the default cache; batch 2: the default and the static cache
    assert [(r["batch_size"], r["cache"]) for r in rows] == [(1, "dynamic"), (2, "dynamic"), (2, "static")]
    for r in rows:
        assert r["num_decode_steps"] == 5 and r["decode_tokens"] == r["batch_size"] * 5
        assert r["decode_tokens_per_s"] > 0


def test_report_compares_with_hf_default_and_fastest(sweep_result, tmp_path):
    result = dict(sweep_result)
    ours = max(p["decode_tokens_per_s"] for p in result["points"] if p["batch_size"] == 2)
    result["hf"] = [
        {"batch_size": 2, "cache": "dynamic", "decode_tokens_per_s": ours / 4, "mean_step_time_s": 0.1},
        {"batch_size": 2, "cache": "static", "torch_compile": True, "decode_tokens_per_s": ours / 2,
         "mean_step_time_s": 0.05},
    ]
    header, rows = report.summary_rows(result)
    row = dict(zip(header, next(r for r in rows if r[0] == "2")))
    assert row["best / HF default"] == "4.00x" and row["best / HF fastest"] == "2.00x"
    assert report.hf_ratio(result, {"batch_size": 2, "decode_tokens_per_s": ours}) == pytest.approx(2.0)
    assert report.hf_ratio(result, {"batch_size": 1, "decode_tokens_per_s": ours}) is None
    plot_sweep(result, tmp_path)  # both HF markers drawn without error


def test_floor_points():
    rows = floor_points(1000, 10, [1, 4], mean_context=50.0, bandwidth=1e4)
    assert rows[0]["step_time_s"] == pytest.approx((1000 + 500) / 1e4)
    assert rows[1]["tokens_per_s"] == pytest.approx(4 / ((1000 + 2000) / 1e4))


def test_default_batch_sizes_and_int_lists():
    assert default_batch_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert default_batch_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert parse_int_list("0-2,5", "--ks", 0) == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="must be >= 1, got -4"):
        parse_int_list("1,-4", "--batch-sizes", 1)
    with pytest.raises(ValueError, match="not an int"):
        parse_int_list("1,x", "--batch-sizes", 1)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(batch_sizes=[0, 2]), "batch_sizes entries must be >= 1"),
        (dict(draft_lens=[0, 3]), r"k=3 is out of range: allowed 0..2"),
        (dict(prompt_len=0), "prompt_len must be an int >= 1"),
        (dict(rounds=0), "rounds must be an int >= 1"),
        (dict(speculative_config=None, draft_lens=[1]), "allowed only 0"),
        (dict(acceptance_profile="/nonexistent/profile.json"), "neither a file nor a shipped profile"),
    ],
)
def test_bad_settings_are_refused(tiny_dir, changes, message):
    base = dict(model=str(tiny_dir), speculative_config={"decoding_type": "NGram", "max_draft_len": 2},
                batch_sizes=[1], device="cpu")
    with pytest.raises(ValueError, match=message):
        run_sweep(SweepSettings(**{**base, **changes}))


def test_cli_bench_writes_outputs(tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench", "--model", str(tiny_dir), "--drafter", "ngram", "--max-draft-len", "1", "--batch-sizes", "1,2",
        "--prompt-len", "8", "--gen-len", "6", "--device", "cpu", "--out-dir", str(out), "--no-warmup",
    ])
    assert result.exit_code == 0, result.output
    assert "decode tokens/s" in result.output
    data = json.loads((out / "bench.json").read_text())
    assert {p["line"] for p in data["points"]} == {"no spec", "k=1"}
    assert (out / "bench.md").is_file()
    assert (out / "bench_tokens_per_s.png").stat().st_size > 0 and (out / "bench_step_time.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "1,-2"], "--batch-sizes must be >= 1"),
        (["--drafter", "ngram", "--max-draft-len", "2", "--ks", "0,3"], "k=3 is out of range"),
        (["--ks", "0,1"], "allowed only 0"),
        (["--drafter", "eagle"], "--drafter must be one of ngram, draft-model"),
        (["--drafter", "draft-model"], "needs --draft-model"),
        (["--compare-hf", "--batch-sizes", "1,2", "--hf-batch-sizes", "4"], r"\[4\] are not in the sweep"),
    ],
)
def test_cli_bench_bad_arguments(tiny_dir, tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_dir), "--device", "cpu",
                                      "--out-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert re.search(message, " ".join(result.output.split())), result.output


def test_policy_lines_add_uniform_and_per_request_lines_on_one_drafter():
    from dynaspec.bench.sweep_settings import SweepSettings, build_lines
    from dynaspec.spec.config import NGramDecodingConfig

    spec = NGramDecodingConfig(max_draft_len=3, draft_len_policy="adaptive")
    lines = build_lines(spec, [0, 2], True, "acceptance_ngram_code-edit,acceptance_ngram_chat", ["goodput", "adaptive"])
    assert [line.name for line in lines] == ["no spec", "k=2", "adaptive", "goodput"]
    assert lines[3].speculative_config.draft_len_policy == "goodput"
    assert lines[3].speculative_config.replay_acceptance_profile.endswith("chat")
    with pytest.raises(ValueError, match="policy line 'fast' is not one of goodput, adaptive"):
        SweepSettings(model="m", speculative_config=spec, policy_lines=["fast"]).validate()

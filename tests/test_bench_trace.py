"""`dynaspec bench-trace`: the deterministic mixed-load trace, mixed acceptance replay per request, and the
benchmark end to end on a tiny random checkpoint (CPU; timings meaningless, structure and tokens checked)."""

from __future__ import annotations

import json
import zlib

import pytest
from typer.testing import CliRunner

from dynaspec.bench.trace import build_trace, gen_len_range, mixed_acceptance, phase_request_counts
from dynaspec.bench.trace_run import PLANNING_PROFILE_FILE, TraceSettings, run_trace
from dynaspec.cli import app
from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.acceptance_estimator import expected_accepted_length
from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.replay import load_acceptance, profile_index
from tests.tiny_models import make_tiny_checkpoint

PROFILES = ["acceptance_ngram_code-edit", "acceptance_ngram_chat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("trace"), "llama"))


# ------------------------------------------------------------------------------------------ trace
def test_trace_is_deterministic_phased_and_mixed():
    args = ([1, 4, 2], 2.0, 10, 8, 0.5, 512, 3, 2)
    trace = build_trace(*args)
    assert trace == build_trace(*args)
    assert phase_request_counts([1, 4, 2], 2.0) == [2, 8, 4]
    assert [r.phase for r in trace] == [0] * 2 + [1] * 8 + [2] * 4
    assert [r.request_id for r in trace] == [f"trace-{i:05d}" for i in range(14)]
    low, high = gen_len_range(8, 0.5)
    assert (low, high) == (4, 12)
    assert all(low <= r.max_tokens <= high and len(r.prompt) == 10 and max(r.prompt) < 512 for r in trace)
    assert len({r.max_tokens for r in trace}) > 1  # lengths vary
    for r in trace:  # the replay's rule: crc32 of the id
        assert r.profile == zlib.crc32(r.request_id.encode()) % 2 == profile_index(r.request_id, 2)
    assert {r.profile for r in trace} == {0, 1}
    assert build_trace(*args[:-1], None)[0].profile is None
    assert build_trace([1, 4, 2], 2.0, 10, 8, 0.5, 512, 4, 2) != trace  # the seed matters
    # Explicit request counts replace concurrency x waves (e.g. more time at low load).
    assert phase_request_counts([1, 4, 2], 2.0, [5, 4, 1]) == [5, 4, 1]
    assert [r.phase for r in build_trace(*args, requests_per_phase=[5, 4, 1])] == [0] * 5 + [1] * 4 + [2]


@pytest.mark.parametrize("bad, message", [
    (dict(phases=[]), "non-empty list"), (dict(phases=[1, 0]), "phase 1 concurrency must be >= 1"),
    (dict(waves=0), "waves must be a number > 0"), (dict(gen_len_spread=1.0), r"gen_len_spread must be in \[0, 1\)"),
    (dict(requests_per_phase=[3]), r"one count per phase \(2 phases\)"),
    (dict(requests_per_phase=[3, 0]), "phase 1 requests must be >= 1"),
])
def test_bad_trace_settings(bad, message):
    args = dict(phases=[1, 2], waves=1.0, prompt_len=4, gen_len=4, gen_len_spread=0.5, vocab_size=16, seed=0,
                num_profiles=None)
    with pytest.raises(ValueError, match=message):
        build_trace(**{**args, **bad})


def test_mixed_acceptance_has_the_mix_expected_length():
    profiles = [[0.9, 0.8, 0.7], [0.1, 1.0], [0.5]]
    weights = [3, 1, 2]
    mix = mixed_acceptance(profiles, weights)
    for k in range(4):
        expected = sum(
            w * expected_accepted_length([p[min(j, len(p) - 1)] for j in range(3)], k) for p, w in zip(profiles, weights)
        ) / sum(weights)
        assert expected_accepted_length(mix, k) == pytest.approx(expected)
    assert mixed_acceptance([[0.0, 1.0]], [1]) == [0.0, 0.0]  # nothing survives position 0
    with pytest.raises(ValueError, match="one weight per profile"):
        mixed_acceptance([[0.5]], [1, 2])


# ------------------------------------------------------------------------------------------ replay
def test_replay_gives_each_request_its_own_profile(tiny, tmp_path):
    (tmp_path / "all.json").write_text(json.dumps({"acceptance_per_position": [1.0]}))
    (tmp_path / "none.json").write_text(json.dumps({"acceptance_per_position": [0.0]}))
    profiles = [str(tmp_path / "all.json"), str(tmp_path / "none.json")]
    spec = NGramDecodingConfig(max_draft_len=3, replay_acceptance_profile=profiles)
    engine = LLMEngine(EngineConfig(model=tiny, block_size=4, speculative_config=spec))
    ids = [f"req-{i}" for i in range(8)]
    assert {profile_index(i, 2) for i in ids} == {0, 1}
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    for n, request_id in enumerate(ids):
        engine.add_request(request_id, [5 + n, 6, 7, 8, 5 + n, 6], params)
    per_step: dict[str, list[int]] = {i: [] for i in ids}
    while engine.has_unfinished_requests():
        for out in engine.step():
            per_step[out.request_id].append(len(out.new_token_ids))
    for request_id in ids:
        decode_steps = per_step[request_id][1:]  # the first output is the prefill's token
        if profile_index(request_id, 2) == 0:  # accepts every draft: 1 + k tokens per step until the end
            assert decode_steps[:2] == [4, 4], (request_id, per_step[request_id])
        else:  # accepts none: one token per step
            assert set(decode_steps) == {1}, (request_id, per_step[request_id])
    assert engine.get_stats()["acceptance_replay"] == "all+none"


# ------------------------------------------------------------------------------------------ end to end
def test_cli_replayed_trace(tiny, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "bench-trace", "--model", tiny, "--drafter", "ngram", "--max-draft-len", "2", "--phases", "1,3,2",
        "--requests-per-phase", "2,3,1", "--prompt-len", "12", "--gen-len", "6", "--device", "cpu", "--out-dir", str(out),
        "--profiles", ",".join(PROFILES), "--no-warmup", "--adaptive",
    ])
    assert result.exit_code == 0, result.output
    assert "ACCEPTANCE REPLAYED" in result.output
    data = json.loads((out / "trace.json").read_text())
    meta = data["metadata"]
    assert data["schema"] == "dynaspec.bench.trace/1"
    assert [r["line"] for r in data["results"]] == ["no spec", "k=1", "k=2", "schedule", "goodput", "adaptive"]
    assert meta["requests_per_phase"] == [2, 3, 1] and meta["num_requests"] == 6
    assert any("ACCEPTANCE REPLAYED" in c for c in meta["caveats"])
    assert [p["name"] for p in meta["replay_profiles"]] == PROFILES
    assert sum(p["requests"] for p in meta["replay_profiles"]) == 6
    reference_phase_tokens = [p["tokens"] for p in data["results"][0]["per_phase"]]
    for r in data["results"]:
        # Replay changes which tokens are committed, never how many: every request ran to its max_tokens.
        assert r["all_max_tokens"] and r["total_tokens"] == meta["total_tokens"]
        assert [p["tokens"] for p in r["per_phase"]] == reference_phase_tokens  # phases do not overlap
        assert r["tokens_per_s"] > 0 and len(r["timeline"]["k"]) == r["num_steps"]
        # a step's verification (its host read) happens inside the step it times
        assert all(0.0 <= w <= s for w, s in zip(r["timeline"]["verify_wait_s"], r["timeline"]["seconds"]))
        assert max(r["timeline"]["in_flight"]) == 3
        # the mix in flight: one count per replayed profile, summing to the requests in flight
        assert [sum(m) for m in r["timeline"]["in_flight_by_profile"]] == r["timeline"]["in_flight"]
        assert {len(m) for m in r["timeline"]["in_flight_by_profile"]} == {len(PROFILES)}
    by_line = {r["line"]: r for r in data["results"]}
    assert by_line["no spec"]["tokens_match_no_spec"] is True and by_line["no spec"]["k_histogram"] == {"0": by_line["no spec"]["k_histogram"]["0"]}
    assert set(by_line["k=2"]["k_histogram"]) == {"2"}
    assert by_line["schedule"]["draft_len_schedule"] is not None  # 'auto', planned at start-up
    comparison = data["comparison"]
    static = {n: by_line[n]["tokens_per_s"] for n in ("no spec", "k=1", "k=2")}
    assert comparison["best_static_line"] == max(static, key=static.get)
    assert comparison["goodput_over_best_static"] == pytest.approx(by_line["goodput"]["tokens_per_s"] / max(static.values()))
    assert comparison["goodput_over_schedule"] == pytest.approx(by_line["goodput"]["tokens_per_s"] / by_line["schedule"]["tokens_per_s"])
    # The per-phase oracle: each phase at its best static line's time.
    oracle_seconds = sum(min(by_line[n]["per_phase"][p]["time_s"] for n in static) for p in range(3))
    assert comparison["per_phase_best_static_tokens_per_s"] == pytest.approx(meta["total_tokens"] / oracle_seconds)
    assert comparison["goodput_over_per_phase_best_static"] == pytest.approx(
        by_line["goodput"]["tokens_per_s"] * oracle_seconds / meta["total_tokens"])
    # The planning profile (goodput warm start, auto schedule) is the request-weighted mix.
    planning = json.loads((out / PLANNING_PROFILE_FILE).read_text())
    weights = [p["requests"] for p in meta["replay_profiles"]]
    assert planning["acceptance_per_position"] == pytest.approx(mixed_acceptance([load_acceptance(p) for p in PROFILES], weights))
    assert comparison["adaptive_over_goodput"] == pytest.approx(by_line["adaptive"]["tokens_per_s"] / by_line["goodput"]["tokens_per_s"])
    assert [p["adaptive_tokens_per_s"] for p in comparison["per_phase"]] == [
        p["tokens_per_s"] for p in by_line["adaptive"]["per_phase"]]
    # what each step's k came from, and what the policies believed as each phase drained (none without a policy)
    adaptive, static_line = by_line["adaptive"], by_line["k=2"]
    decided = [r for r, k in zip(adaptive["timeline"]["reason"], adaptive["timeline"]["k"]) if k is not None]
    assert decided and set(decided) <= {"allocate", "drain", "provisional", "probe", "explore", "catch-up", "max_concurrency", "ramp"}
    assert set(static_line["timeline"]["reason"]) == {""}
    assert all(d == b * k for d, b, k in zip(static_line["timeline"]["drafted"], static_line["timeline"]["batch"],
                                              static_line["timeline"]["k"]) if k is not None)
    assert [p["policy_view"] is None for p in by_line["no spec"]["per_phase"]] == [True] * 3
    for line in ("goodput", "adaptive"):
        assert all(p["policy_view"] for p in by_line[line]["per_phase"]), line
    assert "overhead_cells" in adaptive["per_phase"][1]["policy_view"]
    markdown = (out / "trace.md").read_text()
    assert "ACCEPTANCE REPLAYED" in markdown and "goodput / best static" in markdown
    assert "goodput / per-phase best static" in markdown and "adaptive / goodput" in markdown
    assert (out / "trace.png").stat().st_size > 10_000


def test_trace_without_replay_keeps_greedy_tokens(tiny, tmp_path):
    settings = TraceSettings(
        model=tiny, speculative_config={"decoding_type": "NGram", "max_draft_len": 2}, profiles=None,
        schedule="1:2,3:1", draft_lens=[0, 2], phases=[2, 3], waves=1.0, prompt_len=16, gen_len=8,
        device="cpu", block_size=4, warmup=False,
    )
    data = run_trace(settings, tmp_path)
    assert [r["line"] for r in data["results"]] == ["no spec", "k=2", "schedule", "goodput"]
    for r in data["results"]:
        assert r["tokens_match_no_spec"] is True, r["line"]
        assert r["all_max_tokens"]
    assert data["results"][2]["draft_len_schedule"] == {"1": 2, "3": 1}
    k2 = data["results"][1]
    assert k2["num_accepted"] > 0 and k2["num_drafted"] > k2["num_accepted"]  # drafts accepted and rejected
    assert not data["metadata"]["caveats"] or all("REPLAYED" not in c for c in data["metadata"]["caveats"])
    assert not (tmp_path / PLANNING_PROFILE_FILE).exists()


@pytest.mark.parametrize("args, message", [
    (["--phases", "1,x"], "--phases entry 'x' is not an int"),
    (["--phases", "1,0"], "concurrencies >= 1"),
    (["--requests-per-phase", "2,4"], "one count per phase (8 phases)"),
    (["--phases", "1,2", "--requests-per-phase", "2,0"], "--requests-per-phase entries are request counts >= 1"),
    (["--profiles", "no-such-profile"], "neither a file nor a shipped profile"),
    (["--schedule", "sometimes"], "neither 'auto'"),
    (["--ks", "0-9"], "out of range: allowed 0..2"),
    (["--profiles", "none"], "'auto' schedule line plans from an acceptance profile"),
])
def test_cli_bad_arguments(tiny, tmp_path, args, message):
    result = CliRunner().invoke(app, [
        "bench-trace", "--model", tiny, "--drafter", "ngram", "--max-draft-len", "2", "--device", "cpu",
        "--out-dir", str(tmp_path), *args,
    ])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_cli_needs_a_drafter(tiny, tmp_path):
    result = CliRunner().invoke(app, ["bench-trace", "--model", tiny, "--device", "cpu", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "compares speculative lines: give --drafter" in " ".join(result.output.split())


def test_mixed_replay_needs_to_know_the_request(tmp_path):
    from dynaspec.spec.replay import AcceptanceReplay

    (tmp_path / "all.json").write_text(json.dumps({"acceptance_per_position": [1.0]}))
    (tmp_path / "none.json").write_text(json.dumps({"acceptance_per_position": [0.0]}))
    replay = AcceptanceReplay(f"{tmp_path / 'all.json'},{tmp_path / 'none.json'}")
    assert replay.is_mixed and replay.name == "all+none"
    with pytest.raises(RuntimeError, match="needs the request"):
        replay.num_accepted(3)
    ids = [f"r{i}" for i in range(6)]
    assert [replay.num_accepted(3, i) for i in ids] == [3 if profile_index(i, 2) == 0 else 0 for i in ids]
    single = AcceptanceReplay(str(tmp_path / "all.json"))
    assert not single.is_mixed and single.num_accepted(2) == 2  # one profile: no request needed

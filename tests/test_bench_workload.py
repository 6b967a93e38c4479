"""`dynaspec bench --workload`: real chat-templated prompts, the model's own acceptance, per-request output
tokens and the "same tokens as no-spec" check.

CPU, a tiny random Llama whose vocabulary is SmolLM2's, with SmolLM2-135M-Instruct's tokenizer and chat
template copied next to it (so the workloads tokenize as for a real model), batches [1, 3], short outputs.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dynaspec.bench import report
from dynaspec.bench.sweep import SweepSettings, run_sweep
from dynaspec.bench.sweep_prompts import WorkloadPrompts, token_agreement, workload_prompts
from dynaspec.cli import app
from tests.tiny_models import make_tiny_checkpoint

GEN_LEN = 6
BATCHES = [1, 3]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama (SmolLM2's vocabulary size) with SmolLM2's tokenizer files and chat template."""
    out = make_tiny_checkpoint(
        tmp_path_factory.mktemp("workload"), "llama", vocab_size=49152, max_position_embeddings=2048
    )
    for name in TOKENIZER_FILES:
        if (smollm2_dir / name).is_file():
            shutil.copy(smollm2_dir / name, out / name)
    return out


def _settings(model, **changes):
    base = dict(
        model=str(model), speculative_config={"decoding_type": "NGram", "max_draft_len": 2,
                                              "draft_len_schedule": {1: 2, 2: 1}},
        batch_sizes=BATCHES, draft_lens=[0, 2], gen_len=GEN_LEN, device="cpu", workload="chat",
        warmup=False, command_line="pytest",
    )
    base.update(changes)
    return SweepSettings(**base)


@pytest.fixture(scope="module")
def ngram_result(tiny_chat_dir):
    return run_sweep(_settings(tiny_chat_dir)).to_dict()


def test_workload_sweep_runs_real_prompts_and_records_tokens(ngram_result, tiny_chat_dir):
    from transformers import AutoTokenizer


    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    expected = workload_prompts(tokenizer, "chat", max(BATCHES), seed=0)
    meta = ngram_result["metadata"]
    assert meta["workload"] == expected.describe() and meta["workload"]["num_distinct_prompts"] == 3
    assert meta["prompt_len"] is None and meta["acceptance_replay"] is False
    assert [line["name"] for line in ngram_result["lines"]] == ["no spec", "k=2", "schedule"]
    points = {(p["line"], p["batch_size"]): p for p in ngram_result["points"]}
    assert set(points) == {(line, b) for line in ("no spec", "k=2", "schedule") for b in BATCHES}
    for (line, batch), p in points.items():
        tokens = p["output_token_ids"]
        assert len(tokens) == batch and all(len(t) == GEN_LEN for t in tokens)  # ignore_eos: equal lengths
        assert p["decode_tokens"] == batch * (GEN_LEN - 1)
        # Greedy speculative decoding is lossless: the n-gram lines commit exactly the no-spec tokens.
        assert p["same_tokens_as_no_spec"] is True, (line, batch)
        assert p["requests_same_as_no_spec"] == batch and p["first_divergence"] is None
    # The same prompts at every batch size: request 0 is the same conversation at batch 1 and 3.
    assert points[("no spec", 1)]["output_token_ids"][0] == points[("no spec", 3)]["output_token_ids"][0]
    assert points[("no spec", 1)]["acceptance_rate"] is None


def test_workload_markdown_has_the_same_tokens_column(ngram_result, tmp_path):
    md = report.write_markdown(ngram_result, tmp_path / "bench.md").read_text()
    assert ("| line | batch | tok/s | step ms | slowest step ms | mean accepted len | acceptance | k matched "
            "| same tokens as no-spec |") in md
    assert md.count(" | yes |") == 6
    header, rows = report.detail_rows(ngram_result)
    slowest = header.index("slowest step ms")
    assert all(float(row[slowest]) >= float(row[slowest - 1]) > 0 for row in rows)  # the longest step >= the mean
    assert "workload `chat`" in md and "identical to no spec at 4 of 4 (line, batch) points" in md
    assert "workload chat (prompts " in report.title(ngram_result)
    data = json.loads(report.write_json(ngram_result, tmp_path / "bench.json").read_text())
    assert data["points"][0]["output_token_ids"] == ngram_result["points"][0]["output_token_ids"]


def test_self_drafting_accepts_everything_and_keeps_the_tokens(tiny_chat_dir):
    """The target drafting for itself: every greedy draft matches, so acceptance is 100 %."""
    settings = _settings(
        tiny_chat_dir, speculative_config={"decoding_type": "DraftTarget", "max_draft_len": 2,
                                           "speculative_model": str(tiny_chat_dir)},
        batch_sizes=[2], include_schedule=False, workload="code-edit", gen_len=8,
    )
    result = run_sweep(settings).to_dict()
    (no_spec, k2) = result["points"]
    assert k2["line"] == "k=2" and k2["acceptance_rate"] == 1.0 and k2["mean_accepted_length"] > 2.0
    assert k2["same_tokens_as_no_spec"] is True and k2["output_token_ids"] == no_spec["output_token_ids"]
    assert result["metadata"]["workload"]["name"] == "code-edit"


def test_a_differing_line_is_reported(ngram_result):
    result = json.loads(json.dumps(ngram_result))
    point = next(p for p in result["points"] if p["line"] == "k=2" and p["batch_size"] == 3)
    point.update(same_tokens_as_no_spec=False, requests_same_as_no_spec=2, first_divergence=4)
    assert report.same_tokens_cell(point) == "NO (2/3 requests same, first diff at token 4)"
    md = report.markdown(result)
    assert "NO (2/3 requests same, first diff at token 4)" in md and "at 3 of 4 (line, batch) points" in md


def test_token_agreement():
    same = token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]])
    assert same.identical and same.num_identical == 2 and same.first_divergence is None
    diff = token_agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 7, 6]])
    assert not diff.identical and diff.num_identical == 0 and diff.first_divergence == 1
    shorter = token_agreement([[1, 2, 3]], [[1, 2]])
    assert not shorter.identical and shorter.first_divergence == 2
    with pytest.raises(ValueError, match="reference has 1 requests, compared outputs 2"):
        token_agreement([[1]], [[1], [1]])


def test_prompts_cycle_to_fill_a_batch():
    prompts = WorkloadPrompts("chat", ((1, 2), (3, 4, 5)))
    assert prompts.for_batch(5) == [[1, 2], [3, 4, 5], [1, 2], [3, 4, 5], [1, 2]]
    assert prompts.max_len == 3 and prompts.mean_len(2) == 2.5
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        prompts.for_batch(0)
    with pytest.raises(ValueError, match="unknown workload 'poetry'"):
        WorkloadPrompts("poetry", ((1,),))
    with pytest.raises(ValueError, match="at least one non-empty prompt"):
        WorkloadPrompts("chat", ((),))


def test_chat_has_a_distinct_prompt_for_every_request_of_batch_64():
    """Batch 64 of the chat workload decoded 8 questions 8 times each until 2026-12-06; batches 1-8 keep the
    questions they always had, in the same order (their figures stay comparable)."""
    from dynaspec.bench.workloads import chat_prompts

    sixty_four = [p[0]["content"] for p in chat_prompts(64)]
    assert len(set(sixty_four)) == 64
    assert [p[0]["content"] for p in chat_prompts(8)] == sixty_four[:8]
    assert sixty_four[0] == "Write a short motivational message for someone learning to program."  # as before


def test_joined_workloads_alternate_request_by_request(tiny_chat_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    mixed = workload_prompts(tokenizer, "code-edit,chat", 6, seed=0)
    code = workload_prompts(tokenizer, "code-edit", 3, seed=0)
    chat = workload_prompts(tokenizer, "chat", 3, seed=0)
    assert mixed.token_ids[0::2] == code.token_ids and mixed.token_ids[1::2] == chat.token_ids
    assert not set(mixed.warmup_token_ids) & set(mixed.token_ids)
    with pytest.raises(ValueError, match="unknown workload 'poetry' in 'chat,poetry'.*joined by commas"):
        workload_prompts(tokenizer, "chat,poetry", 2)
    with pytest.raises(ValueError, match="names one workload twice"):
        workload_prompts(tokenizer, "chat, chat", 2)


def test_workload_needs_a_chat_template():
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        workload_prompts(None, "chat", 2)
    with pytest.raises(ValueError, match="unknown workload"):
        workload_prompts(None, "poetry", 2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(workload="poetry"), "unknown workload 'poetry'"),
        (dict(acceptance_profile="acceptance_ngram_code-edit"), "drop the acceptance profile"),
    ],
)
def test_bad_workload_settings_are_refused(tiny_chat_dir, changes, message):
    with pytest.raises(ValueError, match=message):
        _settings(tiny_chat_dir, **changes).validate()


def test_cli_workload_and_its_errors(tiny_chat_dir, tmp_path):
    from tests.tiny_models import make_tiny_checkpoint as bare_checkpoint

    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(app, [
        "bench", "--model", str(tiny_chat_dir), "--drafter", "ngram", "--max-draft-len", "1", "--ks", "0,1",
        "--batch-sizes", "2", "--gen-len", "4", "--workload", "chat", "--device", "cpu", "--no-warmup",
        "--no-plots", "--out-dir", str(out),
    ])
    assert ok.exit_code == 0, ok.output
    data = json.loads((out / "bench.json").read_text())
    assert data["metadata"]["workload"]["name"] == "chat"
    assert [p["same_tokens_as_no_spec"] for p in data["points"]] == [True, True]
    assert "same tokens as no-spec" in (out / "bench.md").read_text()

    both = runner.invoke(app, ["bench", "--model", str(tiny_chat_dir), "--workload", "chat", "--prompt-len", "8",
                               "--device", "cpu", "--out-dir", str(out)])
    assert both.exit_code == 2 and "--workload prompts keep their real length" in _flat(both.output)
    bare = bare_checkpoint(tmp_path, "llama")  # no tokenizer files
    no_template = runner.invoke(app, ["bench", "--model", str(bare), "--workload", "chat", "--batch-sizes", "1",
                                      "--gen-len", "2", "--device", "cpu", "--no-plots", "--out-dir", str(out)])
    assert no_template.exit_code == 2 and "needs a tokenizer with a chat template" in _flat(no_template.output)


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_warmup_prompts_are_other_prompts_of_the_workload(tiny_chat_dir, monkeypatch):
    """The untimed warm-up batch runs prompts of the same workload that are never measured (so a shared
    n-gram pool cannot learn the measured ones), and random ids only when the workload has no others."""
    from transformers import AutoTokenizer


    import dynaspec.bench.sweep as sweep

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    code = workload_prompts(tokenizer, "code-edit", 3, seed=0)
    assert len(code.warmup_token_ids) == 3 and not set(code.warmup_token_ids) & set(code.token_ids)
    assert code.warmup_for_batch(4) == [list(p) for p in code.warmup_token_ids + code.warmup_token_ids[:1]]
    # the chat workload measures all of its few conversations: its warm-ups are other questions
    every_chat = workload_prompts(tokenizer, "chat", 64, seed=0)
    assert len(every_chat.warmup_token_ids) == len(set(every_chat.warmup_token_ids)) >= 16
    assert not set(every_chat.warmup_token_ids) & set(every_chat.token_ids)
    mixed = workload_prompts(tokenizer, "code-edit,chat", 8, seed=0)
    assert len(mixed.warmup_token_ids) == 8 and not set(mixed.warmup_token_ids) & set(mixed.token_ids)

    fed: list = []
    run_batch = sweep._run_batch
    monkeypatch.setattr(sweep, "_run_batch", lambda engine, batch, plen, glen, rng, prompts=None:
                        fed.append(prompts) or run_batch(engine, batch, plen, glen, rng, prompts))
    run_sweep(_settings(tiny_chat_dir, workload="code-edit", batch_sizes=[2], draft_lens=[0], warmup=True,
                        include_schedule=False))
    warmup, measured = fed  # one line, one batch size: the warm-up batch, then the timed one
    assert warmup == code.warmup_for_batch(2) and measured == code.for_batch(2)


def test_every_point_starts_on_a_reset_drafter(tiny_chat_dir, monkeypatch):
    """Batch b takes the first b prompts, so the measured prompts recur from point to point (and round to
    round); a shared n-gram pool that kept the previous point's outputs of the same prompts would propose
    them back. Each point's batch starts on an empty pool (no warm-up here)."""
    import dynaspec.bench.sweep as sweep

    pool_sizes: list[int] = []
    run_batch = sweep._run_batch

    def spy(engine, batch, plen, glen, rng, prompts=None):
        if engine.config.speculative_config is not None:  # the no-spec line's drafter is a NoDrafter
            pool_sizes.append(len(engine.drafter.pool("any")))
        return run_batch(engine, batch, plen, glen, rng, prompts)

    monkeypatch.setattr(sweep, "_run_batch", spy)
    result = run_sweep(_settings(tiny_chat_dir, batch_sizes=[1, 2], draft_lens=[0, 2], include_schedule=False,
                                 rounds=2)).to_dict()
    assert pool_sizes == [0, 0, 0, 0]  # k=2 line: batch 1 and batch 2, two rounds each
    k2 = [p for p in result["points"] if p["line"] == "k=2"]
    assert all(p["same_tokens_as_no_spec"] for p in k2)


def test_random_warmup_fits_the_engine_sized_by_the_workload(tiny_chat_dir, monkeypatch):
    """A workload with no prompt besides the measured ones (here: chat with its warm-up questions taken away)
    warms up on random ids: as long as the longest measured prompt (the engine's max_model_len is sized by
    it), not --prompt-len's 128, which the engine refused ("prompt is 128 tokens; max_model_len is 113") on
    the GPU."""
    from transformers import AutoTokenizer


    import dynaspec.bench.sweep as sweep
    import dynaspec.bench.sweep_prompts as sweep_prompts
    from dynaspec.bench.workloads import workload

    monkeypatch.setattr(sweep_prompts, "warmup_workload", workload)
    every_chat = workload_prompts(AutoTokenizer.from_pretrained(str(tiny_chat_dir)), "chat", 64, seed=0)
    assert every_chat.warmup_token_ids == ()
    assert every_chat.max_len + 2 + 1 < 128  # the old warm-up would not have fitted
    fed: list = []
    run_batch = sweep._run_batch
    monkeypatch.setattr(sweep, "_run_batch", lambda engine, batch, plen, glen, rng, prompts=None:
                        fed.append((plen, prompts)) or run_batch(engine, batch, plen, glen, rng, prompts))
    result = run_sweep(_settings(tiny_chat_dir, workload="chat", batch_sizes=[64], draft_lens=[0], warmup=True,
                                 include_schedule=False, gen_len=2))
    (warmup_len, warmup_prompts), _ = fed
    assert warmup_prompts is None and warmup_len == every_chat.max_len
    assert result.points[0].batch_tokens == 64 * 2  # the timed batch ran: 2 tokens each


def test_chat_warms_up_on_its_own_questions_and_they_fit(tiny_chat_dir, monkeypatch):
    """Chat measures all of its conversations at batch 64: the warm-up batch runs its other questions (not
    random ids, on which a real drafter accepts nothing and an online policy learns k = 0 before the point),
    and the engine, sized by the longest prompt, warm-ups included, takes them."""
    import dynaspec.bench.sweep as sweep

    fed: list = []
    run_batch = sweep._run_batch
    monkeypatch.setattr(sweep, "_run_batch", lambda engine, batch, plen, glen, rng, prompts=None:
                        fed.append(prompts) or run_batch(engine, batch, plen, glen, rng, prompts))
    result = run_sweep(_settings(tiny_chat_dir, workload="chat", batch_sizes=[64], draft_lens=[0], warmup=True,
                                 include_schedule=False, gen_len=2))
    warmup, measured = fed
    assert warmup is not None and len(warmup) == 64 and not {tuple(p) for p in warmup} & {tuple(p) for p in measured}
    assert result.points[0].batch_tokens == 64 * 2

"""Property-based fuzzing (hypothesis) of speculative configs and draft-length schedules (issue 24).

Three targets, each with a bounded, derandomized, deadline-free example budget:

* valid configs (n-gram and draft-model, every policy: a schedule as a dict with int or string keys or as
  '1:4,8:2' text, `auto`, `goodput`; max_concurrency, pool options, the mapping form with
  `decoding_type`; a small KV pool that forces preemption) run LOSSLESS: greedy tokens identical to the
  engine without speculation, and every KV block and request released afterwards;
* one rule broken in an otherwise valid config (schedule without key 1, a value above max_draft_len,
  goodput with a schedule, an unknown field, a missing draft model, ...) raises ValueError (pydantic's
  ValidationError is one) whose message names what is wrong, from the config or from LLM(...);
* arbitrary values for every field either build a config that then runs lossless, or raise ValueError
  with a message; never another exception type.

The goodput and `auto` policies read a fixed step-cost table written once per module, so no decision
here depends on this machine's timings. The no-speculation baseline is generated once per module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dynaspec import LLM, DraftTargetDecodingConfig, NGramDecodingConfig, SamplingParams
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.config import MAX_DRAFT_LEN_LIMIT
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

VALID_EXAMPLES = 20
INVALID_EXAMPLES = 60
ARBITRARY_EXAMPLES = 60

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
ENGINE = dict(block_size=4, max_model_len=64)
SMALL_POOL = dict(num_kv_blocks=24, max_num_batched_tokens=64)  # forces preemption at batch 4
PROFILES = ("acceptance_ngram_chat", "acceptance_ngram_code-edit", "acceptance_draft-model_humaneval")


def fuzz(max_examples: int) -> settings:
    """Bounded, deadline-free, derandomized, no example database: the same examples on every machine."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def _prompts() -> list[list[int]]:
    """Four token-id prompts of mixed lengths with repeated spans, so prompt lookup finds matches."""
    gen = torch.Generator().manual_seed(11)
    prompts = []
    for i in range(4):
        motif = torch.randint(0, 512, (3 + i,), generator=gen).tolist()
        prompts.append((motif * 4)[: 5 + 7 * i] + [i])
    return prompts


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """The tiny target, a perturbed copy of it (a draft model that is sometimes rejected), a step-cost table
    and a path that does not exist."""
    root = tmp_path_factory.mktemp("fuzz-spec")
    cost = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(MAX_DRAFT_LEN_LIMIT + 1):
            cost.add(batch, k, 1e-3 * (1.0 + 0.15 * k) * (1.0 + 0.1 * batch))
    cost.save(root / "step_cost.json")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "near": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
        "cost": str(root / "step_cost.json"),
        "missing": str(root / "does-not-exist"),
    }


@pytest.fixture(scope="module")
def baseline(paths) -> list[list[int]]:
    """Greedy tokens of every prompt without speculation (one engine, built once)."""
    llm = LLM(model=paths["target"], **ENGINE)
    return [o.token_ids for o in llm.generate(PROMPTS, GREEDY)]


# ------------------------------------------------------------------------------------------- strategies

@st.composite
def schedules(draw, k: int) -> Any:
    """A valid draft_len_schedule for max_draft_len k: {1: k, thresholds: <= k}, as a dict with int or
    decimal-string keys (JSON), or as the CLI's '1:k,8:2' text."""
    thresholds = draw(st.lists(st.integers(2, 64) | st.integers(65, 2**62), max_size=4, unique=True))
    table = {1: k, **{t: draw(st.integers(0, k)) for t in thresholds}}
    form = draw(st.sampled_from(["int", "str", "text"]))
    if form == "str":
        return {f" {key}" if key % 2 else str(key): str(value) for key, value in table.items()}
    if form == "text":
        return ",".join(f"{key}:{value}" for key, value in table.items())
    return table


@st.composite
def valid_fields(draw, paths: dict[str, str]) -> dict[str, Any]:
    """The fields of a valid speculative config (with its `decoding_type`)."""
    kind = draw(st.sampled_from(["NGram", "NGram", "DraftTarget"]))
    k = draw(st.integers(1, 6) | st.sampled_from([8, MAX_DRAFT_LEN_LIMIT]))
    fields: dict[str, Any] = {"decoding_type": kind, "max_draft_len": k}
    policy = draw(st.sampled_from(["schedule", "schedule", "goodput", "auto"]))
    if policy == "goodput":
        fields.update(draft_len_policy="goodput", step_cost_file=paths["cost"],
                      goodput_hysteresis=draw(st.floats(0.0, 1.0)),
                      acceptance_profile=draw(st.none() | st.sampled_from(PROFILES)))
    elif policy == "auto":
        fields.update(draft_len_schedule="auto", acceptance_profile=draw(st.sampled_from(PROFILES)),
                      step_cost_file=paths["cost"])
    else:
        fields["draft_len_schedule"] = draw(st.none() | schedules(k))
    fields["max_concurrency"] = draw(st.none() | st.integers(1, 4) | st.integers(5, 2**63))
    if kind == "NGram":
        fields.update(
            max_matching_ngram_size=draw(st.integers(1, 6) | st.integers(7, 2**40)),
            is_keep_all=draw(st.booleans()), is_use_oldest=draw(st.booleans()),
            is_public_pool=draw(st.booleans()),
            max_pool_entries=draw(st.integers(1, 8) | st.integers(9, 2**40)),
        )
    else:
        name = draw(st.sampled_from(["speculative_model", "speculative_model_dir"]))
        fields[name] = paths[draw(st.sampled_from(["target", "near"]))]
    return fields


def _schedule_mode(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields with the schedule policy (no goodput-only step_cost_file)."""
    out = {k: v for k, v in fields.items() if k not in ("step_cost_file", "draft_len_schedule")}
    out["draft_len_policy"] = "schedule"
    return out


def _with(**changes: Any):
    return lambda f, p: {**f, **changes}


def _schedule(table: Any):
    return lambda f, p: {**_schedule_mode(f), "draft_len_schedule": table(f["max_draft_len"])}


# (name, mutation of valid fields, word the error message must contain); "llm" marks errors raised only
# when the engine is built (a path checked at start-up).
MUTATIONS: list[tuple[str, Any, str]] = [
    *[(f"max_draft_len={v!r}", _with(max_draft_len=v), "max_draft_len")
      for v in (0, -1, MAX_DRAFT_LEN_LIMIT + 1, 2**70, 2.5, "four", None, float("nan"))],
    ("schedule without key 1", _schedule(lambda k: {2: k, 8: 0}), "key 1"),
    ("schedule[1] != max_draft_len", _schedule(lambda k: {1: k + 1}), "max_draft_len"),
    ("schedule value above max", _schedule(lambda k: {1: k, 4: k + 1}), "must not exceed"),
    ("schedule negative value", _schedule(lambda k: {1: k, 4: -1}), ">= 0"),
    ("schedule key 0", _schedule(lambda k: {0: k, 1: k}), ">= 1"),
    ("schedule negative key", _schedule(lambda k: {1: k, -8: 0}), ">= 1"),
    ("schedule float key", _schedule(lambda k: {1: k, 2.5: 0}), "must be an int"),
    ("schedule NaN key", _schedule(lambda k: {1: k, float("nan"): 0}), "must be an int"),
    ("schedule None value", _schedule(lambda k: {1: k, 4: None}), "must be an int"),
    ("schedule bool value", _schedule(lambda k: {1: k, 4: True}), "bool"),
    ("schedule word key", _schedule(lambda k: {1: k, "eight": 0}), "must be an int"),
    ("schedule duplicate threshold", _schedule(lambda k: {1: k, "8": 0, 8: 0}), "more than once"),
    ("schedule empty", _schedule(lambda k: {}), "empty"),
    ("schedule list", _schedule(lambda k: [1, k]), "mapping"),
    ("schedule int", _schedule(lambda k: k), "mapping"),
    ("schedule bytes", _schedule(lambda k: b"1:2"), "mapping"),
    ("schedule empty text", _schedule(lambda k: ""), "draft_len_schedule"),
    ("schedule bad text", _schedule(lambda k: f"1:{k}:3"), "threshold:draft_len"),
    ("schedule text with NUL", _schedule(lambda k: f"1:{k}\x00"), "must be an int"),
    ("schedule text lone surrogate", _schedule(lambda k: "1:\ud800"), "must be an int"),
    ("auto without acceptance_profile",
     lambda f, p: {**{k: v for k, v in f.items() if k != "acceptance_profile"}, "draft_len_schedule": "auto",
                   "draft_len_policy": "schedule"}, "acceptance_profile"),
    ("goodput with a schedule", lambda f, p: {**f, "draft_len_policy": "goodput",
                                              "draft_len_schedule": {1: f["max_draft_len"]}}, "goodput"),
    ("step_cost_file with the schedule policy",
     lambda f, p: {**_schedule_mode(f), "step_cost_file": p["cost"]}, "step_cost_file"),
    ("step_cost_file missing (engine start)",
     lambda f, p: {**f, "draft_len_policy": "goodput", "draft_len_schedule": None, "step_cost_file": p["missing"]},
     "llm:does not exist"),
    ("step_cost_file empty", _with(step_cost_file=""), "step_cost_file"),
    ("acceptance_profile missing", lambda f, p: {**f, "acceptance_profile": p["missing"]}, "does not exist"),
    ("acceptance_profile empty", _with(acceptance_profile=""), "acceptance_profile"),
    *[(f"max_concurrency={v!r}", _with(max_concurrency=v), "max_concurrency") for v in (0, -3, 1.5, "many")],
    *[(f"draft_len_policy={v!r}", _with(draft_len_policy=v), "draft_len_policy")
      for v in ("greedy", "", "GOODPUT", None, 1)],
    *[(f"goodput_hysteresis={v!r}", _with(goodput_hysteresis=v), "goodput_hysteresis")
      for v in (-0.1, float("nan"), float("inf"), "x")],
    ("unknown field", _with(draft_len=3), "draft_len"),
    ("decoding_type unknown", _with(decoding_type="Eagle3"), "decoding_type"),
    ("decoding_type missing", lambda f, p: {k: v for k, v in f.items() if k != "decoding_type"}, "decoding_type"),
    ("replay profile list with a non-string", _with(replay_acceptance_profile=["a", 1]), "replay_acceptance_profile"),
    ("replay profile empty name", _with(replay_acceptance_profile="a,,b"), "replay_acceptance_profile"),
    ("replay profile missing (engine start)", lambda f, p: {**f, "replay_acceptance_profile": p["missing"]},
     "llm:neither a file"),
]
NGRAM_MUTATIONS: list[tuple[str, Any, str]] = [
    *[(f"max_matching_ngram_size={v!r}", _with(max_matching_ngram_size=v), "max_matching_ngram_size")
      for v in (0, -1, 1.5, None)],
    *[(f"max_pool_entries={v!r}", _with(max_pool_entries=v), "max_pool_entries") for v in (0, -5, "lots")],
    *[(f"is_public_pool={v!r}", _with(is_public_pool=v), "is_public_pool") for v in (2, "maybe", None)],
    ("speculative_model on NGram", lambda f, p: {**f, "speculative_model": p["target"]}, "speculative_model"),
]
DRAFT_MUTATIONS: list[tuple[str, Any, str]] = [
    ("speculative_model empty", lambda f, p: {**_no_draft(f), "speculative_model": ""}, "speculative_model"),
    ("speculative_model missing", lambda f, p: _no_draft(f), "speculative_model"),
    ("speculative_model not found (engine start)",
     lambda f, p: {**_no_draft(f), "speculative_model": p["missing"]}, "llm:unknown model"),
    ("max_matching_ngram_size on DraftTarget", _with(max_matching_ngram_size=3), "max_matching_ngram_size"),
]


def _no_draft(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in ("speculative_model", "speculative_model_dir")}


FIELD_NAMES = ["max_draft_len", "draft_len_schedule", "max_concurrency", "draft_len_policy", "goodput_hysteresis",
               "acceptance_profile", "step_cost_file", "max_matching_ngram_size", "is_keep_all", "is_use_oldest",
               "is_public_pool", "max_pool_entries", "speculative_model", "speculative_model_dir", "frobnicate"]
scalars = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.sampled_from(["auto", "goodput", "schedule", "1:4,8:2", "1:2", " 3 ", "NGram", *PROFILES]))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.integers(-2, 70) | st.text(max_size=3), inner, max_size=4),
                        max_leaves=8)


@st.composite
def arbitrary_fields(draw, paths: dict[str, str]) -> dict[str, Any]:
    """Any value for any subset of the fields; model paths are only ever the tiny target or a missing path
    (a random string must not name a zoo model or a Hub repository)."""
    fields: dict[str, Any] = {"decoding_type": draw(st.sampled_from(["NGram", "DraftTarget"]) | anything)}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=6, unique=True)):
        if name.startswith("speculative_model"):
            fields[name] = paths[draw(st.sampled_from(["target", "missing"]))]
        elif name == "step_cost_file":
            fields[name] = draw(st.sampled_from([paths["cost"], paths["missing"]]) | anything)
        else:
            fields[name] = draw(anything)
    return fields


# ---------------------------------------------------------------------------------------------- helpers

def build_config(fields: dict[str, Any], form: str) -> Any:
    """The config object (class picked by decoding_type) or, for form "mapping", the mapping itself
    (LLM / EngineConfig parse it by its decoding_type)."""
    if form == "mapping":
        return dict(fields)
    rest = {k: v for k, v in fields.items() if k != "decoding_type"}
    if fields.get("decoding_type") == "DraftTarget":
        return DraftTargetDecodingConfig(**rest)
    if fields.get("decoding_type") == "NGram":
        return NGramDecodingConfig(**rest)
    return dict(fields)  # an unknown or missing decoding_type goes through the mapping path


def assert_lossless(paths, baseline, spec: Any, batch: list[int], small_pool: bool, llm: LLM | None = None) -> LLM:
    """Generate the chosen prompts with `spec` (on `llm` when given); tokens must equal the no-speculation
    baseline, and the engine must be idle with every KV block free afterwards."""
    if llm is None:
        llm = LLM(model=paths["target"], speculative_config=spec, **ENGINE, **(SMALL_POOL if small_pool else {}))
    outs = llm.generate([PROMPTS[i] for i in batch], GREEDY)
    assert [o.token_ids for o in outs] == [baseline[i] for i in batch], f"speculation changed greedy output: {spec!r}"
    stats = llm.get_stats()
    assert stats["num_drafted"] >= stats["num_accepted"] >= 0
    engine = llm.engine
    assert not engine.requests and not engine.has_unfinished_requests()
    assert engine.num_free_blocks == engine.num_total_blocks
    return llm


def build_and_run_or_refuse(paths, baseline, fields: dict[str, Any], form: str, batch: list[int]) -> str:
    """Build the config and the engine: a refusal must be a ValueError with a message (returned); a
    success must run lossless (returns "")."""
    try:
        spec = build_config(fields, form)
        llm = LLM(model=paths["target"], speculative_config=spec, **ENGINE)
    except ValueError as exc:
        assert str(exc).strip(), f"empty error message for {fields!r}"
        return str(exc)
    if llm.config.speculative_config is not None and llm.config.speculative_config.replay_acceptance_profile:
        llm.generate([PROMPTS[i] for i in batch], GREEDY)  # benchmark-only replay: not the model's output
    else:
        assert_lossless(paths, baseline, spec, batch, small_pool=False, llm=llm)
    return ""


batches = st.lists(st.integers(0, len(PROMPTS) - 1), min_size=1, max_size=len(PROMPTS), unique=True)


# ------------------------------------------------------------------------------------------------ tests

@fuzz(VALID_EXAMPLES)
@given(data=st.data(), form=st.sampled_from(["object", "mapping"]), batch=batches, small_pool=st.booleans())
def test_valid_spec_configs_are_lossless(paths, baseline, data, form, batch, small_pool):
    fields = data.draw(valid_fields(paths), label="fields")
    spec = build_config(fields, form)
    assert_lossless(paths, baseline, spec, batch, small_pool)


@fuzz(INVALID_EXAMPLES)
@given(data=st.data(), form=st.sampled_from(["object", "mapping"]))
def test_one_broken_rule_is_a_clear_value_error(paths, data, form):
    fields = data.draw(valid_fields(paths), label="valid fields")
    extra = NGRAM_MUTATIONS if fields["decoding_type"] == "NGram" else DRAFT_MUTATIONS
    name, mutate, word = data.draw(st.sampled_from(MUTATIONS + extra), label="mutation")
    broken = mutate(fields, paths)
    at_start = word.startswith("llm:")
    word = word.removeprefix("llm:")
    if at_start:  # a path whose content the config does not read: it builds, the engine refuses it
        spec = build_config(broken, form)
        with pytest.raises(ValueError) as info:
            LLM(model=paths["target"], speculative_config=spec, **ENGINE)
    else:
        with pytest.raises(ValueError) as info:
            LLM(model=paths["target"], speculative_config=build_config(broken, form), **ENGINE)
    message = str(info.value)
    event("refused at engine start-up" if at_start else "refused by the config")
    assert word.lower() in message.lower(), f"{name}: the error does not say {word!r}: {message}"


@fuzz(ARBITRARY_EXAMPLES)
@given(data=st.data(), form=st.sampled_from(["object", "mapping"]), batch=batches)
def test_arbitrary_field_values_build_or_raise_value_error(paths, baseline, data, form, batch):
    fields = data.draw(arbitrary_fields(paths), label="fields")
    refused = build_and_run_or_refuse(paths, baseline, fields, form, batch)
    event("refused with ValueError" if refused else "built and ran lossless")


def test_baseline_engine_still_matches_after_fuzzing(paths, baseline):
    """After all the above, a fresh plain engine and a default n-gram engine still give the baseline."""
    assert_lossless(paths, baseline, None, list(range(len(PROMPTS))), small_pool=True)
    assert_lossless(paths, baseline, NGramDecodingConfig(), list(range(len(PROMPTS))), small_pool=True)


def test_every_mutation_is_named_once():
    """The mutation table has no duplicate names (each failure report points at one rule)."""
    names = [name for name, _, _ in MUTATIONS + NGRAM_MUTATIONS + DRAFT_MUTATIONS]
    assert len(names) == len(set(names))
    assert all(isinstance(w, str) and w for _, _, w in MUTATIONS + NGRAM_MUTATIONS + DRAFT_MUTATIONS)

"""Speculative decoding configs, with TensorRT-LLM's field names (`decoding_type`, `max_draft_len`, ...).

A TensorRT-LLM YAML file parses here when its `draft_len_schedule` is in TensorRT-LLM's first form (keys
are lower bounds, key 1 present); a file in its later form (keys are inclusive upper bounds) must be
converted first, see DRAFT_LEN_SCHEDULE_FORMS below.

TensorRT-LLM's LLM API takes `speculative_config=NGramDecodingConfig(...)`,
`DraftTargetDecodingConfig(...)` or `EagleDecodingConfig(...)`; in YAML the class is picked by
`decoding_type` ("NGram" / "DraftTarget" / "Eagle"). Both configs carry the dynamic draft length fields:

* `draft_len_schedule`: batch-size threshold -> draft length. The entry with the LARGEST threshold <=
  the number of requests decoding in a step applies (TensorRT-LLM's first form, PR #8194). Keys are ints
  >= 1, values ints >= 0 (0 = no speculation that step), key 1 must be present with value `max_draft_len`, and no value
  may exceed `max_draft_len`. Stored sorted by threshold. The string "auto" instead chooses the schedule
  at engine start-up (spec/auto_schedule.py): T(batch, k) probed from the captured graphs (or read from
  `step_cost_file`) and acceptance from `acceptance_profile` (required), planned as `dynaspec tune` does.
* `max_concurrency`: when more requests are active than this, the step does not speculate.
* `draft_len_policy`: "schedule" (the above), "goodput" (spec/planner.py, SmartSpec-style online choice
  of k) or "adaptive" (spec/adaptive.py, its per-request form: one k per request), with
  `goodput_hysteresis` and an optional `acceptance_profile` JSON to warm-start acceptance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from dynaspec.spec.planner_settings import PlannerSettings

MAX_DRAFT_LEN_LIMIT = 32
DECODING_TYPES = ("NGram", "DraftTarget", "Eagle")


def _as_int(value: Any, what: str) -> int:
    """An int from an int or a decimal string (JSON object keys are strings); bools and floats refused."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int, got the bool {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be an int, got the string {value!r}") from None
    raise ValueError(f"{what} must be an int, got {type(value).__name__} {value!r}")


def normalize_draft_len_schedule(schedule: Mapping[Any, Any]) -> dict[int, int]:
    """Check the shape of a draft_len_schedule and return it as {int: int} sorted by threshold.

    Rules checked here (those that do not depend on max_draft_len): keys ints >= 1, values ints >= 0,
    key 1 present. Each failure names the offending entry.
    """
    if not isinstance(schedule, Mapping):
        raise ValueError(
            f"draft_len_schedule must be a mapping of batch-size threshold -> draft length, "
            f"e.g. {{1: 4, 8: 2, 32: 0}}; got {type(schedule).__name__}"
        )
    if not schedule:
        raise ValueError("draft_len_schedule must not be empty: it needs at least the entry for batch size 1")
    result: dict[int, int] = {}
    for raw_key, raw_value in schedule.items():
        entry = f"draft_len_schedule entry {raw_key!r}: {raw_value!r}"
        key = _as_int(raw_key, f"{entry}: the key (a batch-size threshold)")
        value = _as_int(raw_value, f"{entry}: the value (a draft length)")
        if key < 1:
            raise ValueError(f"{entry}: the key (a batch-size threshold) must be >= 1, got {key}")
        if value < 0:
            raise ValueError(f"{entry}: the value (a draft length) must be >= 0, got {value}")
        if key in result:
            raise ValueError(f"{entry}: threshold {key} appears more than once")
        result[key] = value
    if 1 not in result:
        raise ValueError(missing_key_1_message(result))
    return dict(sorted(result.items()))


DRAFT_LEN_SCHEDULE_FORMS = (
    "dynaspec reads draft_len_schedule keys as LOWER bounds (TensorRT-LLM's first form, PR #8194): the entry "
    "with the largest key <= the number of requests decoding applies, so key 1 is required. TensorRT-LLM's "
    "later releases read keys as inclusive UPPER bounds (the entry with the smallest key >= the batch applies, "
    "k = 0 above the largest key). To convert an upper-bound schedule {b1: k1, b2: k2, ..., bn: kn} "
    "(b1 < b2 < ... < bn), write {1: k1, b1+1: k2, ..., b(n-1)+1: kn, bn+1: 0}"
)


def upper_bound_to_lower_bound(schedule: Mapping[int, int]) -> dict[int, int]:
    """A schedule in TensorRT-LLM's later form (keys are inclusive upper bounds, k = 0 above the largest)
    written in dynaspec's form (keys are lower bounds, key 1 present)."""
    converted: dict[int, int] = {}
    start = 1
    for bound, k in [*sorted(schedule.items()), (None, 0)]:
        if not converted or list(converted.values())[-1] != k:  # equal neighbours merge
            converted[start] = k
        start = bound + 1 if bound is not None else start
    return converted


def missing_key_1_message(schedule: Mapping[int, int]) -> str:
    """The error for a schedule without key 1: both readings and, for this one, its conversion."""
    keys = sorted(schedule)
    text = ", ".join(f"{k}: {schedule[k]}" for k in keys)
    converted = ", ".join(f"{k}: {v}" for k, v in upper_bound_to_lower_bound(schedule).items())
    return (
        f"draft_len_schedule must contain key 1 (the draft length for batch size 1); got thresholds {keys}. "
        f"{DRAFT_LEN_SCHEDULE_FORMS}; if {{{text}}} is in TensorRT-LLM's later form, here it reads {{{converted}}}"
    )


def check_schedule_against_max(schedule: Mapping[int, int], max_draft_len: int) -> None:
    """The rules that tie a schedule to max_draft_len: schedule[1] == max_draft_len, no value above it."""
    if schedule[1] != max_draft_len:
        raise ValueError(
            f"draft_len_schedule entry 1: {schedule[1]}: the draft length for batch size 1 must equal "
            f"max_draft_len ({max_draft_len})"
        )
    for key, value in schedule.items():
        if value > max_draft_len:
            raise ValueError(
                f"draft_len_schedule entry {key}: {value}: the draft length must not exceed "
                f"max_draft_len ({max_draft_len})"
            )


def validate_draft_len_schedule(schedule: Mapping[Any, Any], max_draft_len: int) -> dict[int, int]:
    """All draft_len_schedule rules; returns the schedule as a sorted {int: int}."""
    normalized = normalize_draft_len_schedule(schedule)
    check_schedule_against_max(normalized, max_draft_len)
    return normalized


AUTO_SCHEDULE = "auto"


def parse_draft_len_schedule_option(value: Any) -> dict[int, int] | str:
    """A draft_len_schedule as a config or the CLI gives it: "auto", a mapping, or the text '1:4,8:2,32:0'.

    Returns "auto" or the normalized {int: int}; any other string is a ValueError naming what is allowed.
    """
    if isinstance(value, str):
        if value.strip().lower() == AUTO_SCHEDULE:
            return AUTO_SCHEDULE
        if ":" in value:  # pairs: their own errors say which entry or rule is wrong
            return parse_draft_len_schedule(value)
        try:
            return parse_draft_len_schedule(value)
        except ValueError as exc:
            raise ValueError(
                f"draft_len_schedule {value!r} is neither 'auto' nor comma-separated 'threshold:draft_len' pairs "
                f"like '1:4,8:2,32:0' ({exc})"
            ) from None
    return normalize_draft_len_schedule(value)


def parse_draft_len_schedule(text: str) -> dict[int, int]:
    """Parse the CLI form '1:4,8:2,32:0' into {1: 4, 8: 2, 32: 0} (shape rules checked, sorted).

    The rules that involve max_draft_len are checked when the schedule is put into a config.
    """
    if not isinstance(text, str):
        raise TypeError(f"draft_len_schedule text must be a str like '1:4,8:2,32:0', got {type(text).__name__}")
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in items):
        raise ValueError(
            f"draft_len_schedule {text!r} has an empty entry; expected comma-separated 'threshold:draft_len' "
            f"pairs like '1:4,8:2,32:0'"
        )
    pairs: dict[str, str] = {}
    for part in items:
        fields = part.split(":")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise ValueError(
                f"draft_len_schedule entry {part!r} is not 'threshold:draft_len' (example: '8:2')"
            )
        key, value = fields[0].strip(), fields[1].strip()
        if key in pairs:
            raise ValueError(f"draft_len_schedule entry {part!r}: threshold {key} appears more than once")
        pairs[key] = value
    return normalize_draft_len_schedule(pairs)


def resolve_acceptance_profile(name_or_path: str) -> str | None:
    """The path of an acceptance profile given as a JSON path or a shipped profile's name (spec/replay.py's
    resolution), or None when it is neither (check_acceptance_profile then says so)."""
    from dynaspec.spec.replay import resolve_profile_path

    try:
        return str(resolve_profile_path(name_or_path))
    except ValueError:
        return None


def check_acceptance_profile(path: str) -> None:
    """At validation, not at engine start-up: the profile must exist and hold a valid
    `acceptance_per_position` (so `draft_len_schedule: auto` fails before its cost probe)."""
    from dynaspec.spec.acceptance_profile import load_acceptance_profile
    from dynaspec.spec.replay import DATA_DIR

    if resolve_acceptance_profile(path) is None:
        shipped = sorted(p.stem for p in DATA_DIR.glob("*.json")) if DATA_DIR.is_dir() else []
        raise ValueError(
            f"acceptance_profile {path!r} does not exist: give a JSON file with 'acceptance_per_position' "
            f"(e.g. the .acceptance.json `dynaspec tune` writes) or a shipped profile name "
            f"({', '.join(shipped) or 'none shipped'})"
        )
    load_acceptance_profile(path)


class _SpecConfigBase(BaseModel):
    """Fields every speculative decoding method shares."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def draft_model(self) -> str | None:
        """A second model this method loads beside the target (the bench checks that both fit the device);
        None for drafters without one (n-gram; an EAGLE head is a single layer)."""
        return None

    max_draft_len: int = Field(default=4, ge=1, le=MAX_DRAFT_LEN_LIMIT)
    draft_len_schedule: dict[int, int] | Literal["auto"] | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    # BENCHMARK ONLY: accept drafts by a recorded per-position acceptance profile (a JSON path or a
    # profile name under dynaspec/bench/data) instead of the target's verdict, so random-weight models
    # of real shapes can be timed with realistic acceptance. Output is then NOT the model's output.
    # Several profiles (a list, or names joined by commas) mix workloads: each request replays one, picked
    # by a stable hash of its request id (spec/replay.py).
    replay_acceptance_profile: str | None = None
    # How k is chosen each step: "schedule" (draft_len_schedule / max_draft_len) or "goodput" (the online
    # planner, spec/planner.py). goodput_hysteresis: relative goodput gain needed to switch k (the planner
    # may hold a k up to that much below the best: 0.02 keeps it within 2% of the best k, and switching
    # between captured graphs costs nothing; a switch from k = 0 is priced separately, by drafter catch-up).
    # acceptance_profile: JSON {"acceptance_per_position": [...]} that warm-starts the acceptance estimate.
    draft_len_policy: Literal["schedule", "goodput", "adaptive"] = "schedule"
    goodput_hysteresis: float = Field(default=PlannerSettings().hysteresis, ge=0.0, allow_inf_nan=False)
    # adaptive only (other policies ignore it, as adaptive ignores goodput_hysteresis: a config copied from one
    # policy to another, as `dynaspec bench` derives its policy lines, keeps it): while nothing waits or prefills
    # (the batch drains: the end of an offline run), allocations that would end the batch more than this share
    # later than the soonest possible give way to that one (spec/drain.py); None: the most tokens a second
    # throughout.
    adaptive_drain_tolerance: float | None = Field(default=PlannerSettings().drain_tolerance, ge=0.0,
                                                   allow_inf_nan=False)
    acceptance_profile: str | None = Field(default=None, min_length=1)
    # goodput or draft_len_schedule "auto" only: a step-cost table T(batch, k) (JSON/YAML from
    # StepCostModel.save or `dynaspec tune`); when unset, the engine measures it at start-up from its graphs.
    step_cost_file: str | None = Field(default=None, min_length=1)

    @field_validator("draft_len_schedule", mode="before")
    @classmethod
    def _normalize_schedule(cls, value: Any) -> Any:
        if value is None:
            return None
        return parse_draft_len_schedule_option(value)

    @field_validator("replay_acceptance_profile", mode="before")
    @classmethod
    def _join_replay_profiles(cls, value: Any) -> Any:
        if value is None:
            return None
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"replay_acceptance_profile must be a profile name / JSON path, or a list of them, got {value!r}"
            )
        names = [n.strip() for n in names]
        if not names or not all(names):
            raise ValueError(f"replay_acceptance_profile has an empty profile name: {value!r}")
        return ",".join(names)

    @model_validator(mode="before")
    @classmethod
    def _resolve_shipped_profile(cls, data: Any) -> Any:
        """acceptance_profile may name a profile shipped under dynaspec/bench/data: store its path, which
        is what the planners read."""
        if isinstance(data, Mapping) and isinstance(data.get("acceptance_profile"), str):
            resolved = resolve_acceptance_profile(data["acceptance_profile"])
            if resolved is not None:
                data = {**data, "acceptance_profile": resolved}
        return data

    @model_validator(mode="after")
    def _one_policy(self) -> "_SpecConfigBase":
        if self.draft_len_policy in ("goodput", "adaptive") and self.draft_len_schedule is not None:
            raise ValueError(
                f"draft_len_policy={self.draft_len_policy!r} chooses k itself: remove draft_len_schedule, or use "
                "draft_len_policy='schedule' (the default) to apply the schedule"
            )
        auto = self.draft_len_schedule == AUTO_SCHEDULE
        if self.step_cost_file is not None and self.draft_len_policy == "schedule" and not auto:
            raise ValueError(
                "step_cost_file is only used with draft_len_policy='goodput' or draft_len_schedule='auto' (or "
                "draft_len_policy='adaptive')"
            )
        if auto and self.acceptance_profile is None:
            raise ValueError(
                "draft_len_schedule='auto' needs acceptance_profile: a JSON file with 'acceptance_per_position' "
                "(e.g. the .acceptance.json `dynaspec tune` writes) to plan k per batch size from"
            )
        if self.acceptance_profile is not None:
            check_acceptance_profile(self.acceptance_profile)
        return self

    @model_validator(mode="after")
    def _schedule_within_max(self) -> "_SpecConfigBase":
        if self.draft_len_schedule is not None and self.draft_len_schedule != AUTO_SCHEDULE:
            check_schedule_against_max(self.draft_len_schedule, self.max_draft_len)
        return self


class NGramDecodingConfig(_SpecConfigBase):
    """Prompt-lookup (n-gram) speculation with TensorRT-LLM's NGram pool options.

    max_matching_ngram_size: longest suffix n-gram looked up (then shorter ones, down to 1).
    is_keep_all: keep every continuation seen after an n-gram (bounded), or only the longest.
    is_use_oldest: propose the oldest continuation, or the newest.
    is_public_pool: one pool shared by all requests, or one per request, freed when it ends.
    max_pool_entries: bound on the continuations a pool holds; least recently used n-grams are evicted.
    """

    decoding_type: Literal["NGram"] = "NGram"
    max_matching_ngram_size: int = Field(default=3, ge=1)
    is_keep_all: bool = True
    is_use_oldest: bool = True
    is_public_pool: bool = True
    max_pool_entries: int = Field(default=65536, ge=1)


class DraftTargetDecodingConfig(_SpecConfigBase):
    """A smaller draft model proposes tokens that the target verifies (Leviathan et al. 2023).

    speculative_model: a model spec the loader understands (zoo name, random:<preset>, HF dir, .gguf).
    TensorRT-LLM's older name `speculative_model_dir` is accepted too.
    """

    decoding_type: Literal["DraftTarget"] = "DraftTarget"
    speculative_model: str = Field(
        min_length=1, validation_alias=AliasChoices("speculative_model", "speculative_model_dir")
    )

    @property
    def draft_model(self) -> str | None:
        return self.speculative_model


class EagleDecodingConfig(_SpecConfigBase):
    """An EAGLE-3 draft head on the target's hidden states proposes tokens (Li et al. 2025, arXiv 2503.01840;
    spec/eagle.py).

    speculative_model: a head directory (config.json + model.safetensors, as `dynaspec train-head` writes);
    TensorRT-LLM's older name `speculative_model_dir` is accepted too. eagle3_layers_to_capture (TensorRT-LLM's
    name): the target layers whose outputs the head reads; optional, and when given it must equal the head's.
    """

    decoding_type: Literal["Eagle"] = "Eagle"
    speculative_model: str = Field(
        min_length=1, validation_alias=AliasChoices("speculative_model", "speculative_model_dir")
    )
    eagle3_layers_to_capture: list[int] | None = None

    @field_validator("speculative_model")
    @classmethod
    def _head_directory(cls, value: str) -> str:
        from dynaspec.models.eagle_head import read_head_config  # torch: only when an Eagle config is built

        read_head_config(value)
        return value

    @field_validator("eagle3_layers_to_capture")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value or len(set(value)) != len(value) or min(value) < 0:
            raise ValueError(f"eagle3_layers_to_capture must be distinct layer indices >= 0, got {value}")
        return sorted(value)


SPEC_CONFIG_CLASSES: dict[str, type[_SpecConfigBase]] = {
    "NGram": NGramDecodingConfig,
    "DraftTarget": DraftTargetDecodingConfig,
    "Eagle": EagleDecodingConfig,
}

SpeculativeConfig = Annotated[
    Union[NGramDecodingConfig, DraftTargetDecodingConfig, EagleDecodingConfig], Field(discriminator="decoding_type")
]


def parse_speculative_config(data: Mapping[str, Any] | _SpecConfigBase) -> Any:
    """Build the config named by `decoding_type` from a mapping (YAML / JSON); configs pass through."""
    if isinstance(data, tuple(SPEC_CONFIG_CLASSES.values())):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(
            f"speculative_config must be a mapping with a decoding_type, got {type(data).__name__}"
        )
    decoding_type = data.get("decoding_type")
    if decoding_type is None:
        raise ValueError(
            f"speculative_config needs a decoding_type: one of {', '.join(DECODING_TYPES)}"
        )
    if decoding_type not in DECODING_TYPES:
        raise ValueError(
            f"speculative_config decoding_type {decoding_type!r} is not supported; "
            f"use one of {', '.join(DECODING_TYPES)}"
        )
    return SPEC_CONFIG_CLASSES[decoding_type].model_validate(dict(data))

"""The sweep's settings and lines (`dynaspec bench`): what to measure, validated before any model loads.

Lines measured (each is one engine, built once and reused for every batch size):
* "no spec"  - speculative_config=None: plain decoding, the k = 0 line;
* "k=N"      - the drafter with a static draft length: draft_len_schedule {1: N}, max_draft_len N;
* "schedule" - the configured draft_len_schedule (and max_concurrency) as given; "auto" is planned by the
  engine at start-up (the line's `planned_schedule` records what it chose);
* "goodput"  - the configured goodput planner (draft_len_policy "goodput"), when the config uses it.

`acceptance_profile` fills the benchmark-only `replay_acceptance_profile` field of every speculative config,
so drafts are accepted per a recorded per-position profile instead of by the model; results say so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaspec.spec.config import AUTO_SCHEDULE, MAX_DRAFT_LEN_LIMIT, parse_speculative_config
from dynaspec.spec.schedule_policy import SchedulePolicy

REPLAY_FIELD = "replay_acceptance_profile"
# Policies a sweep can add as lines beside the configured one (`policy_lines`, `dynaspec bench --policy-lines`).
POLICY_LINES = ("goodput", "adaptive")
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def default_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two 1, 2, 4, ... up to max_batch (max_batch itself added when it is not a power of two)."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
    sizes = [b for b in DEFAULT_BATCH_SIZES if b <= max_batch]
    b = DEFAULT_BATCH_SIZES[-1] * 2
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


@dataclass(frozen=True)
class Line:
    """One curve of the sweep: a speculative config (None = no spec) built into one engine."""

    name: str  # "no spec" | "k=N" | "schedule"
    kind: str  # "no-spec" | "static" | "schedule"
    speculative_config: Any | None
    k: int | None = None  # the static k (0 for no spec); None for the schedule

    def nominal_k(self, batch: int) -> int:
        """The k this line should run at when `batch` requests decode."""
        if self.speculative_config is None:
            return 0
        if self.speculative_config.draft_len_schedule == AUTO_SCHEDULE:
            return self.speculative_config.max_draft_len  # planned at start-up: see engine_nominal_k
        return SchedulePolicy(self.speculative_config).draft_len(batch, batch)

    def describe(self) -> dict[str, Any]:
        spec = self.speculative_config
        return {
            "name": self.name,
            "kind": self.kind,
            "k": self.k,
            "speculative_config": None if spec is None else spec.model_dump(mode="json"),
        }


@dataclass
class SweepSettings:
    """What to measure. Validated by `validate()` (ValueError naming the bad setting)."""

    model: str
    speculative_config: Any | None = None  # NGramDecodingConfig | DraftTargetDecodingConfig | mapping | None
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES
    draft_lens: Sequence[int] | None = None  # static k's; 0 = "no spec"; None = 0..max_draft_len
    include_schedule: bool = True  # add the configured draft_len_schedule as a line (when there is one)
    # more policy lines on the same drafter, e.g. ("goodput", "adaptive"): uniform vs per-request k side by side
    policy_lines: Sequence[str] = ()
    prompt_len: int = 128
    gen_len: int = 128
    acceptance_profile: str | None = None
    workload: str | None = None  # real prompts (dynaspec.bench.workloads name) instead of random ids
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    block_size: int = 16
    enforce_eager: bool = False
    deterministic: bool = False  # EngineConfig.deterministic on every line (batch-invariant kernels)
    cudagraph_mode: str | None = None  # EngineConfig.cudagraph_mode on every line (None: its default)
    warmup: bool = True
    # > 1: every line's engine is built up front on ONE copy of the target weights and the lines are
    # measured side by side, batch size by batch size, `rounds` times in rotated order; a point's tokens/s
    # is the median of its rounds (drift of a shared machine then hits every line alike).
    rounds: int = 1
    # > 1: every line's engine shards the target over this many ranks (EngineConfig.tensor_parallel_size); the
    # floor is then per GPU (rank 0's shard). Each engine shards its own copy, so rounds must be 1.
    tensor_parallel_size: int = 1
    model_cache_dir: str | None = None
    command_line: str | None = None

    def validate(self) -> None:
        check_cudagraph_mode(self.cudagraph_mode)
        _check_int_list("batch_sizes", self.batch_sizes, minimum=1)
        for name in ("prompt_len", "gen_len", "rounds", "tensor_parallel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.tensor_parallel_size > 1 and self.rounds > 1:
            raise ValueError(f"rounds={self.rounds} runs every line on one shared copy of the weights, which an engine "
                             f"with tensor_parallel_size={self.tensor_parallel_size} cannot share (each shards its "
                             "own): use rounds=1")
        if self.draft_lens is not None:
            _check_int_list("draft_lens", self.draft_lens, minimum=0)
        spec = self.resolved_spec()
        max_k = spec.max_draft_len if spec is not None else 0
        for k in self.draft_lens if self.draft_lens is not None else []:
            if k > max_k:
                allowed = "only 0 (no speculative config given)" if spec is None else f"0..{max_k} (max_draft_len)"
                raise ValueError(f"draft length k={k} is out of range: allowed {allowed}")
        for policy in self.policy_lines:
            if policy not in POLICY_LINES:
                raise ValueError(f"policy line {policy!r} is not one of {', '.join(POLICY_LINES)}")
        if self.policy_lines and spec is None:
            raise ValueError("policy lines need a speculative config (a drafter)")
        if self.acceptance_profile is not None:
            load_acceptance_profile(self.acceptance_profile)
            if spec is None:
                raise ValueError("an acceptance profile needs a speculative config (a drafter) to replay")
        if self.workload is not None:
            from dynaspec.bench.sweep_prompts import workload_names

            workload_names(self.workload)
            if self.acceptance_profile is not None:
                raise ValueError(
                    "a workload measures the model's own acceptance on real prompts; "
                    "drop the acceptance profile (replay is for random prompts)"
                )

    def resolved_spec(self):
        spec = self.speculative_config
        if spec is None:
            return None
        return parse_speculative_config(spec)


def _check_int_list(name: str, values: Sequence[int], minimum: int) -> None:
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must hold ints, got {v!r}")
        if v < minimum:
            raise ValueError(f"{name} entries must be >= {minimum}, got {v}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} has duplicates: {list(values)}")


def load_acceptance_profile(name_or_path: str | Path) -> dict[str, Any]:
    """A replay profile (a JSON path or a profile shipped under dynaspec/bench/data) for the metadata:
    {"path", "name", "acceptance_per_position"}; p_j = P(position j accepted | positions < j were).
    Several names joined by commas (a mix: each request replays one of them, spec/replay.py) give
    {"name": "a+b", "mixed": [one entry per profile]}.

    Resolution and validation are the engine's (dynaspec.spec.replay), so the sweep refuses exactly
    what the engine would, before any model is loaded.
    """
    from dynaspec.spec.replay import load_acceptance, resolve_profile_path, split_profile_names

    names = split_profile_names(str(name_or_path))
    if len(names) > 1:
        mixed = [load_acceptance_profile(name) for name in names]
        return {"name": "+".join(m["name"] for m in mixed), "mixed": mixed}
    path = resolve_profile_path(str(name_or_path))
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"acceptance profile {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"acceptance profile {path} must hold a JSON object with 'acceptance_per_position'")
    return {
        "path": str(path),
        "name": str(data.get("name") or path.stem),
        "acceptance_per_position": load_acceptance(str(path)),
        "source": {k: data.get(k) for k in ("target", "draft", "workload", "measured_on", "date") if k in data},
    }


def build_lines(spec, draft_lens: Sequence[int] | None, include_schedule: bool, acceptance_profile: str | None,
                policy_lines: Sequence[str] = ()) -> list[Line]:
    """The sweep's lines: "no spec" for k = 0, one static line per k >= 1, then the schedule (if configured),
    the configured policy's line, and one line per extra policy in `policy_lines` (same drafter)."""
    max_k = spec.max_draft_len if spec is not None else 0
    ks = sorted(draft_lens) if draft_lens is not None else list(range(0, max_k + 1))
    lines = []
    for k in ks:
        if k == 0:
            lines.append(Line("no spec", "no-spec", None, 0))
        else:
            lines.append(Line(f"k={k}", "static", _spec_variant(spec, k, {1: k}, None, acceptance_profile), k))
    if include_schedule and spec is not None and spec.draft_len_schedule == AUTO_SCHEDULE:
        lines.append(Line("schedule", "schedule", _replayed(spec, acceptance_profile), None))
    elif include_schedule and spec is not None and spec.draft_len_schedule is not None:
        variant = _spec_variant(
            spec, spec.max_draft_len, spec.draft_len_schedule, spec.max_concurrency, acceptance_profile
        )
        lines.append(Line("schedule", "schedule", variant, None))
    policy = getattr(spec, "draft_len_policy", "schedule")
    if include_schedule and spec is not None and policy in POLICY_LINES:  # the configured policy's own line
        lines.append(Line(policy, "schedule", _replayed(spec, acceptance_profile), None))
    for extra in policy_lines:
        if extra != policy or not include_schedule:  # (the configured one is there already)
            config = _replayed(spec, acceptance_profile, draft_len_policy=extra, draft_len_schedule=None)
            lines.append(Line(extra, "schedule", config, None))
    return lines


def _replayed(spec, acceptance_profile: str | None, **changes):
    """The config `spec` with `changes` and the replayed profile (if any), re-validated."""
    data = {**spec.model_dump(), **changes}
    if acceptance_profile is not None:
        data[REPLAY_FIELD] = str(acceptance_profile)
    return parse_speculative_config(data)


def _spec_variant(spec, max_draft_len: int, schedule, max_concurrency, acceptance_profile):
    """The config `spec` with its draft length fields (and replay profile) replaced, re-validated."""
    if not 1 <= max_draft_len <= MAX_DRAFT_LEN_LIMIT:
        raise ValueError(f"draft length k={max_draft_len} is out of range 1..{MAX_DRAFT_LEN_LIMIT}")
    data = spec.model_dump()
    data.update(max_draft_len=max_draft_len, draft_len_schedule=dict(schedule), max_concurrency=max_concurrency)
    # A static-k line applies its schedule, whatever policy the configured line uses.
    data.update(draft_len_policy="schedule", step_cost_file=None)
    if acceptance_profile is not None:
        if REPLAY_FIELD not in type(spec).model_fields:
            raise ValueError(
                f"this build's {type(spec).__name__} has no '{REPLAY_FIELD}' field, so acceptance replay "
                "is not available; run without --acceptance-profile"
            )
        data[REPLAY_FIELD] = str(acceptance_profile)
    return parse_speculative_config(data)


def check_cudagraph_mode(value: str | None) -> None:
    """--cudagraph-mode: one of EngineConfig.cudagraph_mode's values or None (ValueError naming them otherwise)."""
    if value is not None and value not in ("FULL_DECODE_ONLY", "FULL"):
        raise ValueError(f"--cudagraph-mode must be FULL_DECODE_ONLY or FULL, got {value!r}")

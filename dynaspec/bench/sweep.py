"""Decode-throughput sweep: batch sizes x draft lengths k for one model and drafter (`dynaspec bench`).

Lines measured (each is one engine, built once and reused for every batch size):
* "no spec"  - speculative_config=None: plain decoding, the k = 0 line;
* "k=N"      - the drafter with a static draft length: draft_len_schedule {1: N}, max_draft_len N;
* "schedule" - the configured draft_len_schedule (and max_concurrency) as given; "auto" is planned by the
  engine at start-up (the line's `planned_schedule` records what it chose).

For each (line, batch) `batch` requests of random prompt token ids run greedy with ignore_eos until all
finish; at a given (batch, round) every line gets the same request ids and prompts, so replayed acceptance
(spec/replay.py) draws the same numbers at the same sequence positions on every line (common random
numbers: lines differ by their k, not by their luck). With `workload` set (`dynaspec bench --workload code-edit`), the requests are real prompts instead
(dynaspec.bench.sweep_prompts: the workload's conversations through the chat template, cycled to fill the
batch, the same for every line), drafts are accepted by the model's own predictions, every point records
each request's output token ids, and each line's points say whether those are the no-spec line's tokens
at the same batch size (greedy speculative decoding must not change them). Every point (and round) starts
on a reset drafter (`Drafter.reset`): batch b takes the first b prompts, so the measured prompts recur
from point to point, and a shared n-gram pool holding the previous point's outputs of the same prompts
proposed them back word for word; the static lines, which index every batch, drafted from that memory,
and a goodput line that ran k = 0 at the previous point (no drafter work) did not (CPU, Qwen2.5-Coder-1.5B,
chat, batch 2: 34% vs 2% of drafts accepted at the same k, 2026-11-27). Only the decode phase is
timed: the steps after every request has its first token (time.perf_counter from each step() call to the
next, with one torch.cuda.synchronize at the end of the batch: the engine overlaps a plain decode step's
host work with the next step's GPU work, as it does when serving, and a synchronize after every step
would put that host work back on the critical path); `batch_tokens_per_s` also counts the prefill phase
(every output token over first step to last). Reported: committed output tokens per second, mean step
time, mean accepted length (tokens committed per request per decode step, "tau" of Leviathan et al. 2023,
counting k = 0 steps as 1) and the fraction of decode steps whose k was the line's nominal k at that batch.

The HBM-bandwidth floor (CUDA only) is the time a decode step needs just to read its bytes once:
(weight bytes + batch x mean context x KV bytes per token) / measured device-to-device copy bandwidth
(read + write bytes of a 1 GiB copy), the roofline argument of Williams et al. 2009 applied to decoding.

`acceptance_profile` fills the benchmark-only `replay_acceptance_profile` field of every speculative config,
so drafts are accepted per a recorded per-position profile instead of by the model; results say so.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.startup_heap import freeze_survivors, frozen_startup_heap, full_collections
from dynaspec.spec.config import AUTO_SCHEDULE, MAX_DRAFT_LEN_LIMIT, parse_speculative_config
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.schedule_policy import SchedulePolicy

SCHEMA = "dynaspec.bench.sweep/1"
REPLAY_FIELD = "replay_acceptance_profile"
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Before each (line, batch) point its engine runs one untimed batch of this many tokens: graphs, allocator
# and caches are warm, and an online policy (the goodput planner) has seen that batch size, as it would
# have in a server running for hours; every line gets the same warm-up (random token ids, or with a
# --workload other prompts of that workload: sweep_prompts.WorkloadPrompts.warmup_for_batch).
WARMUP_GEN_LEN = 16
COPY_BYTES = 1 << 30

# progress(description, completed, total)
ProgressFn = Callable[[str, float, float], None]


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
    prompt_len: int = 128
    gen_len: int = 128
    acceptance_profile: str | None = None
    workload: str | None = None  # real prompts (dynaspec.bench.workloads name) instead of random ids
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    block_size: int = 16
    enforce_eager: bool = False
    warmup: bool = True
    # > 1: every line's engine is built up front on ONE copy of the target weights and the lines are
    # measured side by side, batch size by batch size, `rounds` times in rotated order; a point's tokens/s
    # is the median of its rounds (drift of a shared machine then hits every line alike).
    rounds: int = 1
    model_cache_dir: str | None = None
    command_line: str | None = None

    def validate(self) -> None:
        _check_int_list("batch_sizes", self.batch_sizes, minimum=1)
        for name in ("prompt_len", "gen_len", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.draft_lens is not None:
            _check_int_list("draft_lens", self.draft_lens, minimum=0)
        spec = self.resolved_spec()
        max_k = spec.max_draft_len if spec is not None else 0
        for k in self.draft_lens if self.draft_lens is not None else []:
            if k > max_k:
                allowed = "only 0 (no speculative config given)" if spec is None else f"0..{max_k} (max_draft_len)"
                raise ValueError(f"draft length k={k} is out of range: allowed {allowed}")
        if self.acceptance_profile is not None:
            load_acceptance_profile(self.acceptance_profile)
            if spec is None:
                raise ValueError("an acceptance profile needs a speculative config (a drafter) to replay")
        if self.workload is not None:
            from dynaspec.bench.workloads import WORKLOADS

            if self.workload not in WORKLOADS:
                raise ValueError(f"unknown workload {self.workload!r}; choose from {', '.join(WORKLOADS)}")
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

    Resolution and validation are the engine's (dynaspec.spec.replay), so the sweep refuses exactly
    what the engine would, before any model is loaded.
    """
    from dynaspec.spec.replay import load_acceptance, resolve_profile_path

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


def build_lines(spec, draft_lens: Sequence[int] | None, include_schedule: bool, acceptance_profile: str | None) -> list[Line]:
    """The sweep's lines: "no spec" for k = 0, one static line per k >= 1, then the schedule (if configured)."""
    max_k = spec.max_draft_len if spec is not None else 0
    ks = sorted(draft_lens) if draft_lens is not None else list(range(0, max_k + 1))
    lines = []
    for k in ks:
        if k == 0:
            lines.append(Line("no spec", "no-spec", None, 0))
        else:
            lines.append(Line(f"k={k}", "static", _spec_variant(spec, k, {1: k}, None, acceptance_profile), k))
    if include_schedule and spec is not None and spec.draft_len_schedule == AUTO_SCHEDULE:
        data = spec.model_dump()
        if acceptance_profile is not None:
            data[REPLAY_FIELD] = str(acceptance_profile)
        lines.append(Line("schedule", "schedule", parse_speculative_config(data), None))
    elif include_schedule and spec is not None and spec.draft_len_schedule is not None:
        variant = _spec_variant(
            spec, spec.max_draft_len, spec.draft_len_schedule, spec.max_concurrency, acceptance_profile
        )
        lines.append(Line("schedule", "schedule", variant, None))
    if include_schedule and spec is not None and getattr(spec, "draft_len_policy", "schedule") == "goodput":
        data = spec.model_dump()
        if acceptance_profile is not None:
            data[REPLAY_FIELD] = str(acceptance_profile)
        lines.append(Line("goodput", "schedule", parse_speculative_config(data), None))
    return lines


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


@dataclass
class Point:
    """One (line, batch) measurement; times in seconds."""

    line: str
    batch_size: int
    nominal_k: int
    decode_tokens: int
    decode_time_s: float
    num_decode_steps: int
    decode_tokens_per_s: float
    mean_step_time_s: float
    median_step_time_s: float
    mean_accepted_length: float
    acceptance_rate: float | None
    k_match_fraction: float
    k_histogram: dict[str, int]
    prefill_time_s: float
    num_preemptions: int
    # Workload mode only (None with random prompts): per-request output token ids in request order, and
    # how they compare with the "no spec" line's at the same batch size (sweep_prompts.token_agreement).
    output_token_ids: list[list[int]] | None = None
    same_tokens_as_no_spec: bool | None = None
    requests_same_as_no_spec: int | None = None
    first_divergence: int | None = None
    # Goodput line only: how often each (reason, k) decided a decode-phase step, e.g. "explore k=1".
    planner_decisions: dict[str, int] | None = None
    # Every decode-phase step as [milliseconds, decoding requests, k], in order (all rounds).
    step_log: list[list[float]] = field(default_factory=list)
    # The whole batch, first step to last: every output token over prefill + decode time. The decode
    # phase alone starts where the policy's speculation during the prefill ramp left the requests, so a
    # policy that speculated there is charged the ragged tail but not credited the tokens; this is not.
    batch_tokens: int = 0
    batch_tokens_per_s: float = 0.0
    # Side-by-side sweeps (rounds > 1): each round's tokens/s; decode_tokens_per_s is their median.
    round_tokens_per_s: list[float] | None = None
    # Milliseconds of each full (generation-2) garbage collection during the timed batch (all rounds).
    gc_full_collections_ms: list[float] = field(default_factory=list)
    # Goodput line only: the planner's table for this batch size after the point (GoodputPlanner.explain:
    # per k the expected accepted tokens, predicted step seconds and goodput) and its catch-up price.
    planner_view: dict[str, Any] | None = None


@dataclass
class SweepResult:
    metadata: dict[str, Any]
    lines: list[dict[str, Any]]
    points: list[Point] = field(default_factory=list)
    floor: list[dict[str, float]] | None = None
    hf: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "metadata": self.metadata,
            "lines": self.lines,
            "points": [asdict(p) for p in self.points],
            "floor": self.floor,
            "hf": self.hf,
            "envelope": envelope([asdict(p) for p in self.points]),
        }


def envelope(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size: the schedule's tokens/s next to the best static k and no spec."""
    out = []
    for batch in sorted({p["batch_size"] for p in points}):
        at = {p["line"]: p["decode_tokens_per_s"] for p in points if p["batch_size"] == batch}
        static = {name: v for name, v in at.items() if name.startswith("k=")}
        best = max(static, key=static.get) if static else None
        out.append({
            "batch_size": batch,
            "no_spec_tokens_per_s": at.get("no spec"),
            "best_static_line": best,
            "best_static_tokens_per_s": static.get(best) if best else None,
            "schedule_tokens_per_s": at.get("schedule"),
        })
    return out


def run_sweep(
    settings: SweepSettings,
    progress: ProgressFn | None = None,
    hf_batch_sizes: Sequence[int] | None = None,
) -> SweepResult:
    """Measure every (line, batch size); with `hf_batch_sizes`, HF transformers `generate` too."""
    settings.validate()
    spec = settings.resolved_spec()
    lines = build_lines(spec, settings.draft_lens, settings.include_schedule, settings.acceptance_profile)
    batches = sorted(settings.batch_sizes)
    if hf_batch_sizes:
        _check_int_list("hf_batch_sizes", hf_batch_sizes, minimum=1)
    max_k = max((line.speculative_config.max_draft_len for line in lines if line.speculative_config), default=0)
    profile = load_acceptance_profile(settings.acceptance_profile) if settings.acceptance_profile else None
    total = len(lines) * len(batches) + (len(hf_batch_sizes) if hf_batch_sizes else 0)
    done = 0.0
    prompts = _workload_prompts(settings, max(batches)) if settings.workload else None
    prompt_len = prompts.max_len if prompts else settings.prompt_len

    def measure(engine, line: Line, batch: int, round_index: int = 0) -> Point:
        """The warm-up batch, then the timed one, on a drafter reset first (module docstring). Every line
        gets the same request ids and random prompts at a (batch, round): replayed acceptance then draws
        the same numbers at the same positions on every line (spec/replay.py, common random numbers)."""
        rng = random.Random(f"{settings.seed}:{batch}:{round_index}")
        engine.drafter.reset()
        if settings.warmup:  # never the measured prompts: a shared n-gram pool must not learn them
            warmup_prompts = prompts.warmup_for_batch(batch) if prompts else None  # None: random ids
            _run_batch(engine, batch, settings.prompt_len, min(settings.gen_len, WARMUP_GEN_LEN), rng, warmup_prompts)
        freeze_survivors()  # what every engine has built so far stays out of collections in the timed batch
        return _measure(engine, line, batch, settings.prompt_len, settings.gen_len, rng,
                        prompts.for_batch(batch) if prompts else None)

    result: SweepResult | None = None

    def start(engine) -> SweepResult:
        result = SweepResult(_metadata(settings, spec, engine, profile, lines, prompts), [l.describe() for l in lines])
        result.floor = _floor(engine, settings, batches, result.metadata, prompts)
        return result

    def finish_line(engine, line: Line) -> None:
        if engine.get_stats()["auto_schedule"] is not None:  # draft_len_schedule: auto, planned at start-up
            result.lines[lines.index(line)]["planned_schedule"] = engine.get_stats()["draft_len_schedule"]

    def hf(engine) -> None:
        nonlocal done
        if hf_batch_sizes and result.hf is None:
            from dynaspec.bench.hf_baseline import hf_decode_throughput

            if progress:
                progress("HF transformers generate", float(done), float(total))
            result.hf = hf_decode_throughput(
                engine.loaded.model, engine.loaded.hf_config, hf_batch_sizes,
                settings.prompt_len, settings.gen_len, settings.seed,
            )
            done += len(hf_batch_sizes)

    if settings.rounds == 1:  # one engine at a time (least memory)
        for line in lines:
            engine = _build_engine(settings, line, max(batches), max_k, prompt_len)
            result = result or start(engine)
            finish_line(engine, line)
            with frozen_startup_heap():  # no full garbage collection inside a timed step
                for batch in batches:
                    if progress:
                        progress(f"{line.name} batch {batch}", float(done), float(total))
                    result.points.append(measure(engine, line, batch))
                    done += 1
            hf(engine)
            del engine
            _free_memory()
    else:  # every engine at once on one copy of the weights, lines interleaved
        engines = []
        for line in lines:
            loaded = engines[0].loaded if engines else None
            engines.append(_build_engine(settings, line, max(batches), max_k, prompt_len, loaded))
        result = start(engines[0])
        for engine, line in zip(engines, lines):
            finish_line(engine, line)
        with frozen_startup_heap():  # no full garbage collection inside a timed step
            for batch in batches:
                rounds: dict[str, list[Point]] = {line.name: [] for line in lines}
                for r in range(settings.rounds):
                    for i in range(len(lines)):
                        n = (i + r) % len(lines)  # rotated: each line runs first (and last) in some round
                        if progress:
                            progress(f"{lines[n].name} batch {batch} round {r + 1}", float(done), float(total))
                        rounds[lines[n].name].append(measure(engines[n], lines[n], batch, r))
                        done += 1 / settings.rounds
                result.points.extend(merge_rounds(rounds[line.name]) for line in lines)
        hf(engines[0])
        del engines
        _free_memory()
    if prompts is not None:
        mark_token_agreement(result.points)
    if progress:
        progress("done", float(total), float(total))
    return result


def _workload_prompts(settings: SweepSettings, max_batch: int):
    """The workload's prompts through the target's tokenizer: one distinct prompt per request of the
    largest batch (cycled where the workload has fewer)."""
    from dynaspec.bench.sweep_prompts import workload_prompts
    from dynaspec.models.loader import load_tokenizer

    tokenizer = load_tokenizer(settings.model, settings.model_cache_dir)
    return workload_prompts(tokenizer, settings.workload, max_batch, settings.seed)


def mark_token_agreement(points: list[Point]) -> None:
    """Fill each point's `same_tokens_as_no_spec` fields from the "no spec" point of its batch size
    (left None where the sweep has no "no spec" line or a point recorded no tokens)."""
    from dynaspec.bench.sweep_prompts import token_agreement

    reference = {p.batch_size: p.output_token_ids for p in points if p.line == "no spec"}
    for p in points:
        ref = reference.get(p.batch_size)
        if ref is None or p.output_token_ids is None:
            continue
        agreement = token_agreement(ref, p.output_token_ids)
        p.same_tokens_as_no_spec = agreement.identical
        p.requests_same_as_no_spec = agreement.num_identical
        p.first_divergence = agreement.first_divergence


def merge_rounds(points: list[Point]) -> Point:
    """One point from the rounds of a (line, batch): totals summed, tokens/s the median of the rounds'
    (robust to a round disturbed by the shared machine), the rounds' own figures kept."""
    if not points:
        raise ValueError("merge_rounds needs at least one point")
    first = points[0]
    if len(points) == 1:
        return first
    steps = sum(p.num_decode_steps for p in points)
    time_s = sum(p.decode_time_s for p in points)
    histogram: dict[str, int] = {}
    decisions: dict[str, int] = {}
    for p in points:
        for key, count in p.k_histogram.items():
            histogram[key] = histogram.get(key, 0) + count
        for key, count in (p.planner_decisions or {}).items():
            decisions[key] = decisions.get(key, 0) + count
    nominal = sum(p.k_match_fraction * p.num_decode_steps for p in points)
    spec_steps = [(p.mean_accepted_length, p.num_decode_steps) for p in points if p.mean_accepted_length]
    rates = [p.acceptance_rate for p in points if p.acceptance_rate is not None]
    return Point(
        line=first.line,
        batch_size=first.batch_size,
        nominal_k=first.nominal_k,
        decode_tokens=sum(p.decode_tokens for p in points),
        decode_time_s=time_s,
        num_decode_steps=steps,
        decode_tokens_per_s=statistics.median(p.decode_tokens_per_s for p in points),
        mean_step_time_s=time_s / steps if steps else 0.0,
        median_step_time_s=statistics.median(r[0] / 1e3 for p in points for r in p.step_log) if steps else 0.0,
        mean_accepted_length=(
            sum(m * n for m, n in spec_steps) / sum(n for _, n in spec_steps) if spec_steps else 0.0
        ),
        acceptance_rate=statistics.mean(rates) if rates else None,
        k_match_fraction=nominal / steps if steps else 0.0,
        k_histogram=dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
        prefill_time_s=sum(p.prefill_time_s for p in points),
        num_preemptions=sum(p.num_preemptions for p in points),
        output_token_ids=first.output_token_ids,
        planner_decisions=dict(sorted(decisions.items())) if decisions else None,
        step_log=[row for p in points for row in p.step_log],
        gc_full_collections_ms=[ms for p in points for ms in p.gc_full_collections_ms],
        batch_tokens=sum(p.batch_tokens for p in points),
        batch_tokens_per_s=statistics.median(p.batch_tokens_per_s for p in points),
        round_tokens_per_s=[p.decode_tokens_per_s for p in points],
        planner_view=points[-1].planner_view,
    )


def _build_engine(settings: SweepSettings, line: Line, max_batch: int, max_k: int, prompt_len: int, loaded=None):
    from dynaspec.engine.engine import LLMEngine

    max_model_len = max(16, prompt_len + settings.gen_len + max_k + 1)
    blocks_per_seq = math.ceil((max_model_len + max_k) / settings.block_size)
    config = EngineConfig(
        model=settings.model,
        dtype=settings.dtype,
        device=settings.device,
        block_size=settings.block_size,
        num_kv_blocks=max_batch * blocks_per_seq + 2,
        max_num_seqs=max_batch,
        max_num_batched_tokens=max(2048, max_batch * (1 + max_k)),
        max_model_len=max_model_len,
        seed=settings.seed,
        enforce_eager=settings.enforce_eager,
        model_cache_dir=settings.model_cache_dir,
        speculative_config=line.speculative_config,
    )
    return LLMEngine(config, loaded=loaded)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(_cuda_index(device))


def _run_batch(engine, batch: int, prompt_len: int, gen_len: int, rng: random.Random,
               prompts: list[list[int]] | None = None):
    """Run `batch` greedy requests (ignore_eos) to completion: random prompts of `prompt_len` token ids,
    or the given `prompts` (one per request).

    Returns (prefill_time_s, records, preemptions, output_token_ids): a record (seconds, tokens committed,
    the engine's last_step stats, the goodput planner's latest decision or None) per step after every
    request had its first token (the decode phase), and each request's output token ids in request order.
    """
    from dynaspec.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=gen_len, ignore_eos=True)
    vocab = int(engine.vocab_size)
    if prompts is not None and len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
    pending: set[str] = set()
    order: list[str] = []
    for i in range(batch):
        request_id = f"bench-{rng.getrandbits(64):016x}"
        prompt = prompts[i] if prompts is not None else [rng.randrange(vocab) for _ in range(prompt_len)]
        engine.add_request(request_id, prompt, params)
        pending.add(request_id)
        order.append(request_id)
    finished: dict[str, list[int]] = {}
    device = engine.device
    records = []
    prefill_time = 0.0
    preemptions = 0
    _sync(device)
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        outputs = engine.step()  # no synchronize: an overlapped step's GPU work runs on into the next call
        elapsed = time.perf_counter() - start
        preemptions += sum(o.metrics.num_preemptions for o in outputs if o.finished and o.metrics)
        finished.update((o.request_id, list(o.token_ids)) for o in outputs if o.finished)
        if pending:
            prefill_time += elapsed
            pending.difference_update(o.request_id for o in outputs if o.token_ids)
            continue
        committed = sum(len(o.new_token_ids) for o in outputs)
        stats = engine.get_stats()
        records.append((elapsed, committed, stats["last_step"], stats.get("planner_decision")))
    start = time.perf_counter()
    _sync(device)  # the batch ends when the device is done: the wait belongs to the last step
    if records:
        elapsed, committed, last_step, decision = records[-1]
        records[-1] = (elapsed + time.perf_counter() - start, committed, last_step, decision)
    return prefill_time, records, preemptions, [finished.get(r, []) for r in order]


def _measure(engine, line: Line, batch: int, prompt_len: int, gen_len: int, rng: random.Random,
             prompts: list[list[int]] | None = None) -> Point:
    with full_collections() as collections:
        prefill_time, records, preemptions, token_ids = _run_batch(engine, batch, prompt_len, gen_len, rng, prompts)
    nominal = engine_nominal_k(engine, line, batch)
    decode_time = sum(r[0] for r in records)
    tokens = sum(r[1] for r in records)
    batch_tokens = sum(len(t) for t in token_ids)
    steps = len(records)
    request_steps = sum(len(r[2].get("drafted_per_request", [])) for r in records)
    accepted = sum(r[2].get("accepted", 0) for r in records)
    drafted = sum(r[2].get("drafted", 0) for r in records)
    histogram: dict[str, int] = {}
    for r in records:
        key = str(r[2].get("k", 0))
        histogram[key] = histogram.get(key, 0) + 1
    matched = histogram.get(str(nominal), 0)
    decisions: dict[str, int] = {}
    for r in records:
        if r[3]:
            key = f"{r[3].get('reason')} k={r[3].get('k')}"
            decisions[key] = decisions.get(key, 0) + 1
    return Point(
        line=line.name,
        batch_size=batch,
        nominal_k=nominal,
        decode_tokens=tokens,
        decode_time_s=decode_time,
        num_decode_steps=steps,
        decode_tokens_per_s=tokens / decode_time if decode_time > 0 else 0.0,
        mean_step_time_s=decode_time / steps if steps else 0.0,
        median_step_time_s=statistics.median(r[0] for r in records) if records else 0.0,
        mean_accepted_length=(accepted + request_steps) / request_steps if request_steps else 0.0,
        acceptance_rate=accepted / drafted if drafted else None,
        k_match_fraction=matched / steps if steps else 0.0,
        k_histogram=dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
        prefill_time_s=prefill_time,
        num_preemptions=preemptions,
        output_token_ids=token_ids if prompts is not None else None,
        planner_decisions=dict(sorted(decisions.items())) if decisions else None,
        step_log=[[round(r[0] * 1e3, 3), r[2].get("batch_size", batch), r[2].get("k", 0)] for r in records],
        gc_full_collections_ms=[round(s * 1e3, 3) for s in collections],
        batch_tokens=batch_tokens,
        batch_tokens_per_s=batch_tokens / (prefill_time + decode_time) if prefill_time + decode_time > 0 else 0.0,
        planner_view=_planner_view(engine, batch),
    )


def _planner_view(engine, batch: int) -> dict[str, Any] | None:
    planner = engine.policy
    if not isinstance(planner, GoodputPlanner):
        return None
    catch_up = planner.catch_up
    return {
        "table": planner.explain(batch),
        # `is not None`: a CatchUpCost with no samples yet is falsy (len 0), and whether a catch-up step was
        # observed in a short run depends on this machine's timings
        "catch_up_seconds_per_token": catch_up.seconds_per_token if catch_up is not None else None,
        "catch_up_samples": len(catch_up) if catch_up is not None else 0,
    }


def engine_nominal_k(engine, line: Line, batch: int) -> int:
    """The k `engine` should run at for `batch` decoding requests: its static policy's (a schedule planned
    at start-up included), else the line's nominal k (the goodput planner's: max_draft_len)."""
    if isinstance(engine.policy, SchedulePolicy):
        return engine.policy.draft_len(batch, batch)
    return line.nominal_k(batch)


def _cuda_index(device: torch.device) -> int:
    """The CUDA ordinal of `device` ("cuda" without an index means the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ floor
def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied weights counted once): what one decode step must read."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """K and V bytes one token occupies across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * int(model.num_layers) * int(model.num_kv_heads) * int(model.head_dim) * element


def measure_copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, iters: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read + write bytes (median of `iters` copies)."""
    if device.type != "cuda":
        raise ValueError(f"copy bandwidth is measured on a CUDA device, got {device}")
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def floor_points(
    weight_nbytes: int, kv_nbytes_per_token: int, batch_sizes: Sequence[int], mean_context: float, bandwidth: float
) -> list[dict[str, float]]:
    """Per batch: the step time to read weights + KV once at `bandwidth`, and the tokens/s that gives
    at one token per request per step (the no-spec decode ceiling)."""
    out = []
    for batch in batch_sizes:
        step = (weight_nbytes + batch * mean_context * kv_nbytes_per_token) / bandwidth
        out.append({"batch_size": batch, "step_time_s": step, "tokens_per_s": batch / step})
    return out


def _floor(engine, settings: SweepSettings, batches: list[int], metadata: dict[str, Any], prompts=None):
    model = engine.loaded.model
    metadata["weight_bytes"] = weight_bytes(model)
    metadata["kv_bytes_per_token"] = kv_bytes_per_token(model, engine.dtype)
    mean_prompt = prompts.mean_len(max(batches)) if prompts is not None else settings.prompt_len
    mean_context = mean_prompt + settings.gen_len / 2
    metadata["floor_mean_context"] = mean_context
    if engine.device.type != "cuda":
        metadata["copy_bandwidth_bytes_per_s"] = None
        return None
    bandwidth = measure_copy_bandwidth(engine.device)
    metadata["copy_bandwidth_bytes_per_s"] = bandwidth
    return floor_points(metadata["weight_bytes"], metadata["kv_bytes_per_token"], batches, mean_context, bandwidth)


# ------------------------------------------------------------------------------------------ metadata
def _metadata(settings: SweepSettings, spec, engine, profile, lines: list[Line], prompts=None) -> dict[str, Any]:
    device = engine.device
    draft_model = getattr(spec, "speculative_model", None) if spec is not None else None
    meta = {
        "model": settings.model,
        "model_name": engine.loaded.name,
        "is_random": bool(engine.loaded.is_random),
        "drafter": None if spec is None else spec.decoding_type,
        "draft_model": draft_model,
        "draft_is_random": bool(draft_model and str(draft_model).startswith("random:")),
        "acceptance_replay": profile is not None,
        "replay_profile": profile,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(_cuda_index(device)) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": settings.command_line or " ".join(sys.argv),
        "prompt_len": settings.prompt_len if prompts is None else None,
        "workload": None if prompts is None else prompts.describe(),
        "gen_len": settings.gen_len,
        "batch_sizes": sorted(settings.batch_sizes),
        "lines": [line.name for line in lines],
        "draft_len_schedule": None if spec is None or spec.draft_len_schedule is None
        else spec.draft_len_schedule if spec.draft_len_schedule == AUTO_SCHEDULE
        else {str(k): v for k, v in spec.draft_len_schedule.items()},
        "seed": settings.seed,
        "cuda_graphs": device.type == "cuda" and not settings.enforce_eager,
        "torch_version": torch.__version__,
        "timing": "decode phase only: steps after every request has its first token; "
        "perf_counter from each step() call to the next, CUDA synchronized once at the end of each batch",
    }
    meta["caveats"] = caveats(meta)
    return meta


def caveats(meta: dict[str, Any]) -> list[str]:
    """Warnings every output (titles, captions, JSON) carries: random weights, replayed acceptance."""
    out = []
    if meta.get("is_random"):
        out.append(f"RANDOM WEIGHTS ({meta.get('model')}): real shapes, meaningless output")
    if meta.get("draft_is_random"):
        out.append(f"RANDOM-WEIGHT DRAFT MODEL ({meta.get('draft_model')})")
    if meta.get("acceptance_replay"):
        profile = meta.get("replay_profile") or {}
        out.append(f"ACCEPTANCE REPLAYED from profile '{profile.get('name')}', not the model's own")
    return out

"""Replays the mixed-load trace (bench/trace.py) on one engine per line: `dynaspec bench-trace`.

Lines (engines built as the bench sweep builds them, dynaspec.bench.sweep.build_lines / _build_engine):
"no spec", "k=N" for each static k, "schedule" (a given draft_len_schedule, or "auto": planned by the
engine at start-up from its probed step costs and the planning profile) and "goodput"
(draft_len_policy: goodput, warm-started from the planning profile). The planning profile is
`planning_profile` when given, else the mix of the replayed profiles weighted by the trace's requests
(trace.mixed_acceptance), written next to the results.

Driver (closed loop, the same trace for every line): phase p admits its requests in trace order
whenever fewer than its concurrency c_p are in flight, and phase p + 1 begins once every request of
phase p has finished. So within a phase the number of running requests jumps to c_p, holds there while
the phase has requests to admit, then drains to 0 as its last requests finish at their own lengths;
every step belongs to exactly one phase, and each phase generates the same tokens on every line. Each
step is timed with time.perf_counter from its step() call to the next (CUDA synchronised once, at the end:
plain decode steps overlap their host work with the next step's GPU work, as when serving).
Reported per line: generated tokens / summed step time (prefill steps included: a trace interleaves
them), the same over wall time, per-phase tokens/s, the k histogram, and whether each request generated
exactly its max_tokens and the same tokens as "no spec". With acceptance REPLAYED the speculative lines'
tokens differ from no spec by design (accepted drafts are committed whatever the target predicts); only
the timing is meaningful then.
"""

from __future__ import annotations

import datetime
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dynaspec.bench import sweep
from dynaspec.bench.sweep_settings import check_cudagraph_mode
from dynaspec.bench.trace import DEFAULT_PHASES, TraceRequest, build_trace, check_phases, gen_len_range, mixed_acceptance
from dynaspec.engine.startup_heap import frozen_startup_heap
from dynaspec.spec.config import AUTO_SCHEDULE, parse_draft_len_schedule_option, parse_speculative_config
from dynaspec.spec.replay import load_acceptance, resolve_profile_path, split_profile_names

SCHEMA = "dynaspec.bench.trace/1"
PLANNING_PROFILE_FILE = "trace_planning_profile.json"
ProgressFn = Callable[[str, float, float], None]


@dataclass
class TraceSettings:
    """What to replay. `validate()` raises ValueError naming the bad setting."""

    model: str
    speculative_config: Any  # mapping or config: the drafter (its max_draft_len is the largest k)
    profiles: Sequence[str] | None = None  # BENCHMARK ONLY: replayed acceptance profiles (mixed per request)
    planning_profile: str | None = None  # acceptance for goodput warm start / schedule "auto"
    schedule: str | None = AUTO_SCHEDULE  # the schedule line: "auto", "1:4,16:2,64:0", or None (no line)
    goodput: bool = True
    adaptive: bool = False  # also the draft_len_policy: adaptive line (per-request draft lengths)
    draft_lens: Sequence[int] | None = None  # static k's (0 = no spec); None = 0..max_draft_len
    phases: Sequence[int] = DEFAULT_PHASES
    waves: float = 2.0
    requests_per_phase: Sequence[int] | None = None  # overrides waves: one request count per phase
    prompt_len: int = 128
    gen_len: int = 64
    gen_len_spread: float = 0.5
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    block_size: int = 16
    enforce_eager: bool = False
    cudagraph_mode: str | None = None  # EngineConfig.cudagraph_mode on every line (None: its default)
    warmup: bool = True
    model_cache_dir: str | None = None
    command_line: str | None = None

    def validate(self) -> None:
        check_cudagraph_mode(self.cudagraph_mode)
        check_phases(self.phases)
        build_trace(self.phases, self.waves, self.prompt_len, self.gen_len, self.gen_len_spread, 2, self.seed, None,
                    self.requests_per_phase)
        spec = self.base_spec()
        if self.draft_lens is not None:
            sweep._check_int_list("draft_lens", self.draft_lens, minimum=0)
            above = [k for k in self.draft_lens if k > spec.max_draft_len]
            if above:
                raise ValueError(f"static k {above} out of range: allowed 0..{spec.max_draft_len} (max_draft_len)")
        if self.profiles is not None:
            for name in split_profile_names(list(self.profiles)):
                load_acceptance(name)
        if self.planning_profile is not None:
            load_acceptance(self.planning_profile)
        if self.schedule is not None:
            schedule = parse_draft_len_schedule_option(self.schedule)
            if schedule == AUTO_SCHEDULE and self.planning_profile is None and self.profiles is None:
                raise ValueError(
                    "the 'auto' schedule line plans from an acceptance profile: give --planning-profile, or "
                    "--profiles to replay (their mix is planned with), or a schedule like '1:4,16:2,64:0'"
                )
            if schedule != AUTO_SCHEDULE:
                parse_speculative_config({**spec.model_dump(), "draft_len_schedule": schedule})

    def base_spec(self):
        if self.speculative_config is None:
            raise ValueError("the trace compares speculative lines: it needs a drafter (speculative config)")
        return parse_speculative_config(self.speculative_config)

    def static_ks(self) -> list[int]:
        max_k = self.base_spec().max_draft_len
        return sorted(self.draft_lens) if self.draft_lens is not None else list(range(max_k + 1))


@dataclass
class Step:
    """One engine step of a line: when, how long, how loaded, and what it chose."""

    start_s: float
    seconds: float
    in_flight: int
    batch: int  # decoding requests (0: a prefill-only step)
    k: int | None  # None: no decodes this step
    tokens: int
    phase: int
    drafted: int = 0  # draft positions verified (sum of k_i: a ragged step's differ from batch * k)
    reason: str = ""  # the draft-length policy's reason for this step's k ("allocate", "drain", "provisional", "probe", ...; "" static)
    by_profile: tuple[int, ...] = ()  # requests in flight replaying each profile (mixed replays; () otherwise)
    path: str = ""  # how the verified step's forward ran (SpecStats.last_step: "graph", "ragged", "chained", ...)
    verify_wait_s: float = 0.0  # its verification's host read (waiting for the device); seconds less it: host work


def _planning_profile(settings: TraceSettings, trace: list[TraceRequest], out_dir: Path) -> tuple[str | None, dict | None]:
    """(path, description) of the acceptance the goodput planner and the auto schedule plan with."""
    if settings.planning_profile is not None:
        path = resolve_profile_path(settings.planning_profile)
        return str(path), {"source": str(path), "acceptance_per_position": load_acceptance(str(path))}
    if settings.profiles is None:
        return None, None
    names = split_profile_names(list(settings.profiles))
    counts = [sum(1 for r in trace if r.profile == i) for i in range(len(names))]
    alphas = mixed_acceptance([load_acceptance(n) for n in names], counts)
    description = {
        "source": "mix of the replayed profiles, weighted by the trace's requests",
        "profiles": [Path(n).stem for n in names],
        "weights": counts,
        "acceptance_per_position": alphas,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLANNING_PROFILE_FILE
    path.write_text(json.dumps(description, indent=2) + "\n")
    return str(path), description


def build_trace_lines(settings: TraceSettings, planning_path: str | None) -> list[sweep.Line]:
    """no spec, k=N..., schedule (given or auto), goodput; the replayed profiles in every speculative line."""
    spec = settings.base_spec()
    base = spec.model_dump()
    base.update(draft_len_policy="schedule", draft_len_schedule=None, step_cost_file=None,
                acceptance_profile=planning_path)
    if settings.schedule is not None:
        base["draft_len_schedule"] = parse_draft_len_schedule_option(settings.schedule)
    replay = ",".join(split_profile_names(list(settings.profiles))) if settings.profiles is not None else None
    lines = sweep.build_lines(parse_speculative_config(base), settings.static_ks(), settings.schedule is not None, replay)
    for policy in [p for p, wanted in (("goodput", settings.goodput), ("adaptive", settings.adaptive)) if wanted]:
        base.update(draft_len_policy=policy, draft_len_schedule=None)
        lines += sweep.build_lines(parse_speculative_config(base), [], True, replay)
    return lines


def run_trace(settings: TraceSettings, out_dir: str | Path, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Replay the trace on every line; the JSON-shaped result (see module docstring)."""
    settings.validate()
    out_dir = Path(out_dir)
    spec = settings.base_spec()
    profiles = split_profile_names(list(settings.profiles)) if settings.profiles is not None else None
    low, high = gen_len_range(settings.gen_len, settings.gen_len_spread)
    max_batch = max(settings.phases)
    sweep_settings = sweep.SweepSettings(
        model=settings.model, speculative_config=spec, batch_sizes=[max_batch], prompt_len=settings.prompt_len,
        gen_len=high, device=settings.device, dtype=settings.dtype, seed=settings.seed,
        block_size=settings.block_size, enforce_eager=settings.enforce_eager, model_cache_dir=settings.model_cache_dir,
        cudagraph_mode=settings.cudagraph_mode,
    )
    num_profiles = len(profiles) if profiles else None
    # Ids, phases and workloads do not depend on the vocabulary (prompts do): plan with this skeleton.
    skeleton = build_trace(settings.phases, settings.waves, 1, settings.gen_len, settings.gen_len_spread, 2,
                           settings.seed, num_profiles, settings.requests_per_phase)
    planning_path, planning = _planning_profile(settings, skeleton, out_dir)
    lines = build_trace_lines(settings, planning_path)
    trace: list[TraceRequest] = []
    results: list[dict[str, Any]] = []
    metadata: dict[str, Any] = {}
    outputs: dict[str, dict[str, list[int]]] = {}
    for n, line in enumerate(lines):
        if progress:
            progress(f"{line.name}: start-up", float(n), float(len(lines)))
        engine = sweep._build_engine(sweep_settings, line, max_batch, spec.max_draft_len, settings.prompt_len)
        if not trace:
            trace = build_trace(settings.phases, settings.waves, settings.prompt_len, settings.gen_len,
                                settings.gen_len_spread, int(engine.vocab_size), settings.seed, num_profiles,
                                settings.requests_per_phase)
            metadata = _metadata(settings, spec, engine, profiles, trace, planning, lines, (low, high))
        schedule = engine.get_stats()["draft_len_schedule"]
        if settings.warmup:
            rng = random.Random(settings.seed + 1)
            for batch in sorted(set(settings.phases)):  # every concurrency of the trace, as a server that ran a while
                sweep._run_batch(engine, batch, settings.prompt_len, min(high, sweep.WARMUP_GEN_LEN), rng)
        before = engine.get_stats()
        with frozen_startup_heap():  # no full garbage collection inside a timed step
            steps, tokens, wall, preemptions, views = _drive(engine, trace, settings.phases, line.name, n, len(lines),
                                                             progress, num_profiles or 0)
        after = engine.get_stats()
        outputs[line.name] = tokens
        summary = _summarise(line, steps, tokens, wall, preemptions, trace, settings.phases, schedule, views)
        drafted, accepted = after["num_drafted"] - before["num_drafted"], after["num_accepted"] - before["num_accepted"]
        summary.update(num_drafted=drafted, num_accepted=accepted, acceptance_rate=accepted / drafted if drafted else None)
        results.append(summary)
        del engine
        sweep._free_memory()
    _mark_token_agreement(results, outputs)
    if progress:
        progress("done", float(len(lines)), float(len(lines)))
    return {
        "schema": SCHEMA,
        "metadata": metadata,
        "lines": [line.describe() for line in lines],
        "results": results,
        "comparison": compare(results),
    }


def _drive(engine, trace, phases, name: str, line_index: int, num_lines: int, progress, num_profiles: int = 0):
    """Closed-loop replay of `trace` on `engine`: (steps, tokens per request, wall seconds, preemptions);
    num_profiles: the replayed profiles, whose requests in flight each step counts (0: none replayed)."""
    from dynaspec.sampling_params import SamplingParams

    pending = list(reversed(trace))
    in_flight: set[str] = set()
    profile_of = {r.request_id: r.profile for r in trace if r.profile is not None}
    tokens: dict[str, list[int]] = {}
    steps: list[Step] = []
    views: dict[int, dict | None] = {}  # phase -> the policy's view (DraftLenPolicy.view) as the phase drained
    phase = pending[-1].phase if pending else 0
    preemptions = 0
    device = engine.device
    sweep._sync(device)
    stats = engine.get_stats()
    begin = time.perf_counter()
    while pending or in_flight:
        if pending and not in_flight:
            phase = pending[-1].phase  # the previous phase has drained: the next one begins
        while pending and pending[-1].phase == phase and len(in_flight) < phases[phase]:
            request = pending.pop()
            params = SamplingParams(temperature=0.0, max_tokens=request.max_tokens, ignore_eos=True)
            engine.add_request(request.request_id, list(request.prompt), params)
            in_flight.add(request.request_id)
        if not engine.has_unfinished_requests():
            raise RuntimeError(f"{name}: {len(in_flight)} requests in flight but the engine has none unfinished")
        decode_steps = stats["num_steps"]  # steps with decodes so far (SpecStats records only those)
        start = time.perf_counter()
        outs = engine.step()  # no synchronize: an overlapped step's GPU work runs on into the next call
        seconds = time.perf_counter() - start
        stats = engine.get_stats()
        decoded = stats["num_steps"] != decode_steps
        last = stats["last_step"]
        decision = (stats.get("planner_decision") or {}) if decoded else {}
        mix = [0] * num_profiles
        for rid in in_flight:
            if rid in profile_of:
                mix[profile_of[rid]] += 1
        steps.append(Step(start - begin, seconds, len(in_flight), last["batch_size"] if decoded else 0,
                          last["k"] if decoded else None, sum(len(o.new_token_ids) for o in outs), phase,
                          last.get("drafted", 0) if decoded else 0, decision.get("reason", ""), tuple(mix),
                          last.get("path", "") if decoded else "",
                          last.get("verify_wait_ms", 0.0) / 1e3 if decoded else 0.0))
        for out in outs:
            if out.finished:
                in_flight.discard(out.request_id)
                tokens[out.request_id] = list(out.token_ids)
                preemptions += out.metrics.num_preemptions if out.metrics else 0
        if not in_flight:  # the phase has drained: what the policy believes at its concurrency, for the report
            views[phase] = engine.policy.view(phases[phase])
        if progress and len(steps) % 16 == 0:
            done = len(tokens) / len(trace)
            progress(f"{name}: phase {phase} ({phases[phase]} concurrent)", line_index + done, float(num_lines))
    start = time.perf_counter()
    sweep._sync(device)  # the replay ends when the device is done: the wait belongs to the last step
    if steps:
        steps[-1] = replace(steps[-1], seconds=steps[-1].seconds + time.perf_counter() - start)
    return steps, tokens, time.perf_counter() - begin, preemptions, views


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def _histogram(steps: Sequence[Step]) -> dict[str, int]:
    out: dict[int, int] = {}
    for s in steps:
        if s.k is not None:
            out[s.k] = out.get(s.k, 0) + 1
    return {str(k): v for k, v in sorted(out.items())}


def _summarise(line, steps: list[Step], tokens, wall: float, preemptions: int, trace, phases, schedule,
               views: dict[int, dict | None] | None = None) -> dict[str, Any]:
    """A line's result: totals, per phase (with the policy's view as the phase drained, where it has one) and the
    step timeline."""
    total = sum(s.tokens for s in steps)
    busy = sum(s.seconds for s in steps)
    per_phase = []
    for p, concurrency in enumerate(phases):
        mine = [s for s in steps if s.phase == p]
        seconds = sum(s.seconds for s in mine)
        produced = sum(s.tokens for s in mine)
        per_phase.append({
            "phase": p,
            "concurrency": concurrency,
            "steps": len(mine),
            "tokens": produced,
            "time_s": seconds,
            "tokens_per_s": _rate(produced, seconds),
            "mean_in_flight": sum(s.in_flight for s in mine) / len(mine) if mine else 0.0,
            "k_histogram": _histogram(mine),
            "policy_view": (views or {}).get(p),
        })
    decode = [s for s in steps if s.k is not None]
    return {
        "line": line.name,
        "kind": line.kind,
        "k": line.k,
        "draft_len_schedule": schedule,
        "total_tokens": total,
        "step_time_s": busy,
        "wall_time_s": wall,
        "tokens_per_s": _rate(total, busy),
        "wall_tokens_per_s": _rate(total, wall),
        "num_steps": len(steps),
        "mean_k": sum(s.k for s in decode) / len(decode) if decode else 0.0,
        "k_histogram": _histogram(steps),
        "num_preemptions": preemptions,
        "all_max_tokens": all(len(tokens.get(r.request_id, [])) == r.max_tokens for r in trace),
        "tokens_match_no_spec": None,
        "per_phase": per_phase,
        "timeline": {
            "start_s": [round(s.start_s, 6) for s in steps],
            "seconds": [round(s.seconds, 6) for s in steps],
            "in_flight": [s.in_flight for s in steps],
            "batch": [s.batch for s in steps],
            "k": [s.k for s in steps],
            "drafted": [s.drafted for s in steps],
            "reason": [s.reason for s in steps],
            "phase": [s.phase for s in steps],
            # requests in flight per replayed profile (the batch's mix: which steps were all chat, say)
            "in_flight_by_profile": [list(s.by_profile) for s in steps],
            "path": [s.path for s in steps],
            "verify_wait_s": [round(s.verify_wait_s, 6) for s in steps],  # the rest of a step's seconds: host work
        },
    }


def _mark_token_agreement(results: list[dict[str, Any]], outputs: dict[str, dict[str, list[int]]]) -> None:
    reference = outputs.get("no spec")
    if reference is None:
        return
    for result in results:
        result["tokens_match_no_spec"] = outputs[result["line"]] == reference


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Goodput and the schedule against the best static line (no spec included), overall and per phase,
    and goodput against the per-phase best static line: the static k best in each phase, switched for
    free at phase boundaries (an oracle bound on what any phase-wise static choice could reach on this
    trace; goodput / best single static cannot exceed it by much unless k also pays to change within a
    phase)."""
    by_name = {r["line"]: r for r in results}
    static = [r for r in results if r["kind"] in ("no-spec", "static")]
    best = max(static, key=lambda r: r["tokens_per_s"]) if static else None
    goodput, schedule, adaptive = by_name.get("goodput"), by_name.get("schedule"), by_name.get("adaptive")

    def ratio(a, b):
        return a["tokens_per_s"] / b["tokens_per_s"] if a and b and b["tokens_per_s"] > 0 else None

    phases = []
    for p in range(len(results[0]["per_phase"]) if results else 0):
        rates = {r["line"]: r["per_phase"][p]["tokens_per_s"] for r in results}
        best_p = max((r["line"] for r in static), key=lambda name: rates[name], default=None)
        phases.append({
            "phase": p,
            "concurrency": results[0]["per_phase"][p]["concurrency"],
            "best_static_line": best_p,
            "best_static_tokens_per_s": rates.get(best_p) if best_p else None,
            "goodput_tokens_per_s": rates.get("goodput"),
            "schedule_tokens_per_s": rates.get("schedule"),
            "adaptive_tokens_per_s": rates.get("adaptive"),
        })
    oracle = None
    if static and phases:
        seconds = sum(min(r["per_phase"][p]["time_s"] for r in static) for p in range(len(phases)))
        tokens = sum(phase["tokens"] for phase in static[0]["per_phase"])
        oracle = tokens / seconds if seconds > 0 else None
    return {
        "best_static_line": best["line"] if best else None,
        "best_static_tokens_per_s": best["tokens_per_s"] if best else None,
        "goodput_tokens_per_s": goodput["tokens_per_s"] if goodput else None,
        "schedule_tokens_per_s": schedule["tokens_per_s"] if schedule else None,
        "goodput_over_best_static": ratio(goodput, best),
        "goodput_over_schedule": ratio(goodput, schedule),
        "schedule_over_best_static": ratio(schedule, best),
        "per_phase_best_static_tokens_per_s": oracle,
        "goodput_over_per_phase_best_static": goodput["tokens_per_s"] / oracle if goodput and oracle else None,
        "adaptive_tokens_per_s": adaptive["tokens_per_s"] if adaptive else None,
        "adaptive_over_goodput": ratio(adaptive, goodput),
        "adaptive_over_best_static": ratio(adaptive, best),
        "per_phase": phases,
    }


def _metadata(settings, spec, engine, profiles, trace, planning, lines, gen_range) -> dict[str, Any]:
    device = engine.device
    names = [Path(p).stem for p in profiles] if profiles else []
    meta = {
        "model": settings.model,
        "model_name": engine.loaded.name,
        "is_random": bool(engine.loaded.is_random),
        "drafter": spec.decoding_type,
        "draft_model": getattr(spec, "speculative_model", None),
        "draft_is_random": str(getattr(spec, "speculative_model", "") or "").startswith("random:"),
        "max_draft_len": spec.max_draft_len,
        "acceptance_replay": bool(profiles),
        "replay_profile": {"name": " + ".join(names)} if profiles else None,
        "replay_profiles": [
            {"name": Path(p).stem, "path": str(resolve_profile_path(p)), "acceptance_per_position": load_acceptance(p),
             "requests": sum(1 for r in trace if r.profile == i)}
            for i, p in enumerate(profiles or [])
        ],
        "workload_assignment": "request id 'trace-NNNNN' replays profile crc32(id) % number of profiles" if profiles else None,
        "planning_profile": planning,
        "schedule_option": settings.schedule,
        "phases": list(settings.phases),
        "waves": settings.waves,
        "requests_per_phase": [sum(1 for r in trace if r.phase == p) for p in range(len(settings.phases))],
        "num_requests": len(trace),
        "total_tokens": sum(r.max_tokens for r in trace),
        "prompt_len": settings.prompt_len,
        "gen_len": settings.gen_len,
        "gen_len_range": list(gen_range),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(sweep._cuda_index(device)) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(engine.dtype).removeprefix("torch."),
        "cuda_graphs": device.type == "cuda" and not settings.enforce_eager,
        "seed": settings.seed,
        "lines": [line.name for line in lines],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": settings.command_line or " ".join(sys.argv),
        "torch_version": torch.__version__,
        "timing": "tokens_per_s: generated tokens / summed engine step time (perf_counter from each step() call "
        "to the next, CUDA synchronized once at the end; prefill steps included); wall_tokens_per_s: over the "
        "whole replay",
    }
    meta["caveats"] = sweep.caveats(meta)
    return meta

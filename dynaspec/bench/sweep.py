"""Decode-throughput sweep: batch sizes x draft lengths k for one model and drafter (`dynaspec bench`).

This module runs the sweep and measures each point; the settings and lines are in
dynaspec.bench.sweep_settings, the points and result in dynaspec.bench.sweep_points, the HBM floor and run
metadata in dynaspec.bench.sweep_floor (all re-exported here).

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
(every output token over first step to last). What each point reports: dynaspec.bench.sweep_points.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynaspec.bench.sweep_floor import (
    COPY_BYTES,
    _cuda_index,
    _floor,
    _metadata,
    caveats,
    floor_points,
    kv_bytes_per_token,
    measure_copy_bandwidth,
    weight_bytes,
)
from dynaspec.bench.sweep_points import (
    SCHEMA,
    Point,
    SweepResult,
    envelope,
    mark_token_agreement,
    merge_rounds,
)
from dynaspec.bench.sweep_settings import (
    DEFAULT_BATCH_SIZES,
    REPLAY_FIELD,
    Line,
    SweepSettings,
    _check_int_list,
    _spec_variant,
    build_lines,
    default_batch_sizes,
    load_acceptance_profile,
)
from dynaspec.config import EngineConfig
from dynaspec.engine.startup_heap import freeze_survivors, frozen_startup_heap, full_collections
from dynaspec.spec.schedule_policy import SchedulePolicy

__all__ = [
    "COPY_BYTES",
    "DEFAULT_BATCH_SIZES",
    "REPLAY_FIELD",
    "SCHEMA",
    "WARMUP_GEN_LEN",
    "Line",
    "Point",
    "ProgressFn",
    "SweepResult",
    "SweepSettings",
    "build_lines",
    "caveats",
    "default_batch_sizes",
    "engine_nominal_k",
    "envelope",
    "floor_points",
    "kv_bytes_per_token",
    "load_acceptance_profile",
    "mark_token_agreement",
    "measure_copy_bandwidth",
    "merge_rounds",
    "run_sweep",
    "weight_bytes",
]

# Before each (line, batch) point its engine runs one untimed batch of this many tokens: graphs, allocator
# and caches are warm, and an online policy (the goodput planner) has seen that batch size, as it would
# have in a server running for hours; every line gets the same warm-up (random token ids, or with a
# --workload other prompts of that workload: sweep_prompts.WorkloadPrompts.warmup_for_batch).
WARMUP_GEN_LEN = 16

# progress(description, completed, total)
ProgressFn = Callable[[str, float, float], None]


def run_sweep(
    settings: SweepSettings,
    progress: ProgressFn | None = None,
    hf_batch_sizes: Sequence[int] | None = None,
) -> SweepResult:
    """Measure every (line, batch size); with `hf_batch_sizes`, HF transformers `generate` too."""
    settings.validate()
    spec = settings.resolved_spec()
    lines = build_lines(spec, settings.draft_lens, settings.include_schedule, settings.acceptance_profile,
                        settings.policy_lines)
    batches = sorted(settings.batch_sizes)
    if hf_batch_sizes:
        _check_int_list("hf_batch_sizes", hf_batch_sizes, minimum=1)
        if settings.tensor_parallel_size > 1:
            raise ValueError("comparing with HF transformers needs the whole model in one process: "
                             f"tensor_parallel_size={settings.tensor_parallel_size} shards it; use 1")
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
            # random ids (a workload without spare prompts) as long as the longest measured prompt: the engine's
            # max_model_len is sized by it
            _run_batch(engine, batch, prompt_len, min(settings.gen_len, WARMUP_GEN_LEN), rng, warmup_prompts)
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
            engine.shutdown()  # its tensor-parallel workers, if any
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
        deterministic=settings.deterministic,
        cudagraph_mode=settings.cudagraph_mode,
        tensor_parallel_size=settings.tensor_parallel_size,
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

    Returns (prefill_time_s, records, preemptions, output_token_ids, prefill_records): a record (seconds, tokens
    committed, the engine's last_step stats, the goodput planner's latest decision or None) per step after every
    request had its first token (the decode phase), each request's output token ids in request order, and the
    same records for the steps before (the prefill phase; last_step {} for a step without decoding requests).
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
    engine.close_intake()  # a closed batch: it ends with its slowest request (spec/drain.py)
    finished: dict[str, list[int]] = {}
    device = engine.device
    records, prefill_records = [], []
    prefill_time = 0.0
    preemptions = 0
    decode_steps = _decode_steps(engine.get_stats())
    _sync(device)
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        outputs = engine.step()  # no synchronize: an overlapped step's GPU work runs on into the next call
        elapsed = time.perf_counter() - start
        preemptions += sum(o.metrics.num_preemptions for o in outputs if o.finished and o.metrics)
        finished.update((o.request_id, list(o.token_ids)) for o in outputs if o.finished)
        committed = sum(len(o.new_token_ids) for o in outputs)
        stats = engine.get_stats()
        steps, decode_steps = decode_steps, _decode_steps(stats)  # a step with decoding requests records one
        last_step = stats["last_step"] if decode_steps > steps else {}  # none this call: not the last call's again
        if pending:
            prefill_time += elapsed
            pending.difference_update(o.request_id for o in outputs if o.token_ids)
            prefill_records.append((elapsed, committed, last_step, stats.get("planner_decision")))
            continue
        records.append((elapsed, committed, last_step, stats.get("planner_decision")))
    start = time.perf_counter()
    _sync(device)  # the batch ends when the device is done: the wait belongs to the last step
    if records:
        elapsed, committed, last_step, decision = records[-1]
        records[-1] = (elapsed + time.perf_counter() - start, committed, last_step, decision)
    return prefill_time, records, preemptions, [finished.get(r, []) for r in order], prefill_records


def _decode_steps(stats: dict[str, Any]) -> int:
    """Steps with decoding requests so far (get_stats' k_histogram counts them by batch size and k)."""
    return sum(sum(by_k.values()) for by_k in stats["k_histogram"].values())


def _step_rows(records: list) -> list[list]:
    """Point.step_log's rows of these records."""
    return [[round(r[0] * 1e3, 3), r[2].get("batch_size", 0), r[2].get("k", 0), r[2].get("drafted", 0),
             r[2].get("accepted", 0), (r[3] or {}).get("reason", ""), r[2].get("path", ""), r[2].get("trimmed", 0),
             round(r[2].get("verify_wait_ms", 0.0), 3)]
            for r in records]


def _measure(engine, line: Line, batch: int, prompt_len: int, gen_len: int, rng: random.Random,
             prompts: list[list[int]] | None = None) -> Point:
    view_at_start = _planner_view(engine, batch)
    with full_collections() as collections:
        prefill_time, records, preemptions, token_ids, prefill_records = _run_batch(
            engine, batch, prompt_len, gen_len, rng, prompts)
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
        step_log=_step_rows(records),
        prefill_step_log=_step_rows(prefill_records),
        gc_full_collections_ms=[round(s * 1e3, 3) for s in collections],
        batch_tokens=batch_tokens,
        batch_tokens_per_s=batch_tokens / (prefill_time + decode_time) if prefill_time + decode_time > 0 else 0.0,
        planner_view=_planner_view(engine, batch),
        planner_view_at_start=view_at_start,
    )


def _planner_view(engine, batch: int) -> dict[str, Any] | None:
    """The policy's view of this batch after the point (DraftLenPolicy.view: None for those that predict nothing)."""
    return engine.policy.view(batch)


def engine_nominal_k(engine, line: Line, batch: int) -> int:
    """The k `engine` should run at for `batch` decoding requests: its static policy's (a schedule planned
    at start-up included), else the line's nominal k (the goodput planner's: max_draft_len)."""
    if isinstance(engine.policy, SchedulePolicy):
        return engine.policy.draft_len(batch, batch)
    return line.nominal_k(batch)



def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

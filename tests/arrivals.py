"""Driving an engine through requests that arrive over time (shared by the engine-level tests)."""

from __future__ import annotations

from collections.abc import Callable

from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams

# request_for(prompt index, number of requests submitted before it) -> (request id, SamplingParams)
RequestFor = Callable[[int, int], tuple[str, SamplingParams]]


def run_with_arrivals(
    engine: LLMEngine, prompts: list[list[int]], arrivals: dict[int, list[int]], request_for: RequestFor
) -> dict[str, list[int]]:
    """Step `engine` until every request has finished, adding before step s the prompts arrivals[s]
    (indices into `prompts`); returns the token ids of each finished request by id."""
    results: dict[str, list[int]] = {}
    step, submitted = 0, 0
    total = sum(len(v) for v in arrivals.values())
    while submitted < total or engine.has_unfinished_requests():
        for i in arrivals.get(step, []):
            request_id, params = request_for(i, submitted)
            engine.add_request(request_id, prompts[i], params)
            submitted += 1
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.token_ids
        step += 1
    return results


def run_with_abort(engine: LLMEngine, prompts, params, arrivals: list[int], abort_at: int | None = None,
                   closed: bool = False) -> dict[str, list[int]]:
    """Submit prompts[i] as "r{i}" with params[i] before step arrivals[i]; abort "r1" before step abort_at;
    the final tokens of each request that finished (not the aborted one). closed: once the last is added, the
    batch is closed (engine.close_intake, as LLM.generate does)."""
    results: dict[str, list[int]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished_requests():
        for i, at in enumerate(arrivals):
            if at == step:
                engine.add_request(f"r{i}", prompts[i], params[i])
        if closed and step == max(arrivals):
            engine.close_intake()
        if abort_at == step:
            engine.abort_request("r1")
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.token_ids
        step += 1
    return results

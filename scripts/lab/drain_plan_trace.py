"""Where the adaptive policy plans while a closed batch drains (issue 20): a CPU engine (tiny Llama target, a
perturbed copy drafting, the graphs' fixed-shape code run eagerly, overlapped scheduling), injected step costs
that make k = 2 pay, `--requests` prompts whose lengths end them apart; per engine step its wall time, the
policy's reason and k_i histogram, which drafter entry ran (`propose` or `propose_chained`), every plan()
with where it ran (`refresh`, off the critical path, or `critical`), its batch, whether the drain rule's tokens
left were given, and its time, and why a step was not chained where chaining was tried (the first of
engine/chained_step.chain_next's conditions that failed). The H100 draft-model sweep of 2026-12-07 21:31 UTC
had adaptive's drain steps around each finished request slower than its steady ones (docs/lab/adaptive_runs.md);
this shows whether the policy's planning is on that path, and which steps run unchained.

    python scripts/lab/drain_plan_trace.py --requests 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import dynaspec.engine.engine as engine_module  # noqa: E402
from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.engine.engine import LLMEngine  # noqa: E402
from dynaspec.runtime.cost_model import StepCostModel  # noqa: E402
from dynaspec.sampling_params import SamplingParams  # noqa: E402
from dynaspec.spec.adaptive import AdaptivePolicy  # noqa: E402
from dynaspec.spec.config import DraftTargetDecodingConfig  # noqa: E402
from dynaspec.runtime.request import RequestStatus  # noqa: E402
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint  # noqa: E402


def _why_unchained(launched, runner, scheduler, policy) -> str:
    """The first of chain_next's conditions a step failed (its order), for the trace."""
    sched, k = launched.sched, launched.sched.draft_len
    requests = [d.request for d in sched.decodes if d.request.status == RequestStatus.RUNNING]
    if launched.drafts.on_device is None:
        return "drafts not on the device"
    if k == 0 or sched.prefills:
        return "k = 0 or prefills"
    if not requests or policy.trims_drafts_at(len(requests)):
        return "trims"
    if scheduler.waiting or len(scheduler.running) != len(requests):
        return "arrivals"
    if not runner.can_replay(len(requests), k):
        return "no graph"
    return "policy, KV or max_model_len"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--per-position", type=float, default=0.004, help="injected verify cost of a position")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="drain-trace-"))
    target = str(make_tiny_checkpoint(root, "llama", seed=0))
    near = str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004))
    costs = StepCostModel()
    for batch in (1, 2, 4, 8, 16, 32, 48, 64, 96, 128):
        for k in range(3):
            costs.add(batch, k, 1.0 + args.per_position * batch * k)
    costs.save(root / "costs.json")
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=near, draft_len_policy="adaptive",
                                     step_cost_file=str(root / "costs.json"))
    engine = LLMEngine(EngineConfig(model=target, max_num_seqs=args.requests, block_size=4, async_scheduling=True,
                                    speculative_config=spec, max_num_batched_tokens=4096))
    pairs = engine.graph_pairs()
    engine.runner.capture_graphs(pairs, engine.max_blocks_per_seq, use_graphs=False)
    engine.drafter.capture_graphs([(b, k) for b, k in pairs if k > 0], engine.max_blocks_per_seq, use_graphs=False)

    plans: list[tuple[str, int, bool, float]] = []
    plan = AdaptivePolicy.plan

    def timed_plan(self, batch, request_ids=None, remaining=None):
        start = time.perf_counter()
        allocation = plan(self, batch, request_ids, remaining)
        where = "refresh" if any(f.name == "refresh" for f in traceback.extract_stack()) else "critical"
        plans.append((where, batch, remaining is not None, time.perf_counter() - start))
        return allocation

    AdaptivePolicy.plan = timed_plan
    refusals: list[str] = []
    chain_next = engine_module.chain_next

    def traced_chain_next(launched, runner, drafter, scheduler, block_manager, policy, max_model_len):
        chained = chain_next(launched, runner, drafter, scheduler, block_manager, policy, max_model_len)
        if chained is None:
            refusals.append(_why_unchained(launched, runner, scheduler, policy))
        return chained

    engine_module.chain_next = traced_chain_next
    entries: list[str] = []
    for name in ("propose", "propose_chained"):
        method = getattr(engine.drafter, name)
        setattr(engine.drafter, name, lambda *a, _m=method, _n=name, **kw: entries.append(_n) or _m(*a, **kw))

    gen = torch.Generator().manual_seed(5)
    for i in range(args.requests):
        engine.add_request(f"r{i}", torch.randint(0, 512, (8,), generator=gen).tolist(),
                           SamplingParams(temperature=0, max_tokens=30 + (i * 7) % 11, ignore_eos=True))
    engine.close_intake()  # a closed batch, as `LLM.generate` and the bench run it: the drain rule applies
    print("| step | ms | reason | k_i | drafter | plans (where, batch, drain, ms) | not chained |\n"
          "|---|---|---|---|---|---|---|")
    step = 0
    while engine.has_unfinished_requests():
        n_entries, n_plans, n_refusals, start = len(entries), len(plans), len(refusals), time.perf_counter()
        engine.step()
        seconds = time.perf_counter() - start
        decision = engine.policy.last_decision
        shown = [(w, b, d, round(s * 1e3, 2)) for w, b, d, s in plans[n_plans:]]
        print(f"| {step} | {seconds * 1e3:.1f} | {decision.get('reason')} | {decision.get('draft_lens')} | "
              f"{' '.join(entries[n_entries:])} | {shown} | {', '.join(refusals[n_refusals:])} |")
        step += 1


if __name__ == "__main__":
    main()

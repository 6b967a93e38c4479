"""LLMEngine: the step loop, readable top to bottom.

```
sched   = scheduler.schedule(policy.draft_lens)   # continuous batching; k_i per decode, k = max k_i
drafts  = drafter.propose(decodes, k)             # only when k >= 1: no draft work at all at k = 0
logits  = runner.forward(decodes + prefills)      # one target forward, 1 + d_i positions per decode
result  = verify(logits, batch, acceptance)       # greedy + rejection sampling, one host read
outputs = commit(result.tokens)                   # stop checks; rejected KV slots rolled back
policy.observe(StepOutcome(...))                  # fed while the NEXT step's forward runs (engine/policy_feed.py)
```
The policy (spec/policies.py) and the drafter (spec/factory.py) are complete interfaces, built from the
config by tables; benchmark-only acceptance replay is verify's strategy. The engine tests none of them.

A plain decode step (k = 0, captured graph) is not waited for: the next step() launches the following
one from its tokens on the device and commits it meanwhile (overlapped decode, engine/overlap.py). A
speculative decode step from a graph is verified by the next step() call, which launches the step after
it before building the outputs (deferred verification, engine/launched_step.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from dynaspec.config import EngineConfig
from dynaspec.models.attention import KERNEL_MAX_QUERY_LEN
from dynaspec.engine.block_manager import BlockManager
from dynaspec.engine.chained_step import chain_next
from dynaspec.engine.drafting import propose_drafts, trimmed_count
from dynaspec.engine.policy_feed import PolicyFeed, verified_outcome
from dynaspec.engine.engine_setup import activation_reserve, check_shared_model, eos_ids, resolve_max_model_len
from dynaspec.engine.graph_keys import (forward_path, mixed_keys, plain_beside_prefills, ragged_keys,
                                        uniform_pairs)
from dynaspec.engine.launched_step import AppliedStep, LaunchedStep, defers_verification, without_aborted
from dynaspec.engine.logprobs import step_logprobs
from dynaspec.engine.request_intake import new_request
from dynaspec.engine.output_processor import OutputProcessor
from dynaspec.engine.overlap import (InflightStep, can_overlap, continuation, continued_ids, overlapped_seconds,
                                     start_copy)
from dynaspec.engine.scheduler import Scheduler, SchedulerOutput
from dynaspec.engine.step_inputs import flat_inputs, mixed_inputs, ragged_inputs, uniform_inputs, verify_batch
from dynaspec.models.decode_kernels import decode_kernels_for
from dynaspec.models.loader import LoadedModel, load_model
from dynaspec.outputs import RequestOutput
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.runtime.cost_probe import measure_step_costs
from dynaspec.runtime.cuda_graphs import UniformDecodeBatch
from dynaspec.runtime.kv_cache import choose_num_blocks, kv_bytes_per_block
from dynaspec.runtime.tp_launcher import start_tensor_parallel
from dynaspec.runtime.tp_runner import build_runner
from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.catch_up import HORIZON_TOKENS_PER_REQUEST
from dynaspec.spec.drafter import DraftProposal
from dynaspec.spec.factory import DrafterContext, build_drafter
from dynaspec.spec.policies import build_policy
from dynaspec.spec.policy import PolicyContext, StepOutcome
from dynaspec.spec.replay import acceptance_strategy
from dynaspec.spec.stats import SpecStats
from dynaspec.spec.verifier import next_tokens, verify

ProgressFn = Callable[[str, float, float], None]


class LLMEngine:
    def __init__(self, config: EngineConfig, progress: ProgressFn | None = None, loaded: LoadedModel | None = None):
        """loaded: a target model already loaded (by another engine of the same model, dtype and device),
        whose weights this engine shares instead of loading its own copy; each engine still has its own KV
        pool, graphs and drafter (benchmarks run engines side by side on one copy of the weights this way)."""
        self.config = config
        self.device = config.resolved_device()
        self.dtype = config.resolved_dtype()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        shared = loaded is not None
        if loaded is None:
            loaded = load_model(
                config.model, dtype=self.dtype, device=self.device, progress=progress, cache_dir=config.model_cache_dir
            )
        else:
            check_shared_model(loaded, config.model, self.dtype, self.device)
        self.loaded: LoadedModel = loaded
        # tensor_parallel_size > 1: the worker ranks start and this rank's model is sharded (rank 0)
        self.workers = start_tensor_parallel(config.tensor_parallel_size, loaded, self.dtype, self.device,
                                             config.model_cache_dir, config.dependent_launch, shared)
        self.tokenizer = loaded.tokenizer
        self.max_model_len = resolve_max_model_len(config, loaded)
        spec = config.speculative_config
        self.max_draft_len = spec.max_draft_len if spec is not None else 0
        context = DrafterContext(loaded, self.dtype, self.device, config.seed, config.model_cache_dir, progress)
        self.drafter = build_drafter(spec, context)
        self.acceptance = acceptance_strategy(spec, config.seed)  # benchmark-only replay, or the target's verdict
        kernels = decode_kernels_for(self.device, config.dependent_launch, config.deterministic)
        loaded.model.set_decode_kernels(kernels)

        self.use_graphs = self.device.type == "cuda" and not config.enforce_eager
        bytes_per_block = kv_bytes_per_block(loaded.model, config.block_size, self.dtype)
        bytes_per_block += self.drafter.kv_bytes_per_block(config.block_size, self.dtype)
        max_len = self.max_model_len + self.max_draft_len
        num_blocks = config.num_kv_blocks or choose_num_blocks(
            bytes_per_block, self.device, config.block_size, config.max_num_seqs, max_len,
            config.gpu_memory_utilization, reserved_bytes=activation_reserve(config, loaded, self.device),
        )
        if num_blocks * config.block_size < max_len:
            raise ValueError(
                f"the KV pool ({num_blocks} blocks x {config.block_size} slots) cannot hold one sequence of "
                f"max_model_len={self.max_model_len} (+{self.max_draft_len} draft slots); raise num_kv_blocks or "
                "lower max_model_len"
            )
        self.runner = build_runner(self.workers, loaded.model, num_blocks, config.block_size, self.dtype, self.device)
        self.drafter.attach(num_blocks, config.block_size, kernels)
        self.max_blocks_per_seq = -(-max_len // config.block_size)
        self._captured: list[tuple[int, int]] | None = None
        self.policy = build_policy(spec, PolicyContext(
            step_costs=self._probe_step_costs,
            catch_up_cost=self.drafter.measure_catch_up_cost,
            backlog=self._drafter_backlog,
            padded_batch=self._graph_batch if self.use_graphs else None,
            ragged_step=self.runner.ragged_key if self.use_graphs else None,
        ))
        self._capture(self.graph_pairs())
        if self.use_graphs and self.policy.ragged and self.max_draft_len > 0:
            self.runner.capture_ragged_graphs(self._ragged_keys(), 1 + self.max_draft_len, self.max_blocks_per_seq)
        if self.use_graphs and config.cudagraph_mode == "FULL":
            self.runner.capture_mixed_graphs(self._mixed_keys(), self.max_blocks_per_seq)

        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer, eos_ids(loaded), self.max_model_len)
        self.stats = SpecStats()
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.requests: dict[str, Request] = {}
        self.vocab_size = int(loaded.model.vocab_size)
        self.num_steps = 0
        self._inflight: InflightStep | None = None  # overlapped decode step awaiting its commit
        self._overlap_ready_at = 0.0  # perf_counter() when the last overlapped step's tokens reached the host
        self._launched: LaunchedStep | None = None  # speculative step awaiting its verification (deferred)
        # Policy work queued by a step (its outcome, releases), done while the next step's forward runs
        self.policy_feed = PolicyFeed(self.policy)
        self._previous_draft_len = 0  # k of the last decode step (0 before any)

    # ----------------------------------------------------------------------------------- start-up
    def graph_pairs(self, draft_lens: Callable[[int], set[int]] | None = None) -> list[tuple[int, int]]:
        """The (batch bucket, k) pairs the policy can reach (or `draft_lens` gives), for CUDA graph capture."""
        max_batch = min(self.config.max_num_seqs, self.config.cuda_graph_max_batch)
        return uniform_pairs(draft_lens or self.policy.reachable_draft_lens, max_batch, self.config.max_num_batched_tokens)

    def _capture(self, pairs: list[tuple[int, int]]) -> None:
        """Capture the target's and the drafter's CUDA graphs once (no-op in eager mode)."""
        if self._captured is not None:
            return
        self._captured = pairs
        if self.use_graphs:
            self.runner.capture_graphs(pairs, self.max_blocks_per_seq)
            self.drafter.capture_graphs([(b, k) for b, k in pairs if k > 0], self.max_blocks_per_seq)
        self.runner.compile_eager_kernels(KERNEL_MAX_QUERY_LEN)  # eager steps of any short length: no mid-run compile
        self.drafter.compile_eager_kernels()

    def _ragged_keys(self) -> list[tuple[int, int]]:
        return ragged_keys(self._captured, self.max_draft_len, self.config.max_num_batched_tokens)

    def _probe_step_costs(self) -> StepCostModel:
        """T(batch, k) for every bucket and k in 0..max_draft_len, after capturing their graphs (a policy
        that prices steps can choose any k); eager mode probes batches <= 8 only."""
        every_k = set(range(self.max_draft_len + 1))
        pairs = self.graph_pairs(lambda batch: every_k)
        self._capture(pairs)
        return self.measure_step_costs(pairs if self.use_graphs else [(b, k) for b, k in pairs if b <= 8])

    def measure_step_costs(self, pairs: list[tuple[int, int]], repeats: int = 5) -> StepCostModel:
        """T(batch, k) for these pairs: the target's verify forward plus the drafter's draft_seconds."""
        return measure_step_costs(self.runner, pairs, self.drafter.draft_seconds, repeats)

    def _graph_batch(self, batch: int, k: int) -> int:
        """The batch size a decode step of `batch` requests at draft length k runs at: its CUDA graph's
        bucket, or `batch` itself where no graph holds it (eager)."""
        pair = self.runner.graphs.lookup(batch, k) if self.runner.graphs is not None else None
        return batch if pair is None else pair[0]

    def _drafter_backlog(self) -> tuple[int, int]:
        """(tokens the drafter is behind on, tokens still to generate, at most HORIZON_TOKENS_PER_REQUEST
        each) over the decoding requests: the goodput planner's price of a switch from k = 0."""
        decoding = [r for r in self.scheduler.running if not r.is_prefilling]
        remaining = sum(min(r.remaining_tokens, HORIZON_TOKENS_PER_REQUEST) for r in decoding)
        return self.drafter.catch_up_tokens(decoding), remaining

    # ----------------------------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        """Queue a request. Raises ValueError/TypeError naming what is wrong; other requests go on."""
        request = new_request(
            request_id, prompt, params, in_use=self.requests, tokenizer=self.tokenizer, model_name=self.config.model,
            vocab_size=self.vocab_size, max_model_len=self.max_model_len, device=self.device,
        )
        self.requests[request_id] = request
        self.scheduler.add(request)

    def close_intake(self) -> None:
        """The requests added so far are the whole batch: none is added before they finish (`LLM.generate`). Its
        end is then its slowest request's, which a draft-length policy may plan for (spec/drain.py); an add
        reopens it. A server never calls this: its finished requests are replaced."""
        self.scheduler.close_intake()

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        request.status = RequestStatus.FINISHED
        request.finish_reason = "abort"
        self._release(request)
        self.output_processor.release(request_id)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers (a no-op without them); the engine cannot step afterwards."""
        if self.workers is not None:
            self.workers.stop()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_total_blocks(self) -> int:
        return self.block_manager.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    @property
    def kv_cache_usage(self) -> float:
        return self.block_manager.usage

    def get_stats(self) -> dict:
        stats = self.stats.as_dict()
        stats.update(
            num_drafted=stats["drafted"],
            num_accepted=stats["accepted"],
            acceptance_rate_per_position=stats["acceptance_per_position"],
            num_engine_steps=self.num_steps,
            num_waiting=self.num_waiting,
            num_running=self.num_running,
            kv_cache_usage=self.kv_cache_usage,
            speculative=self.config.speculative_config is not None,
            acceptance_replay=self.acceptance.name,
            **self.policy.stats(),  # draft_len_schedule, auto_schedule, planner_decision
            **self.block_manager.stats(),  # prefix_cache_queries / _hits (prompt tokens), prefix_cache_hit_rate
        )
        return stats

    # ----------------------------------------------------------------------------------- the step
    def step(self) -> list[RequestOutput]:
        self.drafter.claim_target()  # engines sharing the target's weights step in turn (Drafter.claim_target)
        if self._inflight is not None:  # overlapped decode: launch step t + 1, then commit step t
            inflight = self._inflight
            following = continuation(self.scheduler, inflight, self.policy.draft_lens, self.max_model_len,
                                     lambda batch: self.runner.can_replay(batch, 0))
            self._inflight = (None if following is None
                              else self._launch_overlapped(following, continued_ids(inflight, following)))
            # refreshed for the batch the next decision is likeliest to meet: the one just launched
            self.policy_feed.feed((inflight.sched if following is None else following).decodes)
            return self._finish_overlapped(inflight)
        earlier = None
        if self._launched is not None:  # deferred verification: step t is verified and committed first,
            launched, self._launched = self._launched, None  # unless step t + 1 can be launched before it
            chained = chain_next(launched, self.runner, self.drafter, self.scheduler, self.block_manager, self.policy,
                                 self.max_model_len)
            earlier = self._verify_and_apply(launched, 0 if chained is None else 1 + launched.sched.draft_len)
            if chained is not None:
                # a chained step's time runs from its predecessor's commit to its own (a period of the
                # pipeline): from its launch it would also count the predecessor's forward queued before it,
                # ~2x a step, and the policy would price speculation at twice its cost
                chained[0].started = time.perf_counter()
                return self._continue_chained(*chained, earlier)
        return self._schedule_and_run(earlier)

    def _continue_chained(self, step: LaunchedStep, proposal: DraftProposal, earlier: AppliedStep) -> list[RequestOutput]:
        """Step t + 1 runs (engine/chained_step.py) and step t is committed: the drafter's bookkeeping of
        t + 1's drafts, then step t's outputs, built while t + 1 runs."""
        self.num_steps += 1
        requests = [d.request for d in step.sched.decodes]
        self.drafter.record_chained(requests, proposal, step.sched.draft_len)
        for request in requests:
            if request.status != RequestStatus.RUNNING:  # stopped or aborted at step t: no drafter state kept
                self.drafter.release(request)
        # verified by the next call; dropped unverified when every request stopped at step t
        self._launched = step if any(r.status == RequestStatus.RUNNING for r in requests) else None
        self.policy_feed.feed(step.sched.decodes)
        return self._publish(earlier)

    def _schedule_and_run(self, earlier: AppliedStep | None = None) -> list[RequestOutput]:
        """Schedule a step and launch it; finish it here unless it is overlapped or deferred. earlier: the
        previous step's commit, whose outputs are built once this step is launched (while it runs)."""
        sched = self.scheduler.schedule(self.policy.draft_lens)  # ragged k_i: flat path, or the graph padded to k
        if plain_beside_prefills(self.runner, sched):  # a mixed graph at k = 0 rather than an eager speculative step
            self.scheduler.refill(sched)  # the dropped drafts' positions go to prompts
        for request in sched.preempted:
            self.drafter.release(request)
        overlapped = self.config.async_scheduling and can_overlap(sched) and self.runner.can_replay(len(sched.decodes), 0)
        if sched.is_empty or overlapped:
            if overlapped:  # its tokens are committed by the next call
                self._previous_draft_len = 0
                self._inflight = self._launch_overlapped(sched, None)
            return [] if earlier is None else self._publish(earlier)
        launched = self._launch(sched)
        self.policy_feed.feed(sched.decodes)  # a replayed graph is still running: the host would only wait
        outputs = [] if earlier is None else self._publish(earlier)  # step t's, built while step t + 1 runs
        if defers_verification(sched, self.config.async_scheduling, launched.path != "eager"):
            self._launched = launched
            return outputs  # this step is verified and committed by the next call (engine/launched_step.py)
        return outputs + self._publish(self._verify_and_apply(launched))

    def _launch(self, sched: SchedulerOutput) -> LaunchedStep:
        """Draft and launch the step's target forward (its path: which graph runs it, or eager)."""
        started = time.perf_counter()
        self.num_steps += 1
        k = sched.draft_len
        decoding = [d.request for d in sched.decodes]
        # The first speculative step after plain ones pays the drafter's catch-up on every token committed
        # meanwhile: a cost of switching k, not a sample of T(batch, k).
        resumed = k > 0 and self._previous_draft_len == 0 and not sched.prefills
        behind = self.drafter.catch_up_tokens(decoding) if resumed else None
        step_drafts = propose_drafts(self.drafter, self.acceptance, sched,
                                     self.policy.trim_drafts if self.policy.trims_drafts_at(len(decoding)) else None)
        path = forward_path(self.runner, sched, step_drafts.lengths)
        if path == "ragged":
            batch, rows = ragged_inputs(sched, step_drafts.tokens)
            logits = self.runner.forward_ragged(batch)  # (N, vocab)
        elif path == "graph":
            # Drafts a graph left on the device go to the verify graph's inputs there: no host wait between.
            device_ids = step_drafts.input_ids([r.last_token_id for r in decoding])  # (B * (1 + k),) or None
            batch, rows = uniform_inputs(sched, None if device_ids is not None else step_drafts.tokens)
            logits = self.runner.forward_uniform(batch, k, rows.logit_rows, device_ids)  # (N, vocab)
        elif path == "mixed":
            batch, rows = mixed_inputs(sched)
            logits = self.runner.forward_mixed(batch, [p.completes_prompt for p in sched.prefills])  # (N, vocab)
        else:
            seqs, rows = flat_inputs(sched, step_drafts.tokens)
            logits = self.runner.forward(seqs, rows.logit_rows)  # (N, vocab)
        if sched.decodes:
            self._previous_draft_len = k
        return LaunchedStep(sched, step_drafts, logits, rows, started, resumed, behind, path)

    def _verify_and_apply(self, launched: LaunchedStep, ahead: int = 0) -> AppliedStep:
        """Verify a launched step (one host read) and commit its tokens to its requests; queue the policy's
        outcome. Decodes whose request was aborted meanwhile are skipped. ahead: KV slots past each request's
        tokens that stay allocated (a chained step writes them)."""
        sched, step_drafts = launched.sched, launched.drafts
        decoding = [d.request for d in sched.decodes]
        confidence = dict(zip([r.request_id for r in decoding], step_drafts.confidence))  # {} unless trimming
        scheduled = decoding + [p.request for p in sched.prefills]
        drafts = step_drafts.tokens  # read on the host now (a device copy that landed while the host worked)
        vbatch, verified = verify_batch(scheduled, drafts, step_drafts.probs, launched.rows.counts)
        read_at = time.perf_counter()
        result = verify(launched.logits, vbatch, self.generator, self.acceptance)
        waited = time.perf_counter() - read_at  # the host read: waiting for the step's forward, nearly all
        logprobs = step_logprobs(launched.logits, vbatch, result.tokens)  # None for requests that did not ask
        committed: list[list[int]] = [[] for _ in scheduled]
        committed_logprobs: list[list[dict[int, float]] | None] = [None for _ in scheduled]
        failures = dict(step_drafts.errors)
        for n, tokens, entries, failed in zip(verified, result.tokens, logprobs, result.failed):
            committed[n], committed_logprobs[n] = tokens, entries
            if failed:
                failures[n] = "the model's logits for this request are not finite (NaN or infinity)"
        sched, drafts, committed, committed_logprobs, failures = without_aborted(
            sched, drafts, committed, committed_logprobs, failures)
        mark = self.policy_feed.mark()
        applied = self._apply(sched, drafts, committed, committed_logprobs, failures, ahead, launched.path, waited)
        if sched.decodes:
            seconds = None if sched.prefills else time.perf_counter() - launched.started
            self.policy_feed.outcome_at(mark, verified_outcome(sched, drafts, committed, seconds, launched.behind, confidence))
            if launched.resumed:  # what the catch-up cost prices the next switch from k = 0: learn it at once
                self.policy_feed.feed([])
        return applied

    def _mixed_keys(self) -> list[tuple[int, int]]:
        return mixed_keys(self._captured, self.config.max_num_batched_tokens)

    def _launch_overlapped(self, sched: SchedulerOutput, previous_ids: torch.Tensor | None) -> InflightStep:
        """Launch a k = 0 decode step through its graph without waiting for it. With previous_ids (the
        in-flight step's tokens, on the device) each request is fed the token the host has not committed
        yet, at position num_tokens."""
        self.num_steps += 1
        requests = [d.request for d in sched.decodes]
        pending = 0 if previous_ids is None else 1
        batch = UniformDecodeBatch(
            [[r.last_token_id] for r in requests],
            [r.num_tokens + pending for r in requests],
            [1] * len(requests),
            [r.block_ids for r in requests],
        )
        logits = self.runner.forward_uniform(batch, 0, list(range(len(requests))), previous_ids)  # (B, vocab)
        params, generators = [r.params for r in requests], [r.generator for r in requests]
        ids = next_tokens(logits, params, generators, [r.num_tokens + pending for r in requests], self.generator)
        host_ids, event = start_copy(ids)
        return InflightStep(sched, ids, host_ids, event, time.perf_counter())

    def _finish_overlapped(self, inflight: InflightStep) -> list[RequestOutput]:
        """Commit an overlapped step's tokens; requests that stopped or were aborted meanwhile are skipped."""
        read_at = time.perf_counter()
        tokens = inflight.host_tokens()
        # what the step cost: from when the device could start it (its launch, or its predecessor's end when
        # it was launched behind a step in flight) to its tokens on the host; in a steady run, the period
        ready_at = time.perf_counter()
        seconds = overlapped_seconds(inflight.launched_at, self._overlap_ready_at, ready_at)
        self._overlap_ready_at = ready_at
        live = [(d, t) for d, t in zip(inflight.sched.decodes, tokens) if d.request.status == RequestStatus.RUNNING]
        mark = self.policy_feed.mark()
        applied = self._apply(SchedulerOutput(decodes=[d for d, _ in live], draft_len=0), [[] for _ in live],
                              [[t] for _, t in live], path="overlapped", waited=ready_at - read_at)
        outputs = self._publish(applied)
        if live:
            self.policy_feed.outcome_at(mark, StepOutcome([d.request.request_id for d, _ in live], 0, seconds=seconds))
        return outputs

    def _apply(self, sched: SchedulerOutput, drafts, committed: list[list[int]], logprobs=None, failures=None,
               ahead: int = 0, path: str = "eager", waited: float = 0.0) -> AppliedStep:
        """Commit each scheduled request's tokens (decodes, then prefills): stop conditions, KV of rejected
        drafts rolled back, finished requests released; failures: {index: message} of requests that end
        with an error (theirs alone: the others go on). What the next step's scheduling needs, no more."""
        now = time.monotonic()
        failures = failures or {}
        if sched.decodes:  # per request: drafted, accepted, k_i (ragged steps, the k_i histogram)
            accepted = [max(0, len(c) - 1) for c in committed[: len(sched.decodes)]]
            self.stats.record(len(sched.decodes), sched.draft_len, [len(d) for d in drafts], accepted,
                              [d.max_draft for d in sched.decodes], path=path, trimmed=trimmed_count(sched.decodes),
                              waited=waited)
        for decode, tokens in zip(sched.decodes, committed):
            # K/V is now valid for the fed last token plus the accepted drafts; the rest is rolled back.
            decode.request.num_computed_tokens += len(tokens)
        for prefill in sched.prefills:
            prefill.request.num_computed_tokens += prefill.num_tokens
        scheduled = [d.request for d in sched.decodes] + [p.request for p in sched.prefills]
        applied = AppliedStep(now)
        for n, (request, tokens, entries) in enumerate(zip(scheduled, committed, logprobs or [None] * len(committed))):
            if n in failures:
                self._fail(request, failures[n], now)
                applied.progressed.append((request, []))
                continue
            if not tokens:
                self.block_manager.cache_computed_blocks(request)  # a mid-prompt chunk's full blocks
                continue
            if request.first_token_time is None:
                request.first_token_time = now
            try:  # stop strings, detokenisation: a failure is this request's
                kept = self.output_processor.commit(request, tokens, entries)
            except Exception as exc:  # noqa: BLE001
                self._fail(request, f"committing its tokens failed: {type(exc).__name__}: {exc}", now)
                applied.progressed.append((request, []))
                continue
            self.block_manager.cache_computed_blocks(request)  # blocks now full of committed tokens (APC)
            if request.finish_reason is not None:
                request.status = RequestStatus.FINISHED
                request.finish_time = now
                self.requests.pop(request.request_id, None)
                self._release(request)
            else:
                self.block_manager.trim(request, request.num_tokens + ahead)
            applied.progressed.append((request, kept))
        if sched.draft_len > 0:
            # Only the requests it drafted for: at k = 0 no drafter method runs at all, nor for a request with
            # k_i = 0 in a ragged step (half of a copy-next-to-chat batch under `adaptive`); drafters catch up on
            # the tokens they missed in propose(), once, when the request drafts again.
            self.drafter.observe([d.request for d in sched.decodes
                                  if d.policy_draft > 0 and d.request.status == RequestStatus.RUNNING])
        return applied

    def _publish(self, applied: AppliedStep) -> list[RequestOutput]:
        """The committed requests' text brought up to date and their RequestOutputs."""
        progressed = applied.progressed
        decoded = [request for request, _ in progressed if request.finish_reason != "error"]
        for request, message in self.output_processor.update_texts_alone_on_failure(decoded):
            self._fail(request, message, applied.now)  # its tokens failed to decode: it alone ends
        return [self.output_processor.output(request, kept) for request, kept in progressed]

    def _fail(self, request: Request, message: str, now: float) -> None:
        """Finish one request with an error (finish_reason "error", RequestOutput.error = message)."""
        request.status = RequestStatus.FINISHED
        request.finish_reason, request.error, request.finish_time = "error", message, now
        self.requests.pop(request.request_id, None)
        self._release(request)

    def _release(self, request: Request) -> None:
        self.scheduler.remove(request)
        self.drafter.release(request)
        self.acceptance.release(request.request_id)
        self.policy_feed.release(request.request_id)  # after its queued outcome

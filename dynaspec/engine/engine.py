"""LLMEngine: the step loop, readable top to bottom.

```
sched = scheduler.schedule(policy.draft_len)   # continuous batching; k for this step's decodes
draft = drafter.propose(decodes, k)            # only when k >= 1: no draft work at all at k = 0
logits = runner.forward(decodes + prefills)    # one target forward, 1 + d_i positions per decode
tokens = verifier.accept(logits, draft)        # greedy match or rejection sampling; bonus token
commit(tokens)                                 # stop checks; rejected KV slots rolled back
drafter.observe(running)                       # k >= 1 only; drafters catch up lazily in propose()
```

A plain decode step (k = 0, captured graph) is not waited for: the next step() launches the following
one from its tokens on the device and commits it meanwhile (overlapped decode, engine/overlap.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.block_manager import BlockManager
from dynaspec.runtime.cuda_graphs import BATCH_BUCKETS, UniformDecodeBatch, bucket_for
from dynaspec.runtime.kv_cache import choose_num_blocks, kv_bytes_per_block
from dynaspec.runtime.model_runner import ModelRunner, SequenceInput
from dynaspec.engine.output_processor import OutputProcessor
from dynaspec.engine.overlap import InflightStep, can_overlap, continuation, start_copy
from dynaspec.runtime.request import Request, RequestStatus
from dynaspec.runtime.sampler import target_probs
from dynaspec.engine.scheduler import ScheduledDecode, Scheduler, SchedulerOutput
from dynaspec.models.decode_kernels import decode_kernels_for
from dynaspec.models.loader import LoadedModel, load_model
from dynaspec.outputs import RequestMetrics, RequestOutput
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.drafter import Drafter
from dynaspec.spec.factory import DrafterContext, build_drafter
from dynaspec.runtime.cost_probe import measure_step_costs
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import build_goodput_planner
from dynaspec.spec.catch_up import HORIZON_TOKENS_PER_REQUEST, CatchUpCost
from dynaspec.spec.auto_schedule import AutoSchedule, plan_auto_schedule
from dynaspec.spec.config import AUTO_SCHEDULE
from dynaspec.spec.policy import DraftLenPolicy, schedule_stats
from dynaspec.spec.replay import AcceptanceReplay
from dynaspec.spec.stats import SpecStats
from dynaspec.spec.verifier import greedy_accept, sample_next_tokens, verify

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
        if loaded is None:
            loaded = load_model(
                config.model, dtype=self.dtype, device=self.device, progress=progress, cache_dir=config.model_cache_dir
            )
        else:
            check_shared_model(loaded, config.model, self.dtype, self.device)
        self.loaded: LoadedModel = loaded
        self.tokenizer = self.loaded.tokenizer
        hf_config = self.loaded.hf_config
        model_limit = int(getattr(hf_config, "max_position_embeddings", 4096) or 4096)
        if config.max_model_len is not None and config.max_model_len > model_limit:
            raise ValueError(
                f"max_model_len={config.max_model_len} exceeds the model's max_position_embeddings={model_limit}"
            )
        self.max_model_len = config.max_model_len or min(model_limit, 8192)
        spec = config.speculative_config
        self.goodput = spec is not None and spec.draft_len_policy == "goodput"
        self.auto_schedule: AutoSchedule | None = None  # planned below when draft_len_schedule is "auto"
        auto = spec is not None and spec.draft_len_schedule == AUTO_SCHEDULE
        static = spec is not None and spec.draft_len_policy == "schedule" and not auto
        self.policy = DraftLenPolicy(spec) if static else None
        self.replay: AcceptanceReplay | None = None
        if spec is not None and spec.replay_acceptance_profile is not None:
            self.replay = AcceptanceReplay(spec.replay_acceptance_profile, config.seed)
        self.drafter_bundle = None
        if spec is not None:
            context = DrafterContext(self.loaded, self.dtype, self.device, config.seed, config.model_cache_dir, progress)
            self.drafter_bundle = build_drafter(spec, context)
        self.drafter: Drafter | None = self.drafter_bundle.drafter if self.drafter_bundle else None
        draft_model = self.drafter_bundle.model if self.drafter_bundle else None
        kernels = decode_kernels_for(self.device, config.dependent_launch)
        for model in (self.loaded.model, draft_model):
            if model is not None:
                model.set_decode_kernels(kernels)

        bytes_per_block = kv_bytes_per_block(self.loaded.model, config.block_size, self.dtype)
        if draft_model is not None:
            bytes_per_block += kv_bytes_per_block(draft_model, config.block_size, self.dtype)
        self.use_graphs = self.device.type == "cuda" and not config.enforce_eager
        num_blocks = config.num_kv_blocks or choose_num_blocks(
            bytes_per_block,
            self.device,
            config.block_size,
            config.max_num_seqs,
            self.max_model_len + (spec.max_draft_len if spec else 0),
            config.gpu_memory_utilization,
            reserved_bytes=self._activation_reserve(),
        )
        max_draft = spec.max_draft_len if spec else 0
        if num_blocks * config.block_size < self.max_model_len + max_draft:
            raise ValueError(
                f"the KV pool ({num_blocks} blocks x {config.block_size} slots) cannot hold one sequence of "
                f"max_model_len={self.max_model_len} (+{max_draft} draft slots); raise num_kv_blocks or lower max_model_len"
            )
        self.runner = ModelRunner(self.loaded.model, num_blocks, config.block_size, self.dtype, self.device)
        if self.drafter_bundle is not None:
            self.drafter_bundle.attach(num_blocks, config.block_size)
        self.max_blocks_per_seq = -(-(self.max_model_len + max_draft) // config.block_size)
        pairs = self.graph_pairs()
        if self.use_graphs:
            self.runner.capture_graphs(pairs, self.max_blocks_per_seq)
            if self.drafter_bundle is not None:  # e.g. the draft model's whole-chain graphs per (bucket, k >= 1)
                self.drafter_bundle.capture_graphs([(b, k) for b, k in pairs if k > 0], self.max_blocks_per_seq)
        if self.goodput:
            catch_up = CatchUpCost(self.drafter.measure_catch_up_seconds_per_token())
            self.policy = build_goodput_planner(
                spec,
                self._step_costs(spec, pairs),
                catch_up=catch_up,
                backlog=self._drafter_backlog,
                padded_batch=self._graph_batch if self.use_graphs else None,
            )
        elif auto:  # the goodput-optimal static schedule, planned as `dynaspec tune` does
            self.auto_schedule = plan_auto_schedule(spec, self._step_costs(spec, pairs))
            self.policy = self.auto_schedule.policy
        self.block_manager = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len
        )
        self.output_processor = OutputProcessor(self.tokenizer, self._eos_ids(), self.max_model_len)
        self.stats = SpecStats()
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.requests: dict[str, Request] = {}
        self.vocab_size = int(self.loaded.model.vocab_size)
        self.num_steps = 0
        self._inflight: InflightStep | None = None  # overlapped decode step awaiting its commit
        # Policy observations (method name, args) of the last step, fed while the next step's forward runs
        self._policy_pending: list[tuple[str, tuple]] = []
        self._previous_draft_len = 0  # k of the last decode step (0 before any)

    def graph_pairs(self) -> list[tuple[int, int]]:
        """The (batch bucket, k) pairs the policy can reach, for CUDA graph capture."""
        max_batch = min(self.config.max_num_seqs, self.config.cuda_graph_max_batch)
        buckets = [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]
        spec = self.config.speculative_config
        pairs: set[tuple[int, int]] = set()
        for batch in range(1, max_batch + 1):
            ks = {0}
            if self.goodput or getattr(spec, "draft_len_schedule", None) == AUTO_SCHEDULE:  # any k: capture all
                ks = set(range(spec.max_draft_len + 1))
            elif self.policy is not None:
                ks = self.policy.draft_lens_for_batch(batch)
            for k in ks:
                while k > 0 and batch * (1 + k) > self.config.max_num_batched_tokens:
                    k -= 1
                pairs.add((bucket_for(batch, buckets), k))
        return sorted(pairs)

    def _graph_batch(self, batch: int, k: int) -> int:
        """The batch size a decode step of `batch` requests at draft length k runs at: its CUDA graph's
        bucket, or `batch` itself where no graph holds it (eager)."""
        pair = self.runner.graphs.lookup(batch, k) if self.runner.graphs is not None else None
        return batch if pair is None else pair[0]

    def _step_costs(self, spec, pairs: list[tuple[int, int]]) -> StepCostModel:
        """T(batch, k) from the tune file, or measured now (graph replays on CUDA; a few buckets on CPU)."""
        if spec.step_cost_file is not None:
            return StepCostModel.load(spec.step_cost_file)
        if not self.use_graphs:
            pairs = [(b, k) for b, k in pairs if b <= 8]
        draft_runner = getattr(self.drafter, "runner", None)
        chain = getattr(self.drafter, "chain", None)
        return measure_step_costs(self.runner, draft_runner, pairs, chain=chain)

    def _activation_reserve(self) -> int:
        """GPU bytes kept free for CUDA graphs, activations and logits of the largest decode step."""
        if self.device.type != "cuda":
            return 0
        cfg = self.loaded.hf_config
        spec = self.config.speculative_config
        tokens = min(self.config.max_num_seqs, self.config.cuda_graph_max_batch) * (1 + (spec.max_draft_len if spec else 0))
        tokens = max(tokens, self.config.max_num_batched_tokens)
        per_token = 8 * cfg.vocab_size + 2 * (16 * cfg.hidden_size + 6 * cfg.intermediate_size)
        return tokens * per_token + (1 << 30)

    # ----------------------------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        """Queue a request. Raises ValueError/TypeError naming what is wrong; other requests go on."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("request_id must be a non-empty string")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"model {self.config.model!r} has no tokenizer: pass the prompt as a list of token ids")
            prompt_text, token_ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_text, token_ids = None, list(prompt)
        else:
            raise TypeError("prompt must be a string or a list of integer token ids")
        if not token_ids:
            raise ValueError("prompt is empty: it must hold at least one token")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(token_ids)} tokens; max_model_len is {self.max_model_len}, which leaves no room "
                "to generate: shorten the prompt or raise max_model_len"
            )
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        request = Request(request_id, prompt_text, token_ids, params, generator=generator)
        self.requests[request_id] = request
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        request.status = RequestStatus.FINISHED
        request.finish_reason = "abort"
        self._release(request)

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
            acceptance_replay=self.replay.name if self.replay else None,
            draft_len_schedule=schedule_stats(self.policy),
            auto_schedule=self.auto_schedule.as_dict() if self.auto_schedule else None,
            # the goodput planner's latest decision (k, reason, predicted goodputs); None for other policies
            planner_decision=dict(self.policy.last_decision) if self.goodput else None,
        )
        return stats

    # ----------------------------------------------------------------------------------- the step
    def step(self) -> list[RequestOutput]:
        draft_len_for = self.policy.draft_len if self.policy else _no_speculation
        if self._inflight is not None:  # overlapped decode: launch step t + 1, then commit step t
            inflight = self._inflight
            following = continuation(self.scheduler, inflight, draft_len_for, self.max_model_len)
            self._inflight = None if following is None else self._launch_overlapped(following, inflight.ids)
            self._feed_policy(inflight.sched.decodes)
            return self._finish_overlapped(inflight)
        sched = self.scheduler.schedule(draft_len_for)
        for request in sched.preempted:
            if self.drafter:
                self.drafter.release(request)
        if sched.is_empty:
            return []
        if self.config.async_scheduling and can_overlap(sched) and self.runner.can_replay(len(sched.decodes), 0):
            self._previous_draft_len = 0
            self._inflight = self._launch_overlapped(sched, None)
            return []  # its tokens are committed by the next call
        started = time.perf_counter()
        self.num_steps += 1
        # The first speculative step after plain ones pays the drafter's catch-up on every token committed
        # meanwhile: a cost of switching k, not a sample of T(batch, k) (the step synchronises in _accept).
        resumed = sched.draft_len > 0 and self._previous_draft_len == 0 and not sched.prefills
        behind = self.drafter.catch_up_tokens([d.request for d in sched.decodes]) if resumed and self.goodput else 0
        drafts, draft_probs = self._propose(sched)
        if not sched.prefills and self.runner.can_replay(len(sched.decodes), sched.draft_len):
            batch, logit_rows, row_owner = self._build_uniform(sched, drafts)
            logits = self.runner.forward_uniform(batch, sched.draft_len, logit_rows)  # (N, vocab)
        else:
            seqs, logit_rows, row_owner = self._build_inputs(sched, drafts)
            logits = self.runner.forward(seqs, logit_rows)  # (N, vocab)
        self._feed_policy(sched.decodes)  # a replayed graph is still running: the host would only wait
        committed = self._accept(sched, drafts, draft_probs, logits, row_owner)
        outputs = self._commit(sched, drafts, committed)
        if self.policy is not None and not sched.prefills:
            seconds = time.perf_counter() - started
            if not resumed:
                self._policy_later("observe_step_time", len(sched.decodes), sched.draft_len, seconds)
            elif self.goodput:
                self._feed_policy()
                self.policy.observe_catch_up(len(sched.decodes), sched.draft_len, seconds, behind)
        if sched.decodes:
            self._previous_draft_len = sched.draft_len
        return outputs

    def _policy_later(self, method: str, *args) -> None:
        """Queue a policy observation (`observe`, `observe_step_time`) for _feed_policy.

        The goodput planner's bookkeeping (acceptance estimates, step-time medians) took 2-7% of a step on
        an H200 host when run between the sync and the next launch; fed while the next step's graph runs
        it costs nothing. The next decision is made without this step's outcome (one step behind), which
        its reused goodput table (GoodputPlanner.replan_every) is anyway."""
        self._policy_pending.append((method, args))

    def _feed_policy(self, decodes: Sequence[ScheduledDecode] = ()) -> None:
        """Give the policy the queued observations, in order; with `decodes` (the step's decoding requests),
        let the goodput planner recompute their table now if it is due."""
        pending, self._policy_pending = self._policy_pending, []
        for method, args in pending:
            getattr(self.policy, method)(*args)
        if self.goodput and decodes:
            self.policy.refresh(len(decodes), [d.request.request_id for d in decodes])

    def _drafter_backlog(self) -> tuple[int, int]:
        """(tokens the drafter is behind on, tokens still to generate, at most HORIZON_TOKENS_PER_REQUEST
        each) over the decoding requests: the goodput planner's price of a switch from k = 0."""
        decoding = [r for r in self.scheduler.running if not r.is_prefilling]
        remaining = sum(min(r.remaining_tokens, HORIZON_TOKENS_PER_REQUEST) for r in decoding)
        return self.drafter.catch_up_tokens(decoding), remaining

    def _launch_overlapped(self, sched: SchedulerOutput, previous_ids: torch.Tensor | None) -> InflightStep:
        """Launch a k = 0 decode step through its graph without waiting for it. With previous_ids (the
        in-flight step's argmax, on the device) each request is fed the token the host has not committed
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
        ids = logits.argmax(dim=-1)  # (B,) on the device
        sampled = [i for i, r in enumerate(requests) if not r.params.is_greedy]
        if sampled:  # sampled on the device too, with verify's draws (no sync)
            rows = torch.tensor(sampled).to(ids.device, non_blocking=True)
            probs = target_probs(logits.index_select(0, rows), [requests[i].params for i in sampled])
            gens = [requests[i].generator for i in sampled]
            ids.index_copy_(0, rows, sample_next_tokens(probs, gens, self.generator))
        host_ids, event = start_copy(ids)
        return InflightStep(sched, ids, host_ids, event, time.perf_counter())

    def _finish_overlapped(self, inflight: InflightStep) -> list[RequestOutput]:
        """Commit an overlapped step's tokens; requests that stopped or were aborted meanwhile are skipped."""
        tokens = inflight.host_tokens()
        live = [(d, t) for d, t in zip(inflight.sched.decodes, tokens) if d.request.status == RequestStatus.RUNNING]
        sched = SchedulerOutput(decodes=[d for d, _ in live], draft_len=0)
        outputs = self._commit(sched, [[] for _ in live], [[t] for _, t in live])
        if self.policy is not None and live:  # launch-to-launch: what an overlapped step costs
            until = self._inflight.launched_at if self._inflight is not None else time.perf_counter()
            self._policy_later("observe_step_time", len(live), 0, until - inflight.launched_at)
        return outputs

    def _propose(self, sched: SchedulerOutput) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Draft tokens per decode (empty lists at k = 0: the drafter is not called at all)."""
        drafts: list[list[int]] = [[] for _ in sched.decodes]
        probs: list[torch.Tensor | None] = [None for _ in sched.decodes]
        if sched.draft_len == 0 or self.drafter is None:
            return drafts, probs
        wanted = [i for i, d in enumerate(sched.decodes) if d.max_draft > 0]
        if not wanted:
            return drafts, probs
        proposal = self.drafter.propose([sched.decodes[i].request for i in wanted], sched.draft_len)
        for j, i in enumerate(wanted):
            limit = sched.decodes[i].max_draft
            drafts[i] = list(proposal.tokens[j][:limit])
            q = proposal.probs[j] if proposal.probs is not None else None
            probs[i] = None if q is None else q[: len(drafts[i])]
            if self.replay is not None:  # benchmark only: verify every position the step allows
                last = sched.decodes[i].request.last_token_id
                drafts[i] += [last] * (limit - len(drafts[i]))
                probs[i] = None
        return drafts, probs

    def _build_inputs(self, sched: SchedulerOutput, drafts: list[list[int]]):
        seqs: list[SequenceInput] = []
        logit_rows: list[int] = []
        row_owner: list[tuple[int, int]] = []  # (row start in logits, count) per decode, then per prefill
        flat = 0
        for decode, draft in zip(sched.decodes, drafts):
            request = decode.request
            tokens = [request.last_token_id] + draft
            seqs.append(SequenceInput(tokens, request.num_tokens + len(draft), request.block_ids))
            row_owner.append((len(logit_rows), len(tokens)))
            logit_rows.extend(range(flat, flat + len(tokens)))
            flat += len(tokens)
        for prefill in sched.prefills:
            request = prefill.request
            start = request.num_computed_tokens
            tokens = request.all_token_ids[start : start + prefill.num_tokens]
            seqs.append(SequenceInput(tokens, start + prefill.num_tokens, request.block_ids))
            flat += len(tokens)
            if prefill.completes_prompt:
                row_owner.append((len(logit_rows), 1))
                logit_rows.append(flat - 1)
            else:
                row_owner.append((len(logit_rows), 0))
        return seqs, logit_rows, row_owner

    def _build_uniform(self, sched: SchedulerOutput, drafts: list[list[int]]):
        """Decode-only step padded to exactly 1 + k positions per request (CUDA graph layout)."""
        k = sched.draft_len
        batch = UniformDecodeBatch([], [], [], [])
        logit_rows: list[int] = []
        row_owner: list[tuple[int, int]] = []
        for i, (decode, draft) in enumerate(zip(sched.decodes, drafts)):
            request = decode.request
            last = request.last_token_id
            batch.token_ids.append([last] + draft + [last] * (k - len(draft)))
            batch.seq_lens.append(request.num_tokens + k)
            batch.num_real.append(1 + len(draft))
            batch.block_tables.append(request.block_ids)
            row_owner.append((len(logit_rows), 1 + len(draft)))
            logit_rows.extend(range(i * (1 + k), i * (1 + k) + 1 + len(draft)))
        return batch, logit_rows, row_owner

    def _accept(self, sched, drafts, draft_probs, logits, row_owner) -> list[list[int]]:
        """Tokens to commit per scheduled request (decodes first, then prefills); [] for a mid-prompt chunk.

        Greedy requests are verified on host lists (one device-to-host copy of the argmax ids for the
        whole batch); sampling requests go through `verify`'s rejection sampler on the device.
        """
        requests = [d.request for d in sched.decodes] + [p.request for p in sched.prefills]
        all_drafts = drafts + [[] for _ in sched.prefills]
        argmax_ids = logits.argmax(dim=-1).tolist()  # (N,) ids, one transfer for the whole batch
        committed: list[list[int]] = [[] for _ in requests]
        sampled = []
        for n, (request, (start, count)) in enumerate(zip(requests, row_owner)):
            if count == 0:
                continue
            if request.params.is_greedy:
                committed[n] = greedy_accept(argmax_ids[start : start + count], all_drafts[n])[0]
            else:
                sampled.append(n)
        if sampled:
            self._accept_sampled(sampled, requests, all_drafts, draft_probs, logits, row_owner, committed)
        if self.replay is not None:  # benchmark only: accepted lengths drawn from a recorded profile
            for n, draft in enumerate(drafts):
                if draft:
                    accepted = self.replay.num_accepted(len(draft), requests[n].request_id, requests[n].num_tokens)
                    committed[n] = draft[:accepted] + [argmax_ids[row_owner[n][0] + accepted]]
        return committed

    def _accept_sampled(self, sampled, requests, all_drafts, draft_probs, logits, row_owner, committed) -> None:
        """Rejection sampling (verify) for the sampling requests `sampled` (indices into `requests`)."""
        rows = [row for n in sampled for row in range(row_owner[n][0], row_owner[n][0] + row_owner[n][1])]
        row_params = [requests[n].params for n in sampled for _ in range(row_owner[n][1])]
        probs = target_probs(logits[torch.tensor(rows, device=logits.device)], row_params)  # (R, vocab)
        targets = list(torch.split(probs, [row_owner[n][1] for n in sampled]))
        all_q = draft_probs + [None] * (len(requests) - len(draft_probs))
        result = verify(
            targets,
            [all_drafts[n] for n in sampled],
            [all_q[n] for n in sampled],
            [False] * len(sampled),
            [requests[n].generator for n in sampled],
            self.generator,
        )
        for n, tokens in zip(sampled, result.tokens):
            committed[n] = tokens

    def _commit(self, sched: SchedulerOutput, drafts, committed: list[list[int]]) -> list[RequestOutput]:
        now = time.monotonic()
        drafted = [len(d) for d in drafts]
        accepted = [max(0, len(c) - 1) for c in committed[: len(sched.decodes)]]
        if sched.decodes:
            self.stats.record(len(sched.decodes), sched.draft_len, drafted, accepted)
            if self.policy is not None and sched.draft_len > 0:
                ids = [d.request.request_id for d in sched.decodes]
                self._policy_later("observe", sched.draft_len, drafted, accepted, ids)
        for decode, tokens in zip(sched.decodes, committed):
            # K/V is now valid for the fed last token plus the accepted drafts; the rest is rolled back.
            decode.request.num_computed_tokens += len(tokens)
        for prefill in sched.prefills:
            prefill.request.num_computed_tokens += prefill.num_tokens
        scheduled = [d.request for d in sched.decodes] + [p.request for p in sched.prefills]
        progressed: list[tuple[Request, list[int]]] = []
        for request, tokens in zip(scheduled, committed):
            if not tokens:
                continue
            if request.first_token_time is None:
                request.first_token_time = now
            kept = self.output_processor.commit(request, tokens)
            if request.finish_reason is not None:
                request.status = RequestStatus.FINISHED
                request.finish_time = now
                self.requests.pop(request.request_id, None)
                self._release(request)
            else:
                self.block_manager.trim(request, request.num_tokens)
            progressed.append((request, kept))
        self.output_processor.update_texts([request for request, _ in progressed])
        outputs = [self._output(request, kept) for request, kept in progressed]
        if self.drafter and sched.draft_len > 0:
            # At k = 0 no drafter method runs at all; drafters catch up on missed tokens in propose().
            self.drafter.observe(self.scheduler.running)
        return outputs

    def _release(self, request: Request) -> None:
        self.scheduler.remove(request)
        if self.drafter:
            self.drafter.release(request)
        if self.replay is not None:
            self.replay.release(request.request_id)
        if self.policy is not None:
            self._feed_policy()  # its queued outcomes first, or they would outlive its release
            self.policy.release(request.request_id)

    def _output(self, request: Request, new_tokens: list[int]) -> RequestOutput:
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            text=request.output_text,
            token_ids=list(request.output_token_ids),
            finished=request.is_finished,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
            metrics=RequestMetrics(
                arrival_time=request.arrival_time,
                first_token_time=request.first_token_time,
                finish_time=request.finish_time,
                num_prompt_tokens=request.num_prompt_tokens,
                num_output_tokens=request.num_output_tokens,
                num_preemptions=request.num_preemptions,
            ),
            new_token_ids=new_tokens,
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.loaded.hf_config, getattr(self.loaded, "generation_config", None)):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids


def _no_speculation(num_decoding: int, num_active: int, request_ids: Sequence[Hashable] = ()) -> int:
    return 0


def check_shared_model(loaded: LoadedModel, model: str, dtype: torch.dtype, device: torch.device) -> None:
    """ValueError unless `loaded` is `model` in `dtype` on `device` (an engine sharing another's weights)."""
    if not isinstance(loaded, LoadedModel):
        raise TypeError(f"loaded must be a LoadedModel (engine.loaded of another engine), got {type(loaded).__name__}")
    param = next(loaded.model.parameters())
    same_device = param.device.type == device.type and (device.index is None or param.device.index == device.index)
    if loaded.spec != model or param.dtype != dtype or not same_device:
        raise ValueError(
            f"a shared model must be the engine's model in its dtype on its device: the engine wants {model!r} "
            f"{dtype} on {device}, the loaded model is {loaded.spec!r} {param.dtype} on {param.device}"
        )

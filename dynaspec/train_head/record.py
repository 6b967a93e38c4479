"""Self-distillation data: the target answers the prompts with the engine, and the hidden states an EAGLE
head reads are captured in the same pass.

A FeatureTap (models/feature_tap.py) is installed on the target before the engine is built, so every
forward the engine runs (prefill, decode; eager or captured graphs) writes each token's tapped features at
its KV slot. After every step the recorder notes each running request's block table; when a request
finishes, its features for positions 0 .. L - 2 (all its tokens but the last, which the target never fed)
are still in the cache (the blocks it just freed are not written before the next step's forward), and
are gathered by slot through the table noted after the previous step (which covers L - 1 slots). The
gather is queued on the device right away (stream order puts it before any later write to those blocks);
the gathered features come to the host together, once FLUSH_BYTES of them wait: a host copy per finished
request would wait for every step queued behind it, taking the overlap of host and device work (the
engine's overlapped decode) away at almost every step of a large batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.models.feature_tap import FeatureTap, install_feature_tap
from dynaspec.models.loader import LoadedModel
from dynaspec.runtime.host_copy import to_device
from dynaspec.sampling_params import SamplingParams
from dynaspec.train_head.soft_labels import final_layer


# Bytes of gathered features kept on the device before one copy brings them to the host.
FLUSH_BYTES = 1 << 30


@dataclass
class Example:
    """One self-distilled sequence: the prompt and the target's answer, and the target's features."""

    token_ids: list[int]  # prompt + answer, L tokens
    prompt_len: int
    features: torch.Tensor  # (L - 1, n * H) on the CPU, the target's dtype: features of positions 0 .. L - 2
    # (L - 1, H) the target's stream after its last layer at positions 0 .. L - 2 (its next-token distribution
    # there: train_head/soft_labels.py), when recorded
    final: torch.Tensor | None = None


def record_answers(
    loaded: LoadedModel,
    config: EngineConfig,
    layers: tuple[int, ...],
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    on_finished: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    record_final: bool = False,
) -> list[Example]:
    """Generate an answer to every prompt (token ids) with an engine over `loaded` and return the examples
    (in prompt order; a request that ended with an error, or before any decode step, is left out).

    config: the engine's config; it must set num_kv_blocks (the feature cache is sized by it) and must not
    be speculative. params: one for every prompt, or one per prompt. on_finished(n): called with the number
    of requests finished so far. should_stop(): asked after every step; when True the unfinished requests
    are aborted and the answers finished so far returned (the engine serves requests in prompt order).
    record_final: also record the stream after the target's last layer (Example.final), in the same pass."""
    if config.num_kv_blocks is None or config.speculative_config is not None:
        raise ValueError("record_answers needs an EngineConfig with num_kv_blocks set and no speculative_config")
    dtype = config.resolved_dtype()
    device = config.resolved_device()
    hidden = int(loaded.hf_config.hidden_size)
    last = final_layer(int(loaded.hf_config.num_hidden_layers))
    tapped = tuple(layers) + ((last,) if record_final and last not in layers else ())
    tap = FeatureTap(tapped, hidden, (config.num_kv_blocks + 1) * config.block_size, dtype, device)
    install_feature_tap(loaded.model, tap)
    columns = _Columns(hidden, tapped.index(last) if record_final else None, len(layers))
    try:
        engine = LLMEngine(config, loaded=loaded)
        return _run(engine, tap, prompts, params, on_finished, should_stop, columns)
    finally:
        install_feature_tap(loaded.model, None)


@dataclass(frozen=True)
class _Columns:
    """Where a gathered row (tapped layers side by side) holds the head's features and the final stream."""

    hidden: int
    final: int | None  # the final stream's index among the tapped layers (None: not recorded)
    num_features: int  # the head's layers, first (the final stream may be one of them in a target of few layers)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, tapped x H) -> the head's features (N, n x H) and the final stream (N, H) or None."""
        features = rows[:, : self.num_features * self.hidden]
        if self.final is None:
            return features, None
        return features, rows[:, self.final * self.hidden : (self.final + 1) * self.hidden]


def _run(engine: LLMEngine, tap: FeatureTap, prompts, params, on_finished, should_stop,
         columns: _Columns) -> list[Example]:
    requests = {}
    for i, prompt in enumerate(prompts):
        request_id = f"train-{i}"
        engine.add_request(request_id, prompt, params[i] if isinstance(params, list) else params)
        requests[request_id] = (i, engine.requests[request_id])
    tables: dict[str, list[int]] = {}
    examples: dict[int, Example] = {}
    pending = _Pending(examples, columns)
    done = 0
    block_size = engine.config.block_size
    while engine.has_unfinished_requests():
        for out in engine.step():
            if not out.finished:
                continue
            done += 1
            index, request = requests[out.request_id]
            table = tables.pop(out.request_id, [])
            tokens = request.all_token_ids
            if request.finish_reason != "error" and len(tokens) >= 2 and len(table) * block_size >= len(tokens) - 1:
                positions = torch.arange(len(tokens) - 1)
                slots = torch.tensor(table)[positions // block_size] * block_size + positions % block_size
                # from pinned memory: a pageable copy to the device would wait for every queued step too
                slots = to_device(slots.tolist(), tap.caches[0].device)
                pending.add(index, list(tokens), request.num_prompt_tokens, tap.gather(slots))
            if on_finished is not None:
                on_finished(done)
        for request in engine.scheduler.running:  # their block tables (freeing a request gives it a new list)
            tables[request.request_id] = request.block_ids
        if pending.bytes >= FLUSH_BYTES:
            pending.flush()
        if should_stop is not None and should_stop():
            for request_id, (_, request) in requests.items():
                if not request.is_finished:
                    engine.abort_request(request_id)
            break
    pending.flush()
    return [examples[i] for i in sorted(examples)]


class _Pending:
    """Finished requests whose features were gathered on the device, not yet copied to the host."""

    def __init__(self, examples: dict[int, Example], columns: _Columns) -> None:
        self.examples = examples
        self.columns = columns
        self.items: list[tuple[int, list[int], int, torch.Tensor]] = []  # (index, tokens, prompt_len, features)
        self.bytes = 0

    def add(self, index: int, tokens: list[int], prompt_len: int, features: torch.Tensor) -> None:
        """features (L - 1, n * H) on the device, gathered (queued) after the request's last step."""
        self.items.append((index, tokens, prompt_len, features))
        self.bytes += features.numel() * features.element_size()

    def flush(self) -> None:
        """One device-to-host copy of every pending request's features; their examples recorded."""
        if not self.items:
            return
        host = torch.cat([features for *_, features in self.items]).cpu()  # (sum of L - 1, n * H)
        offset = 0
        for index, tokens, prompt_len, features in self.items:
            rows = features.shape[0]
            head_features, final = self.columns.split(host[offset : offset + rows])
            self.examples[index] = Example(tokens, prompt_len, head_features, final)
            offset += rows
        self.items, self.bytes = [], 0

"""HF transformers `generate` decode throughput on the SAME weights, in the same process (the "vs HF" line).

The HF model is built from the engine's HF config and its parameters are the engine model's own tensors
(parameter names are HF's, see docs/ARCHITECTURE.md), so no second copy of the weights is held and both
run exactly the same model. Greedy, `min_new_tokens = max_new_tokens` (EOS cannot end it early), random
prompt ids of the sweep's prompt length. Each batch size is timed with the default DynamicCache (what
`generate` does unless told otherwise) and, for batch > 1 where the model supports it, also with
transformers' StaticCache (`cache_implementation="static"`), with which transformers compiles the forward
with torch.compile on GPU (the untimed warm-up run absorbs compilation): one row per (batch, cache), and
the report compares against the default and against the faster of the two.

Only decode is timed: a streamer stamps (after torch.cuda.synchronize) the moment each new token is handed
out; decode time runs from the first generated token to the last, over batch x (new_tokens - 1) tokens.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from dynaspec.models.loader import specific_config


class _StampStreamer:
    """A generate() streamer that records when each chunk of tokens arrives (the prompt first)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device.index if self.device.index is not None else None)
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_model_sharing_weights(model: nn.Module, hf_config: PretrainedConfig) -> PreTrainedModel:
    """An HF causal LM of `hf_config` whose parameters ARE `model`'s tensors (no copy)."""

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), _no_init_weights():
            hf_model = AutoModelForCausalLM.from_config(specific_config(hf_config))
    finally:
        torch.set_default_dtype(previous)
    ours = dict(model.named_parameters(remove_duplicate=False))
    theirs = dict(hf_model.named_parameters(remove_duplicate=False))
    missing = sorted(set(theirs) - set(ours))
    if getattr(hf_config, "tie_word_embeddings", False):
        missing = [n for n in missing if n != "lm_head.weight"]
    if missing:
        raise ValueError(f"the engine model has no tensors for HF parameters {missing[:5]}: cannot share weights")
    hf_model.load_state_dict({n: ours[n] for n in theirs if n in ours}, strict=False, assign=True)
    if getattr(hf_config, "tie_word_embeddings", False):
        hf_model.tie_weights()
    return hf_model.to(device).eval().requires_grad_(False)


def _static_cache_supported(hf_model: PreTrainedModel) -> bool:
    for attr in ("_can_compile_fullgraph", "_supports_static_cache"):
        if getattr(hf_model, attr, False):
            return True
    return False


@torch.no_grad()
def _generate_timed(hf_model, input_ids: torch.Tensor, gen_len: int, cache: str) -> tuple[list[float], torch.Tensor]:
    streamer = _StampStreamer(input_ids.device)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False, streamer=streamer,
        attention_mask=torch.ones_like(input_ids), pad_token_id=0,
        temperature=None, top_p=None, top_k=None,
    )
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    out = hf_model.generate(input_ids, **kwargs)
    return streamer.stamps, out


def hf_decode_throughput(
    model: nn.Module,
    hf_config: PretrainedConfig,
    batch_sizes: Sequence[int],
    prompt_len: int,
    gen_len: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Decode tokens/s of HF `generate` per (batch size, cache): [{batch_size, cache, decode_tokens_per_s, ...}]."""
    if gen_len < 2:
        raise ValueError(f"gen_len must be >= 2 to time HF decode (first token comes from prefill), got {gen_len}")
    hf_model = hf_model_sharing_weights(model, hf_config)
    device = next(hf_model.parameters()).device
    vocab = int(hf_config.vocab_size)
    rng = random.Random(seed)
    results = []
    for batch in batch_sizes:
        ids = torch.tensor(
            [[rng.randrange(vocab) for _ in range(prompt_len)] for _ in range(batch)], dtype=torch.long, device=device
        )
        caches = ["dynamic"] + (["static"] if batch > 1 and _static_cache_supported(hf_model) else [])
        for cache in caches:
            _generate_timed(hf_model, ids, gen_len, cache)  # warm-up, same shapes (static cache may auto-compile)
            stamps, _ = _generate_timed(hf_model, ids, gen_len, cache)
            # stamps[0]: prompt handed to the streamer; stamps[1]: first new token; stamps[-1]: last.
            decode_steps = len(stamps) - 2
            decode_time = stamps[-1] - stamps[1]
            tokens = batch * decode_steps
            results.append({
                "batch_size": batch,
                "cache": cache,
                # transformers compiles the forward itself (torch.compile) when a static cache is used on GPU
                "torch_compile": cache == "static" and hasattr(hf_model, "_compiled_call"),
                "decode_tokens": tokens,
                "decode_time_s": decode_time,
                "num_decode_steps": decode_steps,
                "decode_tokens_per_s": tokens / decode_time if decode_time > 0 else 0.0,
                "mean_step_time_s": decode_time / decode_steps if decode_steps else 0.0,
            })
    del hf_model
    return results


def _no_init_weights():
    """transformers' context that turns torch.nn.init functions into no-ops (module moved in transformers 5)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()

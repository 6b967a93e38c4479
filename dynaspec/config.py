"""Validated engine configuration (pydantic), loadable from a YAML file (dynaspec/config_loader.py).

Field names follow vLLM (`max_num_seqs`, `max_num_batched_tokens`, `max_model_len`, `block_size`) and
TensorRT-LLM (`speculative_config` with `decoding_type`, `max_draft_len`, `draft_len_schedule`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dynaspec.spec.config import SpeculativeConfig, parse_speculative_config

DEFAULT_MODEL = "smollm2-135m-instruct"


class EngineConfig(BaseModel):
    """Everything the engine needs to start. Unknown fields are rejected with their name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = DEFAULT_MODEL
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    block_size: int = Field(default=16, ge=1, le=256)
    num_kv_blocks: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=0.98)
    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    max_num_batched_tokens: int = Field(default=2048, ge=16)
    max_model_len: int | None = Field(default=None, ge=16)
    seed: int = Field(default=0, ge=0)
    model_cache_dir: str | None = None
    enforce_eager: bool = False
    # Which steps run as CUDA graphs (vLLM's `cudagraph_mode` names): FULL_DECODE_ONLY captures decode and
    # verify steps; FULL also captures the steps that prefill new prompts beside k = 0 decodes (mixed steps,
    # keyed by decode bucket and padded prefill rows: runtime/mixed_graphs.py), which otherwise run eager;
    # there the decodes verify no drafts and draft again in the next step (with a policy that can reach
    # k = 0; a static k > 0 captures no k = 0 graphs, so its steps that prefill run eager with drafts).
    # None (the default) resolves to FULL, or to FULL_DECODE_ONLY with deterministic mode or tensor
    # parallelism (where mixed graphs are not available yet).
    cudagraph_mode: Literal["FULL_DECODE_ONLY", "FULL"] | None = None
    cuda_graph_max_batch: int = Field(default=256, ge=1, le=512)
    # Overlap the host's commit of step t with the device's step t + 1 for plain greedy decode steps
    # (engine/overlap.py; vLLM's `async_scheduling`). Outputs are the same, one step later.
    async_scheduling: bool = True
    # On Hopper or newer GPUs: launch the decoder's Triton kernels with programmatic dependent launch and
    # run the projections of steps with at most 8 token rows (batch-1 decode and verify, small batches)
    # through a Triton GEMV, so such a step is one chain of overlapping launches (models/decode_kernels.py).
    # Ignored on CPU and older GPUs.
    dependent_launch: bool = True
    # Deterministic mode (issue 22): every GEMM, the attention and the lm_head run batch-invariant kernels
    # (models/invariant_linear.py, models/invariant_attention.py), so a token row's logits are the same
    # bits at any batch size, draft length, graph bucket or prefill chunking: speculation is token-
    # identical to plain decoding and a seeded request gives the same tokens at any batch. Slower.
    deterministic: bool = False
    # Automatic prefix caching (vLLM's APC): full KV blocks of committed tokens are content-hashed, shared
    # copy-free by requests with the same prefix, kept after release in an LRU free queue and evicted only
    # when a new block is needed (engine/prefix_cache.py). False: every request prefills its whole prompt.
    enable_prefix_caching: bool = True
    # Megatron-style tensor parallelism over this many ranks (one process each: rank 0 is this one, the
    # others are started by the engine; gloo on CPU, NCCL on CUDA with one GPU per rank). It must divide
    # the model's attention heads (checked when the model is known). runtime/tp_launcher.py
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    speculative_config: SpeculativeConfig | None = None

    @field_validator("speculative_config", mode="before")
    @classmethod
    def _parse_spec(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return parse_speculative_config(value)
        return value

    @model_validator(mode="after")
    def _deterministic_combinations(self) -> "EngineConfig":
        if self.deterministic and self.tensor_parallel_size > 1:
            raise ValueError(
                f"deterministic=True needs tensor_parallel_size=1 (got {self.tensor_parallel_size}): NCCL picks its "
                "all-reduce algorithm by message size, so with more than two ranks a row's partial sums are "
                "added in an order that depends on the step's rows, and the ranks' workers do not run the "
                "batch-invariant kernels yet"
            )
        if self.cudagraph_mode == "FULL" and (self.deterministic or self.tensor_parallel_size > 1):
            raise ValueError(
                "cudagraph_mode='FULL' (mixed prefill + decode steps as CUDA graphs) is not available with "
                + ("deterministic=True" if self.deterministic else f"tensor_parallel_size={self.tensor_parallel_size}")
                + " yet; use cudagraph_mode='FULL_DECODE_ONLY'"
            )
        if self.cudagraph_mode is None:
            plain = not self.deterministic and self.tensor_parallel_size == 1
            self.cudagraph_mode = "FULL" if plain else "FULL_DECODE_ONLY"
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "EngineConfig":
        """Read options from a YAML mapping; keyword overrides win over the file. Errors (unknown keys,
        bad values, YAML syntax) are one-line ValueErrors from dynaspec/config_loader.py."""
        from dynaspec.config_loader import load_engine_config

        return load_engine_config(config=path, options=overrides)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' was requested but no CUDA GPU is available; use device='cpu' or 'auto'")
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        """bf16 on CUDA, fp32 on CPU unless set explicitly."""
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

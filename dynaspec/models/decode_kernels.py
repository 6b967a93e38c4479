"""Which fast decode-kernel paths a model's CUDA forward takes (chosen by the engine, per device).

- `dependent_launch`: every Triton kernel of the decoder (RMSNorm, RoPE + KV write, paged attention and
  its split reduce, SiLU-and-mul, the GEMV below) is launched with programmatic dependent launch (PDL,
  Hopper and newer; CUDA programming guide, "Programmatic Dependent Launch and Synchronization"): the
  next kernel is launched while the current one runs and waits in `griddepcontrol.wait` until it has
  finished, so a chain of dependent kernels no longer pays a launch and a ramp per kernel boundary.
  Inside a CUDA graph the launches become programmatic edges. Kernels launched without it (cuBLAS,
  torch) keep full serialisation, so mixing is safe.
- `gemv`: the projections (of `GEMV_PROJECTIONS`) that a step with at most `GEMV_MAX_ROWS` token rows (a
  batch-1 decode, a batch-1 verify of one draft, a batch-2 decode) runs through the Triton GEMV of
  `gemv.py` instead of cuBLAS, so that such a step is one chain of PDL kernels reading each weight once
  (cuBLAS's kernels are launched without PDL and break it; o_proj / down at M = 1 also add a split-K
  reduce).
- `small_gemm_max_rows`: steps of GEMV_MAX_ROWS + 1 up to this many token rows (a batch-1 verify of 2-7
  drafts, a decode step of 3-8 requests) run those projections through the tensor-core kernel of
  `small_gemm.py` instead, where its `worthwhile` says it beats cuBLAS (every projection but a long-K
  down), keeping the chain of PDL kernels for them too.
- `deterministic` (EngineConfig.deterministic): every projection and the lm_head run through the batch-
  invariant GEMM of `invariant_linear.py` and attention through `invariant_attention.py`, so a token
  row's logits do not depend on the step's other rows, its query length or the graph bucket. It
  excludes the GEMV above (one row would reduce in another order than the GEMM of a larger step). The
  GEMM's tiles come from the card's tuned table (`gemm_tiles`, models/gemm_tiles.py).

Measured on an H200 (docs/benchmarks.md, "Programmatic dependent launch"). This module holds no Triton
code, so CPU-only installs import it freely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynaspec.models.gemm_tiles import GemmTiles, tiles_for

GEMV_PROJECTIONS = ("qkv", "o_proj", "gate_up", "down")
# Token rows a step may have for the GEMV path. models/gemv.py takes 1..8 rows in one launch, but past 2 rows
# it lost to cuBLAS on an H100 (2026-12-06: 4 rows 0.80x, 8 rows 0.47x a step; 2 rows 1.02-1.03x).
GEMV_MAX_ROWS = 2
# Token rows up to which the tensor-core small GEMM takes over from there (H100, 2026-12-07: flat in the rows up
# to 8 and under cuBLAS on every projection but a long-K down; steps of 4-8 rows 6-8% faster in the engine).
SMALL_GEMM_MAX_ROWS = 8


@dataclass(frozen=True)
class DecodeKernels:
    """The decode-kernel choices of one model (see the module docstring); the default is all off."""

    dependent_launch: bool = False
    gemv: frozenset[str] = frozenset()
    small_gemm_max_rows: int = 0  # 0: steps past GEMV_MAX_ROWS rows go to cuBLAS
    deterministic: bool = False
    gemm_tiles: GemmTiles = GemmTiles()  # deterministic mode: the card's tuned GEMM tiles (gemm_tiles.py)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.gemv) - set(GEMV_PROJECTIONS))
        if unknown:
            raise ValueError(f"unknown GEMV projection(s) {unknown}; allowed: {', '.join(GEMV_PROJECTIONS)}")
        if self.gemv and not self.dependent_launch:
            raise ValueError("the small-step GEMV path is only used with dependent_launch=True (alone it gains nothing)")
        if self.small_gemm_max_rows and not (self.gemv and GEMV_MAX_ROWS < self.small_gemm_max_rows <= 16):
            raise ValueError(f"small_gemm_max_rows must be 0, or in {GEMV_MAX_ROWS + 1}..16 with the GEMV path on "
                             f"(it takes the projections of the GEMV path past its rows), got {self.small_gemm_max_rows}")
        if self.gemv and self.deterministic:
            raise ValueError("deterministic kernels exclude the small-step GEMV path: its rows would reduce in "
                             "another order than the GEMM of a larger step")


def supports_dependent_launch(device: torch.device) -> bool:
    """Whether `device` can launch kernels with PDL: a CUDA GPU of compute capability 9.0 or newer, and a
    Triton that has the grid-dependency instructions (3.3 and later)."""
    if device.type != "cuda" or not torch.cuda.is_available() or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    import triton.language as tl  # Triton is only needed on CUDA

    return hasattr(tl.extra.cuda, "gdc_wait") and hasattr(tl.extra.cuda, "gdc_launch_dependents")


def decode_kernels_for(device: torch.device, enabled: bool, deterministic: bool = False) -> DecodeKernels:
    """The fast paths for `device` when `enabled` (EngineConfig.dependent_launch); all off elsewhere.
    `deterministic` (EngineConfig.deterministic): the batch-invariant kernels, PDL kept, no GEMV."""
    pdl = enabled and supports_dependent_launch(device)
    if deterministic:
        return DecodeKernels(dependent_launch=pdl, deterministic=True, gemm_tiles=tiles_for(device))
    if not pdl:
        return DecodeKernels()
    return DecodeKernels(dependent_launch=True, gemv=frozenset(GEMV_PROJECTIONS), small_gemm_max_rows=SMALL_GEMM_MAX_ROWS)

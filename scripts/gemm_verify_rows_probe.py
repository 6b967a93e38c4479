"""Where the batch-invariant GEMM loses to cuBLAS at verify-heavy M (issue 22: deterministic mode's price at
batch 64 with k = 4 is M = 320 rows, 0.725x default on 2026-12-06, H100).

For each Llama-3.1-8B projection (--shapes) at M = 320 (--m), time / cuBLAS of: the card's tuned entry; the same
tiles with K in one slice (does the second slice's accumulator cost? different bits, so a probe only);
other output tiles with the entry's K walk; and those tiles with TMA loads (batch_invariant_tma.py), with
whether their rows' bits equal the table layout's (a TMA layout is usable only if they do). One line per
(shape, config, M); time of one call inside a CUDA graph of `--reps` calls (the tuner's timing,
scripts/tune_invariant_gemm.graph_seconds).

    python scripts/gemm_verify_rows_probe.py --model random:llama-3.1-8b
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tune_invariant_gemm import graph_seconds, model_shapes  # noqa: E402

from dynaspec.models.batch_invariant import invariant_matmul, slice_bounds  # noqa: E402
from dynaspec.models.batch_invariant_tma import tma_invariant_matmul  # noqa: E402
from dynaspec.models.gemm_tiles import TileConfig, tiles_for  # noqa: E402

PROBE_TILES = ((64, 128, 4, 3), (64, 128, 4, 4), (64, 256, 4, 3), (64, 256, 8, 3), (128, 128, 8, 3),
               (128, 128, 8, 4), (128, 256, 8, 3), (128, 64, 4, 3))  # (block_m, block_n, warps, stages)
POINTER_TILES = ((64, 128, 4, 3), (64, 256, 4, 3), (128, 128, 8, 3), (128, 256, 8, 3))  # the pointer kernel's
TMA_BLOCK_KS = (64, 128)  # the TMA tiles' k chunk, where it divides the entry's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--m", type=int, nargs="+", default=[320])
    parser.add_argument("--shapes", nargs="+", default=["gate_up", "down", "o_proj", "lm_head"])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda")
    table = tiles_for(device)
    print(f"| shape | config | M | time us | / cuBLAS |\n|---|---|---|---|---|")
    for name, (n, k) in model_shapes(args.model).items():
        if name not in args.shapes:
            continue
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k ** 0.5
        entry = table.lookup(n, k, torch.bfloat16)
        for m in args.m:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            ref = graph_seconds(lambda: F.linear(x, w), args.reps)
            tuned = entry.for_rows(m)
            configs = {"table": tuned, "table k/1": replace(tuned, k_slices=1)}
            for bm, bn, warps, stages in POINTER_TILES:
                probe = replace(tuned, block_m=bm, block_n=bn, num_warps=warps, num_stages=stages, large=None,
                                large_min_m=None)
                configs[f"{bm}x{bn}x{tuned.block_k} w{warps} s{stages} k/{tuned.k_slices}"] = probe
            for label, cfg in configs.items():
                try:
                    t = graph_seconds(lambda cfg=cfg: invariant_matmul(x, w, None, cfg, split=False), args.reps)
                except Exception as exc:  # noqa: BLE001 - a config the card cannot run (shared memory)
                    print(f"| {name} | {label} | {m} | failed: {type(exc).__name__} | |")
                    continue
                if t is None or ref is None:
                    continue
                print(f"| {name} | {label} | {m} | {t * 1e6:.1f} | {t / ref:.2f} |", flush=True)
            print(f"| {name} | cuBLAS | {m} | {ref * 1e6:.1f} | 1.00 |", flush=True)
            probe_tma(name, x, w, tuned, ref, args.reps)


def probe_tma(name: str, x: torch.Tensor, w: torch.Tensor, tuned: TileConfig, ref: float, reps: int) -> None:
    """The TMA kernel over the probe tiles with the entry's K slices: time / cuBLAS and bits == the table's."""
    m = x.shape[0]
    expected = invariant_matmul(x, w, None, tuned, split=False)
    for bm, bn, warps, stages in PROBE_TILES:
        for bk in TMA_BLOCK_KS:
            if tuned.block_k % bk:
                continue
            cfg = replace(tuned, block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages,
                          large=None, large_min_m=None)
            k_slice, slices = slice_bounds(x.shape[1], tuned)
            label = f"TMA {bm}x{bn}x{bk} w{warps} s{stages} k/{slices}"
            try:
                same = torch.equal(tma_invariant_matmul(x, w, None, cfg, k_slice, slices), expected)
                t = graph_seconds(lambda cfg=cfg: tma_invariant_matmul(x, w, None, cfg, k_slice, slices), reps)
            except Exception as exc:  # noqa: BLE001 - a config the card cannot run
                print(f"| {name} | {label} | {m} | failed: {type(exc).__name__}: {str(exc)[:80]} | |", flush=True)
                continue
            if t is not None:
                print(f"| {name} | {label} | {m} | {t * 1e6:.1f} | {t / ref:.2f} | bits {'same' if same else 'DIFFER'}",
                      flush=True)


if __name__ == "__main__":
    main()

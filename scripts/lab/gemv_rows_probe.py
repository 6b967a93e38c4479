"""Which kernel should take the projections of a step with 3-8 token rows (issue 21: a batch-1 verify of k = 3
drafts has 4; today cuBLAS takes them and breaks the PDL chain, models/decode_kernels.GEMV_MAX_ROWS = 2).

Times, per weight shape and row count M, inside one CUDA graph of `--calls` launches that cycle over enough
copies of the weight to defeat the L2 cache: cuBLAS (F.linear), today's GEMV (models/gemv.py: a cross-lane
reduction per row per K chunk), and two candidates defined here:
  acc3: each row accumulates elementwise products over the K loop, one reduction per row at the end;
  mma:  the rows padded to 16 and multiplied on the tensor cores (tl.dot), fp32 accumulator (16, BLOCK_N).
Prints us a call for each, the best config of each candidate, and its max error against cuBLAS.

    python scripts/lab/gemv_rows_probe.py --rows 1 2 3 4 5 8
    python scripts/lab/gemv_rows_probe.py --rows 4 8 --no-candidates   # the engine's kernel against cuBLAS only
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

SHAPES = {  # (N, K)
    "qwen1.5b qkv": (2048, 1536), "qwen1.5b o_proj": (1536, 1536), "qwen1.5b gate_up": (17920, 1536),
    "qwen1.5b down": (1536, 8960), "llama8b qkv": (6144, 4096), "llama8b o_proj": (4096, 4096),
    "llama8b gate_up": (28672, 4096), "llama8b down": (4096, 14336),
}


@triton.jit
def _acc3_kernel(x_ptr, w_ptr, y_ptr, N, K, ROWS: tl.constexpr, ROWS_P2: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    n_offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, ROWS_P2)
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + n_offs.to(tl.int64)[:, None] * K
    acc = tl.zeros((ROWS_P2, BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        w = tl.load(w_rows + k[None, :]).to(tl.float32)  # (BLOCK_N, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=rows[:, None] < ROWS, other=0.0).to(tl.float32)
        acc += x[:, None, :] * w[None, :, :]
    out = tl.sum(acc, axis=2)  # (ROWS_P2, BLOCK_N)
    tl.store(y_ptr + rows[:, None] * N + n_offs[None, :], out.to(y_ptr.dtype.element_ty), mask=rows[:, None] < ROWS)


@triton.jit
def _mma_kernel(x_ptr, w_ptr, y_ptr, N, K, ROWS, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    n_offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, 16)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        w = tl.load(w_ptr + n_offs.to(tl.int64)[None, :] * K + k[:, None])  # (BLOCK_K, BLOCK_N)
        x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=rows[:, None] < ROWS, other=0.0)  # (16, BLOCK_K)
        acc = tl.dot(x, w, acc)
    tl.store(y_ptr + rows[:, None] * N + n_offs[None, :], acc.to(y_ptr.dtype.element_ty), mask=rows[:, None] < ROWS)


def acc3(x, w, block_n, block_k, warps):
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _acc3_kernel[(n // block_n,)](x, w, y, n, K=k, ROWS=m, ROWS_P2=max(1, triton.next_power_of_2(m)),
                                  BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=1)
    return y


def mma(x, w, block_n, block_k, warps, stages):
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _mma_kernel[(n // block_n,)](x, w, y, n, K=k, ROWS=m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
                                 num_stages=stages)
    return y


def time_us(fn, weights, calls: int) -> float:
    """us a call of fn(w) cycling over `weights`, replayed from one CUDA graph."""
    fn(weights[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(weights[i % len(weights)])
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--no-candidates", action="store_true", help="skip the acc3 / mma config sweeps")
    args = parser.parse_args()
    from dynaspec.models import gemv, small_gemm

    print(f"card: {torch.cuda.get_device_name()}")
    acc3_configs = [] if args.no_candidates else [(bn, bk, w) for bn in (4, 8) for bk in (128, 256, 512) for w in (4,)]
    mma_configs = [] if args.no_candidates else [
        (bn, bk, w, s) for bn in (16, 32, 64) for bk in (64, 128, 256) for w in (4,) for s in (3, 4)]
    print("shape | M | cublas us | gemv us | acc3 us (cfg) | mma us (cfg) | best / cublas | engine's small_gemm us "
          "(its launch_config) / cublas")
    for name in args.shapes:
        n, k = SHAPES[name]
        copies = max(2, -(-256 * 2**20 // (n * k * 2)))  # > 256 MiB of weights: past L2
        weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
        for m in args.rows:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ref = torch.nn.functional.linear(x, weights[0]).float()
            cublas = time_us(lambda w: torch.nn.functional.linear(x, w), weights, args.calls)
            cur = time_us(lambda w: gemv.gemv(x, w), weights, args.calls) if m <= gemv.MAX_ROWS else float("nan")
            best_a, cfg_a, err_a = float("inf"), None, 0.0
            for bn, bk, wp in acc3_configs:
                if bn * bk * max(1, triton.next_power_of_2(m)) > 8192 * wp // 4 or k % bk or n % bn:
                    continue
                try:
                    t = time_us(lambda w: acc3(x, w, bn, bk, wp), weights, args.calls)
                except Exception as exc:  # noqa: BLE001 (a config out of resources: skip it)
                    print(f"  acc3 {bn},{bk},{wp}: {type(exc).__name__}")
                    continue
                if t < best_a:
                    best_a, cfg_a = t, (bn, bk, wp)
                    err_a = (acc3(x, weights[0], bn, bk, wp).float() - ref).abs().max().item()
            best_m, cfg_m, err_m = float("inf"), None, 0.0
            for bn, bk, wp, st in mma_configs:
                if k % bk or n % bn:
                    continue
                try:
                    t = time_us(lambda w: mma(x, w, bn, bk, wp, st), weights, args.calls)
                except Exception as exc:  # noqa: BLE001
                    print(f"  mma {bn},{bk},{wp},{st}: {type(exc).__name__}")
                    continue
                if t < best_m:
                    best_m, cfg_m = t, (bn, bk, wp, st)
                    err_m = (mma(x, weights[0], bn, bk, wp, st).float() - ref).abs().max().item()
            best = min(best_a, best_m, cur if cur == cur else float("inf"))
            ours = time_us(lambda w: small_gemm.small_gemm(x, w), weights, args.calls)
            print(f"{name} | {m} | {cublas:.1f} | {cur:.1f} | {best_a:.1f} {cfg_a} err {err_a:.3g} | "
                  f"{best_m:.1f} {cfg_m} err {err_m:.3g} | {best / cublas:.3f} | {ours:.1f} "
                  f"{small_gemm.launch_config(n, k)} {ours / cublas:.3f}", flush=True)
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

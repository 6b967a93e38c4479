"""Can programmatic dependent launch (PDL) close batch-1 decode's gap to the floor? A probe (issue 5).

At batch 1 the decode graph of Llama-3.1-8B spends ~0.8 ms of a 4.6 ms step outside the weight-streaming
GEMMs: small kernels with HBM idle, and each GEMM's ramp and tail (docs/benchmarks.md, "Where the
batch-1 decode graph spends its time"). Hopper's programmatic dependent launch (CUDA programming guide,
"Programmatic Dependent Launch and Synchronization"; Triton tutorial 11) lets kernel n+1 start while
kernel n runs: its programs do work that does not depend on kernel n (here: load their first chunk of
weights) and then block in `griddepcontrol.wait` until kernel n has finished and flushed its writes.

This script times one decoder layer's kernel chain at M = 1 (Llama-3.1-8B shapes, bf16, 32 layers of
distinct random weights, captured in one CUDA graph), with stand-ins for attention:

    add+RMSNorm -> qkv GEMV -> attention stand-in (2 kernels) -> o_proj GEMV -> add+RMSNorm
    -> gate_up GEMV -> SiLU-and-mul -> down GEMV

- `cublas`: GEMMs through F.linear (the engine today), small kernels in Triton, no PDL.
- `triton`: every GEMM a split-K free Triton GEMV, no PDL.
- `pdl-*`: the same Triton kernels launched with PDL; GEMVs load PRELOAD weight chunks before the wait;
  `late` triggers the next launch after the wait, `early` at program start.
- GEMM-only chains (no small kernels) for cuBLAS and Triton: the GEMMs' own time.

Prints each chain's replay time and its ratio to the floor (weight bytes / measured copy bandwidth);
writes $OUT/pdl_probe.json. Usage: python3 scripts/gpu_pdl_probe.py [--layers 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynaspec.bench.sweep import measure_copy_bandwidth  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
HIDDEN, INTER, QKV = 4096, 14336, 6144
EPS = 1e-5


@triton.jit
def _pdl_enter(PDL: tl.constexpr, TRIGGER_EARLY: tl.constexpr):
    """Wait for the previous kernel (and let the next one launch, before or after the wait)."""
    if PDL:
        if TRIGGER_EARLY:
            tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
        if not TRIGGER_EARLY:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, eps, D: tl.constexpr, PDL: tl.constexpr,
                         TRIGGER_EARLY: tl.constexpr):
    # One program, one row: res <- x + res; out <- RMSNorm(res) * w.
    offs = tl.arange(0, D)
    w = tl.load(w_ptr + offs).to(tl.float32)  # a weight: safe before the wait
    _pdl_enter(PDL, TRIGGER_EARLY)
    s = (tl.load(x_ptr + offs).to(tl.float32) + tl.load(res_ptr + offs).to(tl.float32)).to(tl.bfloat16)
    tl.store(res_ptr + offs, s)
    sf = s.to(tl.float32)
    h = (sf * tl.rsqrt(tl.sum(sf * sf, axis=0) / D + eps)).to(tl.bfloat16).to(tl.float32)
    tl.store(out_ptr + offs, (w * h).to(tl.bfloat16))


@triton.jit
def _attention_stub_kernel(qkv_ptr, out_ptr, HEAD: tl.constexpr, PDL: tl.constexpr, TRIGGER_EARLY: tl.constexpr):
    # One program per head: out[h] = q[h] * 0.5 + v (a small dependent kernel like attention / its reduce).
    pid = tl.program_id(0)
    offs = pid * HEAD + tl.arange(0, HEAD)
    _pdl_enter(PDL, TRIGGER_EARLY)
    q = tl.load(qkv_ptr + offs).to(tl.float32)
    tl.store(out_ptr + offs, (q * 0.5).to(tl.bfloat16))


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, I: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
                     TRIGGER_EARLY: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    _pdl_enter(PDL, TRIGGER_EARLY)
    g = tl.load(gu_ptr + offs).to(tl.float32)
    u = tl.load(gu_ptr + I + offs).to(tl.float32)
    a = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)
    tl.store(out_ptr + offs, (a * u).to(tl.bfloat16))


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRELOAD: tl.constexpr, PDL: tl.constexpr, TRIGGER_EARLY: tl.constexpr):
    # y (N,) = W (N, K) @ x (K,); program n owns BLOCK_N outputs and streams its (BLOCK_N, K) slice of W.
    pid = tl.program_id(0)
    n_offs = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + n_offs.to(tl.int64)[:, None] * K
    acc = tl.zeros((BLOCK_N,), tl.float32)
    if PRELOAD >= 1:
        w0 = tl.load(w_rows + kk[None, :])
    if PRELOAD >= 2:
        w1 = tl.load(w_rows + BLOCK_K + kk[None, :])
    _pdl_enter(PDL, TRIGGER_EARLY)
    if PRELOAD >= 1:
        acc += tl.sum(w0.to(tl.float32) * tl.load(x_ptr + kk).to(tl.float32)[None, :], axis=1)
    if PRELOAD >= 2:
        acc += tl.sum(w1.to(tl.float32) * tl.load(x_ptr + BLOCK_K + kk).to(tl.float32)[None, :], axis=1)
    for k0 in range(PRELOAD * BLOCK_K, K, BLOCK_K):
        w = tl.load(w_rows + k0 + kk[None, :]).to(tl.float32)
        acc += tl.sum(w * tl.load(x_ptr + k0 + kk).to(tl.float32)[None, :], axis=1)
    tl.store(y_ptr + n_offs, acc.to(tl.bfloat16))


class Layer:
    """One decoder layer's weights (random, std 0.02) in nn.Linear layout."""

    def __init__(self, device: torch.device) -> None:
        def w(n: int, k: int) -> torch.Tensor:
            return torch.empty(n, k, dtype=torch.bfloat16, device=device).normal_(0, 0.02)
        self.qkv, self.o, self.gate_up, self.down = w(QKV, HIDDEN), w(HIDDEN, HIDDEN), w(2 * INTER, HIDDEN), w(HIDDEN, INTER)
        self.norm1 = torch.ones(HIDDEN, dtype=torch.bfloat16, device=device)
        self.norm2 = torch.ones(HIDDEN, dtype=torch.bfloat16, device=device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qkv, self.o, self.gate_up, self.down))


class Chain:
    """The per-layer kernel chain over all layers, one variant; buffers preallocated (graph-safe)."""

    def __init__(self, layers: list[Layer], gemm: str, pdl: bool, trigger_early: bool, preload: int,
                 configs: dict[str, tuple[int, int, int, int]], small_kernels: bool = True) -> None:
        self.layers, self.gemm, self.pdl, self.early, self.preload = layers, gemm, pdl, trigger_early, preload
        self.configs, self.small = configs, small_kernels
        dev = layers[0].qkv.device
        z = partial_zeros(dev)
        self.x, self.res, self.h = z(HIDDEN), z(HIDDEN), z(HIDDEN)
        self.qkv, self.attn, self.o, self.gu, self.act, self.d = z(QKV), z(HIDDEN), z(HIDDEN), z(2 * INTER), z(INTER), z(HIDDEN)

    def reset(self) -> None:
        """Fixed inputs, so that every variant's single eager pass starts from the same state."""
        gen = torch.Generator(device=self.d.device).manual_seed(0)
        self.d.copy_(torch.randn(HIDDEN, generator=gen, device=self.d.device))
        self.res.copy_(torch.randn(HIDDEN, generator=gen, device=self.d.device))

    def _gemv(self, op: str, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
        if self.gemm == "cublas":
            torch.mm(x.view(1, -1), w.t(), out=y.view(1, -1))
            return
        block_n, block_k, warps, stages = self.configs[op]
        n, k = w.shape
        _gemv_kernel[(n // block_n,)](x, w, y, n, K=k, BLOCK_N=block_n, BLOCK_K=block_k, PRELOAD=self.preload,
                                      PDL=self.pdl, TRIGGER_EARLY=self.early, num_warps=warps, num_stages=stages,
                                      launch_pdl=self.pdl)

    def _small(self, kernel, grid, *args, **kw) -> None:
        kernel[grid](*args, PDL=self.pdl, TRIGGER_EARLY=self.early, launch_pdl=self.pdl, **kw)

    def run(self) -> None:
        d = self.d
        for layer in self.layers:
            if self.small:
                self._small(_add_rms_norm_kernel, (1,), d, self.res, layer.norm1, self.h, EPS, D=HIDDEN, num_warps=8)
            self._gemv("qkv", self.h if self.small else d, layer.qkv, self.qkv)
            if self.small:
                self._small(_attention_stub_kernel, (32,), self.qkv, self.attn, HEAD=128, num_warps=1)
                self._small(_attention_stub_kernel, (32,), self.attn, self.attn, HEAD=128, num_warps=1)
            self._gemv("o_proj", self.attn if self.small else self.qkv[:HIDDEN], layer.o, self.o)
            if self.small:
                self._small(_add_rms_norm_kernel, (1,), self.o, self.res, layer.norm2, self.h, EPS, D=HIDDEN,
                            num_warps=8)
            self._gemv("gate_up", self.h if self.small else self.o, layer.gate_up, self.gu)
            if self.small:
                self._small(_silu_mul_kernel, (INTER // 1024,), self.gu, self.act, I=INTER, BLOCK=1024, num_warps=4)
            self._gemv("down", self.act if self.small else self.gu[:INTER], layer.down, d)


def partial_zeros(device: torch.device):
    return lambda n: torch.zeros(n, dtype=torch.bfloat16, device=device)


def graph_ms(fn, replays: int = 20) -> float:
    """Median ms of one replay of a CUDA graph of `fn` (captured after two eager warm-up calls)."""
    fn()
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def best_configs(layers: list[Layer], weight_bytes: dict[str, int]) -> dict[str, tuple[int, int, int, int]]:
    """Per op: the fastest of a few GEMV configs over all layers' weights (no PDL, no preload)."""
    candidates = [(8, 512, 4, 1), (16, 512, 4, 1), (16, 256, 4, 1), (32, 256, 4, 1), (8, 1024, 4, 1),
                  (16, 512, 8, 1), (4, 1024, 4, 1), (8, 512, 4, 2), (8, 512, 4, 3), (8, 1024, 4, 2),
                  (4, 2048, 4, 1), (8, 2048, 8, 1), (16, 1024, 8, 1), (4, 512, 2, 1)]
    dev = layers[0].qkv.device
    chosen = {}
    for op, attr in (("qkv", "qkv"), ("o_proj", "o"), ("gate_up", "gate_up"), ("down", "down")):
        n, k = getattr(layers[0], attr).shape
        x, y = torch.randn(k, dtype=torch.bfloat16, device=dev), torch.empty(n, dtype=torch.bfloat16, device=dev)
        results = []
        for cfg in candidates:
            bn, bk, warps, stages = cfg

            def call(bn=bn, bk=bk, warps=warps, stages=stages):
                for layer in layers:
                    _gemv_kernel[(n // bn,)](x, getattr(layer, attr), y, n, K=k, BLOCK_N=bn, BLOCK_K=bk, PRELOAD=0,
                                             PDL=False, TRIGGER_EARLY=False, num_warps=warps, num_stages=stages)
            results.append((graph_ms(call) / len(layers) * 1e3, cfg))

        def cublas_call():
            for layer in layers:
                torch.mm(x.view(1, -1), getattr(layer, attr).t(), out=y.view(1, -1))
        cublas_us = graph_ms(cublas_call) / len(layers) * 1e3
        results.sort()
        us, cfg = results[0]
        print(f"{op:8s} cuBLAS {cublas_us:6.2f} us   best Triton GEMV {us:6.2f} us {cfg}   "
              f"({weight_bytes[op] / (us * 1e-6) / 1e12:.2f} TB/s)   all: "
              + ", ".join(f"{c[0]}x{c[1]}w{c[2]}s{c[3]} {t:.1f}" for t, c in results))
        chosen[op] = cfg
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    dev = torch.device("cuda")
    OUT.mkdir(parents=True, exist_ok=True)
    bandwidth = measure_copy_bandwidth(dev)
    layers = [Layer(dev) for _ in range(args.layers)]
    total_bytes = sum(layer.nbytes() for layer in layers)
    floor_ms = total_bytes / bandwidth * 1e3
    l0 = layers[0]
    weight_bytes = {"qkv": l0.qkv.numel() * 2, "o_proj": l0.o.numel() * 2, "gate_up": l0.gate_up.numel() * 2,
                    "down": l0.down.numel() * 2}
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; {args.layers} layers, {total_bytes / 1e9:.2f} GB of "
          f"weights: floor {floor_ms:.3f} ms")
    configs = best_configs(layers, weight_bytes)
    variants = {
        "cublas": dict(gemm="cublas", pdl=False, trigger_early=False, preload=0),
        "triton": dict(gemm="triton", pdl=False, trigger_early=False, preload=0),
        "pdl-late-preload0": dict(gemm="triton", pdl=True, trigger_early=False, preload=0),
        "pdl-late-preload1": dict(gemm="triton", pdl=True, trigger_early=False, preload=1),
        "pdl-late-preload2": dict(gemm="triton", pdl=True, trigger_early=False, preload=2),
        "pdl-early-preload1": dict(gemm="triton", pdl=True, trigger_early=True, preload=1),
        "pdl-early-preload2": dict(gemm="triton", pdl=True, trigger_early=True, preload=2),
    }
    results: dict[str, dict] = {}
    reference = None
    for name, kw in list(variants.items()) + [
        ("gemm-only-cublas", dict(gemm="cublas", pdl=False, trigger_early=False, preload=0, small_kernels=False)),
        ("gemm-only-triton", dict(gemm="triton", pdl=False, trigger_early=False, preload=0, small_kernels=False)),
        ("gemm-only-pdl-late-preload1", dict(gemm="triton", pdl=True, trigger_early=False, preload=1,
                                             small_kernels=False)),
    ]:
        chain = Chain(layers, configs=configs, **kw)
        try:
            ms = graph_ms(chain.run)
        except Exception as exc:  # a variant the installed Triton cannot launch: report, go on
            print(f"{name:28s} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            results[name] = {"error": str(exc)[:1000]}
            continue
        chain.reset()
        chain.run()
        torch.cuda.synchronize()
        out = chain.d.float().clone()
        if kw.get("small_kernels", True):
            if reference is None:
                reference = out
            err = (out - reference).abs().max().item() / max(reference.abs().max().item(), 1e-6)
        else:
            err = float("nan")
        results[name] = {"ms": ms, "floor_ratio": floor_ms / ms, "rel_err_vs_cublas": err}
        print(f"{name:28s} {ms:7.3f} ms   floor / time {floor_ms / ms:.3f}   max rel diff vs cublas {err:.2e}")
    (OUT / "pdl_probe.json").write_text(json.dumps({
        "card": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__,
        "copy_bandwidth": bandwidth, "layers": args.layers, "weight_bytes": total_bytes, "floor_ms": floor_ms,
        "configs": configs, "results": results}, indent=1))


if __name__ == "__main__":
    main()

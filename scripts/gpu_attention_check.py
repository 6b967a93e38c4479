"""Check and time the Triton paged-attention kernel against the reference path on a CUDA GPU.

1. Correctness: random decode / verify batches (q_len 1..8, GQA, ragged seq_lens, block_size 16,
   shuffled blocks of a NaN-poisoned cache, with and without a sliding window) in bf16 and fp32,
   relative error vs the reference path on fp32-upcast inputs.
2. Timing: Llama-3.1-8B attention shapes (H=32, Hkv=8, D=128, bf16, block_size 16) for B in
   {1, 8, 64, 256}, context {512, 2048}, q_len {1, 5}; both paths captured in a CUDA graph (N calls per
   graph, rotating over input sets that together exceed L2 so the numbers are HBM numbers), median of
   replays. Bandwidth: KV bytes read + q + out over the time, vs a measured device-to-device copy.
3. A small sweep of block_n / num_warps / num_stages on a few shapes (for picking defaults).

Writes $OUT/attention_check.md and .json (or ./attention_check.* without $OUT) and prints the table last.
Usage: python3 scripts/gpu_attention_check.py
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynaspec.models.attention import reference_paged_attention  # noqa: E402
from dynaspec.models.attention_metadata import AttentionMetadata  # noqa: E402
from dynaspec.models.triton_attention import triton_paged_attention  # noqa: E402

DEV = torch.device("cuda")
L2_FLUSH_BYTES = 256 << 20  # rotate inputs over at least this many bytes (H100 L2 is 50 MB)


def random_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, rng, poison=True, spare_blocks=3):
    """Paged batch on the GPU: q (T, H, D), cache (2, NB, BS, Hkv, D) random in the context, NaN elsewhere."""
    needed = [-(-s // block_size) for _, s in seqs]
    num_blocks = sum(needed) + spare_blocks
    perm = list(range(num_blocks))
    rng.shuffle(perm)
    tables, off = [], 0
    for n in needed:
        tables.append(perm[off:off + n])
        off += n
    cache = torch.randn((2, num_blocks, block_size, kv_heads, head_dim), device=DEV, dtype=dtype)
    if poison:
        valid = torch.zeros((num_blocks, block_size), dtype=torch.bool, device=DEV)
        for (_, s), table in zip(seqs, tables):
            idx = torch.arange(s, device=DEV)
            valid[torch.tensor(table, device=DEV)[idx // block_size], idx % block_size] = True
        cache.masked_fill_(~valid[None, :, :, None, None], float("nan"))
    meta = AttentionMetadata.build([q for q, _ in seqs], [s for _, s in seqs], tables, block_size, DEV)
    q = torch.randn((meta.num_tokens, heads, head_dim), device=DEV, dtype=dtype)
    return q, cache, meta


def rel_err(out, ref):
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def check_correctness(rng) -> list[dict]:
    rows = []
    shapes = [(32, 8, 128), (14, 2, 64), (9, 3, 64), (8, 1, 128)]
    for trial in range(24):
        heads, kv_heads, head_dim = shapes[trial % len(shapes)]
        dtype = torch.bfloat16 if trial % 2 == 0 else torch.float32
        max_q = rng.randint(1, 8)
        window = rng.choice([None, None, 64, 300])
        seqs = []
        for _ in range(rng.randint(1, 12)):
            q_len = rng.randint(1, max_q)
            seqs.append((q_len, q_len + rng.randint(0, 1200)))
        splits = rng.choice([None, 1, 3, 8])
        q, cache, meta = random_batch(seqs, heads, kv_heads, head_dim, 16, dtype, rng)
        scale = head_dim**-0.5
        out = triton_paged_attention(q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables, max_q,
                                     scale, window, num_splits=splits)
        ref = reference_paged_attention(q.float(), cache.float(), meta, scale, window)
        err = rel_err(out, ref)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
        ok = bool(torch.isfinite(out).all()) and err < tol
        rows.append(dict(shape=f"{heads}/{kv_heads}/{head_dim}", dtype=str(dtype).split(".")[-1], max_q=max_q,
                         B=len(seqs), window=window, splits=splits, rel_err=err, ok=ok))
    return rows


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB; bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return 2 * src.numel() / statistics.median(times)


def graph_time(fns) -> float:
    """Median seconds per call: all fns captured (in order) in one CUDA graph, replayed 10 times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:  # warm-up: compile, fill meta.derived
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(fns))
    del graph
    return statistics.median(times)


def time_config(batch, ctx, q_len, rng, copy_bw, variants=None) -> dict:
    heads, kv_heads, head_dim, block_size, dtype = 32, 8, 128, 16, torch.bfloat16
    seqs = [(q_len, ctx)] * batch
    kv_bytes = batch * ctx * kv_heads * head_dim * 2 * 2
    io_bytes = kv_bytes + 2 * batch * q_len * heads * head_dim * 2
    sets = max(1, min(128, -(-L2_FLUSH_BYTES // kv_bytes)))
    batches = [random_batch(seqs, heads, kv_heads, head_dim, block_size, dtype, rng, poison=False, spare_blocks=0)
               for _ in range(sets)]
    scale = head_dim**-0.5
    reps = max(1, 16 // sets)  # at least 16 calls per graph
    row = dict(B=batch, ctx=ctx, q_len=q_len, floor_us=io_bytes / copy_bw * 1e6)
    if variants is None:
        variants = {"triton": {}}
        with_ref = True
    else:
        with_ref = False
    for name, kwargs in variants.items():
        fns = [(lambda q=q, c=c, m=m: triton_paged_attention(
            q, c, m.query_start_loc, m.seq_lens, m.block_tables, q_len, scale, **kwargs)) for q, c, m in batches]
        row[f"{name}_us"] = graph_time(fns * reps) * 1e6
    if with_ref:
        fns = [(lambda q=q, c=c, m=m: reference_paged_attention(q, c, m, scale)) for q, c, m in batches]
        try:
            row["reference_us"] = graph_time(fns * reps) * 1e6
        except Exception as exc:  # the reference path may not capture; time it eagerly then
            print(f"reference not capturable ({type(exc).__name__}: {exc}); timing eagerly", flush=True)
            torch.cuda.synchronize()
            row["reference_us"] = eager_time(fns * reps) * 1e6
        q, c, m = batches[0]
        out = triton_paged_attention(q, c, m.query_start_loc, m.seq_lens, m.block_tables, q_len, scale)
        row["rel_err"] = rel_err(out, reference_paged_attention(q.float(), c.float(), m, scale))
    row["GB/s"] = io_bytes / (row["triton_us"] * 1e-6) / 1e9 if "triton_us" in row else None
    del batches
    torch.cuda.empty_cache()
    return row


def eager_time(fns) -> float:
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for fn in fns:
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / 1e3 / len(fns)


def main() -> int:
    import triton

    rng = random.Random(0)
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(DEV)
    header = (f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}; "
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(header, flush=True)

    checks = check_correctness(rng)
    for c in checks:
        print(f"check {c}", flush=True)
    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)", flush=True)

    timings = []
    for ctx in (512, 2048):
        for q_len in (1, 5):
            for batch in (1, 8, 64, 256):
                row = time_config(batch, ctx, q_len, rng, bw)
                print(f"time {row}", flush=True)
                timings.append(row)

    sweep_variants = {f"n{bn}_w{w}_s{st}": dict(block_n=bn, num_warps=w, num_stages=st)
                      for bn, w, st in ((64, 4, 2), (128, 4, 2), (128, 4, 3), (128, 8, 2), (128, 8, 3))}
    sweep = []
    for batch, ctx, q_len in ((1, 2048, 5), (8, 2048, 1), (64, 2048, 5), (256, 512, 1)):
        row = time_config(batch, ctx, q_len, rng, bw, variants=sweep_variants)
        print(f"sweep {row}", flush=True)
        sweep.append(row)

    lines = [f"# Triton paged attention vs reference path", "", header,
             f"Correctness: {sum(c['ok'] for c in checks)}/{len(checks)} random cases pass "
             f"(max rel err bf16 {max(c['rel_err'] for c in checks if c['dtype'] == 'bfloat16'):.2e}, "
             f"fp32 {max(c['rel_err'] for c in checks if c['dtype'] == 'float32'):.2e}).",
             f"Copy bandwidth {bw / 1e12:.2f} TB/s. Llama-3.1-8B attention (H=32, Hkv=8, D=128, bf16, block 16), "
             "one layer, CUDA-graph replay, median.", "",
             "| B | ctx | q_len | triton us | reference us | speedup | floor us | triton GB/s | % of copy BW | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in timings:
        lines.append(f"| {r['B']} | {r['ctx']} | {r['q_len']} | {r['triton_us']:.1f} | {r['reference_us']:.1f} | "
                     f"{r['reference_us'] / r['triton_us']:.1f}x | {r['floor_us']:.1f} | {r['GB/s']:.0f} | "
                     f"{100 * r['GB/s'] * 1e9 / bw:.0f}% | {r['rel_err']:.1e} |")
    lines += ["", "Sweep (us): " + ", ".join(sweep_variants), ""]
    for r in sweep:
        lines.append(f"B={r['B']} ctx={r['ctx']} q_len={r['q_len']}: " +
                     ", ".join(f"{k}={r[k + '_us']:.1f}" for k in sweep_variants))
    text = "\n".join(lines)
    out_dir = Path(os.environ.get("OUT", "."))
    (out_dir / "attention_check.md").write_text(text + "\n")
    (out_dir / "attention_check.json").write_text(json.dumps(dict(header=header, checks=checks, copy_bw=bw,
                                                                  timings=timings, sweep=sweep), indent=1))
    print(text)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

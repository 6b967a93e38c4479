"""Tune the batch-invariant GEMM's tiles for this card (issue 22: deterministic mode's price).

For each weight shape of the named models (the fused qkv, o_proj, fused gate_up, down and lm_head of a
Llama / Qwen2 layout), every candidate TileConfig (then the three best with K cut into 2, 4 or 8 slices,
each M with the slices in one program and split across programs: the config splits up to the largest M
where that was faster, `split_max_m`) is timed at the M a serving engine meets (decode and
verify rows at batch 1..64, a 2048-row prefill) against torch's F.linear (cuBLAS, not batch-invariant) at
the same M. The winner of a shape minimises the geometric mean over those M of its time / cuBLAS's;
the table (dynaspec/models/gemm_tile_tables/<card>.json, gemm_tiles.py) takes it, with every M's ratio
for it and for the built-in rule. Each config is timed inside a CUDA graph of `--reps` back-to-back
calls (what a captured engine step pays: no launch gaps), median of 3 replays.

    python scripts/tune_invariant_gemm.py --models random:llama-3.1-8b random:qwen2.5-1.5b

A configuration is one per (N, K, dtype) and card; its walk over K (block_k, k_slices) never depends on M.
From the M where they are faster, larger output tiles of the same walk (TileConfig.large; on Hopper and newer
also with TMA loads, batch_invariant_tma.py) are timed at
M = 80, 320, 2048 and kept only where every row's bits equal the small tiles' at each of those M: which
tiles win changes speed, never which bits a row gets in a given engine (gemm_tiles.py).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dynaspec.models.gemm_tiles import GemmTiles, RowTiles, TileConfig, rule_tile, shape_key, table_path, tiles_for
from dynaspec.models.loader import load_hf_config
from dynaspec.models.presets import get_preset_config

M_VALUES = (1, 5, 16, 64, 80, 320, 2048)
K_SLICES = (2, 4, 8)  # batch 1 decode / k=4 verify, 16 decode, 64 decode / 16 x 5, 64 x 5, prefill
LARGE_M = (80, 320, 2048)  # where larger output tiles may take over (TileConfig.large)


def model_shapes(name: str) -> dict[str, tuple[int, int]]:
    """{projection: (N, K)} of a model's layer and lm_head, from its config."""
    config = get_preset_config(name.removeprefix("random:")) if name.startswith("random:") else load_hf_config(name)
    hidden, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {"qkv": ((heads + 2 * kv_heads) * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
            "gate_up": (2 * inter, hidden), "down": (hidden, inter), "lm_head": (config.vocab_size, hidden)}


def candidates() -> list[TileConfig]:
    """The configurations tried: tile shapes x (warps, stages), within the shared memory of one SM."""
    out = []
    for bm, bn, bk, (warps, stages) in itertools.product((16, 64), (32, 64, 128), (64, 128, 256), ((4, 3), (4, 5))):
        if stages * (bm * bk + bk * bn) * 2 > 200 * 1024:
            continue
        out.append(TileConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages))
    return out


def large_candidates(small: TileConfig, tma: bool = False) -> list[RowTiles]:
    """Larger output tiles for the winner's K slices (its block_k or a divisor of it, >= 32), within the
    shared memory of one SM; with tma, each shape with k chunks of 64..128 (the small tiles' own shape among
    them) also loaded through TMA (64 rows: at two pipeline depths; 128 rows: one deeper)."""
    out = []
    block_ks = [bk for bk in (small.block_k, small.block_k // 2, small.block_k // 4) if bk >= 32]
    # no 256-wide tiles: 5-9x cuBLAS at M = 320 on the H100 for either kernel (register spills; 2026-12-06 probe,
    # docs/lab/gemm_tiles_h100.md), never kept before
    for bm, bn, bk in itertools.product((64, 128), (64, 128), block_ks):
        warps, stages = (4 if bm == 64 else 8), (3 if bk <= 128 else 2)  # one warp group per 64 rows

        def fits(num_stages: int) -> bool:
            return num_stages * (bm * bk + bk * bn) * 2 <= 200 * 1024

        tiles = RowTiles(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages,
                         block_k=None if bk == small.block_k else bk)
        if fits(stages) and (bm, bn, bk, warps, stages) != (small.block_m, small.block_n, small.block_k,
                                                            small.num_warps, small.num_stages):
            out.append(tiles)
        if tma and 64 <= bk <= 128:  # the small tiles' own shape too: at M = 320 loading them through TMA was
            # the win for Llama-3.1-8B's gate_up (1.70 -> 1.44 x cuBLAS, H100, 2026-12-06); one more stage paid
            # for 128-row tiles there (1.86 -> 1.66 on gate_up, 1.83 -> 1.44 on down), either depth for 64 rows
            depths = (stages, stages + 1) if bm == 64 else (stages + 1,)
            out.extend(replace(tiles, tma=True, num_stages=s) for s in depths if fits(s))
    return out


def large_threshold(large: dict[int, float], small: dict[int, float]) -> int | None:
    """The smallest M from which the large tiles were faster at every larger M measured (None: at none)."""
    threshold = None
    for m in sorted(large, reverse=True):
        if large[m] >= small[m]:
            break
        threshold = m
    return threshold


def split_threshold(split: dict[int, float], unsplit: dict[int, float]) -> int:
    """The largest M of the run of smallest M (ascending) where the split-K layout was faster (0: none)."""
    threshold = 0
    for m in sorted(split):
        if split[m] >= unsplit[m]:
            break
        threshold = m
    return threshold


def graph_seconds(fn, reps: int) -> float | None:
    """Seconds of one call of fn inside a CUDA graph of `reps` calls (median of 3 replays); None if the
    config does not compile or run here."""
    try:
        fn()  # compile, warm up
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        graph.replay()
        times = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        return statistics.median(times)
    except Exception as exc:  # noqa: BLE001 - out of resources etc.: not a candidate on this card
        print(f"    skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
        return None


def write_table(path: Path, card: str, entries: dict[str, TileConfig], measured: dict, models: list[str]) -> None:
    """The card's table file: the tuned entries, the command, and each tuned shape's time / cuBLAS per M."""
    table = GemmTiles(card, tuple(sorted(entries.items())))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table.to_json(
        command="python scripts/tune_invariant_gemm.py --models " + " ".join(models), date=time.strftime("%Y-%m-%d"),
        ratio_to_cublas={key: {str(m): round(r, 3) for m, r in v["best"].items()} for key, v in measured.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["random:llama-3.1-8b", "random:qwen2.5-1.5b"])
    parser.add_argument("--reps", type=int, default=10, help="calls per CUDA graph")
    parser.add_argument("--out", type=Path, help="the table (default: this card's shipped table path)")
    parser.add_argument("--report", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    from dynaspec.models.batch_invariant import invariant_matmul, slice_bounds  # Triton
    from dynaspec.models.batch_invariant_tma import tma_supported

    device, dtype = torch.device("cuda"), torch.bfloat16
    card = torch.cuda.get_device_name(device)
    out_path = args.out or table_path(card)
    shapes: dict[tuple[int, int], str] = {}
    for name in args.models:
        for proj, nk in model_shapes(name).items():
            shapes.setdefault(nk, f"{name} {proj}")
    previous = tiles_for(device)  # kept for shapes this run does not tune
    entries = dict(previous.entries)
    gen = torch.Generator(device=device).manual_seed(0)
    max_k = max(k for _, k in shapes)
    x_all = torch.randn(max(M_VALUES), max_k, device=device, generator=gen).to(dtype)
    report = [f"# Batch-invariant GEMM tiles, {card} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
              f"time / cuBLAS (F.linear) at M = {', '.join(map(str, M_VALUES))}; geometric mean; bf16; "
              f"CUDA graph of {args.reps} calls", "",
              "| shape | N | K | config | " + " | ".join(f"M={m}" for m in M_VALUES) + " | geomean |",
              "|---|---|---|---|" + "---|" * (len(M_VALUES) + 1)]
    measured = {}
    started = time.perf_counter()
    for (n, k), label in sorted(shapes.items(), key=lambda item: item[1]):
        w = (torch.randn(n, k, device=device, generator=gen) / math.sqrt(k)).to(dtype)
        xs = {m: x_all[:m, :k].contiguous() for m in M_VALUES}
        ref = {m: graph_seconds(lambda m=m: F.linear(xs[m], w), args.reps) for m in M_VALUES}
        rule = rule_tile(n, k, dtype)
        results: dict[TileConfig, dict[int, float]] = {}

        def measure(configs: list[TileConfig]) -> None:
            for cfg in configs:
                ratios = {}
                for m in M_VALUES:
                    t = graph_seconds(lambda m=m, cfg=cfg: invariant_matmul(xs[m], w, None, cfg, split=False), args.reps)
                    if t is None:
                        break
                    ratios[m] = t / ref[m]
                if len(ratios) == len(M_VALUES):
                    results[cfg] = ratios

        def measure_split(configs: list[TileConfig]) -> None:
            """K-sliced configs: each M with the slices in one program and split across programs; the config
            splits up to the largest M of the run of smallest M where splitting was faster (split_max_m)."""
            for cfg in configs:
                times: dict[bool, dict[int, float]] = {False: {}, True: {}}
                for split in (False, True):
                    for m in M_VALUES:
                        t = graph_seconds(lambda m=m, cfg=cfg, split=split: invariant_matmul(xs[m], w, None, cfg, split=split),
                                          args.reps)
                        if t is None:
                            break
                        times[split][m] = t
                if any(len(times[split]) < len(M_VALUES) for split in times):
                    continue
                split_max_m = split_threshold(times[True], times[False])
                tuned = replace(cfg, split_max_m=split_max_m)
                results[tuned] = {m: min(times[True][m] if m <= split_max_m else times[False][m], times[False][m])
                                  / ref[m] for m in M_VALUES}

        def geomean(cfg: TileConfig) -> float:
            return math.exp(statistics.fmean(math.log(r) for r in results[cfg].values()))

        measure([rule] + [c for c in candidates() if c != rule])
        # Then K slices (split-K at small M, batch_invariant.py) on the three best tilings.
        measure_split([replace(cfg, k_slices=s) for cfg in sorted(results, key=geomean)[:3] for s in K_SLICES
                       if slice_bounds(k, replace(cfg, k_slices=s))[1] == s])

        best = min(results, key=geomean)

        def tune_large(small: TileConfig) -> TileConfig:
            """`small` with larger output tiles from the M where they were faster (every larger M too), among
            those that gave every row at every M of LARGE_M the small tiles' bits; else `small`."""
            small_times = {m: results[small][m] * ref[m] for m in LARGE_M}

            def seconds(tiles: RowTiles, m: int) -> float | None:
                forced = replace(small, large_min_m=1, large=tiles)  # the large tiles at every M
                return graph_seconds(lambda: invariant_matmul(xs[m], w, None, forced, split=False), args.reps)

            # every candidate at M = 320 (the verify-heavy batch-64 step), the three fastest at every LARGE_M
            first = {tiles: seconds(tiles, 320) for tiles in large_candidates(small, tma=tma_supported(device))}
            fastest = sorted((t for t, s in first.items() if s is not None and s < small_times[320]), key=first.get)[:3]
            best_large, best_times = None, None
            for tiles in fastest:
                forced = replace(small, large_min_m=1, large=tiles)
                times = {}
                for m in LARGE_M:
                    t = graph_seconds(lambda m=m: invariant_matmul(xs[m], w, None, forced, split=False), args.reps)
                    if t is None:
                        break
                    times[m] = t
                if len(times) < len(LARGE_M) or large_threshold(times, small_times) is None:
                    continue
                if best_times is not None and sum(times.values()) >= sum(best_times.values()):
                    continue
                if not all(torch.equal(invariant_matmul(xs[m], w, None, forced, split=False),
                                       invariant_matmul(xs[m], w, None, small, split=False)) for m in LARGE_M):
                    print(f"    {tiles}: other bits than the small tiles: not kept", file=sys.stderr)
                    continue
                best_large, best_times = tiles, times
            if best_large is None:
                return small
            tuned = replace(small, large_min_m=large_threshold(best_times, small_times), large=best_large)
            results[tuned] = {m: (best_times[m] / ref[m] if m >= tuned.large_min_m else results[small][m])
                              for m in M_VALUES}
            return tuned

        best = tune_large(best)
        entries[shape_key(n, k, dtype)] = best
        measured[shape_key(n, k, dtype)] = {"best": results[best], "rule": results[rule], "shape": label}
        for name, cfg in (("rule", rule), ("tuned", best)):
            desc = (f"{name}: {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
                    f"k/{cfg.k_slices}" + (f" split<={cfg.split_max_m}" if cfg.k_slices > 1 else "")
                    + (f"; M>={cfg.large_min_m}: {cfg.large.block_m}x{cfg.large.block_n} w{cfg.large.num_warps} "
                       f"s{cfg.large.num_stages}{' TMA' if cfg.large.tma else ''}" if cfg.large is not None else ""))
            report.append(f"| {label} | {n} | {k} | {desc} | "
                          + " | ".join(f"{results[cfg][m]:.2f}" for m in M_VALUES) + f" | {geomean(cfg):.2f} |")
        print(report[-2], report[-1], f"({time.perf_counter() - started:.0f} s)", sep="\n", flush=True)
        del w
        write_table(out_path, card, entries, measured, args.models)  # after every shape: a cut run keeps its work
        if args.report:
            args.report.write_text("\n".join(report) + "\n")
    text = "\n".join(report) + "\n"
    if args.report:
        args.report.write_text(text)
    print(text)
    print(f"table written to {out_path}")


if __name__ == "__main__":
    main()

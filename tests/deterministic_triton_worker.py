"""Worker of tests/test_deterministic_triton.py: the batch-invariant Triton kernels (models/batch_invariant.py,
models/triton_invariant_attention.py) run on CPU under Triton's interpreter, in a subprocess started by
tests/triton_interpreter.py with TRITON_INTERPRET=1. Each check returns plain JSON: how many rows differ
in their bits between layouts (must be 0) and the error against a float64 / reference result."""

from __future__ import annotations

import json

import torch

from tests.triton_interpreter import patch_interpreter


def gemm_check(case: dict) -> dict:
    """Row i of x @ W^T + b for M in case["ms"] against M = 1 (bits) and float64 (error); with K slices,
    the M = 1 rows in one program per tile and every batch with the slices split across programs too."""
    import dataclasses

    from dynaspec.models.batch_invariant import TileConfig, invariant_matmul
    from dynaspec.models.gemm_tiles import rule_tile

    dtype, device = getattr(torch, case["dtype"]), case.get("device", "cpu")
    gen = torch.Generator().manual_seed(case["seed"])
    n, k, m_max = case["n"], case["k"], max(case["ms"])
    x = torch.randn(m_max, k, generator=gen).to(device, dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype)
    # small tiles under the interpreter; on a GPU the rule (gemm_tiles.rule_tile)
    slices = case.get("slices", 1)
    if device == "cpu":
        config = TileConfig(block_m=16, block_n=16, block_k=16, num_stages=1, k_slices=slices)
    else:  # the rule's tiles (gemm_tiles.rule_tile) with the case's slices
        config = dataclasses.replace(rule_tile(n, k, dtype), k_slices=slices)
    if "large" in case:  # larger output tiles from large["min_m"] rows on (TileConfig.large)
        from dynaspec.models.gemm_tiles import RowTiles

        large = dict(case["large"])
        config = dataclasses.replace(config, large_min_m=large.pop("min_m"), large=RowTiles(**large))
    singles = torch.cat([invariant_matmul(x[i:i + 1], w, b, config, split=False) for i in range(m_max)])  # (M, N)
    differing = 0
    for m in case["ms"]:
        for split in ([False, True] if slices > 1 else [False]):
            differing += int((invariant_matmul(x[:m], w, b, config, split=split) != singles[:m]).any(dim=1).sum())
            shuffled = torch.randperm(m, generator=gen).to(device)  # the same rows in another place of the batch
            out = invariant_matmul(x[:m][shuffled], w, b, config, split=split)
            differing += int((out != singles[:m][shuffled]).any(dim=1).sum())
    ref = x.double() @ w.double().T + b.double()
    rel_err = float((singles.double() - ref).norm() / ref.norm())
    return {"differing_rows": differing, "rel_err": rel_err}


def _paged_case(lengths: list[int], heads: int, kv_heads: int, head_dim: int, block_size: int, dtype, seed: int):
    """K/V of len(lengths) sequences in a shuffled NaN-poisoned paged cache, and one query per position."""
    gen = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // block_size) for n in lengths]
    num_blocks = sum(per_seq) + 2
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, offset = [], 0
    for count in per_seq:
        tables.append(perm[offset:offset + count])
        offset += count
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    queries = []
    for n, table in zip(lengths, tables):
        kv = torch.randn(2, n, kv_heads, head_dim, generator=gen).to(dtype)
        for pos in range(n):
            cache[:, table[pos // block_size], pos % block_size] = kv[:, pos]
        queries.append(torch.randn(n, heads, head_dim, generator=gen).to(dtype))
    return cache, tables, queries


def attention_check(case: dict) -> dict:
    """Rows of sequence 0 computed in decode (batch 1 and with other sequences), verify (1 + k rows),
    prefill chunks, with the serial and the parallel split fold: bits against batch-1 decode."""
    from dynaspec.models import triton_invariant_attention as tia
    from dynaspec.models.attention import reference_paged_attention
    from dynaspec.models.attention_metadata import AttentionMetadata

    if case.get("device", "cpu") == "cpu":
        tia.BLOCK_N, tia.SPLIT_TILES = 16, 2  # 32-key splits: several per sequence at interpreter sizes
    dtype, device = getattr(torch, case["dtype"]), case.get("device", "cpu")
    heads, kv_heads, head_dim, block_size = case["heads"], case["kv_heads"], case["head_dim"], 4
    lengths = case["lengths"]
    cache, tables, queries = _paged_case(lengths, heads, kv_heads, head_dim, block_size, dtype, case["seed"])
    cache, queries = cache.to(device), [q.to(device) for q in queries]
    scale, window = head_dim ** -0.5, case["window"]

    def run(step: list[tuple[int, int, int]], parallel: bool | None = None) -> dict:
        """step: (sequence, first position, q_len) per sequence -> {(sequence, position): output row}."""
        meta = AttentionMetadata.build([n for _, _, n in step], [p + n for _, p, n in step],
                                       [tables[s] for s, _, _ in step], block_size, device)
        q = torch.cat([queries[s][p:p + n] for s, p, n in step])
        out = tia.invariant_attention(q, cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
                                      meta.max_seq_len, scale, window, parallel=parallel)
        keys = [(s, p + i) for s, p, n in step for i in range(n)]
        return dict(zip(keys, out)), (q, meta, out)

    positions = case["positions"]
    reference = {}
    for p in positions:
        reference.update(run([(0, p, 1)], parallel=False)[0])
    layouts = []
    for p in positions:
        layouts.append(run([(0, p, 1)], parallel=True)[0])  # decode, parallel split fold
        others = [(s, min(p, lengths[s] - 1), 1) for s in range(1, len(lengths))]
        layouts.append(run(others[:1] + [(0, p, 1)] + others[1:])[0])  # decode among other sequences
        for k in (1, 3, 6):  # verify: p is row j of 1 + k rows
            first = max(0, min(p - k // 2, lengths[0] - 1 - k))
            if first <= p <= first + k:
                layouts.append(run([(0, first, 1 + k)] + others)[0])
    for chunk in (5, 16, lengths[0]):  # prefill chunks
        for first in range(0, lengths[0], chunk):
            for parallel in (False, True):
                layouts.append(run([(0, first, min(chunk, lengths[0] - first))], parallel=parallel)[0])
    differing = compared = 0
    for rows in layouts:
        for key, row in rows.items():
            if key in reference:
                compared += 1
                differing += int(not torch.equal(row, reference[key]))
    # Accuracy: the whole sequence in one prefill step against the SDPA reference path.
    _, (q, meta, out) = run([(0, 0, lengths[0])])
    ref = reference_paged_attention(q.float(), cache.float(), meta, scale, window)
    rel_err = float((out.double() - ref.double()).norm() / ref.double().norm())
    # Rows past the last sequence (a CUDA graph's padding): zeros, the other rows' bits unchanged.
    padded = tia.invariant_attention(torch.cat([q, q[:2]]), cache, meta.query_start_loc, meta.seq_lens,
                                     meta.block_tables, meta.max_seq_len, scale, window)
    padding_ok = torch.equal(padded[:len(q)], out) and bool((padded[len(q):] == 0).all())
    return {"differing_rows": differing, "compared_rows": compared, "rel_err": rel_err,
            "finite": bool(torch.isfinite(out).all()), "padding_ok": padding_ok}


def worker(cases_json: str) -> None:
    """Entry point (TRITON_INTERPRET=1 already set): run each case, print a JSON list."""
    patch_interpreter()
    checks = {"gemm": gemm_check, "attention": attention_check}
    print(json.dumps([checks[case["kind"]](case) for case in json.loads(cases_json)]))

"""The batch-invariant GEMM's tile tables (models/gemm_tiles.py): one configuration per (dtype, N, K) and
card, never per M; a tuned entry wins over the rule, a shape without one gets the rule; the shipped tables
parse and hold configurations the kernel accepts; a malformed table names itself."""

from __future__ import annotations

import json

from dataclasses import replace

import pytest
import torch

from dynaspec.models.decode_kernels import DecodeKernels, decode_kernels_for
from dynaspec.models.gemm_tiles import (
    TABLES_DIR, GemmTiles, RowTiles, TileConfig, parse_tiles, rule_tile, shape_key, table_path, tiles_for,
)


def test_a_tuned_entry_wins_and_other_shapes_keep_the_rule():
    tuned = TileConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=5)
    tiles = GemmTiles("Some GPU", ((shape_key(4096, 14336, torch.bfloat16), tuned),))
    assert tiles.lookup(4096, 14336, torch.bfloat16) == tuned
    assert tiles.lookup(4096, 14336, torch.float16) == rule_tile(4096, 14336, torch.float16)
    assert tiles.lookup(4096, 4096, torch.bfloat16) == rule_tile(4096, 4096, torch.bfloat16)
    assert GemmTiles().lookup(4096, 14336, torch.bfloat16) == rule_tile(4096, 14336, torch.bfloat16)


def test_table_round_trip_and_file_name():
    tiles = GemmTiles("NVIDIA H100 80GB HBM3", ((shape_key(2048, 1536, torch.bfloat16), TileConfig(16, 32, 256)),))
    assert parse_tiles(tiles.to_json(command="x", date="2026-12-05"), "t.json") == tiles
    assert hash(tiles) == hash(parse_tiles(tiles.to_json(), "t.json"))  # DecodeKernels stays hashable
    assert table_path("NVIDIA H100 80GB HBM3").name == "NVIDIA_H100_80GB_HBM3.json"
    assert table_path("NVIDIA H200").name == "NVIDIA_H200.json"


def test_large_tiles_take_over_from_their_row_count_and_keep_the_k_slices():
    small = TileConfig(block_m=64, block_n=64, block_k=256, k_slices=2, split_max_m=16, large_min_m=320,
                       large=RowTiles(block_m=128, block_n=128, num_warps=8, num_stages=2, block_k=128))
    assert small.for_rows(1) is small and small.for_rows(319) is small
    big = small.for_rows(320)
    assert (big.block_m, big.block_n, big.block_k, big.num_warps, big.num_stages) == (128, 128, 128, 8, 2)
    assert (big.k_slices, big.split_max_m, big.large) == (2, 16, None)  # the same K slices
    assert small.for_rows(2048) == big
    tiles = GemmTiles("Some GPU", ((shape_key(4096, 14336, torch.bfloat16), small),))
    assert parse_tiles(tiles.to_json(), "t.json") == tiles  # the large tiles survive the file
    with pytest.raises(ValueError, match="must divide block_k 256"):
        TileConfig(64, 64, 256, large_min_m=80, large=RowTiles(128, 128, block_k=96))


def test_the_tuner_takes_large_tiles_from_where_they_win_to_the_largest_m():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "tune_invariant_gemm.py"
    spec = importlib.util.spec_from_file_location("tune_invariant_gemm", path)
    tuner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuner)
    small = {80: 1.0, 320: 1.0, 2048: 1.0}
    assert tuner.large_threshold({80: 1.1, 320: 0.9, 2048: 0.8}, small) == 320
    assert tuner.large_threshold({80: 0.9, 320: 1.1, 2048: 0.8}, small) == 2048  # from the top, unbroken
    assert tuner.large_threshold({80: 0.9, 320: 0.9, 2048: 1.2}, small) is None
    candidates = tuner.large_candidates(TileConfig(64, 64, 256))
    assert candidates and all(256 % (c.block_k or 256) == 0 and (c.block_k or 256) >= 32 for c in candidates)
    assert all(stages_fit(c, 256) for c in candidates)
    assert not any(c.tma for c in candidates)
    with_tma = tuner.large_candidates(TileConfig(64, 64, 128), tma=True)
    tma = [c for c in with_tma if c.tma]
    assert tma and all((c.block_k or 128) <= 128 and stages_fit(c, 128) for c in with_tma)
    small_shape = RowTiles(64, 64, num_stages=0)  # the small tiles' own shape, through TMA
    assert small_shape in {replace(c, tma=False, num_stages=0) for c in tma}
    assert {replace(c, tma=False, num_stages=0) for c in tma} <= {replace(c, num_stages=0) for c in with_tma
                                                                   if not c.tma} | {small_shape}


def test_large_tiles_carry_their_tma_loads():
    small = TileConfig(64, 64, 128, k_slices=2, large_min_m=320, large=RowTiles(128, 128, num_warps=8, tma=True))
    assert not small.for_rows(319).tma and small.for_rows(320).tma
    tiles = GemmTiles("Some GPU", ((shape_key(4096, 4096, torch.bfloat16), small),))
    assert parse_tiles(tiles.to_json(), "t.json") == tiles


def stages_fit(tiles: RowTiles, small_block_k: int) -> bool:
    """The candidate's pipeline fits 200 KiB of shared memory (the tuner's bound)."""
    bk = tiles.block_k or small_block_k
    return tiles.num_stages * (tiles.block_m * bk + bk * tiles.block_n) * 2 <= 200 * 1024


@pytest.mark.parametrize("text, wrong", [
    ("{", "Expecting"),
    ('{"device": "x"}', "tiles"),
    ('{"device": "x", "tiles": {"bfloat16 N=1 K=2": {"block_m": 16}}}', "block_n"),
])
def test_a_malformed_table_names_its_file(text, wrong):
    with pytest.raises(ValueError, match="bad.json: not a GEMM tile table") as info:
        parse_tiles(text, "bad.json")
    assert wrong in str(info.value)


def test_cpu_kernels_carry_no_table():
    kernels = decode_kernels_for(torch.device("cpu"), True, deterministic=True)
    assert kernels == DecodeKernels(deterministic=True) and kernels.gemm_tiles == GemmTiles()
    assert tiles_for(torch.device("cpu")) == GemmTiles()


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("path", sorted(TABLES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_tables_parse_and_hold_valid_configs(path):
    tiles = parse_tiles(path.read_text(), str(path))
    assert table_path(tiles.device_name).name == path.name  # found for the card it names
    assert tiles.entries, path
    for key, cfg in tiles.entries:
        dtype_name, n, k = key.split()
        assert hasattr(torch, dtype_name) and n.startswith("N=") and k.startswith("K="), key
        assert cfg.block_m >= 16 and cfg.block_n >= 16 and cfg.block_k >= 16, (key, cfg)
        assert all(_pow2(v) for v in (cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps)), (key, cfg)
    assert json.loads(path.read_text())["command"].startswith("python scripts/tune_invariant_gemm.py")


def test_the_tuner_splits_up_to_the_last_m_of_the_run_where_splitting_won():
    """scripts/tune_invariant_gemm.py's split_max_m: the largest M of the leading run (ascending M) where
    the split-K layout was faster; 0 when it lost at the smallest M."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "tune_invariant_gemm.py"
    spec = importlib.util.spec_from_file_location("tune_invariant_gemm", path)
    tuner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuner)
    unsplit = {1: 1.0, 5: 1.0, 16: 1.0, 64: 1.0, 320: 1.0, 2048: 1.0}
    assert tuner.split_threshold({1: 0.5, 5: 0.6, 16: 0.9, 64: 1.1, 320: 0.9, 2048: 2.0}, unsplit) == 16
    assert tuner.split_threshold({1: 0.5, 5: 0.6, 16: 0.9, 64: 0.9, 320: 0.9, 2048: 0.9}, unsplit) == 2048
    assert tuner.split_threshold({1: 1.0, 5: 0.6, 16: 0.9, 64: 0.9, 320: 0.9, 2048: 0.9}, unsplit) == 0

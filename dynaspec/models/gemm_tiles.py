"""Tile configurations of the batch-invariant GEMM (batch_invariant.py): the built-in rule, and tables tuned
per GPU for the weight shapes of the models we measure (`scripts/tune_invariant_gemm.py` writes them).

Batch invariance only needs the configuration to be a function of the weight (N, K), its dtype and the
card, never of M (the step's rows): so a table keyed by (dtype, N, K) and chosen once per device keeps
every row's bits independent of its step, as the rule does. The tables are tuned over the M a serving
engine meets (decode, verify, prefill rows), the way vLLM ships per-device tuned configurations of its
fused MoE kernel (`fused_moe/configs/E=..,N=..,device_name=....json`). A shape without an entry uses
the rule. This module holds no Triton code, so CPU-only installs import it freely.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

TABLES_DIR = Path(__file__).with_name("gemm_tile_tables")


@dataclass(frozen=True)
class RowTiles:
    """What a TileConfig may change from `large_min_m` rows on: the output tile, its warps and stages, and
    block_k to a divisor of the small tiles' (None: theirs; the same K slices, the MMAs' k steps over each
    slice in the same order, in shorter chunks), so every output element sums the same products in the same
    order as far as the code says; the tuner checks the bits on the card."""

    block_m: int
    block_n: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    block_k: int | None = None
    tma: bool = False  # load the tiles with TMA (batch_invariant_tma.py; Hopper and newer, without split-K)


@dataclass(frozen=True)
class TileConfig:
    """One GEMM configuration; its walk over K (block_k, k_slices) must be chosen without looking at M."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    k_slices: int = 1  # K cut into this many fixed slices, summed in order (batch_invariant.py: split-K at small M)
    # Largest M whose slices run in programs of their own (split-K); None: while the output tiles alone are
    # fewer than the multiprocessors. Which M splits never changes a row's bits, only its speed.
    split_max_m: int | None = None
    # From this many rows on, the output tiles of `large` (RowTiles): larger tiles for prefill and verify-heavy
    # steps. Kept by scripts/tune_invariant_gemm.py only where every row's bits matched the small tiles' on
    # the card (the MMA instruction's width follows the tile; its adds over K must not). None: one layout.
    large_min_m: int | None = None
    large: RowTiles | None = None
    tma: bool = False  # set by for_rows from the large tiles: their loads through TMA where the card has it

    def for_rows(self, m: int) -> TileConfig:
        """The configuration a GEMM of m rows runs: this one, or its large tiles from large_min_m rows on."""
        if self.large is None or self.large_min_m is None or m < self.large_min_m:
            return self
        large = self.large
        return replace(self, block_m=large.block_m, block_n=large.block_n, block_k=large.block_k or self.block_k,
                       group_m=large.group_m, num_warps=large.num_warps, num_stages=large.num_stages,
                       large_min_m=None, large=None, tma=large.tma)

    def __post_init__(self) -> None:
        if self.large is not None and self.large.block_k is not None and self.block_k % self.large.block_k:
            raise ValueError(f"large tiles' block_k {self.large.block_k} must divide block_k {self.block_k}")


def rule_tile(n: int, k: int, dtype: torch.dtype) -> TileConfig:
    """The built-in configuration of an (N, K) weight of `dtype`, where no tuned table has one: wide N gets
    wider tiles, narrower N more programs (no split-K)."""
    if dtype == torch.float32:
        return TileConfig(block_m=32, block_n=32, block_k=32, num_stages=2)
    return TileConfig(block_m=64, block_n=64 if n >= 8192 else 32, block_k=64, num_stages=4)


def shape_key(n: int, k: int, dtype: torch.dtype) -> str:
    """A table's key of an (N, K) weight: 'bfloat16 N=4096 K=14336'."""
    return f"{str(dtype).removeprefix('torch.')} N={n} K={k}"


def table_path(device_name: str, tables_dir: Path = TABLES_DIR) -> Path:
    """Where the table of a card lives: its name with every run of other characters than letters and
    digits as one '_' ('NVIDIA H100 80GB HBM3' -> NVIDIA_H100_80GB_HBM3.json)."""
    return tables_dir / (re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ".json")


@dataclass(frozen=True)
class GemmTiles:
    """The tuned configurations of one card ((shape key, config) pairs; hashable, as DecodeKernels is)."""

    device_name: str = ""
    entries: tuple[tuple[str, TileConfig], ...] = field(default=())

    @cached_property
    def _by_key(self) -> dict[str, TileConfig]:
        return dict(self.entries)

    @cached_property
    def _resolved(self) -> dict[tuple[int, int, torch.dtype], TileConfig]:
        return {}  # (N, K, dtype) -> config: every projection of an eager forward asks once per layer

    def lookup(self, n: int, k: int, dtype: torch.dtype) -> TileConfig:
        """The tuned configuration of this shape, else the rule's."""
        cfg = self._resolved.get((n, k, dtype))
        if cfg is None:
            cfg = self._resolved[(n, k, dtype)] = self._by_key.get(shape_key(n, k, dtype)) or rule_tile(n, k, dtype)
        return cfg

    def to_json(self, **extra) -> str:
        """The table file's text (`extra`: what produced it, e.g. the command and the measurements)."""
        body = {"device": self.device_name, **extra, "tiles": {key: asdict(cfg) for key, cfg in self.entries}}
        return json.dumps(body, indent=1) + "\n"


def parse_tiles(text: str, source: str) -> GemmTiles:
    """A table file's text -> GemmTiles; a malformed file names itself and what is wrong."""
    try:
        body = json.loads(text)
        entries = tuple((str(key), _config(cfg)) for key, cfg in body["tiles"].items())
        return GemmTiles(str(body["device"]), entries)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: not a GEMM tile table ({{'device': ..., 'tiles': {{'bfloat16 N=.. K=..': "
                         f"{{'block_m': .., 'block_n': .., 'block_k': .., ...}}}}}}): {exc}") from exc


def _config(fields: dict) -> TileConfig:
    """A table entry's fields -> TileConfig (its large tiles, when present, as RowTiles)."""
    fields = dict(fields)
    large = fields.pop("large", None)
    return TileConfig(**fields, large=None if large is None else RowTiles(**large))


def tiles_for(device: torch.device, tables_dir: Path = TABLES_DIR) -> GemmTiles:
    """The table shipped for this CUDA device's card (empty, i.e. the rule everywhere, for another card or
    a CPU)."""
    if device.type != "cuda":
        return GemmTiles()
    name = torch.cuda.get_device_name(device)
    path = table_path(name, tables_dir)
    if not path.is_file():
        return GemmTiles(name)
    return parse_tiles(path.read_text(), str(path))

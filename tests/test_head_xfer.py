"""scripts/head_xfer.sh: a trained head goes back from the GPU machine in parts and to a later session in
chunks: export (bf16 weights, parts, sha256), pack (parts -> chunks), unpack (chunks -> head directory)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "head_xfer.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)


def _head(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    # ~33 MB of float32: more than two 16,000,000-byte parts once bf16
    weights = {"layer.weight": torch.randn(4096, 2048, generator=gen), "draft_to_target": torch.arange(7) * 3}
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "Eagle3Head", "hidden_size": 2048}))
    return weights


def test_a_head_goes_back_in_parts_and_arrives_in_chunks_as_bf16(tmp_path):
    weights = _head(tmp_path / "head")
    exported = _run("export", str(tmp_path / "head"), str(tmp_path / "parts"))
    assert exported.returncode == 0, exported.stderr
    parts = sorted((tmp_path / "parts").glob("p_*"))
    assert len(parts) == 2 and all(p.stat().st_size <= 16_000_000 for p in parts)
    packed = _run("pack", str(tmp_path / "parts"), str(tmp_path / "xfer"))
    assert packed.returncode == 0, packed.stderr
    assert sorted(p.name for p in (tmp_path / "xfer").iterdir()) == ["00"]  # one chunk of at most 56 MiB
    unpacked = _run("unpack", str(tmp_path / "xfer"), str(tmp_path / "arrived"))
    assert unpacked.returncode == 0 and "sha256 ok" in unpacked.stdout, unpacked.stderr
    arrived = load_file(str(tmp_path / "arrived" / "model.safetensors"))
    assert arrived["layer.weight"].dtype == torch.bfloat16
    assert torch.equal(arrived["layer.weight"], weights["layer.weight"].to(torch.bfloat16))
    assert torch.equal(arrived["draft_to_target"], weights["draft_to_target"])  # integers untouched
    assert (tmp_path / "arrived" / "config.json").read_text() == (tmp_path / "head" / "config.json").read_text()


def test_a_damaged_part_or_chunk_is_refused(tmp_path):
    _head(tmp_path / "head")
    assert _run("export", str(tmp_path / "head"), str(tmp_path / "parts")).returncode == 0
    assert _run("pack", str(tmp_path / "parts"), str(tmp_path / "xfer")).returncode == 0
    chunk = tmp_path / "xfer" / "00" / "chunk_00"
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"x")
    damaged = _run("unpack", str(tmp_path / "xfer"), str(tmp_path / "arrived"))
    assert damaged.returncode == 1 and "does not match" in damaged.stderr
    (tmp_path / "parts" / "p_01").write_bytes(b"short")
    refused = _run("pack", str(tmp_path / "parts"), str(tmp_path / "xfer2"))
    assert refused.returncode == 1 and "does not match" in refused.stderr
    assert _run("unknown", "a", "b").returncode == 2

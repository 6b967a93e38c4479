"""Carrying the Qwen2.5-Coder pair to the GPU: the tracked manifest and scripts/qwen_join.sh.

The manifest must agree with the zoo's recorded sizes and sha256 (what prepare_qwen_xfer.sh checks the
installed parts against); qwen_join.sh is run on a tiny made-up pair split into 4-byte chunks.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynaspec.models import zoo

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "scripts" / "qwen_xfer_manifest.txt"
JOIN = ROOT / "scripts" / "qwen_join.sh"
sys.path.insert(0, str(ROOT / "scripts"))
from qwen_pair_parts import PAIR, manifest_files  # noqa: E402


def test_manifest_matches_the_zoo_and_the_chunking():
    files = manifest_files(MANIFEST)
    assert [name for name, _, _ in files] == ["qwen-0.5b.gguf", "qwen-1.5b.gguf"]
    for (_, size, sha256), zoo_name in zip(files, PAIR):
        model = zoo.get_zoo_model(zoo_name)
        assert (size, sha256) == (model.size, model.sha256)
    (chunks_line,) = [line.split() for line in MANIFEST.read_text().splitlines() if line.startswith("chunks ")]
    chunks, chunk_bytes = int(chunks_line[1]), int(chunks_line[2])
    assert chunk_bytes == 56 << 20  # a call carries 64 MiB with the working tree (prepare_qwen_xfer.sh)
    assert chunks == math.ceil(sum(size for _, size, _ in files) / chunk_bytes) == 28


def test_malformed_manifest_line_is_an_error(tmp_path):
    bad = tmp_path / "m.txt"
    bad.write_text("file qwen-0.5b.gguf 12\n")
    with pytest.raises(ValueError, match="expected 'file NAME BYTES SHA256'"):
        manifest_files(bad)


def _tiny_pair(tmp_path: Path, chunk_bytes: int = 4):
    """Two small 'GGUFs', their manifest, and their stream split into XFER/NN/chunk_NN like the real one."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    first, second = b"abcdefg", b"hijklmnopq"
    manifest = tmp_path / "manifest.txt"
    stream = first + second
    chunks = math.ceil(len(stream) / chunk_bytes)
    manifest.write_text(
        "# test pair\n"
        f"file qwen-0.5b.gguf {len(first)} {hashlib.sha256(first).hexdigest()}\n"
        f"file qwen-1.5b.gguf {len(second)} {hashlib.sha256(second).hexdigest()}\n"
        f"chunks {chunks} {chunk_bytes}\n"
    )
    xfer = tmp_path / "xfer"
    for n in range(chunks):
        (xfer / f"{n:02d}").mkdir(parents=True)
        (xfer / f"{n:02d}" / f"chunk_{n:02d}").write_bytes(stream[n * chunk_bytes:(n + 1) * chunk_bytes])
    return first, second, manifest, xfer


def _join(xfer: Path, dest: Path, manifest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(JOIN), str(xfer), str(dest), str(manifest)], capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils")
def test_join_splits_the_stream_back_and_checks_sha256(tmp_path):
    first, second, manifest, xfer = _tiny_pair(tmp_path)
    dest = tmp_path / "dest"
    done = _join(xfer, dest, manifest)
    assert done.returncode == 0, done.stderr
    assert (dest / "qwen-0.5b.gguf").read_bytes() == first and (dest / "qwen-1.5b.gguf").read_bytes() == second
    assert not (dest / "qwen-pair.bin").exists()
    # A rerun (warm machine) needs no chunks once both files are verified.
    shutil.rmtree(xfer)
    again = _join(xfer, dest, manifest)
    assert again.returncode == 0 and "already in" in again.stdout


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils")
def test_join_names_missing_chunks_and_refuses_wrong_bytes(tmp_path):
    _, _, manifest, xfer = _tiny_pair(tmp_path)
    shutil.rmtree(xfer / "01")
    (xfer / "03" / "chunk_03").write_bytes(b"xy")  # short
    missing = _join(xfer, tmp_path / "dest", manifest)
    assert missing.returncode == 1 and "2 of 5 chunks missing or short" in missing.stderr
    assert "01 03" in missing.stderr
    _, _, manifest, xfer = _tiny_pair(tmp_path / "swapped")
    a, b = xfer / "00" / "chunk_00", xfer / "01" / "chunk_01"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)  # same sizes, wrong order: only the sha256 can tell
    wrong = _join(xfer, tmp_path / "dest2", manifest)
    assert wrong.returncode == 1 and "does not match" in wrong.stderr

"""Convert a GGUF file once into a plain HF checkpoint directory (safetensors), atomically.

transformers reads GGUF (llama.cpp's format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)
with the `gguf` package and dequantizes every tensor to a dense float weight
(`from_pretrained(dir, gguf_file=...)`, which needs `accelerate`). The result is written as an ordinary
HF directory: config.json, model.safetensors (the dequantised dtype, float32 for the zoo's files),
generation_config.json, the tokenizer files (with the chat template the GGUF carries), and a marker
file recording the source's sha256. The directory is assembled under a temporary name next to its final
place and renamed into place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER_NAME = "dynaspec-source.json"
MARKER_FORMAT = 1

ProgressFn = Callable[[str, float, float], None]


def read_marker(cache_dir: Path) -> dict | None:
    """The marker of a finished conversion in `cache_dir`, or None when there is no complete cache."""
    marker = cache_dir / MARKER_NAME
    if not marker.is_file() or not (cache_dir / "config.json").is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("format") != MARKER_FORMAT or not (cache_dir / data.get("weights", "")).is_file():
        return None
    return data


def is_converted(cache_dir: Path, source_sha256: str) -> bool:
    """Whether `cache_dir` holds a complete conversion of the GGUF whose sha256 is `source_sha256`."""
    marker = read_marker(cache_dir)
    return marker is not None and marker.get("source_sha256") == source_sha256


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    source_sha256: str,
    source_label: str,
    progress: ProgressFn | None = None,
) -> Path:
    """Dequantize `gguf_path` into the HF directory `out_dir` (replaced atomically); return `out_dir`.

    `source_sha256` and `source_label` are recorded in the marker; `is_converted(out_dir, sha)` is True
    afterwards. Raises RuntimeError when transformers cannot read the file.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _convert_into(Path(gguf_path), tmp_dir, progress)
        marker = {
            "format": MARKER_FORMAT,
            "source_sha256": source_sha256,
            "source": source_label,
            "weights": "model.safetensors",
        }
        (tmp_dir / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        for path in (tmp_dir, *tmp_dir.iterdir()):  # mkdtemp / save_file create owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        _replace_dir(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _convert_into(gguf_path: Path, out_dir: Path, progress: ProgressFn | None) -> None:
    """Write config, safetensors weights, generation config and tokenizer of `gguf_path` into `out_dir`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = 4.0
    label = f"Converting {gguf_path.name}"
    if progress:
        progress(f"{label}: dequantizing", 0.0, steps)
    kwargs = {"gguf_file": gguf_path.name}
    try:  # transformers >= 5.2x keeps GGUF blocks packed unless told to dequantize
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:  # a truncated / foreign file fails deep inside the reader with struct or key errors
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kwargs)
        if progress:
            progress(f"{label}: tokenizer", 1.0, steps)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:
        raise RuntimeError(
            f"transformers could not read GGUF file {gguf_path} ({type(exc).__name__}: {exc}); conversion needs "
            "the `gguf` and `accelerate` packages and an architecture transformers supports in GGUF"
        ) from exc

    if progress:
        progress(f"{label}: writing safetensors", 2.0, steps)
    config = model.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded config refuses to be saved otherwise
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    # Tied lm_head shares the embedding's storage: store it once, as HF checkpoints do.
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if not (name == "lm_head.weight" and config.tie_word_embeddings)
    }
    if any(not t.is_floating_point() and t.dtype != torch.bool for t in state.values()):
        packed = sorted(n for n, t in state.items() if not t.is_floating_point())[:4]
        raise RuntimeError(f"GGUF weights were not dequantized (packed tensors: {packed})")
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del model, state

    if progress:
        progress(f"{label}: tokenizer files", 3.0, steps)
    tokenizer.save_pretrained(out_dir)
    if progress:
        progress(f"{label}: done", steps, steps)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing an incomplete or stale `dst`."""
    if dst.exists():
        stale = dst.with_name(f".{dst.name}.stale-{os.getpid()}")
        os.replace(dst, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(src, dst)

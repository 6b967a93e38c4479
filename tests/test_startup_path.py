"""What start-up of a converted model (the default `dynaspec generate`) leaves out, and that leaving it out
changes nothing: the model-specific transformers config classes (their import pulls in
transformers.activations and torch.distributed.tensor), torch's Python reference ops (sympy), SiLU
through transformers' ACT2FN, and concatenating uninitialised q/k/v and gate/up weights (module
conversions convert the fused tensors themselves)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.activations import ACT2FN

from dynaspec.models.gguf_convert import MARKER_NAME
from dynaspec.models.llama import FusedProjections, activation
from dynaspec.models.loader import dir_config, empty_model, load_model, specific_config
from dynaspec.models.registry import resolve_model_class
from tests.test_model_parity import PagedHarness, random_tokens
from tests.tiny_models import (
    TINY_ARCHS, make_tiny_checkpoint, make_tiny_config, make_tiny_gemma3_checkpoint, save_tiny_tokenizer)

ARCHS = [*TINY_ARCHS, "gemma3"]


def converted_dir(tmp_path, arch: str):
    """A tiny checkpoint written by transformers' save_pretrained, with the marker a dynaspec conversion
    leaves (what zoo.prepare and GGUF conversion produce), and a copy of it without the marker."""
    ckpt = make_tiny_gemma3_checkpoint(tmp_path) if arch == "gemma3" else make_tiny_checkpoint(tmp_path, arch)
    plain = shutil.copytree(ckpt, tmp_path / "plain")
    (ckpt / MARKER_NAME).write_text(json.dumps({"format": 1, "source_sha256": "0" * 64, "weights": "model.safetensors"}))
    return ckpt, plain


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_directory_config_has_every_field_autoconfig_gives(tmp_path, arch):
    ckpt, _ = converted_dir(tmp_path, arch)
    light, full = dir_config(ckpt), AutoConfig.from_pretrained(str(ckpt))
    assert type(light) is PretrainedConfig and type(full) is not PretrainedConfig
    # use_cache belongs to HF's generate(), which the base class leaves to the model-specific one
    differ = {k: (getattr(light, k, "<missing>"), getattr(full, k)) for k in full.to_dict()
              if k != "use_cache" and getattr(light, k, "<missing>") != getattr(full, k)}
    assert not differ
    assert light.model_type == full.model_type
    upgraded = specific_config(light)
    assert type(upgraded) is type(full) and upgraded.to_dict() == full.to_dict()
    assert specific_config(full) is full


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_directory_loads_the_model_autoconfig_would(tmp_path, arch):
    ckpt, plain = converted_dir(tmp_path, arch)
    light, full = load_model(str(ckpt), torch.float32, "cpu"), load_model(str(plain), torch.float32, "cpu")
    assert type(light.hf_config) is PretrainedConfig and type(full.hf_config) is not PretrainedConfig
    assert repr(light.model) == repr(full.model)
    ours, theirs = light.model.state_dict(), full.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    for a, b in zip(light.model.buffers(), full.model.buffers()):  # RoPE tables (not in the state dict)
        assert torch.equal(a, b)
    tokens = random_tokens(21, seed=5)  # longer than Gemma's 5-position sliding window
    (ours_logits,) = PagedHarness(light.model).step([("a", tokens, 0)])
    (theirs_logits,) = PagedHarness(full.model).step([("a", tokens, 0)])
    assert torch.equal(ours_logits, theirs_logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # Qwen2: AutoTokenizer overrides the saved class by model type
def test_converted_directory_tokenizer_is_autotokenizers(tmp_path, arch):
    ckpt, _ = converted_dir(tmp_path, arch)
    save_tiny_tokenizer(ckpt)
    ours, theirs = load_model(str(ckpt), torch.float32, "cpu").tokenizer, AutoTokenizer.from_pretrained(str(ckpt))
    assert type(ours) is type(theirs)
    text = "w3 w4 w511 nope w7"
    assert ours(text).input_ids == theirs(text).input_ids and ours.decode([1, 5, 2]) == theirs.decode([1, 5, 2])
    assert ours.special_tokens_map == theirs.special_tokens_map


@pytest.mark.parametrize("name", ["silu", "gelu_pytorch_tanh", "gelu"])
def test_activation_computes_what_transformers_act2fn_does(name):
    x = torch.randn(4, 33, generator=torch.Generator().manual_seed(3)) * 4
    assert torch.equal(activation(name)(x), ACT2FN[name](x))


def test_loading_a_converted_model_imports_no_model_specific_transformers_code(tmp_path):
    """In a fresh interpreter: loading a converted directory (config, model, tokenizer) imports neither a
    model-specific transformers config (its import pulls in transformers.activations and
    torch.distributed.tensor) nor sympy (torch's Python reference ops on meta tensors import it)."""
    ckpt, _ = converted_dir(tmp_path, "llama")
    save_tiny_tokenizer(ckpt)
    code = (
        "import sys, torch\n"
        "from dynaspec.models.loader import load_model\n"
        f"loaded = load_model({str(ckpt)!r}, torch.float32, 'cpu')\n"
        "assert loaded.tokenizer is not None\n"
        "heavy = ['transformers.activations', 'transformers.models.llama', 'torch.distributed.tensor', 'sympy']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def assert_fused(model, dtype):
    """Every q/k/v and gate/up parameter is its rows of its module's fused weight (and bias), in HF order."""
    modules = [m for m in model.modules() if isinstance(m, FusedProjections)]
    assert modules
    for module in modules:
        linears = [getattr(module, n) for n in module.fused_names]
        assert module._member_ptrs() == module._fused_ptrs and module._fused_weight.dtype == dtype
        assert torch.equal(module._fused_weight, torch.cat([lin.weight for lin in linears]))
        for lin in linears:
            assert lin.weight.untyped_storage().data_ptr() == module._fused_weight.untyped_storage().data_ptr()
        if module._fused_bias is not None:
            assert torch.equal(module._fused_bias, torch.cat([lin.bias for lin in linears]))


def test_conversions_keep_the_members_views_of_the_fused_weights(tmp_path):
    loaded = load_model(str(make_tiny_checkpoint(tmp_path, "qwen2")), torch.float32, "cpu")  # q/k/v biases
    model = loaded.model
    assert_fused(model, torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.float64)  # converts the fused tensors; the members point at their rows again
    assert_fused(model, torch.float64)
    assert all(torch.equal(v.double(), model.state_dict()[k]) for k, v in before.items())
    model.to(torch.float32)
    assert_fused(model, torch.float32)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_empty_model_and_a_meta_cast_before_it_stay_fused():
    config = make_tiny_config("llama", attention_bias=True, mlp_bias=True)
    model = empty_model(config, torch.float32, torch.device("cpu"))
    assert not any(p.is_meta for p in model.parameters())
    for p in model.parameters():
        p.data.normal_()  # uninitialised storage: give it values to compare
    assert_fused(model, torch.float32)
    with torch.device("meta"):
        meta = resolve_model_class(config)(config)
    meta.half()  # a cast on the meta device, where pointers say nothing: shapes and dtypes decide
    meta.to_empty(device="cpu")
    for p in meta.parameters():
        p.data.normal_()
    assert_fused(meta, torch.float16)

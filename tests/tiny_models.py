"""Tiny random HF checkpoints (Llama, Qwen2, Qwen3, Mistral) for fast tests.

Shapes: hidden 64, 2 layers, 4 heads, 2 KV heads (GQA), head_dim 16, vocab 512, 512 positions.
Weights are drawn with `initializer_range` 0.2 so greedy logits are peaked (argmax ties unlikely), and
biases and RMSNorm weights are perturbed away from HF's zero / one init so a mis-mapped bias or norm
weight changes the output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

TINY_ARCHS: dict[str, tuple[type, type]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}

TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position_embeddings=512,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def make_tiny_config(arch: str, **overrides):
    """The HF config of a tiny `arch` model ("llama", "qwen2", "qwen3", "mistral"); overrides win."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {', '.join(TINY_ARCHS)}")
    config_cls, model_cls = TINY_ARCHS[arch]
    kwargs = {**TINY_SHAPE, "architectures": [model_cls.__name__], **overrides}
    if arch == "qwen2":
        kwargs.pop("head_dim", None)  # Qwen2 derives head_dim from hidden_size / heads
    return config_cls(**kwargs)


def make_tiny_hf_model(arch: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random HF causal LM in float32, eval mode, deterministic in `seed`."""
    config = make_tiny_config(arch, **overrides)
    _, model_cls = TINY_ARCHS[arch]
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * config.initializer_range)
            elif "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
    return model


def make_tiny_checkpoint(tmp_path: Path | str, arch: str, seed: int = 0, **overrides) -> Path:
    """Save a tiny random `arch` model (safetensors + config.json) under tmp_path; return its directory."""
    model = make_tiny_hf_model(arch, seed, **overrides)
    out = Path(tmp_path) / f"tiny-{arch}-seed{seed}"
    model.save_pretrained(out)
    return out


def make_perturbed_checkpoint(tmp_path: Path | str, arch: str, seed: int = 0, noise: float = 0.05) -> Path:
    """The tiny `arch` model of `seed` with every weight nudged by `noise` x N(0, 1): a draft model that
    agrees with its target often but not always (partial acceptance)."""
    model = make_tiny_hf_model(arch, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * noise)
    out = Path(tmp_path) / f"tiny-{arch}-seed{seed}-noise{noise}"
    model.save_pretrained(out)
    return out


TINY_GEMMA3_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def make_tiny_gemma3_config(**overrides):
    """A tiny text-only Gemma 3 config (`Gemma3TextConfig`): the TINY_SHAPE sizes, 4 layers of which the 3rd
    is global and the others slide over a window of 5 positions, distinct local / global RoPE bases, an
    attention scalar that is not head_dim, and final-logit soft-capping; overrides win."""
    from transformers import Gemma3TextConfig

    kwargs = {
        **TINY_SHAPE,
        "num_hidden_layers": len(TINY_GEMMA3_LAYER_TYPES),
        "layer_types": list(TINY_GEMMA3_LAYER_TYPES),
        "sliding_window": 5,
        "query_pre_attn_scalar": 24,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        "final_logit_softcapping": 10.0,
        "tie_word_embeddings": True,
        "architectures": ["Gemma3ForCausalLM"],
        **overrides,
    }
    return Gemma3TextConfig(**kwargs)


def make_tiny_gemma3_hf_model(seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random HF `Gemma3ForCausalLM` in float32, eval mode, deterministic in `seed`; its (1 + w)
    RMSNorm gains are perturbed away from HF's zero init so a mis-mapped or mis-applied norm shows."""
    from transformers import Gemma3ForCausalLM

    config = make_tiny_gemma3_config(**overrides)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def make_tiny_gemma3_checkpoint(tmp_path: Path | str, seed: int = 0, **overrides) -> Path:
    """Save a tiny random Gemma 3 model (safetensors + config.json) under tmp_path; return its directory."""
    model = make_tiny_gemma3_hf_model(seed, **overrides)
    out = Path(tmp_path) / f"tiny-gemma3-seed{seed}"
    model.save_pretrained(out)
    return out


def save_tiny_tokenizer(out_dir: Path | str, vocab_size: int = 512) -> Path:
    """Write a word-level tokenizer of `vocab_size` ids ("<unk>", "<s>", "</s>", then "w3" .. ) into out_dir
    (tokenizer.json + tokenizer_config.json), so a tiny checkpoint takes text prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def make_word_target(root: Path | str, vocab_size: int, num_prompts: int, spread: int, seed: int = 0) -> tuple[Path, Path]:
    """A tiny Llama target with the word-level tokenizer and a .jsonl of `num_prompts` text prompts for
    `dynaspec train-head` (prompt n: 6 + n % spread words "w3" .. "w39"); (target directory, prompts file)."""
    import json

    import torch

    target = make_tiny_checkpoint(root, "llama", seed=seed, num_hidden_layers=4, vocab_size=vocab_size)
    save_tiny_tokenizer(target, vocab_size=vocab_size)
    gen = torch.Generator().manual_seed(seed)
    lines = []
    for n in range(num_prompts):
        words = " ".join(f"w{i}" for i in torch.randint(3, 40, (6 + n % spread,), generator=gen).tolist())
        lines.append(json.dumps({"prompt": words}) + "\n")
    prompts = Path(root) / "prompts.jsonl"
    prompts.write_text("".join(lines))
    return target, prompts


def make_hf_cache_snapshot(cache_dir: Path | str, repo_id: str, model_dir: Path | str, commit: str = "a1" * 20) -> Path:
    """Lay `model_dir`'s files out in `cache_dir` as huggingface_hub's cache does: blobs/<hash> holding the
    bytes, snapshots/<commit>/<file> symlinks to them, refs/main naming the commit. Returns the snapshot."""
    import hashlib
    import os

    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for src in sorted(Path(model_dir).iterdir()):
        if not src.is_file():
            continue
        data = src.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / src.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot

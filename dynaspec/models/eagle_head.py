"""EAGLE-3 draft head: one decoder layer over the target's own hidden states (Li et al. 2025, arXiv
2503.01840; EAGLE, Li et al. 2024, arXiv 2401.15077).

At head position p the head reads the embedding of token x_p (the TARGET's embedding, shared) and a
hidden g_{p-1}: fc(target features of p - 1) for a committed token (the tapped layers' residual streams
side by side, models/feature_tap.py; zeros at p = 0), or the head's own output at p - 1 for a draft
step. Its single decoder layer (EAGLE-3's "midlayer"):

    a   = attention(cat(input_layernorm(embed(x_p)), hidden_norm(g_{p-1})))   # q/k/v take 2H
    x   = g_{p-1} + o_proj(a)
    h_p = x + mlp(post_attention_layernorm(x))                                # fed back as the next g
    logits = target.lm_head(norm(h_p))                                        # predicts x_{p+1}

over its own one-layer paged KV on the target's block tables. Parameter names follow EAGLE-3 checkpoints
(`fc`, `midlayer.*`, `norm`); the target's embedding and lm_head are not part of the head and not saved.

A smaller draft vocabulary (EAGLE-3's, `draft_vocab_size`; 32k for a 128k-token target): the head has an
lm_head of its own over the draft vocabulary's rows, and `draft_to_target` (sorted target ids) maps a draft
id back. Draft logits are scattered into the target vocabulary with -inf elsewhere (`head_logits`), so q is
a distribution over the target's tokens that is 0 outside the draft vocabulary: rejection sampling stays
exact, and since the map is increasing a greedy argmax picks the same token either way. Each draft step then
reads draft_vocab x H lm_head weights instead of the target's vocab x H.

Saved as `<dir>/config.json` (EagleHeadConfig: architecture "Eagle3Head", shapes, the captured layers, the
target it was trained for) + `<dir>/model.safetensors`; `load_head` refuses a head made for another target.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PretrainedConfig

from dynaspec.models.attention import paged_attention
from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.feature_tap import check_layers_to_capture, default_layers_to_capture
from dynaspec.models.decode_kernels import DecodeKernels
from dynaspec.models.llama import config_head_dim, linear
from dynaspec.models.rms_norm import RMSNorm
from dynaspec.models.rope import RotaryEmbedding, apply_rope

ARCHITECTURE = "Eagle3Head"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class EagleTargetInfo(BaseModel):
    """What the head was trained for; a target that differs is refused at load time."""

    model_config = ConfigDict(extra="forbid")
    name: str
    vocab_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_hidden_layers: int = Field(ge=1)


class EagleHeadConfig(BaseModel):
    """The head's shapes (the target's, for one layer) and the target layers whose features it reads."""

    model_config = ConfigDict(extra="forbid")
    architecture: str = ARCHITECTURE
    hidden_size: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    rms_norm_eps: float = Field(gt=0)
    layers_to_capture: list[int]
    target: EagleTargetInfo
    draft_vocab_size: int | None = Field(default=None, ge=1)  # None: predict through the target's lm_head

    @classmethod
    def for_target(cls, hf_config: PretrainedConfig, name: str, layers_to_capture=None,
                   draft_vocab_size: int | None = None) -> "EagleHeadConfig":
        """A head shaped like one decoder layer of the target described by `hf_config`; draft_vocab_size: an
        lm_head of its own over that many of the target's tokens (None, or the whole vocabulary: the target's)."""
        num_layers = int(hf_config.num_hidden_layers)
        layers = default_layers_to_capture(num_layers) if layers_to_capture is None else layers_to_capture
        return cls(
            hidden_size=hf_config.hidden_size, intermediate_size=hf_config.intermediate_size,
            num_attention_heads=hf_config.num_attention_heads, num_key_value_heads=hf_config.num_key_value_heads,
            head_dim=config_head_dim(hf_config), rms_norm_eps=hf_config.rms_norm_eps,
            layers_to_capture=list(check_layers_to_capture(layers, num_layers)),
            target=EagleTargetInfo(name=name, vocab_size=hf_config.vocab_size, hidden_size=hf_config.hidden_size,
                                   num_hidden_layers=num_layers),
            draft_vocab_size=None if draft_vocab_size is None or draft_vocab_size >= hf_config.vocab_size
            else draft_vocab_size,
        )

    def check_target(self, hf_config: PretrainedConfig, name: str) -> None:
        """ValueError naming every field where the target differs from the one the head was made for."""
        wanted = self.target
        given = {"vocab_size": hf_config.vocab_size, "hidden_size": hf_config.hidden_size,
                 "num_hidden_layers": hf_config.num_hidden_layers}
        diffs = [f"{key} {getattr(wanted, key)} (head) != {value} (target)" for key, value in given.items()
                 if getattr(wanted, key) != value]
        if diffs:
            raise ValueError(
                f"the EAGLE head was trained for {wanted.name!r}, not for the target {name!r}: {'; '.join(diffs)}. "
                "Train a head for this target with `dynaspec train-head --model <target>`"
            )


class EagleMLP(nn.Module):
    """SwiGLU (Shazeer 2020) with separate gate / up projections: trainable as is (LlamaMLP runs a fused
    copy of its weights that autograd does not reach)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> (..., H)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EagleDecoderLayer(nn.Module):
    """EAGLE-3's midlayer (see the module docstring); split into qkv / finish so the trainer's
    training-time-test attention (train_head/ttt.py) runs the same projections."""

    def __init__(self, config: EagleHeadConfig, rope_config: PretrainedConfig) -> None:
        super().__init__()
        hidden, heads, kv_heads, dim = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, dim
        self.scaling = dim**-0.5
        self.input_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(2 * hidden, heads * dim, bias=False)
        self.self_attn.k_proj = nn.Linear(2 * hidden, kv_heads * dim, bias=False)
        self.self_attn.v_proj = nn.Linear(2 * hidden, kv_heads * dim, bias=False)
        self.self_attn.o_proj = nn.Linear(heads * dim, hidden, bias=False)
        self.mlp = EagleMLP(hidden, config.intermediate_size)
        self.rotary_emb = RotaryEmbedding(rope_config, dim)
        self.kernels = DecodeKernels()
        self._fused_qkv: torch.Tensor | None = None  # (q + 2 kv, 2H): inference copies (set_decode_kernels)
        self._fused_gate_up: torch.Tensor | None = None  # (2I, H)

    def set_decode_kernels(self, kernels: DecodeKernels) -> None:
        """Inference: route the projections through models/llama.linear with `kernels` (PDL, and on a GPU
        with the small-step GEMV path q/k/v and gate/up as one projection each over fused copies of their
        weights, the separate weights staying the parameters train-head trains), and launch the norms with
        them. The drafter sets this before capturing its graphs; a head that trains again needs it again."""
        self.kernels = kernels
        for norm in (self.input_layernorm, self.hidden_norm, self.post_attention_layernorm):
            norm.decode_kernels = kernels
        self._fused_qkv = self._fused_gate_up = None
        if kernels.gemv:
            attn, mlp = self.self_attn, self.mlp
            with torch.no_grad():
                self._fused_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
                self._fused_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])

    def qkv(self, embeds: torch.Tensor, g: torch.Tensor, positions: torch.Tensor):
        """embeds, g (..., H), positions (...) -> q (..., heads, D), k, v (..., kv_heads, D), RoPE applied."""
        h = torch.cat([self.input_layernorm(embeds), self.hidden_norm(g)], dim=-1)  # (..., 2H)
        lead = h.shape[:-1]
        attn = self.self_attn
        q = attn.q_proj(h).view(*lead, self.num_heads, self.head_dim)
        k = attn.k_proj(h).view(*lead, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(h).view(*lead, self.num_kv_heads, self.head_dim)
        cos, sin = self.rotary_emb(positions.reshape(-1), q.dtype)  # (N, D)
        flat_q = apply_rope(q.reshape(-1, self.num_heads, self.head_dim), cos, sin)
        flat_k = apply_rope(k.reshape(-1, self.num_kv_heads, self.head_dim), cos, sin)
        return flat_q.view(q.shape), flat_k.view(k.shape), v

    def finish(self, g: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """g (..., H), attention output (..., heads * D) -> the layer's output h (..., H)."""
        delta, x = self.finish_parts(g, attn_out)
        return x + delta

    def finish_parts(self, g: torch.Tensor, attn_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """finish() before its last residual add: (the MLP's output, the stream x it adds to), (..., H) each."""
        x = g + self.self_attn.o_proj(attn_out)
        return self.mlp(self.post_attention_layernorm(x)), x

    def forward(self, embeds, g, positions, kv_cache: torch.Tensor, meta: AttentionMetadata,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat batch: embeds, g (T, H), positions (T,), paged kv_cache (2, NB, BS, kv_heads, D) -> the MLP's
        output and the stream it adds to, (T, H) each (their sum is the layer's output h: EagleHead adds them
        inside its final norm's fused add). rope: (cos, sin) (T, D) of `positions`, computed once for a whole
        chain (runtime/eagle_graphs.py), else here."""
        if self._fused_qkv is not None:
            return self._forward_fused(embeds, g, positions, kv_cache, meta, rope)
        q, k, v = self.qkv(embeds, g, positions)
        out = paged_attention(q, k, v, kv_cache, meta, self.scaling, pdl=self.kernels.dependent_launch)  # (T, heads, D)
        return self.finish_parts(g, out.reshape(out.shape[0], -1))

    def _forward_fused(self, embeds, g, positions, kv_cache: torch.Tensor, meta: AttentionMetadata,
                       rope: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() over the fused q/k/v and gate/up weights (set_decode_kernels), the same computation in
        fewer, PDL-launched kernels: on CUDA both input norms write into one (T, 2H) buffer, RoPE of q and k
        and the K/V store are one kernel (fused_ops.rope_qk_), and the residual add rides in the
        post-attention norm, as in the target's layers (models/llama.py)."""
        kernels, tokens = self.kernels, embeds.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        h = self._input_norms(embeds, g)  # (T, 2H)
        q, k, v = linear(h, self._fused_qkv, None, kernels, "qkv").split([q_size, kv_size, kv_size], dim=-1)
        cos, sin = rope if rope is not None else self.rotary_emb(positions.reshape(-1), q.dtype)  # (T, D)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        kv_written = _fused_rope_and_store(q, k, v, cos, sin, kv_cache, meta, kernels)
        if not kv_written:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = paged_attention(q, k, v, kv_cache, meta, self.scaling, kv_written=kv_written,
                              pdl=kernels.dependent_launch)  # (T, heads, D)
        attn = linear(out.reshape(tokens, -1), self.self_attn.o_proj.weight, None, kernels, "o_proj")
        normed, x = self.post_attention_layernorm.forward_add(attn, g)  # x = g + attn
        gate_up = linear(normed, self._fused_gate_up, None, kernels, "gate_up")  # (T, 2I)
        return linear(_silu_and_mul(gate_up, kernels), self.mlp.down_proj.weight, None, kernels, "down"), x

    def _input_norms(self, embeds: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """cat(input_layernorm(embeds), hidden_norm(g)) (T, 2H); on CUDA each norm's kernel writes its half."""
        first, second = self.input_layernorm, self.hidden_norm
        if embeds.is_cuda and embeds.shape == g.shape:
            from dynaspec.models import fused_ops  # Triton is only needed on CUDA

            if fused_ops.rms_norm_supported(embeds, first.weight) and fused_ops.rms_norm_supported(g, second.weight):
                hidden = embeds.shape[1]
                both = torch.empty(embeds.shape[0], 2 * hidden, dtype=embeds.dtype, device=embeds.device)
                pdl = self.kernels.dependent_launch
                fused_ops.rms_norm(embeds, first.weight, first.variance_epsilon, pdl=pdl, out=both[:, :hidden])
                fused_ops.rms_norm(g, second.weight, second.variance_epsilon, pdl=pdl, out=both[:, hidden:])
                return both
        return torch.cat([first(embeds), second(g)], dim=-1)


def _fused_rope_and_store(q, k, v, cos, sin, kv_cache: torch.Tensor, meta: AttentionMetadata,
                          kernels: DecodeKernels) -> bool:
    """On CUDA: RoPE of q (T, heads, D) and k (T, kv_heads, D) in place and k / v stored at meta.slot_mapping,
    by one kernel (fused_ops.rope_qk_). Returns whether it ran (False: the caller rotates and paged_attention
    stores)."""
    if not q.is_cuda:
        return False
    from dynaspec.models import fused_ops  # Triton is only needed on CUDA

    if not (fused_ops.rope_supported(q, k, cos) and cos.dtype == sin.dtype == q.dtype
            and fused_ops.kv_write_supported(q, v, kv_cache, meta.slot_mapping)):
        return False
    fused_ops.rope_qk_(q, k, cos, sin, kv_write=(v, kv_cache, meta.slot_mapping), pdl=kernels.dependent_launch)
    return True


class EagleHead(nn.Module):
    """fc (features -> H), the midlayer, the final norm. The engine-facing attributes (`num_layers`,
    `num_kv_heads`, `head_dim`) size its KV like a model's (runtime/kv_cache.py)."""

    def __init__(self, config: EagleHeadConfig, rope_config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.num_layers = 1
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.fc = nn.Linear(len(config.layers_to_capture) * config.hidden_size, config.hidden_size, bias=False)
        self.midlayer = EagleDecoderLayer(config, rope_config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head: nn.Linear | None = None
        if config.draft_vocab_size is not None:  # EAGLE-3's draft vocabulary (module docstring)
            self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
            self.register_buffer("draft_to_target", torch.arange(config.draft_vocab_size))  # (Vd,) sorted ids

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Ids over the head's vocabulary (...) -> the target's token ids (...)."""
        return draft_ids if self.lm_head is None else self.draft_to_target[draft_ids]

    def to_draft(self, target_ids: torch.Tensor, missing: int = -100) -> torch.Tensor:
        """The target's token ids (...) -> ids over the head's vocabulary, `missing` where a token is not in it."""
        if self.lm_head is None:
            return target_ids
        table = torch.full((self.config.target.vocab_size,), missing, dtype=torch.int64, device=target_ids.device)
        table[self.draft_to_target] = torch.arange(len(self.draft_to_target), device=target_ids.device)
        return table[target_ids]

    @property
    def layers_to_capture(self) -> tuple[int, ...]:
        return tuple(self.config.layers_to_capture)

    def project(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Target features (..., n * H) -> g (..., H); rows where `valid` (...) is False (no token before
        position 0) are zeros."""
        g = self.fc(features.to(self.fc.weight.dtype))
        return g if valid is None else g * valid.unsqueeze(-1).to(g.dtype)

    def forward(self, embeds, g, positions, kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        """embeds (T, H) of the fed tokens, g (T, H), positions (T,) -> h (T, H), pre-norm (the next g)."""
        delta, stream = self.midlayer(embeds, g, positions, kv_caches[0], meta)
        return stream + delta

    def forward_normed(self, embeds, g, positions, kv_caches: list[torch.Tensor], meta: AttentionMetadata,
                       rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() and its final norm together: (h (T, H), norm(h) (T, H)), the layer's last residual add
        fused into the norm (one kernel on CUDA). rope: the positions' (cos, sin), precomputed."""
        delta, stream = self.midlayer(embeds, g, positions, kv_caches[0], meta, rope)
        normed, h = self.norm.forward_add(delta, stream)
        return h, normed


def _silu_and_mul(gate_up: torch.Tensor, kernels: DecodeKernels) -> torch.Tensor:
    """(T, 2I) -> silu(gate) * up (T, I): one Triton kernel on CUDA (models/fused_ops.py)."""
    if gate_up.is_cuda:
        from dynaspec.models import fused_ops  # Triton is only needed on CUDA

        return fused_ops.silu_and_mul(gate_up, pdl=kernels.dependent_launch)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def target_embed(target: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The target's token embedding (shared with the head): ids (...) -> (..., H)."""
    return target.model.embed_tokens(input_ids)


def target_lm_head(target: nn.Module) -> torch.Tensor:
    """The target's output embedding (vocab, H) (its input embedding when the two are tied)."""
    return target.model.embed_tokens.weight if target.lm_head is None else target.lm_head.weight


def draft_logits(head: EagleHead, target: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """h (N, H) -> float32 logits over the head's vocabulary (N, draft vocab, or the target's lm_head width)."""
    return normed_draft_logits(head, target, head.norm(hidden)).float()


def normed_draft_logits(head: EagleHead, target: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """norm(h) (N, H) -> logits over the head's vocabulary in the head's lm_head dtype (the target's
    compute_logits where the head has no vocabulary of its own)."""
    return target.compute_logits(normed) if head.lm_head is None else head.lm_head(normed)


def head_logits(head: EagleHead, target: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """h (N, H) -> float32 logits over the target's vocabulary (N, vocab): with a draft vocabulary, -inf at
    every token outside it."""
    logits = draft_logits(head, target, hidden)
    if head.lm_head is None:
        return logits
    full = logits.new_full((logits.shape[0], head.config.target.vocab_size), float("-inf"))
    return full.index_copy_(1, head.draft_to_target, logits)


def save_head(head: EagleHead, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors (the head's parameters only, float32 unless already lower)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(head.config.model_dump(), indent=2) + "\n")
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in _state(head).items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "architecture": ARCHITECTURE})
    return out


def read_head_config(head_dir: str | Path) -> EagleHeadConfig:
    """The EagleHeadConfig of a head directory; ValueError saying what is missing or wrong."""
    path = Path(head_dir)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(
            f"EAGLE head directory {str(path)!r} needs {CONFIG_FILE} and {WEIGHTS_FILE} (as `dynaspec train-head` "
            "writes them)"
        )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("architecture") != ARCHITECTURE:
        found = data.get("architecture") if isinstance(data, dict) else None
        raise ValueError(f"{config_path}: architecture must be {ARCHITECTURE!r}, got {found!r}")
    try:
        return EagleHeadConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{config_path}: {where}: {first['msg']}") from None


def load_head(head_dir: str | Path, target_config: PretrainedConfig, target_name: str, dtype: torch.dtype,
              device: torch.device) -> EagleHead:
    """The head of `head_dir` for this target, on `device` in `dtype`, eval mode; ValueError if it was made
    for another target or its weights do not match its config."""
    from safetensors.torch import load_file

    config = read_head_config(head_dir)
    config.check_target(target_config, target_name)
    check_layers_to_capture(config.layers_to_capture, int(target_config.num_hidden_layers))
    head = EagleHead(config, target_config)
    weights = load_file(str(Path(head_dir) / WEIGHTS_FILE))
    params = _state(head)
    missing, unknown = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unknown:
        raise ValueError(f"{head_dir}: weights do not match the head (missing {missing[:4]}, unknown {unknown[:4]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(f"{head_dir}: weight {name!r} has shape {tuple(tensor.shape)}, the head's config "
                                 f"gives {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    if head.lm_head is not None:
        ids = head.draft_to_target
        if bool((ids < 0).any() or (ids >= config.target.vocab_size).any() or (ids[1:] <= ids[:-1]).any()):
            raise ValueError(f"{head_dir}: draft_to_target must be increasing target token ids below "
                             f"{config.target.vocab_size}")
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _state(head: EagleHead) -> dict[str, torch.Tensor]:
    """What a head directory stores: the parameters and the draft-to-target map (persistent buffers)."""
    return dict(head.state_dict(keep_vars=True))


def random_head(config: EagleHeadConfig, rope_config: PretrainedConfig, seed: int = 0, std: float = 0.02) -> EagleHead:
    """A head with N(0, std) weights (norm gains 1), deterministic in `seed`: the trainer's start, and the
    tests' untrained head."""
    head = EagleHead(config, rope_config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return head


_TRAINING_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, Tq, heads, D), k / v (B, Tk, kv_heads, D), mask (Tq, Tk) or (B, Tq, Tk) bool -> (B, Tq, heads * D)
    (GQA by repeating K/V heads; the trainer's attention).

    Not cuDNN's kernel: it builds an execution plan for every new shape, and every training batch has other
    lengths (~0.3 s a step on an H100, 2026-12-06, for 44 ms of GPU work); the memory-efficient kernel takes
    the mask with no per-shape set-up (the math kernel on the CPU)."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)  # (B, 1, Tq, Tk): every head
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    with sdpa_kernel(_TRAINING_BACKENDS):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                             scale=scale)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) over a flat batch and a paged KV cache.

Mirrors HF transformers' `modeling_llama.py` / `modeling_mistral.py` / `modeling_qwen2.py` (same module
tree and parameter names, so an HF state dict loads by name) with the attention replaced by
`paged_attention` over a flat batch (see `attention_metadata.py`): RMSNorm (Zhang & Sennrich 2019), RoPE
(Su et al. 2021, arXiv 2104.09864; Llama-3 / linear / YaRN scaling via transformers' `ROPE_INIT_FUNCTIONS`),
grouped-query attention (Ainslie et al. 2023), SwiGLU MLP (Shazeer 2020). From the config: Llama q/k/v/o
bias = `attention_bias`, MLP bias = `mlp_bias`; Qwen2 q/k/v biases, o_proj none; Mistral no biases and
`sliding_window` on every layer; Qwen2 / Qwen3 `layer_types[i] == "sliding_attention"` windowed layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from dynaspec.models.attention import paged_attention
from dynaspec.models.attention_metadata import AttentionMetadata
from dynaspec.models.decode_kernels import GEMV_MAX_ROWS, DecodeKernels
from dynaspec.models.invariant_linear import invariant_linear
from dynaspec.models.rms_norm import RMSNorm
from dynaspec.models.rope import RotaryEmbedding, apply_rope

def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernels: DecodeKernels,
           projection: str) -> torch.Tensor:
    """x (T, in) @ weight^T (+ bias): the Triton GEMV (launched with PDL) for a step of at most
    GEMV_MAX_ROWS token rows when `kernels` routes this projection (one of decode_kernels.GEMV_PROJECTIONS)
    there, the tensor-core small GEMM (small_gemm.py) for a step of up to kernels.small_gemm_max_rows where it
    beats cuBLAS, the batch-invariant GEMM in deterministic mode (invariant_linear.py), else F.linear."""
    if kernels.deterministic:
        return invariant_linear(x, weight, bias, pdl=kernels.dependent_launch, tiles=kernels.gemm_tiles)
    rows = x.shape[0]
    if projection in kernels.gemv and x.is_cuda:
        if rows <= GEMV_MAX_ROWS:
            from dynaspec.models import gemv  # Triton is only needed on CUDA

            if gemv.gemv_supported(x, weight, bias):
                return gemv.gemv(x, weight, bias, pdl=kernels.dependent_launch)
        elif rows <= kernels.small_gemm_max_rows:
            from dynaspec.models import small_gemm

            if small_gemm.worthwhile(*weight.shape) and small_gemm.supported(x, weight, bias):
                return small_gemm.small_gemm(x, weight, bias, pdl=kernels.dependent_launch)
    return F.linear(x, weight, bias)


def attention_biases(config: PretrainedConfig) -> tuple[bool, bool]:
    """(q/k/v bias, o_proj bias) of the architecture described by `config`."""
    if getattr(config, "model_type", None) == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def layer_sliding_window(config: PretrainedConfig, layer_idx: int) -> int | None:
    """The attention window of layer `layer_idx`, or None for full causal attention."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


def config_head_dim(config: PretrainedConfig) -> int:
    """config.head_dim when set, else hidden_size / num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat along dim 0; on the meta device (loader.empty_model) an empty tensor of the same shape:
    torch.cat of meta tensors runs through torch's Python reference ops, whose first use imports
    torch._dynamo (0.7 s of a 2-core CPU's start-up)."""
    if tensors[0].is_meta:
        first = tensors[0]
        return torch.empty((sum(t.shape[0] for t in tensors), *first.shape[1:]), dtype=first.dtype, device="meta")
    return torch.cat(tensors)


def fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of out_features, in_features) weight (and bias) holding `linears`' rows, in order.

    Each linear's `weight` / `bias` Parameter is re-pointed at its rows of the fused tensors (`.data`
    becomes a view), so the HF-named parameters stay what `load_weights`, `random_model` and
    `state_dict` see, while a forward runs one GEMM for all of them. The old storage is released.
    """
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError("fuse_linears needs all linears with a bias or none")
    weight = _concat([lin.weight.detach() for lin in linears])
    bias = _concat([lin.bias.detach() for lin in linears]) if all(has_bias) else None
    point_at_rows(linears, weight, bias)
    return weight, bias


def point_at_rows(linears: list[nn.Linear], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Re-point each linear's weight (and bias) Parameter at its rows of `weight` (`bias`), in order."""
    offset = 0
    for lin in linears:
        rows = lin.out_features
        lin.weight.data = weight[offset:offset + rows]
        if bias is not None:
            lin.bias.data = bias[offset:offset + rows]
        offset += rows


class FusedProjections(nn.Module):
    """Base of a module whose sibling linears `fused_names` (same input) run as one GEMM.

    The fused weight is a plain attribute, not a parameter or buffer: module conversions (`.to()`,
    `to_empty()`, `.half()`) convert the HF-named parameters, then `_apply` converts the fused tensors
    themselves the same way and points the parameters at their rows again (converting the whole is the
    same as converting the rows: nothing to concatenate, and `to_empty` copies no uninitialised values).
    When the views were broken some other way (e.g. `load_state_dict(assign=True)`), `_apply` re-fuses by
    concatenation, and `fused_linear` notices by data pointers and falls back to one GEMM per linear, so
    the output is always right.
    """

    fused_names: tuple[str, ...] = ()
    fused_projection = ""  # this fused projection's name in decode_kernels.GEMV_PROJECTIONS
    decode_kernels = DecodeKernels()  # LlamaForCausalLM.set_decode_kernels sets it per module

    def fuse_projections(self) -> None:
        """(Re)build the fused weight / bias from the current parameters; a no-op when already fused."""
        if getattr(self, "_fused_ptrs", None) == self._member_ptrs() and self._member_ptrs()[0] != 0:
            return
        self._fused_weight, self._fused_bias = fuse_linears([getattr(self, n) for n in self.fused_names])
        self._fused_ptrs = self._member_ptrs()

    def _member_ptrs(self) -> tuple[int, ...]:
        """The members' parameters' data pointers (asked on every fused_linear call: read from the modules'
        parameter dicts, as parameters(recurse=False) would yield them, without its generator machinery,
        which cost ~1 ms of host time an eager forward of a 28-layer model)."""
        return tuple(
            p.data_ptr() for n in self.fused_names for p in getattr(self, n)._parameters.values() if p is not None
        )

    def _views_intact(self) -> bool:
        """Whether each member parameter is still its rows of the fused tensors: by data pointer, or on the
        meta device (no data, every pointer 0) by the members' shapes and dtypes adding up to the fused ones."""
        weight = getattr(self, "_fused_weight", None)
        if weight is None or self._member_ptrs() != self._fused_ptrs:
            return False
        if not weight.is_meta:
            return True
        linears = [getattr(self, n) for n in self.fused_names]
        tensors = [(weight, [lin.weight for lin in linears])]
        if self._fused_bias is not None:
            tensors.append((self._fused_bias, [lin.bias for lin in linears]))
        return all(
            sum(m.shape[0] for m in members) == fused.shape[0]
            and all(m.shape[1:] == fused.shape[1:] and m.dtype == fused.dtype and m.is_meta for m in members)
            for fused, members in tensors
        )

    def fused_linear(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, in) -> (T, sum of out_features): the linears' outputs side by side."""
        if self._member_ptrs() == self._fused_ptrs:
            return linear(x, self._fused_weight, self._fused_bias, self.decode_kernels, self.fused_projection)
        return torch.cat([getattr(self, n)(x) for n in self.fused_names], dim=-1)

    def _apply(self, fn, recurse=True):
        fused = (self._fused_weight, self._fused_bias) if self._views_intact() else None
        super()._apply(fn, recurse)
        if fused is not None and self._member_ptrs() != self._fused_ptrs:
            # the members were rows of the fused tensors: convert those and point the members at them again
            weight, bias = fn(fused[0]), (None if fused[1] is None else fn(fused[1]))
            point_at_rows([getattr(self, n) for n in self.fused_names], weight, bias)
            self._fused_weight, self._fused_bias, self._fused_ptrs = weight, bias, self._member_ptrs()
        elif self._member_ptrs() != self._fused_ptrs:
            self.fuse_projections()
        return self


class LlamaAttention(FusedProjections):
    """Self-attention with q/k/v projections (HF names) run as one GEMM, RoPE and paged KV."""

    fused_names = ("q_proj", "k_proj", "v_proj")
    fused_projection = "qkv"

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config_head_dim(config)
        self.scaling = self.head_dim**-0.5
        self.sliding_window = layer_sliding_window(config, layer_idx)
        qkv_bias, o_bias = attention_biases(config)
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=o_bias)
        self.fuse_projections()

    def qk_norms(self) -> tuple[RMSNorm, RMSNorm] | None:
        """The per-head (q, k) RMSNorms applied before RoPE (Qwen3), or None."""
        return None

    def transform_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook applied to per-head q (T, H, D), k (T, Hkv, D) before RoPE; identity for Llama."""
        return q, k

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """x (T, hidden) -> (T, hidden)."""
        num_tokens = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.fused_linear(x).split([q_size, kv_size, kv_size], dim=-1)  # views of (T, q + 2 kv)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        fused, kv_written = self._fused_rope(q, k, v, cos, sin, kv_cache, meta.slot_mapping)
        if not fused:
            q, k = self.transform_qk(q, k)
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        out = paged_attention(q, k, v, kv_cache, meta, self.scaling, self.sliding_window, kv_written,
                              pdl=self.decode_kernels.dependent_launch,
                              deterministic=self.decode_kernels.deterministic)  # (T, H, D)
        out = out.reshape(num_tokens, self.num_heads * self.head_dim)
        return linear(out, self.o_proj.weight, self.o_proj.bias, self.decode_kernels, "o_proj")

    def _fused_rope(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
    ) -> tuple[bool, bool]:
        """On CUDA: (q/k norm and) RoPE of q, k in place by one Triton kernel, which also stores k and v
        into the paged cache when it can. Returns (rope applied, K/V written); (False, False) elsewhere."""
        if not q.is_cuda:
            return False, False
        from dynaspec.models import fused_ops  # Triton is only needed on CUDA

        if not fused_ops.rope_supported(q, k, cos) or cos.dtype != q.dtype or sin.dtype != q.dtype:
            return False, False
        kv_write = None
        if fused_ops.kv_write_supported(q, v, kv_cache, slot_mapping):
            kv_write = (v, kv_cache, slot_mapping)
        norms = self.qk_norms()
        pdl = self.decode_kernels.dependent_launch
        if norms is None:
            fused_ops.rope_qk_(q, k, cos, sin, kv_write=kv_write, pdl=pdl)
            return True, kv_write is not None
        q_norm, k_norm = norms
        if q_norm.weight.dtype != q.dtype or k_norm.weight.dtype != q.dtype \
                or q_norm.variance_epsilon != k_norm.variance_epsilon:
            return False, False
        fused_ops.rope_qk_(q, k, cos, sin, (q_norm.weight, k_norm.weight), q_norm.variance_epsilon, kv_write, pdl)
        return True, kv_write is not None


def activation(name: str) -> nn.Module:
    """The activation module transformers' `ACT2FN[name]` gives. SiLU (Llama, Mistral, Qwen) is torch's
    own `nn.SiLU` (ACT2FN's SiLUActivation is F.silu too): importing transformers.activations pulls in
    torch.distributed.tensor, ~0.8 s of a 2-core CPU's start-up; other activations (Gemma's tanh GELU)
    come from ACT2FN."""
    if name == "silu":
        return nn.SiLU()
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class LlamaMLP(FusedProjections):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x)), gate and up as one GEMM."""

    fused_names = ("gate_proj", "up_proj")
    fused_projection = "gate_up"

    def __init__(self, config: PretrainedConfig, hidden_act: str | None = None) -> None:
        """`hidden_act` overrides `config.hidden_act` (Gemma's configs name it `hidden_activation`)."""
        super().__init__()
        hidden_act = hidden_act or config.hidden_act
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = activation(hidden_act)
        self.is_silu = hidden_act == "silu"
        self.fuse_projections()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, hidden) -> (T, hidden)."""
        gate_up = self.fused_linear(x)  # (T, 2I)
        if gate_up.is_cuda and self.is_silu:
            from dynaspec.models import fused_ops

            if gate_up.dim() == 2:
                return self._down(fused_ops.silu_and_mul(gate_up, pdl=self.decode_kernels.dependent_launch))
        gate, up = gate_up.chunk(2, dim=-1)
        return self._down(self.act_fn(gate) * up)

    def _down(self, act: torch.Tensor) -> torch.Tensor:
        return linear(act, self.down_proj.weight, self.down_proj.bias, self.decode_kernels, "down")


class LlamaDecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h)).

    The residual stream travels beside the block output, so each residual add is fused into the next
    RMSNorm (`RMSNorm.forward_add`): forward(x, residual) takes the previous block's output x and the
    stream before it (None at layer 0, where x is the embedding) and returns (mlp output, stream).
    """

    def __init__(self, config: PretrainedConfig, layer_idx: int, attention_cls: type[LlamaAttention]) -> None:
        super().__init__()
        self.self_attn = attention_cls(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, cos, sin, kv_cache, meta, store=None):
        """store = (cache, slots): the stream entering this layer (the one after the layer before) also goes to
        those cache rows, from inside the input norm's fused add (the EAGLE feature tap)."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm.forward_add(x, residual, store)
        attn = self.self_attn(h, cos, sin, kv_cache, meta)  # (T, hidden)
        h, residual = self.post_attention_layernorm.forward_add(attn, residual)
        return self.mlp(h), residual


def _meta_weight(config: PretrainedConfig) -> torch.Tensor | None:
    """The embedding's weight when the model is built on the meta device (loader.empty_model): handing it
    over skips nn.Embedding's normal_ init, which on a meta tensor runs through torch's Python reference
    ops and imports torch._dynamo (0.7-1.0 s of a 2-core CPU's start-up). None elsewhere (normal init)."""
    if torch.get_default_device().type != "meta":
        return None
    return torch.empty(config.vocab_size, config.hidden_size)


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's `model.` sub-tree).

    Subclasses swap the block (`decoder_layer_cls`) and the norm (`norm_cls`), e.g. Gemma 3 (gemma3.py).
    """

    decoder_layer_cls: type[nn.Module] = LlamaDecoderLayer
    norm_cls: type[RMSNorm] = RMSNorm
    feature_tap = None  # a models.feature_tap.FeatureTap an EAGLE drafter installs: hidden states by slot

    def __init__(self, config: PretrainedConfig, attention_cls: type[LlamaAttention]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=_meta_weight(config))
        self.layers = nn.ModuleList(
            self.decoder_layer_cls(config, i, attention_cls) for i in range(config.num_hidden_layers)
        )
        self.norm = self.norm_cls(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config, config_head_dim(config))

    def forward(self, input_ids, positions, kv_caches, meta):
        x = self.embed_tokens(input_ids)  # (T, hidden)
        cos, sin = self.rotary_emb(positions, x.dtype)  # (T, D)
        residual = None
        tap = self.feature_tap
        stores = {} if tap is None else tap.stores(meta.slot_mapping)  # tapped layer -> (its cache, slots)
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            # layer i's input add sums the stream after layer i - 1: the tap stores it there
            x, residual = layer(x, residual, cos, sin, kv_cache, meta, stores.get(i - 1))
        if residual is None:  # no layers
            return self.norm(x)
        return self.norm.forward_add(x, residual, stores.get(len(self.layers) - 1))[0]


class LlamaForCausalLM(nn.Module):
    """Causal LM over a flat batch with paged KV (contract in docs/ARCHITECTURE.md).

    Serves HF `LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` checkpoints.
    With tied embeddings there is no separate lm_head parameter: logits use `model.embed_tokens.weight`,
    so the tie survives `.to()` / `to_empty()`.
    """

    attention_cls: type[LlamaAttention] = LlamaAttention
    model_cls: type[LlamaModel] = LlamaModel

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if config.num_attention_heads % config.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads {config.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {config.num_key_value_heads}"
            )
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config_head_dim(config)
        self.vocab_size = config.vocab_size
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.model = self.model_cls(config, self.attention_cls)
        self.lm_head = None if self.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions (T,) int64; kv_caches: one (2, NB, BS, Hkv, D) per layer -> hidden (T, hidden)."""
        if len(kv_caches) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} kv caches (one per layer), got {len(kv_caches)}")
        if input_ids.shape != positions.shape or input_ids.dim() != 1:
            raise ValueError(
                f"input_ids and positions must both be (T,); got {tuple(input_ids.shape)}, {tuple(positions.shape)}"
            )
        return self.model(input_ids, positions, kv_caches, meta)

    def set_decode_kernels(self, kernels: DecodeKernels) -> None:
        """Route this model's CUDA decode through `kernels`' fast paths (decode_kernels.py); captured CUDA
        graphs keep the kernels they were captured with, so capture (again) after changing this."""
        if not isinstance(kernels, DecodeKernels):
            raise TypeError(f"kernels must be a DecodeKernels, got {type(kernels).__name__}")
        for module in self.modules():
            if isinstance(module, (RMSNorm, FusedProjections)):
                module.decode_kernels = kernels

    @property
    def decode_kernels(self) -> DecodeKernels:
        """The fast decode paths in use (the same object on every module)."""
        return self.model.norm.decode_kernels

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden) -> logits (N, vocab) float32."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        if self.decode_kernels.deterministic:
            kernels = self.decode_kernels
            return invariant_linear(hidden, weight, pdl=kernels.dependent_launch, tiles=kernels.gemm_tiles).float()
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy an HF state dict (name, tensor) into this model; pass every weight in one call.

        Rotary `inv_freq` buffers are skipped (recomputed from the config); `lm_head.weight` is skipped
        when embeddings are tied. Raises ValueError on an unknown name, a shape mismatch, or when some
        parameter received no weight.
        """
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb." in name:
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue
            param = params.get(name)
            if param is None:
                raise ValueError(f"checkpoint weight {name!r} has no parameter in {type(self).__name__}")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"weight {name!r} has shape {tuple(tensor.shape)}, parameter expects {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"{len(missing)} parameters got no weight from the checkpoint: {shown}")
        for module in self.modules():
            if isinstance(module, FusedProjections):
                module.fuse_projections()  # a no-op unless some parameter's storage was swapped

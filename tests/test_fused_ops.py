"""Fused Triton ops (models/fused_ops.py) against the torch path of models/llama.py, and q/k/v + gate/up fusion.

CPU: the kernels run under Triton's interpreter (TRITON_INTERPRET=1) in a subprocess that sets the
variable before importing Triton (as tests/test_triton_attention.py does), in fp32 and fp16, on strided
views like the ones the model passes (q / k are column slices of the fused qkv output). The projection
fusion (HF-named parameters as views of one fused weight) is checked on CPU through every way a model
gets its weights: construction, `random_model`'s in-place fill, meta build + `to_empty` + `load_weights`,
dtype casts, and a broken view (fallback to separate GEMMs).
CUDA: bf16 kernels against the torch path, a whole model step under CUDA-graph replay.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from dynaspec.models import fused_ops  # noqa: E402
from dynaspec.models.attention import write_kv_cache  # noqa: E402
from dynaspec.models.llama import FusedProjections, apply_rope  # noqa: E402
from dynaspec.models.rms_norm import RMSNorm  # noqa: E402
from dynaspec.models.loader import random_model  # noqa: E402
from dynaspec.models.presets import get_preset_config, num_parameters  # noqa: E402
from dynaspec.models.registry import resolve_model_class  # noqa: E402
from tests.test_model_parity import PagedHarness, hf_logits, max_diff, random_tokens  # noqa: E402
from tests.tiny_models import make_tiny_hf_model  # noqa: E402
from tests.triton_interpreter import run_interpreted  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# --- torch references (the model's CPU path) --------------------------------------------------------


def ref_rms_norm(x, weight, eps, residual=None):
    """The model's torch RMSNorm, run on the CPU (on CUDA the module itself would dispatch to the kernel)."""
    norm = RMSNorm(x.shape[-1], eps).to(dtype=weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight.cpu())
    if residual is None:
        return norm(x.cpu()).to(x.device), None
    summed = residual + x
    return norm(summed.cpu()).to(x.device), summed


def ref_rope(q, k, cos, sin, norm_weights=None, eps=1e-6):
    if norm_weights is not None:
        q = ref_rms_norm(q.reshape(-1, q.shape[-1]), norm_weights[0], eps)[0].view(q.shape)
        k = ref_rms_norm(k.reshape(-1, k.shape[-1]), norm_weights[1], eps)[0].view(k.shape)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def ref_silu_and_mul(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def cos_sin(num_tokens, head_dim, dtype, device, gen):
    positions = torch.randint(0, 5000, (num_tokens,), generator=gen)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = positions[:, None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype).to(device), emb.sin().to(dtype).to(device)


# --- cases, run by the interpreter on CPU and by compiled kernels on CUDA -----------------------------


def run_case(case: dict, device: str) -> dict:
    """One op on random inputs; returns the max abs difference from the torch reference and its scale."""
    dtype = getattr(torch, case["dtype"])
    gen = torch.Generator().manual_seed(case["seed"])
    if case["op"] == "rms_norm":
        t, n = case["shape"]
        wide = torch.randn(t, n + 7, generator=gen).to(dtype).to(device)
        x = wide[:, 3:3 + n]  # strided rows
        weight = (1 + 0.1 * torch.randn(n, generator=gen)).to(dtype).to(device)
        residual = torch.randn(t, n, generator=gen).to(dtype).to(device) if case["residual"] else None
        store = None
        if case.get("store"):  # the feature tap: the summed rows also at shuffled rows of a cache
            cache = torch.randn(t + 5, n, generator=gen).to(dtype).to(device)
            store = (cache, torch.randperm(t + 5, generator=gen)[:t].to(device))
        before = None if store is None else store[0].clone()
        dest = None
        if case.get("out"):  # into the right half of a wider buffer (the EAGLE head's two input norms)
            buffer = torch.randn(t, 2 * n, generator=gen).to(dtype).to(device)
            left, dest = buffer[:, :n].clone(), buffer[:, n:]
        out, summed = fused_ops.rms_norm(x, weight, 1e-6, residual, store=store, out=dest)
        ref, ref_summed = ref_rms_norm(x, weight, 1e-6, residual)
        diffs = [max_diff(out, ref)]
        if dest is not None:  # written in place, the other half untouched
            diffs += [max_diff(buffer[:, n:], ref), max_diff(buffer[:, :n], left),
                      0.0 if out.data_ptr() == dest.data_ptr() else float("inf")]
        if residual is not None:
            diffs.append(max_diff(summed, ref_summed))
        if store is not None:  # exactly the summed rows there, every other row untouched
            before[store[1]] = ref_summed.to(dtype)
            diffs.append(max_diff(store[0], before))
        return {"diff": max(diffs), "scale": ref.abs().max().item(), "dtype_ok": out.dtype == dtype}
    if case["op"] == "rope":
        t, h, hkv, d = case["shape"]
        qkv = torch.randn(t, (h + 2 * hkv) * d, generator=gen).to(dtype).to(device)
        q, k, _ = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
        q, k = q.view(t, h, d), k.view(t, hkv, d)
        cos, sin = cos_sin(t, d, dtype, device, gen)
        norms = None
        if case["norm"]:
            norms = tuple((1 + 0.1 * torch.randn(d, generator=gen)).to(dtype).to(device) for _ in range(2))
        ref_q, ref_k = ref_rope(q.clone(), k.clone(), cos, sin, norms)
        v_before = qkv[:, (h + hkv) * d:].clone()
        kv_write = None
        if case.get("kv_write"):  # also store k, v in a paged cache at shuffled slots
            cache = torch.randn(2, 3, 4, hkv, d, generator=gen).to(dtype).to(device)  # (2, NB, BS, Hkv, D)
            ref_cache = cache.clone()
            slots = torch.randperm(12, generator=gen)[:t].to(device)
            v = qkv[:, (h + hkv) * d:].view(t, hkv, d)
            write_kv_cache(ref_k, v, ref_cache, slots)
            assert fused_ops.kv_write_supported(q, v, cache, slots)
            kv_write = (v, cache, slots)
        fused_ops.rope_qk_(q, k, cos, sin, norms, 1e-6, kv_write)
        diff = max(max_diff(q, ref_q), max_diff(k, ref_k), max_diff(qkv[:, (h + hkv) * d:], v_before))
        if kv_write is not None:
            diff = max(diff, max_diff(kv_write[1], ref_cache))
        return {"diff": diff, "scale": ref_q.abs().max().item(), "dtype_ok": q.dtype == dtype}
    t, n = case["shape"]
    x = torch.randn(t, 2 * n, generator=gen).mul(3).to(dtype).to(device)
    out = fused_ops.silu_and_mul(x)
    ref = ref_silu_and_mul(x)
    return {"diff": max_diff(out, ref), "scale": ref.abs().max().item(), "dtype_ok": out.dtype == dtype}


INTERPRETER_CASES = [
    dict(op="rms_norm", shape=(5, 64), residual=False, dtype="float32", seed=0),
    dict(op="rms_norm", shape=(4, 100), residual=True, dtype="float32", seed=1),  # N not a power of two
    dict(op="rms_norm", shape=(3, 96), residual=True, dtype="float16", seed=2),
    dict(op="rms_norm", shape=(4, 100), residual=True, store=True, dtype="float32", seed=11),
    dict(op="rms_norm", shape=(3, 96), residual=True, store=True, dtype="float16", seed=12),
    dict(op="rms_norm", shape=(3, 100), residual=False, out=True, dtype="float32", seed=13),
    dict(op="rms_norm", shape=(2, 64), residual=True, out=True, dtype="float16", seed=14),
    dict(op="rope", shape=(5, 4, 2, 16), norm=False, dtype="float32", seed=3),
    dict(op="rope", shape=(3, 6, 2, 24), norm=True, dtype="float32", seed=4),  # half of D not a power of two
    dict(op="rope", shape=(4, 4, 1, 32), norm=True, dtype="float16", seed=5),
    dict(op="rope", shape=(2, 3, 3, 8), norm=False, dtype="float16", seed=6),
    dict(op="rope", shape=(5, 4, 2, 16), norm=False, kv_write=True, dtype="float32", seed=9),
    dict(op="rope", shape=(3, 6, 2, 24), norm=True, kv_write=True, dtype="float16", seed=10),
    dict(op="silu", shape=(3, 1500), dtype="float32", seed=7),  # two column blocks, the second partial
    dict(op="silu", shape=(2, 80), dtype="float16", seed=8),
]


def tolerance(case: dict, scale: float) -> float:
    """fp32: float32 rounding; half types: one unit in the last place of the output's magnitude (the
    kernels round where the torch path rounds, so only summation order differs)."""
    if case["dtype"] == "float32":
        return 1e-5 * max(scale, 1.0)
    ulp = 2.0 ** -10 if case["dtype"] == "float16" else 2.0 ** -7
    return ulp * max(scale, 1.0)


def _interpreter_worker(cases_json: str) -> None:
    """Entry point of the subprocess (TRITON_INTERPRET=1 already set): run cases on CPU, print JSON."""
    print(json.dumps([run_case(case, "cpu") for case in json.loads(cases_json)]))


@pytest.fixture(scope="module")
def interpreter_results():
    return run_interpreted("tests.test_fused_ops", "_interpreter_worker", INTERPRETER_CASES)


@pytest.mark.parametrize("index", range(len(INTERPRETER_CASES)))
def test_interpreter_matches_torch_path(interpreter_results, index):
    case, result = INTERPRETER_CASES[index], interpreter_results[index]
    assert result["dtype_ok"], (case, result)
    assert result["diff"] <= tolerance(case, result["scale"]), (case, result)


def test_wrappers_reject_unsupported_inputs():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="rms_norm needs"):
        fused_ops.rms_norm(x, torch.ones(8, dtype=torch.float16), 1e-6)
    with pytest.raises(ValueError, match="residual must match"):
        fused_ops.rms_norm(x, torch.ones(8), 1e-6, torch.randn(3, 4))
    with pytest.raises(ValueError, match="store needs a residual"):
        fused_ops.rms_norm(x, torch.ones(8), 1e-6, store=(torch.zeros(5, 8), torch.arange(3)))
    with pytest.raises(ValueError, match=r"store needs .*cache \(5, 4\)"):
        fused_ops.rms_norm(x, torch.ones(8), 1e-6, torch.randn(3, 8), store=(torch.zeros(5, 4), torch.arange(3)))
    with pytest.raises(ValueError, match=r"out must be \(3, 8\)"):
        fused_ops.rms_norm(x, torch.ones(8), 1e-6, out=torch.empty(3, 16)[:, ::2])
    with pytest.raises(ValueError, match="rope_qk_ needs"):
        fused_ops.rope_qk_(torch.randn(2, 4, 7), torch.randn(2, 2, 7), torch.randn(2, 7), torch.randn(2, 7))
    with pytest.raises(ValueError, match="norm weights"):
        fused_ops.rope_qk_(torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.randn(2, 8), torch.randn(2, 8),
                           (torch.ones(4), torch.ones(8)))
    with pytest.raises(ValueError, match="silu_and_mul needs"):
        fused_ops.silu_and_mul(torch.randn(3, 5))


# --- projection fusion (CPU) ------------------------------------------------------------------------


def fused_modules(model):
    return [m for m in model.modules() if isinstance(m, FusedProjections)]


def assert_fused(model):
    """Every q/k/v and gate/up parameter is a view of its module's fused weight, rows in HF order."""
    modules = fused_modules(model)
    assert modules
    for module in modules:
        linears = [getattr(module, n) for n in module.fused_names]
        assert module._member_ptrs() == module._fused_ptrs
        torch.testing.assert_close(module._fused_weight, torch.cat([lin.weight for lin in linears]), rtol=0, atol=0)
        for lin in linears:
            assert lin.weight.untyped_storage().data_ptr() == module._fused_weight.untyped_storage().data_ptr()


@pytest.mark.parametrize("preset", ["llama-3.1-8b", "qwen2.5-0.5b", "qwen3-8b"])
def test_random_model_fills_the_fused_weights(preset):
    config = get_preset_config(preset)
    config.num_hidden_layers, config.intermediate_size, config.vocab_size = 2, 256, 1024
    model = random_model(config, torch.float32, "cpu", seed=1)
    assert_fused(model)
    assert sum(p.numel() for p in model.parameters()) == num_parameters(config)
    attn = model.model.layers[0].self_attn
    assert abs(attn._fused_weight.std().item() - 0.02) < 0.002  # filled in place, not left uninitialised
    if attn._fused_bias is not None:  # Qwen2: q/k/v biases zero-filled through their views
        assert torch.all(attn._fused_bias == 0)


def test_meta_build_to_empty_load_and_cast_keep_fusion_and_parity():
    hf = make_tiny_hf_model("qwen2", seed=21)  # q/k/v biases
    with torch.device("meta"):
        ours = resolve_model_class(hf.config)(hf.config)
    ours.to_empty(device="cpu")
    ours.load_weights(hf.state_dict().items())
    assert_fused(ours)
    ours.to(torch.float64).to(torch.float32)  # conversions re-fuse
    assert_fused(ours)
    assert set(dict(ours.named_parameters())) == {k for k in hf.state_dict() if "rotary_emb" not in k}
    tokens = random_tokens(13, seed=22)
    (logits,) = PagedHarness(ours.eval()).step([("a", tokens, 0)])
    assert max_diff(logits, hf_logits(hf, tokens)) <= 1e-4


def test_broken_views_fall_back_to_separate_gemms():
    hf = make_tiny_hf_model("llama", seed=23, attention_bias=True, mlp_bias=True)
    ours = resolve_model_class(hf.config)(hf.config)
    ours.load_weights(hf.state_dict().items())
    # assign=True swaps parameters for the checkpoint's own tensors: the fused weights are now stale.
    ours.load_state_dict({k: v.clone() * 1 for k, v in hf.state_dict().items()}, strict=False, assign=True)
    assert all(m._member_ptrs() != m._fused_ptrs for m in fused_modules(ours))
    tokens = random_tokens(9, seed=24)
    (logits,) = PagedHarness(ours.eval()).step([("a", tokens, 0)])
    assert max_diff(logits, hf_logits(hf, tokens)) <= 1e-4


# --- CUDA ---------------------------------------------------------------------------------------------

CUDA_CASES = [
    dict(op="rms_norm", shape=(1, 4096), residual=True, dtype="bfloat16", seed=30),
    dict(op="rms_norm", shape=(64, 4096), residual=False, dtype="bfloat16", seed=31),
    dict(op="rms_norm", shape=(7, 896), residual=True, dtype="float16", seed=32),
    dict(op="rms_norm", shape=(7, 896), residual=True, dtype="float32", seed=33),
    dict(op="rms_norm", shape=(4, 1536), residual=False, out=True, dtype="bfloat16", seed=45),
    dict(op="rope", shape=(1, 32, 8, 128), norm=False, dtype="bfloat16", seed=34),
    dict(op="rope", shape=(65, 32, 8, 128), norm=True, dtype="bfloat16", seed=35),
    dict(op="rope", shape=(9, 14, 2, 64), norm=False, dtype="float32", seed=36),
    dict(op="rope", shape=(1, 32, 8, 128), norm=False, kv_write=True, dtype="bfloat16", seed=43),
    dict(op="rope", shape=(10, 16, 8, 128), norm=True, kv_write=True, dtype="bfloat16", seed=44),
    dict(op="silu", shape=(1, 14336), dtype="bfloat16", seed=37),
    dict(op="silu", shape=(64, 4864), dtype="bfloat16", seed=38),
    dict(op="silu", shape=(5, 1000), dtype="float32", seed=39),
]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: f"{c['op']}-{c['dtype']}-{c['shape']}")
def test_cuda_matches_torch_path(case):
    result = run_case(case, "cuda")
    assert result["dtype_ok"], result
    assert result["diff"] <= tolerance(case, result["scale"]), (case, result)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kv_write", [False, True])
def test_cuda_rope_rounds_each_product_as_torch_does(kv_write, dtype):
    """Without the Qwen3 norm, RoPE is two products and a sum, each rounded to the dtype by torch: the
    kernel's bits must equal HF's x * cos + rotate_half(x) * sin exactly (a product fused into the sum as an
    FMA changed ~27% of bf16 elements by one ulp on an H100, 2026-12-06, and ~24% in fp16 / fp32; the EAGLE
    head's fused step then left its training-time numbers)."""
    gen = torch.Generator().manual_seed(40)
    t, h, hkv, d = 24, 8, 2, 64
    qkv = torch.randn(t, (h + 2 * hkv) * d, generator=gen).mul(8).to(dtype).cuda()
    q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(t, h, d), k.view(t, hkv, d), v.view(t, hkv, d)
    cos, sin = cos_sin(t, d, dtype, "cuda", gen)
    want_q, want_k = apply_rope(q.clone(), cos, sin), apply_rope(k.clone(), cos, sin)
    cache = torch.zeros(2, 8, 4, hkv, d, dtype=dtype, device="cuda")
    slots = torch.randperm(32, generator=gen)[:t].cuda()
    fused_ops.rope_qk_(q, k, cos, sin, kv_write=(v, cache, slots) if kv_write else None)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    if kv_write:
        flat = cache.view(2, -1, hkv, d)
        assert torch.equal(flat[0][slots], want_k) and torch.equal(flat[1][slots], v)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cuda_model_step_graph_replay_equals_eager(arch):
    """A bf16 decode step of the fused model captured in a CUDA graph replays to the eager result."""
    from dynaspec.models.attention_metadata import AttentionMetadata

    hf = make_tiny_hf_model(arch, seed=40, **({"head_dim": 32} if arch == "qwen3" else {}))
    model = resolve_model_class(hf.config)(hf.config)
    model.load_weights(hf.state_dict().items())
    model = model.to("cuda", torch.bfloat16).eval()
    assert_fused(model)
    harness = PagedHarness(model, device="cuda", dtype=torch.bfloat16)
    prompts = [random_tokens(11, seed=41), random_tokens(6, seed=42)]
    harness.step([("a", prompts[0], 0), ("b", prompts[1], 0)])
    meta = AttentionMetadata.build([1, 1], [12, 7], [harness.tables["a"], harness.tables["b"]], 4, "cuda")
    ids = torch.tensor([5, 9], device="cuda")
    positions = torch.tensor([11, 6], device="cuda")
    with torch.no_grad():
        eager = model(ids, positions, harness.kv_caches, meta).clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(ids, positions, harness.kv_caches, meta)  # warm-up: compile kernels outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(ids, positions, harness.kv_caches, meta)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)

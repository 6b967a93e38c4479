"""Which of the EAGLE head's fused-path pieces changes its bf16 numbers (GPU): the reference (separate
projections) against the fused path with each new piece switched back to the ops it replaced."""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dynaspec.config import EngineConfig  # noqa: E402
from dynaspec.models import eagle_head as eh  # noqa: E402
from dynaspec.models.decode_kernels import decode_kernels_for  # noqa: E402
from dynaspec.models.eagle_head import EagleHeadConfig, random_head  # noqa: E402
from dynaspec.models.loader import load_model  # noqa: E402
from dynaspec.sampling_params import SamplingParams  # noqa: E402
from dynaspec.train_head.record import record_answers  # noqa: E402
from tests.test_eagle_head import _paged_steps  # noqa: E402
from tests.tiny_models import make_tiny_checkpoint  # noqa: E402

target_dir = make_tiny_checkpoint(Path(tempfile.mkdtemp()), "llama", seed=0, num_hidden_layers=4)
cpu_target = load_model(str(target_dir), dtype=torch.float32, device="cpu")
config = EngineConfig(model=str(target_dir), block_size=4, num_kv_blocks=32, max_model_len=64, device="cpu",
                      dtype="float32")
prompt = torch.randint(3, 512, (9,), generator=torch.Generator().manual_seed(1)).tolist()
(example,) = record_answers(cpu_target, config, (0, 1, 2), [prompt],
                            SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True), record_final=True)
device = torch.device("cuda")


def run(dtype, fused, patch=None):
    target = load_model(str(target_dir), dtype=dtype, device="cuda")
    hf_config = target.hf_config
    head = random_head(EagleHeadConfig.for_target(hf_config, "t", [0, 1, 2]), hf_config, seed=3, std=0.2)
    head = head.to(device=device, dtype=dtype).eval()
    if fused:
        kernels = decode_kernels_for(device, True)
        head.midlayer.set_decode_kernels(kernels)
        head.norm.decode_kernels = kernels
    saved = {}
    for name, fn in (patch or {}).items():
        obj, attr = name
        saved[name] = getattr(obj, attr)
        setattr(obj, attr, fn)
    try:
        _, _, steps = _paged_steps(target, head, example, dtype=dtype, device=device)
        with torch.no_grad():
            return [h.float() for h in steps(example.prompt_len + 2, 3)]
    finally:
        for (obj, attr), fn in saved.items():
            setattr(obj, attr, fn)


def no_rope_store(*args, **kwargs):
    return False


def cat_norms(self, embeds, g):
    return torch.cat([self.input_layernorm(embeds), self.hidden_norm(g)], dim=-1)


def plain_forward_add(self, x, residual, store=None):
    summed = residual + x
    return self(summed), summed


from dynaspec.models.rms_norm import RMSNorm  # noqa: E402

for dtype in (torch.float32, torch.bfloat16):
    ref = run(dtype, False)
    lines = {
        "fused (all new)": {},
        "rope kernel off": {(eh, "_fused_rope_and_store"): no_rope_store},
        "norms via cat": {(eh.EagleDecoderLayer, "_input_norms"): cat_norms},
        "forward_add off": {(RMSNorm, "forward_add"): plain_forward_add},
        "all three off": {(eh, "_fused_rope_and_store"): no_rope_store,
                          (eh.EagleDecoderLayer, "_input_norms"): cat_norms,
                          (RMSNorm, "forward_add"): plain_forward_add},
    }
    for label, patch in lines.items():
        got = run(dtype, True, patch)
        diffs = [(g - r).abs().max().item() for g, r in zip(got, ref)]
        bad = [int(((g - r).abs() > 0.03 + 0.03 * r.abs()).sum()) for g, r in zip(got, ref)]
        print(f"{str(dtype):15s} {label:18s} max|diff| per step {['%.4g' % d for d in diffs]} over-tol {bad}")
        for j, (g, r) in enumerate(zip(got, ref)):
            worst = int((g - r).abs().argmax())
            print(f"    step {j}: worst element {worst}: got {g[worst].item():.5g} want {r[worst].item():.5g}; "
                  f"elements differing {int((g != r).sum())} of {g.numel()}")
    print("ref magnitudes", [round(r.abs().max().item(), 3) for r in ref])

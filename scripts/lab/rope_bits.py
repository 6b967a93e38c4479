"""rope_qk_ vs apply_rope bit for bit in bf16 on the GPU (lab)."""
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dynaspec.models import fused_ops
from dynaspec.models.rope import apply_rope
g = torch.Generator(device="cuda").manual_seed(0)
T, H, Hkv, D = 12, 4, 2, 16
for scale in (1.0, 30.0):
    qkv = (torch.randn(T, (H + 2 * Hkv) * D, device="cuda", generator=g) * scale).bfloat16()
    ang = torch.arange(T, device="cuda")[:, None].float() * torch.rand(D // 2, device="cuda", generator=g)[None]
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().bfloat16(), ang.sin().bfloat16()
    q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], -1)
    q, k = q.view(T, H, D), k.view(T, Hkv, D)
    want_q, want_k = apply_rope(q.clone(), cos, sin), apply_rope(k.clone(), cos, sin)
    q2, k2 = q.clone(), k.clone()
    fused_ops.rope_qk_(q2, k2, cos, sin)
    print(f"scale {scale}: q differ {int((q2 != want_q).sum())}/{q2.numel()}, k differ {int((k2 != want_k).sum())}")
    idx = (q2 != want_q).nonzero()
    for t, h, d in idx[:4].tolist():
        half = D // 2
        x = q[t, h].float(); c = cos[t].float(); s = sin[t].float()
        print("  t,h,d", t, h, d, "got", q2[t, h, d].item(), "want", want_q[t, h, d].item(),
              "x", x[d].item(), "partner", x[(d + half) % D].item(), "cos", c[d].item(), "sin", s[d].item())
    # torch's pieces
    a = (q * cos[:, None]); b = torch.cat([-q[..., D // 2:], q[..., :D // 2]], -1) * sin[:, None]
    print("  torch a+b == apply_rope:", bool(torch.equal(a + b, want_q)),
          "; fp32 recompute:", int(((a.float() + b.float()).bfloat16() != want_q).sum()))

"""Which way of writing 'round to the activation dtype, then go on in float32' survives Triton's compiler
(lab, GPU): torch's ops against kernels that round with .to() round trips or with an integer round-to-nearest-
even, with and without fp fusion. Patterns: RoPE (a sum of two rounded products), RMSNorm's tail, SiLU-and-mul."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rne_bf16(x):
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _rt(x, dtype: tl.constexpr, MODE: tl.constexpr):
    if MODE == 0:
        return x.to(dtype).to(tl.float32)
    else:
        return _rne_bf16(x)


@triton.jit
def _k(x_ptr, c_ptr, s_ptr, o_ptr, D: tl.constexpr, MODE: tl.constexpr, PATTERN: tl.constexpr):
    t = tl.program_id(0)
    half: tl.constexpr = D // 2
    d = tl.arange(0, half)
    dtype = o_ptr.dtype.element_ty
    x1 = tl.load(x_ptr + t * D + d).to(tl.float32)
    x2 = tl.load(x_ptr + t * D + half + d).to(tl.float32)
    c1 = tl.load(c_ptr + t * D + d).to(tl.float32)
    s1 = tl.load(s_ptr + t * D + d).to(tl.float32)
    c2 = tl.load(c_ptr + t * D + half + d).to(tl.float32)
    s2 = tl.load(s_ptr + t * D + half + d).to(tl.float32)
    if PATTERN == 0:  # RoPE
        o1 = (_rt(x1 * c1, dtype, MODE) + _rt(-x2 * s1, dtype, MODE)).to(dtype)
        o2 = (_rt(x2 * c2, dtype, MODE) + _rt(x1 * s2, dtype, MODE)).to(dtype)
    elif PATTERN == 1:  # RMSNorm's tail: w * (x * inv).to(dtype), x1 as x, c1 as inv, s1 as w
        o1 = (s1 * _rt(x1 * c1, dtype, MODE)).to(dtype)
        o2 = (s2 * _rt(x2 * c2, dtype, MODE)).to(dtype)
    else:  # SiLU(g) rounded, times u: x1 as g, c1 as u
        o1 = (_rt(x1 / (1.0 + tl.exp(-x1)), dtype, MODE) * c1).to(dtype)
        o2 = (_rt(x2 / (1.0 + tl.exp(-x2)), dtype, MODE) * c2).to(dtype)
    tl.store(o_ptr + t * D + d, o1)
    tl.store(o_ptr + t * D + half + d, o2)


def torch_pattern(pattern, x, c, s):
    half = x.shape[-1] // 2
    if pattern == 0:
        return x * c + torch.cat([-x[..., half:], x[..., :half]], -1) * s
    if pattern == 1:
        return s * (x.float() * c.float()).to(x.dtype)
    return torch.nn.functional.silu(x) * c


g = torch.Generator(device="cuda").manual_seed(0)
T, D = 256, 64
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    x = torch.randn(T, D, device="cuda", generator=g).to(dtype) * 3
    ang = torch.rand(T, D // 2, device="cuda", generator=g) * 6
    ang = torch.cat([ang, ang], -1)
    c, s = ang.cos().to(dtype), ang.sin().to(dtype)
    for pattern, name in ((0, "rope"), (1, "norm tail"), (2, "silu*u")):
        want = torch_pattern(pattern, x, c, s)
        for mode in ((0, 1) if dtype == torch.bfloat16 else (0,)):
            for fusion in (True, False):
                out = torch.empty_like(x)
                _k[(T,)](x, c, s, out, D=D, MODE=mode, PATTERN=pattern, enable_fp_fusion=fusion)
                print(f"{str(dtype):15s} {name:9s} {'to() ' if mode == 0 else 'int-rne'} fp_fusion {fusion!s:5s}: "
                      f"{int((out != want).sum())} of {out.numel()} differ")

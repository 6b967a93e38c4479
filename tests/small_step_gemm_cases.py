"""Shared by tests/test_gemv.py and tests/test_small_gemm.py: one launch of a small-step kernel (the GEMV of
models/gemv.py or the tensor-core GEMM of models/small_gemm.py, case["kernel"]) against a float64 reference,
the subprocess entry point that runs cases under Triton's CPU interpreter, and greedy decoding through an
engine."""

from __future__ import annotations

import json

import torch


def _kernel(name: str):
    from dynaspec.models import gemv, small_gemm  # Triton: imported by the callers' importorskip first

    return {"gemv": gemv.gemv, "small_gemm": small_gemm.small_gemm}[name]


def run_case(case: dict, device: str, dtype: torch.dtype, pdl: bool = False) -> dict:
    """One launch of case["rows"] rows against a float64 reference; `row_invariant`: each row's output has the
    bits the same row gets in a launch of its own (its reduction order does not depend on M)."""
    kernel = _kernel(case.get("kernel", "gemv"))
    gen = torch.Generator().manual_seed(case["seed"])
    n, k = case["shape"]
    rows = case.get("rows", 1)
    x = torch.randn(rows, k, generator=gen).to(dtype).to(device)
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(device)
    bias = torch.randn(n, generator=gen).to(dtype).to(device) if case["bias"] else None
    y = kernel(x, weight, bias, pdl=pdl)
    alone = torch.cat([kernel(x[r : r + 1].contiguous(), weight, bias, pdl=pdl) for r in range(rows)])
    ref = x.cpu().double() @ weight.cpu().double().T
    if bias is not None:
        ref = ref + bias.cpu().double()
    ref = ref.to(dtype)
    return {
        "diff": (y.cpu().float() - ref.float()).abs().max().item(),
        "scale": ref.float().abs().max().item(),
        "nan": bool(torch.isnan(y).any()),
        "shape_ok": tuple(y.shape) == (rows, n) and y.dtype == dtype,
        "row_invariant": torch.equal(y, alone),
    }


def interpreter_main(cases_json: str) -> None:
    """Entry point of the subprocess (TRITON_INTERPRET=1 already set): run the cases on CPU in float16, print
    JSON. Outputs come NaN-poisoned, so an element the kernel fails to write shows up."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    torch.empty = poisoned_empty
    print(json.dumps([run_case(c, "cpu", torch.float16) for c in json.loads(cases_json)]))


def greedy(engine, prompts: list[list[int]], max_tokens: int = 12) -> dict[str, list[int]]:
    """Each prompt's greedy tokens, the prompts decoded together by `engine`."""
    from dynaspec.sampling_params import SamplingParams

    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
    results = {}
    while engine.has_unfinished_requests():
        results.update((o.request_id, o.token_ids) for o in engine.step() if o.finished)
    return results


def check_interpreted(result: dict, case: dict) -> None:
    """An interpreter case's result: every element written, the right shape, each row's bits those of its own
    one-row launch, and within one fp16 rounding of the output plus float32 accumulation error."""
    assert result["shape_ok"] and not result["nan"] and result["row_invariant"], (case, result)
    assert result["diff"] <= 2e-3 * max(result["scale"], 1.0), (case, result)

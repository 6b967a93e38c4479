"""No Triton kernel compiles after start-up (ModelRunner / EagleHeadRunner.compile_eager_kernels): the decode
/ verify attention kernel takes the query length as a compile-time constant, so an eager step of a length
no graph captured (a prompt of a few tokens, a draft model's catch-up of 3 after a k = 0 phase) compiled a
variant mid-run; on an H100 that made one step 2.4 s (docs/lab/adaptive_runs.md). Over contexts of more than
two key tiles the kernel splits the KV and runs a reduce kernel, a variant per query length as well, which
start-up forwards on a one-block table never launched (an EAGLE head's catch-up fed ahead at batch 64: one
step of 1,035 ms, issue 21)."""

from __future__ import annotations

import pytest
import torch

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _compiled_variants() -> dict[str, int]:
    """Compiled variants per Triton kernel of our attention modules (triton.runtime.jit.JITFunction's
    per-device kernel cache)."""
    from dynaspec.models import triton_attention, triton_prefill_attention

    counts = {}
    for module in (triton_attention, triton_prefill_attention):
        for name, fn in vars(module).items():
            caches = getattr(fn, "device_caches", None)
            if caches is None:
                continue
            counts[f"{module.__name__}.{name}"] = sum(len(entry[0]) for entry in caches.values())
    if not counts:
        pytest.skip("this Triton keeps its compiled kernels elsewhere (no JITFunction.device_caches)")
    return counts


@cuda
@pytest.mark.cuda
def test_no_kernel_compiles_after_start_up(tmp_path):
    target = make_tiny_checkpoint(tmp_path, "llama", seed=0)
    near = make_perturbed_checkpoint(tmp_path, "llama", seed=0, noise=0.004)
    # batch 2 runs k = 0, batch 1 k = 2: the longer request's draft model catches up on the whole k = 0 phase
    spec = DraftTargetDecodingConfig(max_draft_len=2, speculative_model=str(near), draft_len_schedule={1: 2, 2: 0})
    engine = LLMEngine(EngineConfig(
        model=str(target), block_size=4, max_num_seqs=4, dtype="float32", device="cuda", speculative_config=spec,
    ))
    before = _compiled_variants()
    gen = torch.Generator().manual_seed(3)
    # prompts of 3..12 tokens, k = 0 phases of 3..8; a 300-token prompt: catch-ups over contexts of more than
    # two key tiles, where the decode kernel splits the KV and runs its reduce kernel
    for prompt_len, short in ((3, 4), (5, 6), (7, 8), (12, 3), (300, 6)):
        prompts = [torch.randint(0, 512, (prompt_len,), generator=gen).tolist() for _ in range(2)]
        engine.add_request(f"short-{prompt_len}", prompts[0], SamplingParams(max_tokens=short, temperature=0.0, ignore_eos=True))
        engine.add_request(f"long-{prompt_len}", prompts[1], SamplingParams(max_tokens=short + 12, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
    assert engine.drafter.num_forwards > 0  # the draft model ran (its catch-ups among them)
    assert _compiled_variants() == before

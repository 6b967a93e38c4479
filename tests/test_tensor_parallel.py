"""Tensor parallelism on CPU (gloo): greedy output token-identical to tensor_parallel_size 1, with and
without speculation under a schedule crossing k = 0; a dead worker is a clear error; bad sizes are
refused with a message (issue 25).

float32 row-parallel GEMMs add their partial sums in another order than one GEMM, so the logits differ
in the last bits; the greedy tokens of these prompts must still be equal, token for token.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.models.tensor_parallel import check_tensor_parallel, kv_head_range
from dynaspec.runtime.tp_launcher import TensorParallelWorkerError, check_devices
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests.tiny_models import make_tiny_config, make_tiny_hf_model

# Qwen2.5-0.5B's head layout (14 query heads, 2 KV heads: one KV head per rank at TP 2, each serving 7
# query heads); hidden 224 (head_dim 16) and 2 layers instead of 896 and 24, for speed.
QWEN_05B_HEADS = dict(num_attention_heads=14, num_key_value_heads=2, hidden_size=224, intermediate_size=256)
ENGINE = dict(dtype="float32", device="cpu", max_num_seqs=4, max_model_len=256)
# k = 3 while one request decodes, plain decoding (k = 0) while two or more do. `_staggered` runs one
# request alone first (k = 3: it proposes, and the shared n-gram pool indexes it), then adds the others
# (k = 0), and the longest finishes alone (k = 3 again: the drafter catches up on what it missed).
SCHEDULE = {1: 3, 2: 0}


def _qwen_shaped(root: Path, seed: int, noise: float = 0.0) -> str:
    """A random Qwen2-architecture checkpoint with Qwen2.5-0.5B's heads; noise > 0: the seed's weights
    nudged by noise x N(0, 1) (a draft that agrees often but not always)."""
    model = make_tiny_hf_model("qwen2", seed, **QWEN_05B_HEADS)
    if noise:
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * noise)
    out = root / f"qwen05b-shaped-seed{seed}-noise{noise}"
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tp-qwen")
    return {"target": _qwen_shaped(root, 3), "draft": _qwen_shaped(root, 3, noise=0.05)}


def _generate(llm: LLM, prompts, lengths: list[int]) -> list[list[int]]:
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
    return [list(o.token_ids) for o in llm.generate(prompts, params)]


def _staggered(llm: LLM, prompts, lengths: list[int]) -> list[list[int]]:
    """Greedy tokens of each prompt: the first runs alone for two steps (prefill, one decode), then the
    others join; every request runs to its length."""
    engine = llm.engine
    tokens: dict[str, list[int]] = {}

    def add(n: int) -> None:
        engine.add_request(f"r{n}", prompts[n], SamplingParams(temperature=0, max_tokens=lengths[n], ignore_eos=True))

    def step() -> None:
        for out in engine.step():
            tokens[out.request_id] = list(out.token_ids)

    add(0)
    step()
    step()
    for n in range(1, len(prompts)):
        add(n)
    while engine.has_unfinished_requests():
        step()
    return [tokens[f"r{n}"] for n in range(len(prompts))]


def _assert_crossed_k0(llm: LLM) -> None:
    """Steps at k = 0 and at k = 3 both ran, and drafts were made."""
    stats = llm.get_stats()
    draft_lens = {k for per_batch in stats["k_histogram"].values() for k in per_batch}
    assert {"0", "3"} <= draft_lens, stats["k_histogram"]
    assert stats["drafted"] > 0


def _specs(draft_model: str) -> dict[str, object]:
    return {
        "plain": None,
        "ngram": NGramDecodingConfig(max_draft_len=3, draft_len_schedule=SCHEDULE),
        "draft_model": DraftTargetDecodingConfig(max_draft_len=3, speculative_model=draft_model,
                                                 draft_len_schedule=SCHEDULE),
    }


@pytest.fixture(scope="module")
def qwen_expected(qwen_dirs) -> tuple[list[list[int]], list[int], list[list[int]]]:
    """(prompts, lengths, greedy tokens at tensor_parallel_size 1). Random weights: the first prompt is the
    second plus the start of its own greedy continuation, so the n-gram pool holds what the second
    request generates next."""
    second = [11, 12, 13, 11, 12, 13, 11, 12]
    lengths = [4, 14, 3]
    with LLM(model=qwen_dirs["target"], block_size=4, **ENGINE) as reference:
        (continuation,) = _generate(reference, [second], [16])
        prompts = [second + continuation[:16], second, [7, 8, 9, 10]]
        return prompts, lengths, _staggered(reference, prompts, lengths)


@pytest.mark.parametrize("kind", ["plain", "ngram", "draft_model"])
def test_tp2_qwen05b_heads_greedy_equals_tp1(qwen_dirs, qwen_expected, kind):
    prompts, lengths, expected = qwen_expected
    spec = _specs(qwen_dirs["draft"])[kind]
    with LLM(model=qwen_dirs["target"], block_size=4, tensor_parallel_size=2, speculative_config=spec, **ENGINE) as llm:
        assert _staggered(llm, prompts, lengths) == expected
        if spec is not None:
            _assert_crossed_k0(llm)


SMOLLM2_PROMPTS = ["1, 2, 3, 4, 5, 6, 7,", "1, 2, 3, 4,", "The capital of France is"]
SMOLLM2_LENGTHS = [4, 10, 3]


@pytest.fixture(scope="module")
def smollm2_expected(smollm2_dir) -> list[list[int]]:
    with LLM(model=str(smollm2_dir), **ENGINE) as reference:
        return _staggered(reference, SMOLLM2_PROMPTS, SMOLLM2_LENGTHS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "ngram", "draft_model"])
def test_tp3_smollm2_greedy_equals_tp1(smollm2_dir, smollm2_expected, kind):
    """SmolLM2-135M: 9 heads and 3 KV heads over 3 ranks (3 query heads and 1 KV head each). The draft
    model is SmolLM2 itself, unsharded on rank 0."""
    model = str(smollm2_dir)
    spec = _specs(model)[kind]
    with LLM(model=model, tensor_parallel_size=3, speculative_config=spec, **ENGINE) as llm:
        assert _staggered(llm, SMOLLM2_PROMPTS, SMOLLM2_LENGTHS) == smollm2_expected
        if spec is not None:
            _assert_crossed_k0(llm)


def test_dead_worker_is_a_clear_error_and_shutdown_leaves_no_process(qwen_dirs):
    llm = LLM(model=qwen_dirs["target"], block_size=4, tensor_parallel_size=2, **ENGINE)
    workers = llm.engine.workers
    (process,) = workers.processes
    assert _generate(llm, [[1, 2, 3]], [2])  # it runs
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    with pytest.raises(TensorParallelWorkerError, match=r"rank 1 \(pid \d+\) killed by SIGKILL.*cannot run another step"):
        _generate(llm, [[1, 2, 3]], [2])
    llm.shutdown()
    assert all(not p.is_alive() for p in workers.processes)
    with pytest.raises(TensorParallelWorkerError, match="stopped"):
        _generate(llm, [[1, 2, 3]], [2])


def test_shutdown_stops_every_worker(qwen_dirs):
    llm = LLM(model=qwen_dirs["target"], block_size=4, tensor_parallel_size=2, **ENGINE)
    processes = list(llm.engine.workers.processes)
    assert all(p.is_alive() for p in processes)
    llm.shutdown()
    assert [p.exitcode for p in processes] == [0]  # told to stop, it left its loop and exited cleanly
    llm.shutdown()  # idempotent


def test_size_not_dividing_the_heads_is_refused_before_any_worker_starts(qwen_dirs):
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 must divide the model's 14 attention heads; "
                                         r"allowed: 1, 2, 7, 14"):
        LLM(model=qwen_dirs["target"], tensor_parallel_size=4, **ENGINE)


def test_size_checks():
    config = make_tiny_config("llama", num_attention_heads=8, num_key_value_heads=2, intermediate_size=96)
    check_tensor_parallel(config, 2)
    check_tensor_parallel(config, 4)  # 2 KV heads over 4 ranks: each replicated twice
    with pytest.raises(ValueError, match="must divide the model's 8 attention heads"):
        check_tensor_parallel(config, 3)
    with pytest.raises(ValueError, match="must divide the model.s intermediate_size 100"):
        check_tensor_parallel(make_tiny_config("llama", num_attention_heads=8, num_key_value_heads=8,
                                               intermediate_size=100), 8)
    odd_kv = make_tiny_config("llama", hidden_size=96, num_attention_heads=12, num_key_value_heads=3, head_dim=8,
                              intermediate_size=96)
    with pytest.raises(ValueError, match="3 KV heads: one must divide the other"):
        check_tensor_parallel(odd_kv, 2)
    with pytest.raises(ValueError, match=r"needs 4 CUDA devices \(cuda:0..cuda:3\), but 2 are visible; use at most 2"):
        check_devices(4, torch.device("cuda", 0), 2)
    check_devices(2, torch.device("cuda", 0), 2)


def test_kv_heads_split_or_replicated():
    assert [kv_head_range(8, 4, r) for r in range(4)] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert [kv_head_range(2, 4, r) for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    assert [kv_head_range(3, 3, r) for r in range(3)] == [(0, 1), (1, 1), (2, 1)]


def test_config_refuses_a_size_below_one():
    from dynaspec.config import EngineConfig

    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)


_RANK0_SCRIPT = """
import sys
from dynaspec import LLM, SamplingParams
llm = LLM(model=sys.argv[1], block_size=4, tensor_parallel_size=2, dtype="float32", device="cpu",
          max_num_seqs=4, max_model_len=256)
print(*(p.pid for p in llm.engine.workers.processes), flush=True)
while True:  # until Ctrl-C or SIGKILL
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=8))
"""


def _gone(pid: int) -> bool:
    """The process ended (a zombie counts: it runs nothing, and init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "rank0-killed"])
def test_no_worker_outlives_rank0(qwen_dirs, how):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or a SIGKILL of rank 0 while it
    generates: every worker process ends too."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", _RANK0_SCRIPT, qwen_dirs["target"]], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 1 and not _gone(pids[0])
        if how == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        proc.wait(timeout=120)
        deadline = time.monotonic() + 120  # a bound for a loaded machine, not a timing assertion
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_flag_reaches_the_engine_and_a_bad_size_is_one_line(qwen_dirs):
    from typer.testing import CliRunner

    from dynaspec.cli import app

    result = CliRunner().invoke(app, ["generate", "--model", qwen_dirs["target"], "--device", "cpu",
                                      "--tensor-parallel-size", "3", "--max-tokens", "2", "--no-chat", "1 2 3"])
    assert result.exit_code == 2
    assert "tensor_parallel_size=3 must divide the model's 14 attention heads" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["generate", "--model", qwen_dirs["target"], "--tensor-parallel-size", "0"])
    assert result.exit_code == 2 and "--tensor-parallel-size" in result.output


def test_bench_sweeps_a_sharded_engine_and_reports_the_per_gpu_floor(qwen_dirs, tmp_path):
    """`dynaspec bench --tensor-parallel-size 2` builds each line's engine sharded (the TP-2 goodput sweep of
    issue 25): every point decodes its tokens, the weight bytes behind the floor are rank 0's shard (about half
    of TP 1's), and no worker outlives the sweep. A shared-weights sweep (--rounds > 1) or an HF comparison
    cannot shard: refused in one line."""
    import json
    import multiprocessing

    from typer.testing import CliRunner

    from dynaspec.cli import app

    common = ["bench", "--model", qwen_dirs["target"], "--device", "cpu", "--dtype", "float32", "--drafter", "ngram",
              "--max-draft-len", "2", "--ks", "0,2", "--no-schedule-line", "--batch-sizes", "1,2", "--prompt-len",
              "8", "--gen-len", "6", "--no-plots", "--no-warmup"]
    meta = {}
    for size in (1, 2):
        out = tmp_path / f"tp{size}"
        result = CliRunner().invoke(app, [*common, "--tensor-parallel-size", str(size), "--out-dir", str(out)])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "bench.json").read_text())
        meta[size] = report["metadata"]
        assert meta[size]["tensor_parallel_size"] == size
        assert {(p["line"], p["batch_size"]) for p in report["points"]} == {
            (line, b) for line in ("no spec", "k=2") for b in (1, 2)}
        assert all(p["decode_tokens"] == p["batch_size"] * 5 for p in report["points"])
    assert 0.4 < meta[2]["weight_bytes"] / meta[1]["weight_bytes"] < 0.6
    assert multiprocessing.active_children() == []
    for extra, message in ((["--rounds", "2"], "cannot share (each shards its own): use rounds=1"),
                           (["--compare-hf"], "HF transformers needs the whole model in one process")):
        result = CliRunner().invoke(app, [*common, "--tensor-parallel-size", "2", *extra,
                                          "--out-dir", str(tmp_path / "refused")])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.mark.cuda
@two_gpus
@pytest.mark.parametrize("kind", ["plain", "ngram", "draft_model"])
def test_tp2_nccl_cuda_graphs_greedy_equals_tp1(qwen_dirs, qwen_expected, kind):
    """The NCCL path on two GPUs, float32: per-rank CUDA graphs with the all-reduces captured, overlapped
    decode's device ids broadcast device to device, the cost probe through the sharded runner."""
    prompts, lengths, expected = qwen_expected
    gpu = dict(ENGINE, device="cuda")
    with LLM(model=qwen_dirs["target"], block_size=4, **gpu) as reference:
        cuda_expected = _staggered(reference, prompts, lengths)
    spec = _specs(qwen_dirs["draft"])[kind]
    with LLM(model=qwen_dirs["target"], block_size=4, tensor_parallel_size=2, speculative_config=spec, **gpu) as llm:
        assert llm.engine.runner.graphs is not None  # graphs captured on both ranks
        assert _staggered(llm, prompts, lengths) == cuda_expected
        if spec is not None:
            _assert_crossed_k0(llm)


@pytest.mark.cuda
@two_gpus
def test_tp2_nccl_dead_worker_is_a_clear_error(qwen_dirs):
    llm = LLM(model=qwen_dirs["target"], block_size=4, tensor_parallel_size=2, **dict(ENGINE, device="cuda"))
    (process,) = llm.engine.workers.processes
    assert _generate(llm, [[1, 2, 3]], [2])
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    with pytest.raises(TensorParallelWorkerError, match="rank 1"):
        _generate(llm, [[1, 2, 3]], [2])
    llm.shutdown()

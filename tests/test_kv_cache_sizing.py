"""choose_num_blocks / cpu_kv_budget / allocate_kv_cache: the KV pool sized by need where memory is not the
GPU's, and on the CPU zeros that cost nothing until written."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from dynaspec.runtime.kv_cache import (
    CPU_KV_BUDGET_CAP,
    allocate_kv_cache,
    choose_num_blocks,
    cpu_kv_budget,
    kv_bytes_per_block,
    zeroed_host_tensor,
)

CPU = torch.device("cpu")
GIB = 1 << 30
PLENTY = 64 * GIB  # available memory that never binds


def _blocks(max_num_seqs, max_model_len, bytes_per_block=1 << 20, block_size=16, **kw):
    kw.setdefault("available_bytes", PLENTY)
    return choose_num_blocks(bytes_per_block, CPU, block_size, max_num_seqs, max_model_len, 0.9, **kw)


def test_cpu_pool_is_what_the_sequences_need_when_that_is_small():
    # 4 sequences x (1000 + 4 draft) tokens in blocks of 16: 4 x 63 blocks, far under the cap.
    assert _blocks(4, 1004, bytes_per_block=1024) == 4 * 63


def test_cpu_pool_is_capped_at_one_gib_by_default():
    # The SmolLM2-135M default: 64 x 8192 tokens would be 24 GiB of fp32 KV; the pool stops at 1 GiB.
    per_block = 2 * 30 * 16 * 3 * 64 * 4  # layers 30, block 16, 3 KV heads, head_dim 64, fp32
    blocks = _blocks(64, 8192, bytes_per_block=per_block)
    assert blocks == CPU_KV_BUDGET_CAP // per_block
    assert blocks * per_block <= GIB and blocks >= 8192 // 16


def test_cpu_cap_follows_available_memory():
    assert cpu_kv_budget(None) == CPU_KV_BUDGET_CAP
    assert cpu_kv_budget(64 * GIB) == CPU_KV_BUDGET_CAP
    assert cpu_kv_budget(2 * GIB) == GIB // 2  # a quarter of what is available
    assert _blocks(64, 8192, bytes_per_block=1 << 20, available_bytes=2 * GIB) == 512


def test_cpu_pool_holds_at_least_one_full_sequence():
    # Budget of 10 blocks, but one sequence of 4096 tokens needs 256: the engine's minimum wins.
    assert _blocks(8, 4096, bytes_per_block=1 << 20, cpu_budget_bytes=10 << 20) == 256
    assert _blocks(1, 100, bytes_per_block=1 << 40) == 7


def test_explicit_cpu_budget_wins_over_the_default():
    assert _blocks(64, 8192, bytes_per_block=1 << 20, cpu_budget_bytes=4 * GIB) == 4096


@pytest.mark.parametrize("bad", [dict(max_num_seqs=0), dict(max_model_len=0), dict(bytes_per_block=0)])
def test_nonpositive_sizes_are_rejected(bad):
    args = dict(max_num_seqs=4, max_model_len=64, bytes_per_block=1024) | bad
    with pytest.raises(ValueError, match="must be positive"):
        _blocks(**args)


class _Shape:
    num_layers, num_kv_heads, head_dim = 3, 2, 8


def test_allocate_shapes_and_bytes_per_block():
    caches = allocate_kv_cache(_Shape(), 5, 4, torch.float32, CPU)
    assert len(caches) == 3 and all(c.shape == (2, 5, 4, 2, 8) for c in caches)
    assert kv_bytes_per_block(_Shape(), 4, torch.float32) == sum(c[:, 0].numel() * 4 for c in caches)


class _Big:
    num_layers, num_kv_heads, head_dim = 2, 8, 128  # 64 KiB a float32 block of 16 slots


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_cpu_pool_is_zeros_that_take_memory_only_when_written():
    before = _rss_bytes()
    caches = allocate_kv_cache(_Big(), 2048, 16, torch.float32, CPU)  # 2 x 256 MiB
    assert _rss_bytes() - before < 32 << 20  # nothing written yet: no page is resident
    assert all(c.shape == (2, 2048, 16, 8, 128) and c.dtype == torch.float32 for c in caches)
    assert all(torch.count_nonzero(c) == 0 for c in caches)
    caches[1][0, 7, 3] = 2.5  # written like any tensor
    assert caches[1].sum().item() == 2.5 * 8 * 128 and caches[0].sum().item() == 0


def test_zeroed_host_tensor_keeps_its_memory_while_any_view_lives():
    view = zeroed_host_tensor((4, 1024, 64), torch.bfloat16)[2]
    gc.collect()
    view.fill_(1.5)
    assert view.dtype == torch.bfloat16 and view.shape == (1024, 64) and view.float().sum().item() == 1.5 * 1024 * 64
    assert zeroed_host_tensor((0, 8), torch.float16).shape == (0, 8)

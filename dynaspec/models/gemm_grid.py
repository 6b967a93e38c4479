"""The program order of the invariant GEMM's kernels (batch_invariant.py, batch_invariant_tma.py): grouped, so
that GROUP_M programs in a row share the W tiles they stream (L2 reuse across M tiles). Which tile a program
owns, never how a tile is computed."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program `pid` -> its output tile (pid_m, pid_n)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = (pid // group_size) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % group_size) % rows_in_group, (pid % group_size) // rows_in_group

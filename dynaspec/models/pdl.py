"""Programmatic dependent launch (PDL) for Triton kernels: the in-kernel wait and the launch option.

A kernel launched with `launch_pdl=True` may start while the kernel before it in the stream still runs
(CUDA programming guide, "Programmatic Dependent Launch and Synchronization"; Triton's tutorial 11).
Every such kernel calls `wait_for_previous_kernel` before it touches memory the previous kernel may
write, which blocks until that kernel has completed and flushed; then it releases the next kernel's
launch. A kernel launched without PDL has nothing to wait for and the wait returns at once.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    """With PDL: wait until the previous kernel has finished, then let the next kernel launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def launch_options(pdl: bool) -> dict:
    """Keyword arguments of a Triton launch with PDL on (none when off: the CPU interpreter lacks it)."""
    return {"launch_pdl": True} if pdl else {}

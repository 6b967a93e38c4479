"""Run Triton kernels on the CPU: a test module's worker function in a subprocess under Triton's
interpreter (TRITON_INTERPRET=1 must be set before Triton is imported, so not in the pytest process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_interpreted(module: str, worker: str, cases: list) -> list:
    """Call `module.worker(json.dumps(cases))` under the interpreter; it prints a JSON list as its last line,
    which is returned. Fails the calling test with the subprocess's stderr when it exits non-zero."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = f"import sys; from {module} import {worker}; {worker}(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def patch_interpreter() -> None:
    """In the subprocess, before any kernel runs: Triton 3.6's interpreter calls int() on a 1-element array
    for a run-time loop bound, which numpy >= 2.4 refuses (triton-lang/triton#9171, fixed upstream by #9172):
    apply that fix."""
    import triton.runtime.interpreter as interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched

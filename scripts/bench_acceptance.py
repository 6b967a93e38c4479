"""Issue-3 benchmark: acceptance profiles and tokens/s of n-gram and draft-model speculation.

Thin wrapper around `python -m dynaspec.bench.acceptance` (see that module for the profile schema).
Not run in CI: the default target is Qwen2.5-Coder-1.5B in fp32 on CPU (tens of minutes).

    python scripts/bench_acceptance.py --num-prompts 3 --max-tokens 96
"""

from dynaspec.bench.acceptance import main

if __name__ == "__main__":
    raise SystemExit(main())

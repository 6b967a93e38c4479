"""Host time of the n-gram drafter's propose() in the steady state of a batch (issue 20: how much of a speculative
n-gram step's time over its probe the drafter is): `batch` requests with random `--prompt-len`-token prompts, the
first propose (which indexes every prompt), then `--steps` proposes after each request gained 1, 2, 3 or 5 tokens.

    python scripts/lab/ngram_steady_bench.py 32 64 128
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field

from dynaspec.spec.config import NGramDecodingConfig
from dynaspec.spec.ngram import NGramDrafter


@dataclass
class _Request:
    """The part of runtime.Request the drafter reads."""

    request_id: str
    tokens: list[int] = field(default_factory=list)
    status: object = None

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def tokens_from(self, start: int) -> list[int]:
        return self.tokens[start:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", type=int, nargs="+")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--max-draft-len", type=int, default=4)
    args = parser.parse_args()
    for batch in args.batches:
        rng = random.Random(0)
        drafter = NGramDrafter(NGramDecodingConfig(max_draft_len=args.max_draft_len))
        requests = [_Request(f"r{i}", [rng.randrange(args.vocab) for _ in range(args.prompt_len)])
                    for i in range(batch)]
        start = time.perf_counter()
        drafter.propose(requests, args.max_draft_len)
        first = time.perf_counter() - start
        steady = []
        for _ in range(args.steps):
            for request in requests:
                request.tokens.extend(rng.randrange(args.vocab) for _ in range(rng.choice((1, 2, 3, 5))))
            start = time.perf_counter()
            drafter.propose(requests, args.max_draft_len)
            steady.append(time.perf_counter() - start)
        median = statistics.median(steady)
        print(f"batch {batch}: first propose {first * 1e3:.2f} ms, steady median {median * 1e3:.3f} ms "
              f"({median / batch * 1e6:.1f} us a request)")


if __name__ == "__main__":
    main()

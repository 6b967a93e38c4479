"""EAGLE-3's draft vocabulary (Li et al. 2025, arXiv 2503.01840): the head predicts over the target tokens its
training answers use most, through an lm_head of its own over those rows (models/eagle_head.py), so a draft
step reads a fraction of the target's lm_head. EAGLE-3 keeps 32k of Llama-3's 128k tokens.
"""

from __future__ import annotations

from collections import Counter

import torch

from dynaspec.train_head.record import Example


def draft_vocabulary(examples: list[Example], size: int, vocab_size: int) -> tuple[torch.Tensor, float]:
    """The `size` target token ids the examples' answers use most (ties: the lower id; too few distinct answer
    tokens: their prompts' next, then the lowest unused ids), sorted increasing (EagleHead.draft_to_target);
    and the share of answer tokens they cover."""
    answers = Counter()
    prompts = Counter()
    for example in examples:
        answers.update(example.token_ids[example.prompt_len :])
        prompts.update(example.token_ids[: example.prompt_len])
    chosen: list[int] = []
    taken: set[int] = set()
    for counts in (answers, prompts):
        for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            if len(chosen) == size:
                break
            if token not in taken and 0 <= token < vocab_size:
                chosen.append(token)
                taken.add(token)
    filler = (token for token in range(vocab_size) if token not in taken)
    chosen.extend(next(filler) for _ in range(size - len(chosen)))
    total = sum(answers.values())
    covered = sum(count for token, count in answers.items() if token in taken)
    return torch.tensor(sorted(chosen), dtype=torch.int64), covered / total if total else 1.0

"""Incremental batched detokenisation gives the same text as decoding the whole output."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from dynaspec.runtime.detokenizer import DetokenizerState, IncrementalDetokenizer

TEXTS = [
    "def add(a, b):\n    return a + b  # sum\n",
    "Grüße aus Zürich — naïve café, 東京タワー and emoji 🚀🔥 mixed in.",
    "  leading spaces, tabs\tand\nnewlines\n\n",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_text_is_a_prefix_of_and_ends_equal_to_full_decode(tokenizer, seed):
    detok = IncrementalDetokenizer(tokenizer)
    rng = random.Random(seed)
    outputs = [tokenizer.encode(t) for t in TEXTS]
    # byte-level pieces of a multi-byte character split over tokens: random ids too
    outputs.append([rng.randrange(len(tokenizer)) for _ in range(40)])
    grown = [[] for _ in outputs]
    texts = ["" for _ in outputs]
    states = [DetokenizerState() for _ in outputs]
    while any(len(g) < len(o) for g, o in zip(grown, outputs)):
        for g, o in zip(grown, outputs):
            g.extend(o[len(g) : len(g) + rng.randint(1, 3)])  # speculative steps commit 1..3 tokens
        texts = detok.update(texts, grown, states)
        for text, g in zip(texts, grown):
            full = tokenizer.decode(g, skip_special_tokens=True)
            assert full.startswith(text), (text, full)
            if not full.endswith("\ufffd"):  # nothing incomplete: the text is exactly up to date
                assert text == full
    for text, g in zip(texts, grown):
        full = tokenizer.decode(g, skip_special_tokens=True)
        if not full.endswith("\ufffd"):
            assert text == full
    assert detok.decode_batch(outputs[:3]) == TEXTS  # byte-level BPE round-trips


def test_without_tokenizer_text_stays_empty():
    detok = IncrementalDetokenizer(None)
    assert detok.update([""], [[1, 2, 3]], [DetokenizerState()]) == [""]
    assert detok.decode([1, 2]) == ""

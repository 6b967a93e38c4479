"""Incremental, batched detokenisation of generated tokens.

Decoding a request's whole output every step costs O(length) per request per step. Instead each
request keeps two offsets into its output tokens (the algorithm of vLLM's `detokenize_incrementally`,
after text-generation-inference): `prefix_offset` .. `read_offset` is a short window of tokens already
turned into text, kept as left context because a token's text can depend on its neighbours (leading
spaces, multi-byte characters split over several byte-level tokens). Each step decodes, for every
request (straight into the Rust tokenizer, without transformers' per-call Python layers), the window
alone and the window plus the new tokens; the new text is the difference. A difference ending in
U+FFFD (an incomplete UTF-8 sequence) is held back until a later token completes it. A finished
request gets one full decode (OutputProcessor.update_texts), so its final text always equals decoding
the whole output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class DetokenizerState:
    """Per-request offsets into its output tokens (see module docstring)."""

    prefix_offset: int = 0
    read_offset: int = 0


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # A borrowed tokenizer (random-weight presets) may know fewer ids than the model emits.
        self.tokenizer_size = len(tokenizer) if tokenizer is not None else 0
        # The Rust tokenizer's decode skips transformers' per-call Python overhead; it is the same
        # text as tokenizer.decode unless the tokenizer post-processes (clean_up_tokenization_spaces).
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = None if getattr(tokenizer, "clean_up_tokenization_spaces", False) else backend

    def _ids(self, token_ids: Sequence[int]) -> list[int]:
        size = self.tokenizer_size
        return [t for t in token_ids if t < size]

    def decode_batch(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """Full decode of each sequence (special tokens skipped)."""
        if self.tokenizer is None:
            return ["" for _ in sequences]
        ids = [self._ids(s) for s in sequences]
        if self._backend is not None:  # a loop, not decode_batch: its thread pool costs more than it saves here
            decode = self._backend.decode
            return [decode(s, skip_special_tokens=True) for s in ids]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.decode_batch([token_ids])[0]

    def update(self, texts: list[str], outputs: Sequence[Sequence[int]], states: Sequence[DetokenizerState]) -> list[str]:
        """Extend each request's text with the text of its tokens past `read_offset`.

        texts[i]: request i's text so far; outputs[i]: all its output tokens; states[i]: its offsets
        (advanced in place). Returns the new texts.
        """
        if self.tokenizer is None or not outputs:
            return list(texts)
        windows = [out[s.prefix_offset : s.read_offset] for out, s in zip(outputs, states)]
        extended = [out[s.prefix_offset :] for out, s in zip(outputs, states)]
        decoded = self.decode_batch(windows + extended)
        prefix_texts, full_texts = decoded[: len(windows)], decoded[len(windows) :]
        result = []
        for text, out, state, prefix_text, full_text in zip(texts, outputs, states, prefix_texts, full_texts):
            if len(full_text) > len(prefix_text) and not full_text.endswith(REPLACEMENT_CHAR):
                text += full_text[len(prefix_text) :]
                state.prefix_offset = state.read_offset
                state.read_offset = len(out)
            result.append(text)
        return result

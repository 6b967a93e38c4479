"""Committing sampled tokens to a request: stop conditions and detokenisation.

A speculative step commits several tokens at once; they are appended one at a time so that a stop
condition in the middle (EOS, a stop token id, max_tokens, max_model_len, a stop string) ends the
request at exactly the token where the non-speculative engine would have ended it.
"""

from __future__ import annotations

from dynaspec.engine.request import Request


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int):
        self.tokenizer = tokenizer
        # A borrowed tokenizer (random-weight presets) may know fewer ids than the model emits.
        self.tokenizer_size = len(tokenizer) if tokenizer is not None else 0
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([t for t in token_ids if t < self.tokenizer_size], skip_special_tokens=True)

    def commit(self, request: Request, tokens: list[int]) -> list[int]:
        """Append `tokens` until a stop condition; set finish_reason. Returns the tokens kept."""
        params = request.params
        kept: list[int] = []
        stopped_by_string = False
        for token in tokens:
            request.output_token_ids.append(token)
            kept.append(token)
            if not params.ignore_eos and token in self.eos_token_ids:
                request.finish_reason, request.stop_reason = "stop", None
                break
            if token in params.stop_token_ids:
                request.finish_reason, request.stop_reason = "stop", token
                break
            if params.stop and self._check_stop_strings(request):
                stopped_by_string = True
                break
            if request.num_output_tokens >= params.max_tokens or request.num_tokens >= self.max_model_len:
                request.finish_reason = "length"
                break
        if not stopped_by_string:
            request.output_text = self.decode(request.output_token_ids)
        return kept

    def _check_stop_strings(self, request: Request) -> bool:
        text = self.decode(request.output_token_ids)
        hits = [(text.find(s), s) for s in request.params.stop if s in text]
        if not hits:
            request.output_text = text
            return False
        position, stop = min(hits)
        end = position + len(stop) if request.params.include_stop_str_in_output else position
        request.output_text = text[:end]
        request.finish_reason, request.stop_reason = "stop", stop
        return True

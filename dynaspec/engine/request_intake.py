"""A new request checked at the engine's boundary (LLMEngine.add_request): its id, parameters and prompt,
with a ValueError / TypeError that names what is wrong and what is allowed; nothing is queued on error."""

from __future__ import annotations

from collections.abc import Container

import torch

from dynaspec.runtime.request import Request
from dynaspec.sampling_params import SamplingParams


def new_request(
    request_id: str,
    prompt: str | list[int],
    params: SamplingParams | None,
    *,
    in_use: Container[str],
    tokenizer,
    model_name: str,
    vocab_size: int,
    max_model_len: int,
    device: torch.device,
) -> Request:
    """The Request for `prompt` (text, tokenized here, or token ids), validated."""
    params = params if params is not None else SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
    if not isinstance(request_id, str) or not request_id:
        raise ValueError("request_id must be a non-empty string")
    if request_id in in_use:
        raise ValueError(f"request_id {request_id!r} is already in use")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"model {model_name!r} has no tokenizer: pass the prompt as a list of token ids")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"prompt is not valid Unicode text: {exc.reason} at character {exc.start} "
                f"({prompt[exc.start:exc.end]!r}); send UTF-8 text or a list of token ids"
            ) from None
        prompt_text, token_ids = prompt, tokenizer.encode(prompt)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt_text, token_ids = None, list(prompt)
    else:
        raise TypeError("prompt must be a string or a list of integer token ids")
    if not token_ids:
        raise ValueError("prompt is empty: it must hold at least one token")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    if len(token_ids) >= max_model_len:
        raise ValueError(
            f"prompt is {len(token_ids)} tokens; max_model_len is {max_model_len}, which leaves no room "
            "to generate: shorten the prompt or raise max_model_len"
        )
    generator = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)
    return Request(request_id, prompt_text, token_ids, params, generator=generator)

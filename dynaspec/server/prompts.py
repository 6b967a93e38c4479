"""Prompt preparation off the event loop and off the engine thread, with sizes bounded first.

A prompt's characters are counted before any tokenizer work: a string prompt (or a chat's messages,
together) longer than `max_prompt_chars` is refused with a 400 at once. The default bound is
`CHARS_PER_TOKEN_BOUND` characters per token of the engine's `max_model_len`: a prompt that long cannot
fit the context window with any tokenizer whose tokens average fewer characters, so nothing a model
could accept is refused, and no huge prompt is ever tokenized only to be refused.

Chat templates and tokenization then run in a worker thread (starlette's `run_in_threadpool`), never on
the event loop (where they would stall every stream) nor on the engine thread (where they would stall
every step): the engine receives token ids.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from dynaspec.server import protocol as P
from dynaspec.server.errors import invalid_request

CHARS_PER_TOKEN_BOUND = 32


def default_max_prompt_chars(max_model_len: int | None) -> int | None:
    """The prompt character bound derived from the context length (None: no bound known)."""
    return None if max_model_len is None else CHARS_PER_TOKEN_BOUND * max_model_len


class PromptPreparer:
    """Turns request prompts into token ids. `tokenizer` may be None (a model without one: string prompts
    are then passed on as they are, and the engine refuses them with a clear message)."""

    def __init__(self, tokenizer: Any, max_prompt_chars: int | None) -> None:
        if max_prompt_chars is not None and (not isinstance(max_prompt_chars, int) or max_prompt_chars < 1):
            raise ValueError(f"max_prompt_chars must be an integer >= 1 or None, got {max_prompt_chars!r}")
        self.tokenizer = tokenizer
        self.max_prompt_chars = max_prompt_chars

    def _check_chars(self, num_chars: int, param: str) -> None:
        if self.max_prompt_chars is not None and num_chars > self.max_prompt_chars:
            raise invalid_request(
                f"{param} has {num_chars} characters; this server accepts at most {self.max_prompt_chars} "
                f"({CHARS_PER_TOKEN_BOUND} per token of the context length) - shorten it", param=param)

    async def completion_prompts(self, prompts: list[str | list[int]]) -> list[str | list[int]]:
        """Token ids of each string prompt (token-id prompts pass through; the engine checks them)."""
        for prompt in prompts:
            if isinstance(prompt, str):
                self._check_chars(len(prompt), "prompt")
        if self.tokenizer is None or not any(isinstance(p, str) for p in prompts):
            return list(prompts)
        return await run_in_threadpool(self._encode_all, prompts)

    def _encode_all(self, prompts: list[str | list[int]]) -> list[str | list[int]]:
        return [self.tokenizer.encode(_unicode(p, "prompt")) if isinstance(p, str) else p for p in prompts]

    async def chat_prompt(self, body: P.ChatCompletionRequest, model_name: str) -> list[int]:
        """Token ids of the chat template applied to the messages (special tokens come from the template)."""
        tokenizer = self.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise invalid_request(f"model '{model_name}' has no chat template; use /v1/completions",
                                  param="messages")
        messages = [m.as_template_dict() for m in body.messages]
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")
        return await run_in_threadpool(self._render_and_encode, messages, body.add_generation_prompt)

    def _render_and_encode(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # template errors ("roles must alternate", ...) are the caller's input
            raise invalid_request(f"chat template rejected the messages: {exc}", param="messages") from None
        return self.tokenizer.encode(_unicode(text, "messages"), add_special_tokens=False)


def _unicode(text: str, param: str) -> str:
    """`text` if it encodes as UTF-8, else the 400 naming `param` (JSON's "\\ud800" escapes decode to lone
    surrogates, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid_request(
            f"{param} is not valid Unicode text: {exc.reason} at character {exc.start}", param=param
        ) from None
    return text

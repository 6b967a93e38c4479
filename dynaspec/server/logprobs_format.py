"""OpenAI response shapes of the engine's log-probabilities (RequestOutput.logprobs, engine/logprobs.py).

* Chat completions (https://platform.openai.com/docs/api-reference/chat/object): `choices[].logprobs` =
  {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}, ...]}]}, top_logprobs the
  `top_logprobs` most likely tokens, best first (empty when 0).
* Completions, the legacy shape (https://platform.openai.com/docs/api-reference/completions/object):
  {tokens, token_logprobs, top_logprobs: [{token text: logprob}], text_offset}; as OpenAI and vLLM do, a
  top_logprobs dict also holds the sampled token, so it has up to `logprobs` + 1 entries.

Token text is the tokenizer's decoding of the one token and `bytes` its UTF-8 encoding, as vLLM's
OpenAI server gives them (a token that is part of a multi-byte character decodes to U+FFFD there too);
a model without a tokenizer names tokens "token_id:<id>" (vLLM's return_tokens_as_token_ids form).
Streaming: `LogprobsStream` hands each chunk the entries of the tokens not sent yet, so the chunks'
entries concatenate to the non-streamed response's.
"""

from __future__ import annotations

from typing import Any, Callable

from dynaspec.server import protocol as P

Entries = list[dict[int, float]]  # RequestOutput.logprobs: {token id: logprob} per generated token


class TokenStrings:
    """Token id -> its text, decoded once per id. `tokenizer` returns the engine's tokenizer (set once
    the engine started) or None."""

    def __init__(self, tokenizer: Callable[[], Any]) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            tokenizer = self._tokenizer()
            text = f"token_id:{token_id}" if tokenizer is None else tokenizer.decode([token_id])
            self._cache[token_id] = text
        return text


def _top(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda item: -item[1])[:n]


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(entries: Entries, token_ids: list[int], top_logprobs: int, text: TokenStrings) -> P.ChatLogprobs:
    """The chat shape of these tokens' entries (`top_logprobs` alternatives each)."""
    content = []
    for token, entry in zip(token_ids, entries):
        word = text(token)
        top = [P.TopLogprob(token=text(t), logprob=lp, bytes=_utf8(text(t))) for t, lp in _top(entry, top_logprobs)]
        content.append(P.ChatTokenLogprob(token=word, logprob=entry[token], bytes=_utf8(word), top_logprobs=top))
    return P.ChatLogprobs(content=content)


def completion_logprobs(
    entries: Entries, token_ids: list[int], logprobs: int, text: TokenStrings, offset: int = 0
) -> P.CompletionLogprobs:
    """The legacy shape of these tokens' entries; text offsets count from `offset` characters."""
    out = P.CompletionLogprobs()
    for token, entry in zip(token_ids, entries):
        word = text(token)
        out.tokens.append(word)
        out.token_logprobs.append(entry[token])
        top = {text(t): lp for t, lp in _top(entry, logprobs)}
        top.setdefault(word, entry[token])
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(word)
    return out


class LogprobsStream:
    """Per choice of a streamed response, the entries of the tokens not sent yet. `chat` is the chat
    shape (with `n` alternatives), else the legacy completions shape (with `n` alternatives)."""

    def __init__(self, choices: int, n: int | None, text: TokenStrings, chat: bool) -> None:
        self.n, self.text, self.chat = n, text, chat
        self.sent = [0] * choices  # entries sent per choice
        self.offset = [0] * choices  # characters of the tokens sent (legacy text_offset)

    def next(self, index: int, output: Any) -> P.ChatLogprobs | P.CompletionLogprobs | None:
        """The logprobs of `output`'s tokens after those already sent (None when not asked)."""
        if self.n is None or output.logprobs is None:
            return None
        start = self.sent[index]
        entries, tokens = output.logprobs[start:], output.token_ids[start:]
        self.sent[index] = start + len(entries)
        if self.chat:
            return chat_logprobs(entries, tokens, self.n, self.text)
        result = completion_logprobs(entries, tokens, self.n, self.text, self.offset[index])
        self.offset[index] += sum(len(t) for t in result.tokens)
        return result


def chat_choice_logprobs(body: P.ChatCompletionRequest, output: Any, text: TokenStrings) -> P.ChatLogprobs | None:
    """`choices[].logprobs` of a non-streamed chat response (None when the request did not ask)."""
    if not body.logprobs or output.logprobs is None:
        return None
    return chat_logprobs(output.logprobs, output.token_ids, body.top_logprobs or 0, text)


def completion_choice_logprobs(body: P.CompletionRequest, output: Any, text: TokenStrings
                               ) -> P.CompletionLogprobs | None:
    """`choices[].logprobs` of a non-streamed completions response (None when the request did not ask)."""
    if body.logprobs is None or output.logprobs is None:
        return None
    return completion_logprobs(output.logprobs, output.token_ids, body.logprobs, text)


def chat_stream(body: P.ChatCompletionRequest, choices: int, text: TokenStrings) -> LogprobsStream:
    return LogprobsStream(choices, (body.top_logprobs or 0) if body.logprobs else None, text, chat=True)


def completion_stream(body: P.CompletionRequest, choices: int, text: TokenStrings) -> LogprobsStream:
    return LogprobsStream(choices, body.logprobs, text, chat=False)

"""The offline API: `LLM(model=...).generate(prompts, SamplingParams(...))`, as in vLLM."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from dynaspec.config import DEFAULT_MODEL, EngineConfig
from dynaspec.engine.engine import LLMEngine, ProgressFn
from dynaspec.outputs import RequestOutput
from dynaspec.sampling_params import SamplingParams

Prompt = str | list[int] | dict


class LLM:
    """An engine plus a request loop.

    >>> llm = LLM(model="smollm2-135m-instruct", speculative_config={"decoding_type": "NGram", "max_draft_len": 4})
    >>> llm.generate(["def add(a, b):"], SamplingParams(temperature=0, max_tokens=32))[0].text
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        config: EngineConfig | None = None,
        progress: ProgressFn | None = None,
        **engine_options: Any,
    ):
        if config is not None and engine_options:
            raise ValueError("pass either config=EngineConfig(...) or keyword engine options, not both")
        self.config = config if config is not None else EngineConfig(model=model, **engine_options)
        self.engine = LLMEngine(self.config, progress=progress)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order.

        If anything fails (a prompt the engine refuses, an exception from a step, KeyboardInterrupt),
        every request this call added is aborted before the error propagates, so the engine stays
        usable for the next call.
        """
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        ids = self._add_all(prompt_list, params_list)
        self.engine.close_intake()  # the batch ends with its slowest request (spec/drain.py)
        finished: dict[str, RequestOutput] = {}
        try:
            while len(finished) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
        finally:
            # On an error (or Ctrl-C) none of this call's requests may stay in the engine: a poisoned
            # request left behind would fail every later generate(). Finished ones are no-ops.
            for request_id in ids:
                if request_id not in finished:
                    self.engine.abort_request(request_id)
        return [finished[i] for i in ids]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the cumulative output of one request after every step that advanced it."""
        (request_id,) = self._add_all([_single_prompt(prompt)], [sampling_params or SamplingParams()])
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort_request(request_id)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list of them, then generate."""
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.config.model!r} has no chat template; use generate() with a plain prompt")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
                raise ValueError("each chat message must be a dict with 'role' and 'content'")
            ids = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
            )
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params)

    def shutdown(self) -> None:
        """Stop the engine's tensor-parallel worker processes (nothing else to release otherwise); they
        also stop when this LLM is garbage-collected or the interpreter exits."""
        self.engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def get_stats(self) -> dict:
        """Speculation and engine counters: drafted, accepted, acceptance per position, k histogram."""
        return self.engine.get_stats()

    def _add_all(self, prompts: list[Prompt], params: list[SamplingParams]) -> list[str]:
        added: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                request_id = f"llm-{next(self._ids)}"
                self.engine.add_request(request_id, _prompt_value(prompt), p)
                added.append(request_id)
        except Exception:
            for request_id in added:
                self.engine.abort_request(request_id)
            raise
        return added


def _single_prompt(prompt: Any) -> Prompt:
    if isinstance(prompt, (str, dict)) or (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
        return prompt
    raise TypeError("a prompt must be a string, a list of token ids or {'prompt_token_ids': [...]}")


def _as_prompt_list(prompts: Any) -> list[Prompt]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        return [_single_prompt(p) for p in prompts]
    raise TypeError("prompts must be a string, a list of token ids, or a list of those")


def _prompt_value(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"]
        raise ValueError("a dict prompt needs 'prompt' or 'prompt_token_ids'")
    return prompt


def _as_params_list(params: Any, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise ValueError(f"got {len(params)} SamplingParams for {n} prompts; pass one, or one per prompt")
        if not all(isinstance(p, SamplingParams) for p in params):
            raise TypeError("sampling_params must be SamplingParams objects")
        return list(params)
    raise TypeError(f"sampling_params must be a SamplingParams or a list of them, got {type(params).__name__}")

"""Committing sampled tokens to a request: stop conditions and detokenisation.

A speculative step commits several tokens at once; they are appended one at a time so that a stop
condition in the middle (EOS, a stop token id, max_tokens, max_model_len, a stop string) ends the
request at exactly the token where the non-speculative engine would have ended it.

Text: requests with stop strings are decoded after every token (the stop string must be found at the
exact token); the others get their text once per step for the whole batch from the incremental
detokenizer (`update_texts`), and one full decode when they finish.

Log-probabilities (requests with SamplingParams.logprobs set): `commit` keeps those of the kept tokens
(engine/logprobs.py computes them for every committed token; the ones after a stop are dropped with
their tokens), and `output` attaches them to the RequestOutput, cumulative and per step, as vLLM does.
They are held here per request id until the request's final output, or `release` on abort.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynaspec.runtime.detokenizer import IncrementalDetokenizer
from dynaspec.outputs import RequestMetrics, RequestOutput
from dynaspec.runtime.request import Request


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int):
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self._logprobs: dict[str, list[dict[int, float]]] = {}  # request id -> one entry per output token

    def decode(self, token_ids: list[int]) -> str:
        return self.detokenizer.decode(token_ids)

    def commit(self, request: Request, tokens: list[int], logprobs: list[dict[int, float]] | None = None) -> list[int]:
        """Append `tokens` until a stop condition; set finish_reason. Returns the tokens kept.

        logprobs: one entry per token of `tokens` (engine/logprobs.py) for a request that asked for them;
        those of the kept tokens are kept. Text is updated here only for requests with stop strings; call
        `update_texts` afterwards.
        """
        params = request.params
        kept: list[int] = []
        stopped_by_string = False
        eos_ids = () if params.ignore_eos else self.eos_token_ids
        for token in tokens:
            request.output_token_ids.append(token)
            kept.append(token)
            if token in eos_ids:
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
        if params.stop and not stopped_by_string:
            request.output_text = self.decode(request.output_token_ids)
        if logprobs is not None:
            self._logprobs.setdefault(request.request_id, []).extend(logprobs[: len(kept)])
        return kept

    def output(self, request: Request, new_tokens: list[int]) -> RequestOutput:
        """`request_output`, with the request's log-probabilities where it asked for them (forgotten here
        once it finished)."""
        out = request_output(request, new_tokens)
        if request.params.logprobs is not None:
            held = self._logprobs.get(request.request_id, [])
            if request.is_finished:
                self._logprobs.pop(request.request_id, None)
            out.logprobs = list(held)
            out.new_logprobs = held[len(held) - len(new_tokens):] if new_tokens else []
        return out

    def release(self, request_id: str) -> None:
        """Forget an aborted request's log-probabilities."""
        self._logprobs.pop(request_id, None)

    def update_texts(self, requests: Sequence[Request]) -> None:
        """Bring `output_text` up to date for requests without stop strings (one batched decode)."""
        running = [r for r in requests if not r.params.stop and r.finish_reason is None]
        finished = [r for r in requests if not r.params.stop and r.finish_reason is not None]
        if finished:
            for request, text in zip(finished, self.detokenizer.decode_batch([r.output_token_ids for r in finished])):
                request.output_text = text
        if running:
            texts = self.detokenizer.update(
                [r.output_text for r in running], [r.output_token_ids for r in running], [r.detok for r in running]
            )
            for request, text in zip(running, texts):
                request.output_text = text

    def update_texts_alone_on_failure(self, requests: Sequence[Request]) -> list[tuple[Request, str]]:
        """update_texts (one batched decode); where it fails, request by request: (request, message) for each
        whose tokens fail to decode, so that it alone ends with an error."""
        try:
            self.update_texts(requests)
            return []
        except Exception:  # noqa: BLE001 - find whose tokens fail, request by request
            failed = []
            for request in requests:
                try:
                    self.update_texts([request])
                except Exception as exc:  # noqa: BLE001
                    failed.append((request, f"detokenizing its tokens failed: {type(exc).__name__}: {exc}"))
            return failed

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


def request_output(request: Request, new_tokens: list[int]) -> RequestOutput:
    """The RequestOutput of a request that progressed: cumulative text / tokens, and this step's tokens."""
    return RequestOutput(
        request_id=request.request_id,
        prompt=request.prompt,
        prompt_token_ids=request.prompt_token_ids,
        text=request.output_text,
        token_ids=list(request.output_token_ids),
        finished=request.is_finished,
        finish_reason=request.finish_reason,
        stop_reason=request.stop_reason,
        error=request.error,
        metrics=RequestMetrics(
            arrival_time=request.arrival_time,
            first_token_time=request.first_token_time,
            finish_time=request.finish_time,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_preemptions=request.num_preemptions,
        ),
        new_token_ids=new_tokens,
    )

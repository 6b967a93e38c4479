"""Property-based fuzzing (hypothesis) of the boundary (issue 24), with bounded example counts.

* SamplingParams construction: any mix of field values either builds parameters inside the documented
  bounds or raises ValueError / TypeError with a message; never another exception.
* The HTTP API: completion and chat request bodies drawn over valid and invalid values of every field
  never get a 5xx; every non-200 answer has the OpenAI error shape; bodies drawn from valid values only
  (unicode and special-token text, token-id lists, every sampling option) always get a 200; the server
  stays healthy and every KV block comes back.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaspec.sampling_params import MAX_INT32, MAX_SEED, SamplingParams
from tests.test_server import MODEL_NAME, build_tiny_chat_checkpoint, engine_config, running_server, wait_all_blocks_free

SAMPLING_EXAMPLES = 400
COMPLETION_EXAMPLES = 80
CHAT_EXAMPLES = 60
VALID_EXAMPLES = 30


def fuzz(max_examples: int) -> settings:
    """Bounded, deadline-free, no example database (runs are the same on every machine)."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


ints = st.one_of(st.integers(-3, 70), st.integers(-2**70, 2**70), st.sampled_from([2**31 - 1, 2**31, 2**63 - 1,
                                                                                      2**63, 2**64]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2), st.sampled_from([0.0, 1e-40, 1e-5]))
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=3))
any_number = st.one_of(ints, floats, junk)
stops = st.one_of(st.none(), st.text(max_size=6), st.lists(st.text(max_size=6), max_size=6), ints)
token_ids = st.one_of(st.lists(ints, max_size=5), junk)

SAMPLING_FIELDS = {
    "temperature": any_number, "top_k": any_number, "top_p": any_number, "min_p": any_number,
    "seed": any_number, "max_tokens": any_number, "stop": stops, "stop_token_ids": token_ids,
    "ignore_eos": st.one_of(st.booleans(), junk),
}


def _within_bounds(p: SamplingParams) -> None:
    assert 0.0 <= p.temperature <= 100.0 and math.isfinite(p.temperature)
    assert p.temperature == 0.0 or p.temperature >= 1e-5
    assert p.top_k == -1 or 1 <= p.top_k <= MAX_INT32
    assert 0.0 < p.top_p <= 1.0 and 0.0 <= p.min_p <= 1.0
    assert p.seed is None or 0 <= p.seed <= MAX_SEED
    assert 1 <= p.max_tokens <= MAX_INT32
    assert all(isinstance(s, str) and s for s in p.stop)
    assert all(0 <= t <= MAX_INT32 for t in p.stop_token_ids)


@fuzz(SAMPLING_EXAMPLES)
@given(st.fixed_dictionaries({}, optional=SAMPLING_FIELDS))
def test_fuzz_sampling_params(fields):
    try:
        params = SamplingParams(**fields)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    _within_bounds(params)


# ------------------------------------------------------------------------------------------- HTTP API

small_tokens = st.one_of(st.integers(1, 4), ints, junk)  # mostly valid and short, so the fuzz stays fast
api_common = {
    "temperature": any_number, "top_p": any_number, "top_k": any_number, "min_p": any_number,
    "seed": any_number, "n": st.one_of(st.integers(1, 3), ints, junk), "stop": stops,
    "stop_token_ids": token_ids, "stream": st.one_of(st.booleans(), junk), "ignore_eos": st.booleans(),
    "presence_penalty": st.one_of(st.just(0), any_number), "logit_bias": st.one_of(st.none(), st.just({})),
    "user": st.one_of(st.none(), st.text(max_size=5), ints), "unknown_field": junk,
    "stream_options": st.one_of(st.none(), st.fixed_dictionaries({"include_usage": st.booleans()}), junk),
}
prompts = st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3),
                    st.lists(st.integers(-5, 60000), max_size=8),
                    st.lists(st.lists(st.integers(0, 600), max_size=5), max_size=3), ints, junk)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer", "tool"]),
                                    "content": st.one_of(st.text(max_size=30), st.none(), ints)}), max_size=4),
    junk)
completion_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL_NAME, MODEL_NAME, "other"]), "prompt": prompts, "max_tokens": small_tokens},
    optional=api_common)
chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL_NAME, MODEL_NAME, "other"]), "messages": messages, "max_tokens": small_tokens},
    optional=api_common)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))
    with running_server(engine_config(model_dir, max_model_len=64, num_kv_blocks=64), max_queue=32) as (base, app):
        with httpx.Client(base_url=base, timeout=60) as http:
            yield http, app


def _post(http: httpx.Client, path: str, body: dict) -> int:
    # json.dumps, not httpx's json=: NaN / Infinity go out as the literals some clients send
    resp = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert resp.status_code < 500, (body, resp.status_code, resp.text[:500])
    if resp.status_code != 200:
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif body.get("stream") is True:
        events = [line for line in resp.text.splitlines() if line]
        assert events[-1] == "data: [DONE]"
        assert not any(e.startswith('data: {"error"') for e in events), events[-3:]
    return resp.status_code


@fuzz(COMPLETION_EXAMPLES)
@given(body=completion_bodies)
def test_fuzz_completions_never_5xx(server, body):
    http, _ = server
    _post(http, "/v1/completions", body)


@fuzz(CHAT_EXAMPLES)
@given(body=chat_bodies)
def test_fuzz_chat_never_5xx(server, body):
    http, _ = server
    _post(http, "/v1/chat/completions", body)


valid_sampling = {
    "temperature": st.one_of(st.floats(0, 2), st.just(1e-40)), "top_p": st.floats(0.01, 1),
    "top_k": st.integers(-1, 100), "min_p": st.floats(0, 1), "seed": st.integers(0, MAX_SEED - 16),
    "n": st.integers(1, 2), "stop": st.one_of(st.none(), st.text(min_size=1, max_size=4),
                                               st.lists(st.text(min_size=1, max_size=4), max_size=4)),
    "stop_token_ids": st.lists(st.integers(0, MAX_INT32), max_size=3), "stream": st.booleans(),
    "ignore_eos": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
text = st.one_of(st.text(min_size=1, max_size=40),
                 st.sampled_from(["<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "\u00e9\u4e2d\U0001f600", " "]))
valid_completions = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME), "max_tokens": st.integers(1, 4),
     "prompt": st.one_of(text, st.lists(text, min_size=1, max_size=2),
                         st.lists(st.integers(0, 49151), min_size=1, max_size=20))},
    optional=valid_sampling)
valid_chats = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME), "max_tokens": st.integers(1, 4),
     "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": text}), min_size=1,
                          max_size=1)},
    optional=valid_sampling)


@fuzz(VALID_EXAMPLES)
@given(body=st.one_of(valid_completions.map(lambda b: ("/v1/completions", b)),
                      valid_chats.map(lambda b: ("/v1/chat/completions", b))))
def test_fuzz_valid_requests_succeed(server, body):
    http, _ = server
    path, payload = body
    assert _post(http, path, payload) == 200, payload


def test_server_healthy_after_fuzzing(server):
    http, app = server
    assert http.get("/health").status_code == 200
    free, total, running, waiting = wait_all_blocks_free(app)
    assert (free, running, waiting) == (total, 0, 0)

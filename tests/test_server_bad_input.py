"""Malformed and unsupported requests get a 400 (a body too large a 413) with an OpenAI-style error body
naming the parameter; no bound is checked only after tokenizing; the server stays healthy."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.test_server import MODEL_NAME, build_tiny_chat_checkpoint, engine_config, running_server, wait_all_blocks_free

CMPL = "/v1/completions"
CHAT = "/v1/chat/completions"
OK_CMPL = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4}
OK_CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
MAX_MODEL_LEN = 256
MAX_BODY_BYTES = 1024 * 1024
MAX_PROMPT_CHARS = 32 * MAX_MODEL_LEN  # the default: prompts.CHARS_PER_TOKEN_BOUND per token of context


def _with(base: dict, **changes) -> dict:
    body = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

# (id, path, body: bytes (sent raw) or dict (sent as JSON), the `param` the error must name or None)
BAD_REQUESTS = [
    ("malformed-json", CMPL, b'{"model": "tiny", "prompt": ', None),
    ("not-json", CMPL, b"hello there", None),
    ("json-array", CMPL, b"[1, 2, 3]", None),
    ("empty-body", CHAT, b"", None),
    ("missing-model", CMPL, _with(OK_CMPL, model=_DROP), "model"),
    ("missing-prompt", CMPL, _with(OK_CMPL, prompt=_DROP), "prompt"),
    ("negative-max-tokens", CMPL, _with(OK_CMPL, max_tokens=-5), "max_tokens"),
    ("zero-max-tokens", CHAT, _with(OK_CHAT, max_tokens=0), "max_tokens"),
    ("string-max-tokens", CMPL, _with(OK_CMPL, max_tokens="5"), "max_tokens"),
    ("float-max-tokens", CMPL, _with(OK_CMPL, max_tokens=4.5), "max_tokens"),
    ("string-temperature", CMPL, _with(OK_CMPL, temperature="hot"), "temperature"),
    ("negative-temperature", CHAT, _with(OK_CHAT, temperature=-1), "temperature"),
    ("top-p-zero", CMPL, _with(OK_CMPL, top_p=0), "top_p"),
    ("n-zero", CMPL, _with(OK_CMPL, n=0), "n"),
    ("n-negative", CHAT, _with(OK_CHAT, n=-2), "n"),
    ("n-string", CHAT, _with(OK_CHAT, n="2"), "n"),
    ("negative-seed", CMPL, _with(OK_CMPL, seed=-1), "seed"),
    ("huge-seed", CMPL, _with(OK_CMPL, seed=2**64), "seed"),
    ("int64-seed", CHAT, _with(OK_CHAT, seed=2**63), "seed"),
    ("huge-top-k", CMPL, _with(OK_CMPL, top_k=2**63), "top_k"),
    ("int32-top-k", CHAT, _with(OK_CHAT, top_k=2**31), "top_k"),
    ("top-k-below-minus-one", CMPL, _with(OK_CMPL, top_k=-2), "top_k"),
    ("huge-max-tokens", CMPL, _with(OK_CMPL, max_tokens=2**31), "max_tokens"),
    ("huge-max-completion-tokens", CHAT, _with(OK_CHAT, max_completion_tokens=2**40), "max_completion_tokens"),
    ("temperature-above-2", CMPL, _with(OK_CMPL, temperature=2.5), "temperature"),
    ("nan-temperature", CMPL, b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', "temperature"),
    ("infinite-top-p", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
     "top_p"),
    ("min-p-above-1", CMPL, _with(OK_CMPL, min_p=1.5), "min_p"),
    ("stop-token-negative", CMPL, _with(OK_CMPL, stop_token_ids=[-1]), "stop_token_ids"),
    ("stop-token-huge", CMPL, _with(OK_CMPL, stop_token_ids=[2**63]), "stop_token_ids"),
    ("too-many-stop-token-ids", CMPL, _with(OK_CMPL, stop_token_ids=[1] * 2000), "stop_token_ids"),
    ("too-many-stops", CMPL, _with(OK_CMPL, stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stop-too-long", CHAT, _with(OK_CHAT, stop=["z" * 2000]), "stop"),
    ("prompt-too-many-chars", CMPL, _with(OK_CMPL, prompt="x" * (MAX_PROMPT_CHARS + 1)), "prompt"),
    ("batch-prompt-too-many-chars", CMPL, _with(OK_CMPL, prompt=["hi", "y" * (MAX_PROMPT_CHARS + 1)]), "prompt"),
    ("chat-too-many-chars", CHAT, _with(OK_CHAT, messages=[{"role": "user", "content": "w" * MAX_PROMPT_CHARS},
                                                           {"role": "assistant", "content": "v"}]), "messages"),
    ("stream-string", CMPL, _with(OK_CMPL, stream="yes"), "stream"),
    ("empty-stop", CMPL, _with(OK_CMPL, stop=""), "stop"),
    ("stop-wrong-type", CMPL, _with(OK_CMPL, stop=5), "stop"),
    ("prompt-wrong-type", CMPL, _with(OK_CMPL, prompt={"text": "hi"}), "prompt"),
    ("prompt-empty-list", CMPL, _with(OK_CMPL, prompt=[]), "prompt"),
    ("prompt-empty-string", CMPL, _with(OK_CMPL, prompt=""), "prompt"),
    ("prompt-token-out-of-vocab", CMPL, _with(OK_CMPL, prompt=[1, 2, 10_000_000]), "prompt"),
    ("prompt-too-long", CMPL, _with(OK_CMPL, prompt=[42] * (MAX_MODEL_LEN + 10)), "prompt"),
    ("prompt-too-long-stream", CMPL, _with(OK_CMPL, prompt=[42] * (MAX_MODEL_LEN + 10), stream=True), "prompt"),
    ("chat-too-long", CHAT, _with(OK_CHAT, messages=[{"role": "user", "content": "word " * 400}]), "messages"),
    ("unknown-field", CMPL, _with(OK_CMPL, frobnicate=True), "frobnicate"),
    ("logprobs-above-20", CMPL, _with(OK_CMPL, logprobs=21), "logprobs"),
    ("chat-top-logprobs-without-logprobs", CHAT, _with(OK_CHAT, top_logprobs=2), "top_logprobs"),
    ("echo-unsupported", CMPL, _with(OK_CMPL, echo=True), "echo"),
    ("penalty-unsupported", CMPL, _with(OK_CMPL, presence_penalty=0.5), "presence_penalty"),
    ("messages-empty", CHAT, _with(OK_CHAT, messages=[]), "messages"),
    ("messages-missing", CHAT, _with(OK_CHAT, messages=_DROP), "messages"),
    ("message-bad-role", CHAT, _with(OK_CHAT, messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role"),
    ("message-not-object", CHAT, _with(OK_CHAT, messages=["hi"]), "messages.0"),
    ("tools-unsupported", CHAT, _with(OK_CHAT, tools=[{"type": "function"}]), "tools"),
    ("too-many-choices", CMPL, _with(OK_CMPL, prompt=["a"] * 20, n=4), "n"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))
    with running_server(engine_config(model_dir, max_model_len=MAX_MODEL_LEN), max_queue=32,
                        max_body_bytes=MAX_BODY_BYTES) as (base, app):
        yield base, app


@pytest.fixture
def encode_calls(server):
    """(thread name, characters) of every tokenizer.encode call while the test runs (the engine's
    tokenizer object is the server's: one instance attribute catches every caller)."""
    _, app = server
    tokenizer = app.state.engine.tokenizer
    original = tokenizer.encode
    calls: list[tuple[str, int]] = []

    def recording(text, *args, **kwargs):
        calls.append((threading.current_thread().name, len(text) if isinstance(text, str) else -1))
        return original(text, *args, **kwargs)

    tokenizer.encode = recording
    try:
        yield calls
    finally:
        del tokenizer.encode


@pytest.mark.parametrize("name,path,body,param", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_request_gets_400(server, name, path, body, param):
    base, _ = server
    if isinstance(body, bytes):
        resp = httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        resp = httpx.post(base + path, json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    assert httpx.get(base + "/health", timeout=10).status_code == 200


def test_still_serves_after_bad_input(server):
    base, app = server
    for path, body in ((CMPL, OK_CMPL), (CHAT, OK_CHAT)):
        resp = httpx.post(base + path, json=body, timeout=60)
        assert resp.status_code == 200, resp.text
    free, total, running, waiting = wait_all_blocks_free(app)
    assert (free, running, waiting) == (total, 0, 0)


def test_unknown_route_has_error_body(server):
    base, _ = server
    resp = httpx.get(base + "/v1/nothing-here", timeout=10)
    assert resp.status_code == 404
    assert "message" in resp.json()["error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_too_large_gets_413_before_parsing(server, encode_calls, chunked):
    """A 20 MB prompt is refused from its size alone: nothing parses or tokenizes it."""
    base, _ = server
    payload = ('{"model": "tiny", "max_tokens": 4, "prompt": "' + "a" * (20 * 1024 * 1024) + '"}').encode()
    content = (payload[i:i + 65536] for i in range(0, len(payload), 65536)) if chunked else payload
    resp = httpx.post(base + CMPL, content=content, headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 413, resp.text[:300]
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert str(MAX_BODY_BYTES) in error["message"]
    assert encode_calls == []
    metrics = httpx.get(base + "/metrics", timeout=10).text
    assert 'dynaspec_http_requests_total{endpoint="/v1/completions",status="413"}' in metrics
    assert httpx.post(base + CMPL, json=OK_CMPL, timeout=60).status_code == 200


def test_prompt_char_bound_is_checked_before_tokenizing(server, encode_calls):
    base, _ = server
    resp = httpx.post(base + CMPL, json=_with(OK_CMPL, prompt="x" * (MAX_PROMPT_CHARS + 1)), timeout=30)
    assert resp.status_code == 400 and str(MAX_PROMPT_CHARS) in resp.json()["error"]["message"]
    assert encode_calls == []


def test_tokenization_runs_in_a_worker_thread(server, encode_calls):
    """Neither the event loop (uvicorn's thread here) nor the engine thread tokenizes a prompt."""
    base, _ = server
    assert httpx.post(base + CMPL, json=OK_CMPL, timeout=60).status_code == 200
    assert httpx.post(base + CHAT, json=OK_CHAT, timeout=60).status_code == 200
    threads = {name for name, _ in encode_calls}
    assert len(encode_calls) == 2 and threads
    assert not threads & {"dynaspec-uvicorn", "dynaspec-engine"}, threads


@pytest.mark.parametrize("path, body, param, where", [
    (CMPL, _with(OK_CMPL, prompt=[5] * 200, max_tokens=100), "prompt", "prompt"),
    (CHAT, _with(OK_CHAT, max_tokens=MAX_MODEL_LEN), "messages", "messages"),
])
def test_prompt_plus_max_tokens_beyond_the_context_is_a_400_in_openais_shape(server, path, body, param, where):
    base, _ = server
    response = httpx.post(base + path, json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert error["message"].startswith(f"This model's maximum context length is {MAX_MODEL_LEN} tokens.")
    assert f"in the {where}" in error["message"] and "in the completion" in error["message"]
    ok = httpx.post(base + CMPL, json=_with(OK_CMPL, prompt=[5] * 200, max_tokens=56), timeout=60)
    assert ok.status_code == 200  # exactly the context: accepted


@pytest.mark.parametrize("path, body, param", [
    (CMPL, '{"model": "%s", "prompt": "a\\ud800b", "max_tokens": 2}' % MODEL_NAME, "prompt"),
    (CHAT, '{"model": "%s", "messages": [{"role": "user", "content": "a\\udfffb"}], "max_tokens": 2}' % MODEL_NAME,
     "messages"),
])
def test_a_lone_surrogate_is_a_400_not_a_500(server, path, body, param):
    """JSON's \\ud800 escape decodes to a lone surrogate, which no tokenizer takes."""
    base, _ = server
    response = httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and "not valid Unicode" in error["message"]
    assert httpx.post(base + CMPL, json=OK_CMPL, timeout=60).status_code == 200

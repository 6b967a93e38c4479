"""`--api-key`: every /v1/* route needs `Authorization: Bearer KEY` (401 in OpenAI's error shape without it,
counted in /metrics); /health and /metrics stay open; the official `openai` client works with the key and
raises AuthenticationError without it. A tiny random Llama with a word-level tokenizer, on loopback."""

from __future__ import annotations

import httpx
import openai
import pytest

from dynaspec.config import EngineConfig
from dynaspec.server import ServerOptions, app_for_config, create_app
from dynaspec.server.background import serve_in_thread
from tests.tiny_models import make_tiny_checkpoint, save_tiny_tokenizer

KEY = "sk-test-123"
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = make_tiny_checkpoint(tmp_path_factory.mktemp("auth"), "llama")
    save_tiny_tokenizer(model_dir)
    config = EngineConfig(model=str(model_dir), device="cpu", dtype="float32", max_model_len=128, block_size=16,
                          num_kv_blocks=32, max_num_seqs=4)
    app = app_for_config(config, served_model_name=MODEL, max_queue=8, api_key=KEY)
    with serve_in_thread(app) as base:
        yield base


COMPLETION = {"model": MODEL, "prompt": "w5 w6 w7", "max_tokens": 3, "temperature": 0}


@pytest.mark.parametrize("headers, code", [
    ({}, None),
    ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
    ({"Authorization": f"Basic {KEY}"}, None),  # not Bearer auth: no key given
])
def test_v1_routes_answer_401_with_openais_body(server, headers, code):
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", COMPLETION),
                               ("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 2,
                                                                  "messages": [{"role": "user", "content": "w5"}]})):
        response = httpx.request(method, server + path, json=body, headers=headers, timeout=60)
        assert response.status_code == 401, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] is None
        assert ("Incorrect API key provided" if code else "You didn't provide an API key") in error["message"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_key_gives_200_and_health_and_metrics_stay_open(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(server + "/v1/models", headers=auth, timeout=60).status_code == 200
    response = httpx.post(server + "/v1/completions", json=COMPLETION, headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(server + "/health", timeout=60).status_code == 200
    httpx.get(server + "/v1/models", timeout=60)  # one more 401 on /v1/models
    metrics = httpx.get(server + "/metrics", timeout=60)
    assert metrics.status_code == 200
    line = next(l for l in metrics.text.splitlines()
                if l.startswith("dynaspec_http_requests_total{") and 'endpoint="/v1/models"' in l and 'status="401"' in l)
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_the_openai_client(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    out = client.completions.create(model=MODEL, prompt="w5 w6", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2
    stranger = openai.OpenAI(base_url=server + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.completions.create(model=MODEL, prompt="w5", max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("key", ["", "two words", "tab\tkey"])
def test_a_bad_key_is_refused_when_the_app_is_built(key):
    with pytest.raises(ValueError, match="without spaces"):
        create_app(lambda: None, model_name=MODEL, api_key=key)
    with pytest.raises(ValueError, match="without spaces"):
        ServerOptions(api_key=key)

"""Engine-wide faults on the server side (issue 24): a fault fails what is in flight fast with a clear
message; a persistent fault or one that leaves the engine unclean declares the engine down, and from
then on every request gets an OpenAI-style 503 at once (counted in /metrics), never a hang."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.test_server import MODEL_NAME, build_tiny_chat_checkpoint, engine_config, metric_value, running_server

BODY = {"model": MODEL_NAME, "prompt": "Hello there", "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))


def _break_steps(app, *, dirty: bool = False) -> None:
    """From now on every engine step raises; with `dirty`, the engine also never looks clean again."""
    def install(engine):
        def failing_step():
            raise RuntimeError("injected persistent fault")

        engine.step = failing_step
        if dirty:
            engine.has_unfinished_requests = lambda: True

    app.state.engine.call(install).result(timeout=30)


def _assert_down(base: str, fault_words: str) -> None:
    refused = httpx.post(base + "/v1/completions", json=BODY, timeout=30)
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_down"
    assert fault_words in error["message"]
    health = httpx.get(base + "/health", timeout=30)
    assert health.status_code == 503 and fault_words in health.json()["error"]["message"]
    metrics = httpx.get(base + "/metrics", timeout=30).text
    assert metric_value(metrics, "dynaspec_http_requests_total", '{endpoint="/v1/completions",status="503"}') >= 1
    assert metric_value(metrics, "dynaspec_engine_loop_alive") == 0


def test_persistent_fault_declares_the_engine_down(model_dir):
    with running_server(engine_config(model_dir), max_faults=3) as (base, app):
        _break_steps(app)
        for _ in range(3):  # each request is failed fast with the fault named; the third fault is the last
            resp = httpx.post(base + "/v1/completions", json=BODY, timeout=30)
            assert resp.status_code == 500, resp.text
            assert "injected persistent fault" in resp.json()["error"]["message"]
        _assert_down(base, "3 steps failed in a row")


def test_fault_leaving_the_engine_unclean_declares_it_down_at_once(model_dir):
    with running_server(engine_config(model_dir), max_faults=3) as (base, app):
        _break_steps(app, dirty=True)
        resp = httpx.post(base + "/v1/completions", json=BODY, timeout=30)
        assert resp.status_code in (500, 503), resp.text
        _assert_down(base, "injected persistent fault")


def test_requests_queued_when_the_engine_dies_are_answered(model_dir):
    """Requests admitted but not yet taken by the engine get a 503 when it goes down: none hangs."""
    with running_server(engine_config(model_dir), max_faults=1) as (base, app):
        _break_steps(app, dirty=True)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                return await asyncio.gather(*(client.post("/v1/completions", json=BODY) for _ in range(8)))

        statuses = [r.status_code for r in asyncio.run(burst())]
        assert set(statuses) <= {500, 503}, statuses
        _assert_down(base, "injected persistent fault")
        with pytest.raises(RuntimeError, match="engine is down"):
            app.state.engine.call(lambda e: None).result(timeout=5)

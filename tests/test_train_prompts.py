"""Training prompts of `dynaspec train-head` (train_head/prompts.py): the sources meant for training never
hold a prompt the benchmarks measure on (a head measured on its own training prompts would overstate its
acceptance), and --workload errors name what is allowed."""

from __future__ import annotations

import re

import pytest

from dynaspec.bench.workloads import chat_prompts, code_edit_prompts, warmup_workload
from dynaspec.train_head.prompts import collect_prompts, parse_sources


def _code_blocks(prompts) -> set[str]:
    return {m for p in prompts for m in re.findall(r"```python\n(.*?)```", p[0]["content"], re.S)}


def test_training_sources_never_hold_a_bench_prompt():
    training = collect_prompts(["stdlib", "pydoc", "questions"], 3000)
    assert len(training) > 2500  # 1,500+ functions, 1,200 questions, pydoc passages
    bench_functions = _code_blocks(code_edit_prompts(10_000))
    assert len(bench_functions) > 50
    assert not bench_functions & _code_blocks(training)
    chat = {p[0]["content"] for p in chat_prompts(100) + warmup_workload("chat", 100)}
    assert len(chat) >= 24
    assert not chat & {p[0]["content"] for p in training}
    questions = collect_prompts(["questions"], 10_000)
    assert len(questions) == 1200 and all(p[0]["content"].strip() for p in questions)


def test_sources_interleave_without_duplicates():
    prompts = collect_prompts(["questions", "chat", "chat"], 20)
    assert len(prompts) == 20 and len({p[0]["content"] for p in prompts}) == 20
    assert prompts[0] == collect_prompts(["questions"], 1)[0] and prompts[1] == chat_prompts(1)[0]


def test_unknown_source_names_what_is_allowed():
    with pytest.raises(ValueError, match=r"nonsense unknown.*stdlib, pydoc, questions"):
        parse_sources("questions,nonsense")
    assert parse_sources("stdlib, questions") == ["stdlib", "questions"]

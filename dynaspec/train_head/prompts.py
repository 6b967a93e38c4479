"""Offline prompt sources for training an EAGLE head, and the held-out split it is evaluated on.

Sources (no network): the bench workloads (dynaspec/bench/workloads.py: code-edit, summarise, humaneval,
chat), `stdlib` (functions of the Python standard library's source, with varied code instructions, from
other modules than code-edit's: a head trained on them is measured on code-edit prompts it never saw),
`pydoc` (passages of `pydoc_data.topics` with varied prose instructions), `questions` (open assistant-style
questions, topic x phrasing: 1,200, none of them the chat workload's), or a .jsonl file, one prompt a line:
{"prompt": "..."} (plain text) or {"messages": [{"role", "content"}]}.
"""

from __future__ import annotations

import ast
import inspect
import json
import random
from pathlib import Path

from dynaspec.bench.workloads import WORKLOADS, workload

SOURCES = (*WORKLOADS, "stdlib", "pydoc", "questions")

# None of the code-edit workload's modules (workloads._CODE_MODULES): training stays off the bench's prompts.
_STDLIB_MODULES = (
    "argparse", "csv", "difflib", "functools", "glob", "gzip", "ipaddress", "json.decoder", "locale", "mimetypes",
    "ntpath", "posixpath", "pprint", "quopri", "random", "statistics", "tarfile", "tokenize", "urllib.parse",
    "uuid", "zipfile", "email.utils", "http.cookies", "configparser", "dataclasses", "fractions", "inspect",
    "pathlib", "shutil", "optparse", "ast", "enum", "typing", "traceback", "logging", "collections",
)
_TOPICS = (
    "learning a second language", "public transport in large cities", "composting at home", "the water cycle",
    "version control with git", "remote work", "training for a first marathon", "baking sourdough bread",
    "electric cars", "the French Revolution", "photosynthesis", "saving for retirement", "keeping houseplants alive",
    "machine learning", "volcanoes", "chess openings", "the immune system", "writing a cover letter",
    "minimalist living", "renewable energy", "birdwatching", "the printing press", "time management",
    "black holes", "recycling plastics", "playing the guitar", "healthy sleep habits", "the Roman Empire",
    "password security", "urban gardening", "climate change", "public speaking", "the stock market",
    "camping in the mountains", "learning to program", "ocean tides", "vaccines", "meditation",
    "the history of the internet", "travelling on a budget", "3D printing", "brewing coffee", "dinosaurs",
    "team sports for children", "open-source software", "earthquakes", "keeping a journal", "the Renaissance",
    "reading nutrition labels", "job interviews",
    "honeybees", "the Silk Road", "tea ceremonies", "glaciers", "origami", "the Apollo missions",
    "sleep in animals", "knitting", "desert ecosystems", "jazz improvisation", "the human heart",
    "coral reefs", "medieval castles", "wind turbines", "board game design", "the metric system",
    "sign language", "lighthouses", "fermenting vegetables", "the Olympic Games", "bridges and how they stand",
    "rainforests", "solar eclipses", "pottery", "the history of chocolate", "cycling to work", "mushrooms",
    "the printing of money", "ancient Egypt", "first aid basics", "wolves", "the invention of the telephone",
    "map reading", "volunteering", "hurricanes", "the periodic table", "bonsai trees", "street food",
    "libraries", "the moon landing hoaxes", "owning a dog", "photography composition", "tidal energy",
    "the Great Barrier Reef", "sailing", "memory techniques", "the Industrial Revolution", "kites",
    "bird migration", "wildfires",
)
_QUESTIONS = (
    "Explain {} to a beginner.",
    "What are the pros and cons of {}?",
    "Give me three practical tips about {}.",
    "Write a short story that involves {}.",
    "What are common misconceptions about {}?",
    "Compare {} with something similar and explain the differences.",
    "Write a short poem about {}.",
    "How would you explain {} to a ten-year-old?",
    "Summarise the history of {} in a few paragraphs.",
    "What should I know before getting started with {}?",
    "Write a friendly email to a colleague about {}.",
    "Describe a typical day of someone whose work involves {}.",
)
_CODE_TASKS = (
    "Explain what this function does, step by step.",
    "Add type hints to this function and return the whole function.",
    "Write pytest unit tests for this function.",
    "Rewrite this function to be easier to read and return the whole function.",
    "Find possible bugs or edge cases in this function.",
    "Add a docstring to this function and return the whole function unchanged otherwise.",
)
_PROSE_TASKS = (
    "Summarise the following text in a few sentences.",
    "Explain the following text to a beginner.",
    "Write three questions a student could answer from this text, with their answers.",
    "List the key points of the following text.",
)

Conversation = list[dict]
Prompt = str | Conversation  # plain text, or a chat conversation (through the tokenizer's template)


def _stdlib_functions() -> list[str]:
    out = []
    for name in _STDLIB_MODULES:
        try:
            source = inspect.getsource(__import__(name, fromlist=["_"]))
        except (ImportError, OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef):
                segment = ast.get_source_segment(source, node)
                if segment and 4 <= segment.count("\n") <= 40:
                    out.append(segment)
    return out


def stdlib_prompts(n: int, seed: int = 0) -> list[Conversation]:
    functions = _stdlib_functions()
    random.Random(seed).shuffle(functions)
    return [[{"role": "user", "content": f"{_CODE_TASKS[i % len(_CODE_TASKS)]}\n\n```python\n{fn}\n```"}]
            for i, fn in enumerate(functions[:n])]


def _passages(text: str, low: int = 400, high: int = 2500) -> list[str]:
    """`text` cut at paragraph breaks into passages of low .. high characters (longer paragraphs dropped)."""
    out, current = [], ""
    for paragraph in text.split("\n\n"):
        if current and len(current) + len(paragraph) > high:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    out.append(current)
    return [p.strip() for p in out if low <= len(p.strip()) <= high]


def pydoc_prompts(n: int, seed: int = 0) -> list[Conversation]:
    from pydoc_data.topics import topics

    texts = sorted({chunk for t in topics.values() for chunk in _passages(t)})
    random.Random(seed).shuffle(texts)
    return [[{"role": "user", "content": f"{_PROSE_TASKS[i % len(_PROSE_TASKS)]}\n\n{t}"}]
            for i, t in enumerate(texts[:n])]


def question_prompts(n: int, seed: int = 0) -> list[Conversation]:
    """Open assistant-style questions, every phrasing of every topic (1,200), in a seeded order."""
    questions = [template.format(topic) for topic in _TOPICS for template in _QUESTIONS]
    random.Random(seed).shuffle(questions)
    return [[{"role": "user", "content": q}] for q in questions[:n]]


def jsonl_prompts(path: Path) -> list[Prompt]:
    """Prompts of a .jsonl file; ValueError naming the line that is not {"prompt": str} or {"messages": [...]}."""
    prompts: list[Prompt] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"]:
            prompts.append(item["prompt"])
        elif isinstance(item, dict) and isinstance(item.get("messages"), list) and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in item["messages"]) and item["messages"]:
            prompts.append(item["messages"])
        else:
            raise ValueError(f'{path}:{number}: each line must be {{"prompt": "..."}} or {{"messages": '
                             '[{"role": ..., "content": ...}, ...]}')
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def parse_sources(spec: str) -> list[str] | Path:
    """`--workload`: comma-separated source names, or the path of a .jsonl file; ValueError otherwise."""
    if spec.endswith(".jsonl"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--workload {spec!r}: no such .jsonl file")
        return path
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if not names or unknown:
        raise ValueError(f"--workload {spec!r}: {', '.join(unknown) or 'no name'} unknown; give a .jsonl file or "
                         f"comma-separated names from: {', '.join(SOURCES)}")
    return names


def collect_prompts(sources: list[str] | Path, n: int, seed: int = 0) -> list[Prompt]:
    """Up to n distinct prompts, drawn in turn from the sources (a source with fewer gives what it has)."""
    if isinstance(sources, Path):
        pool = [jsonl_prompts(sources)]
    else:
        builders = {"stdlib": stdlib_prompts, "pydoc": pydoc_prompts, "questions": question_prompts}
        pool = [(builders[name](n, seed) if name in builders else workload(name, n, seed)) for name in sources]
    out: list[Prompt] = []
    seen: set[str] = set()
    for i in range(max(len(p) for p in pool)):
        for prompts in pool:
            if i < len(prompts) and len(out) < n:
                key = json.dumps(prompts[i], sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(prompts[i])
    return out


def held_out_split(prompts: list[Prompt], eval_fraction: float, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held out): a seeded shuffle, at least one prompt on each side; the held-out prompts are never
    trained on (collect_prompts already removed duplicates)."""
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 prompts (one to train on, one held out), got {len(prompts)}")
    order = list(range(len(prompts)))
    random.Random(seed + 17).shuffle(order)
    num_eval = min(len(prompts) - 1, max(1, round(len(prompts) * eval_fraction)))
    held = [prompts[i] for i in order[:num_eval]]
    train = [prompts[i] for i in order[num_eval:]]
    return train, held


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: a conversation through the chat template (its contents joined by blank lines
    when the tokenizer has none), plain text as is."""
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None):
            return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        prompt = "\n\n".join(m["content"] for m in prompt)
    return list(tokenizer(prompt)["input_ids"])

"""Soak test of the OpenAI server (issue 24; outside CI, its figures go to docs/results.md).

Starts the server in-process on 127.0.0.1 (a free port, uvicorn on a background thread) over a model with
n-gram speculation under the goodput policy and a KV pool small enough to force preemption, then sends
`--requests` completion requests (`--concurrency` at a time, httpx async) with mixed prompt lengths and
max_tokens, all greedy (temperature 0). A fraction (`--cancel-fraction`, default 20%) stream and close
the connection after a random number of chunks; the others (half streamed, half not) must return exactly
the text, and the token count, that the same request gets alone from a separate engine without
speculation on the same model (computed before the soak, once per distinct prompt and max_tokens).

Afterwards the KV pool must be empty again (/metrics `dynaspec_kv_cache_usage_ratio` 0 and every block
free, read on the engine thread too). Prints a table: requests, cancelled, completed, mismatches, errors
(by status / exception), peak KV usage (polled from /metrics), preemptions, duration. Exit status 0 when
there is no mismatch, no error, every non-cancelled request completed and the KV pool is back to 0.

Everything is bounded: each HTTP call has a timeout, the soak has an overall deadline (`--max-seconds`),
and only 127.0.0.1 is contacted.

    python scripts/soak_server.py                      # tiny random Llama + word-level tokenizer
    python scripts/soak_server.py --requests 200 --concurrency 16
    python scripts/soak_server.py --model smollm2      # the default SmolLM2-135M (converted on first use)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "soak"
MAX_TOKENS_CHOICES = (1, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Job:
    """One request of the soak: which distinct prompt, how many tokens, streamed or not, cancelled after
    how many chunks (None: read to the end)."""

    index: int
    prompt_id: int
    max_tokens: int
    stream: bool
    cancel_after: int | None


@dataclass
class Tally:
    """What the soak observed."""

    cancelled: int = 0
    cancelled_before_end: int = 0  # closed before the chunk carrying finish_reason arrived
    completed: int = 0
    mismatches: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    mismatch_examples: list[str] = field(default_factory=list)
    peak_kv: float = 0.0


def build_tiny_model(root: Path) -> Path:
    """A tiny random Llama (tests/tiny_models.py) with a word-level tokenizer beside it."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.tiny_models import make_tiny_checkpoint, save_tiny_tokenizer

    path = make_tiny_checkpoint(root, "llama", seed=0, max_position_embeddings=1024)
    save_tiny_tokenizer(path)
    return path


def make_prompts(tokenizer: Any, count: int, rng: random.Random, max_len: int) -> list[str]:
    """`count` distinct text prompts of mixed lengths (1 .. max_len tokens), some with repeated spans so
    the n-gram drafter finds matches. Words come from the tokenizer's vocabulary (decoded ids)."""
    vocab = len(tokenizer)
    words = [tokenizer.decode([i]).strip() for i in range(3, min(vocab, 3 + 400))]
    words = [w for w in words if w and not w.isspace()]
    prompts: list[str] = []
    seen: set[str] = set()
    while len(prompts) < count:
        length = rng.choice([1, 2, 5, 12, 30, 60, max_len])
        if rng.random() < 0.6:
            motif = rng.choices(words, k=rng.randint(2, 6))
            chosen = (motif * (length // len(motif) + 1))[:length]
        else:
            chosen = rng.choices(words, k=length)
        text = " ".join(chosen)
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def reference_texts(config: Any, prompts: list[str], max_tokens: list[int]) -> dict[tuple[int, int], tuple[str, int]]:
    """(prompt id, max_tokens) -> (text, token count), each request generated ALONE by an engine without
    speculation on the same model."""
    from dynaspec import LLM, SamplingParams

    plain = LLM(config=config.model_copy(update={"speculative_config": None, "num_kv_blocks": None}))
    refs: dict[tuple[int, int], tuple[str, int]] = {}
    for pid, prompt in enumerate(prompts):
        for m in max_tokens:
            out = plain.generate(prompt, SamplingParams(temperature=0.0, max_tokens=m))[0]
            refs[pid, m] = (out.text, len(out.token_ids))
    return refs


def make_jobs(n: int, num_prompts: int, cancel_fraction: float, rng: random.Random) -> list[Job]:
    """The soak's requests: exactly round(n * cancel_fraction) cancelled, the rest half streamed."""
    num_cancel = round(n * cancel_fraction)
    cancelled = set(rng.sample(range(n), num_cancel))
    jobs = []
    for i in range(n):
        cancel = i in cancelled
        jobs.append(Job(i, rng.randrange(num_prompts), rng.choice(MAX_TOKENS_CHOICES),
                        stream=cancel or rng.random() < 0.5, cancel_after=rng.randint(1, 3) if cancel else None))
    return jobs


async def run_job(client: httpx.AsyncClient, job: Job, prompt: str, expected: tuple[str, int], tally: Tally) -> None:
    """Send one request; cancel it mid-stream or check its text and token count against `expected`."""
    body: dict[str, Any] = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": job.max_tokens, "temperature": 0.0}
    try:
        if not job.stream:
            resp = await client.post("/v1/completions", json=body)
            if resp.status_code != 200:
                tally.errors[f"HTTP {resp.status_code}"] += 1
                return
            data = resp.json()
            text, tokens = data["choices"][0]["text"], data["usage"]["completion_tokens"]
        else:
            body.update(stream=True, stream_options={"include_usage": True})
            chunks, parts, tokens, ended = 0, [], None, False
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    tally.errors[f"HTTP {resp.status_code}"] += 1
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[len("data: "):]
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if "error" in event:
                        tally.errors["stream error event"] += 1
                        return
                    for choice in event.get("choices", []):
                        parts.append(choice.get("text") or "")
                        ended = ended or choice.get("finish_reason") is not None
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    chunks += 1
                    if job.cancel_after is not None and chunks >= job.cancel_after:
                        break  # leaving the block closes the connection mid-stream
            if job.cancel_after is not None:
                tally.cancelled += 1
                tally.cancelled_before_end += not ended
                return
            text = "".join(parts)
        tally.completed += 1
        if (text, tokens) != expected:
            tally.mismatches += 1
            if len(tally.mismatch_examples) < 5:
                tally.mismatch_examples.append(
                    f"request {job.index} (prompt {job.prompt_id}, max_tokens {job.max_tokens}, "
                    f"stream {job.stream}): got {(text, tokens)!r}, alone {expected!r}")
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as exc:
        if job.cancel_after is not None:
            tally.cancelled += 1  # the connection may break while we close it
            return
        tally.errors[type(exc).__name__] += 1


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled metric in a Prometheus text page."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def poll_kv(client: httpx.AsyncClient, tally: Tally, stop: asyncio.Event, period: float) -> None:
    """Record the peak of dynaspec_kv_cache_usage_ratio until `stop` is set."""
    while not stop.is_set():
        try:
            resp = await client.get("/metrics")
            value = metric(resp.text, "dynaspec_kv_cache_usage_ratio")
            if value is not None:
                tally.peak_kv = max(tally.peak_kv, value)
        except httpx.HTTPError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=period)
        except asyncio.TimeoutError:
            pass


async def soak(base: str, jobs: list[Job], prompts: list[str], refs: dict, concurrency: int,
               request_timeout: float, max_seconds: float) -> tuple[Tally, bool]:
    """Run every job with bounded concurrency; returns the tally and whether all finished in time."""
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(request_timeout), limits=limits,
                                 trust_env=False) as client:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_kv(client, tally, stop, 0.25))
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(job: Job) -> None:
            async with semaphore:
                await run_job(client, job, prompts[job.prompt_id], refs[job.prompt_id, job.max_tokens], tally)

        tasks = [asyncio.create_task(bounded(job)) for job in jobs]
        done, pending = await asyncio.wait(tasks, timeout=max_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            tally.errors["not finished before --max-seconds"] += len(pending)
        for task in done:
            if task.exception() is not None:
                tally.errors[f"client {type(task.exception()).__name__}"] += 1
        stop.set()
        await poller
    return tally, not pending


def wait_kv_empty(base: str, app: Any, timeout: float) -> tuple[float | None, tuple[int, int, int, int]]:
    """Poll until the KV pool is empty and nothing runs or waits (or `timeout`); returns the last
    /metrics KV usage and (free blocks, total blocks, running, waiting) read on the engine thread."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=10.0, trust_env=False) as client:
        while True:
            usage = metric(client.get("/metrics").text, "dynaspec_kv_cache_usage_ratio")
            state = app.state.engine.call(
                lambda e: (e.num_free_blocks, e.num_total_blocks, e.num_running, e.num_waiting)).result(timeout=30)
            if (usage == 0.0 and state[0] == state[1] and state[2] == state[3] == 0) or time.monotonic() > deadline:
                return usage, state
            time.sleep(0.2)


def counting_engine_factory(config: Any, counts: dict[str, int]):
    """An engine factory whose scheduler counts preemptions in `counts["preemptions"]` (left at -1 when
    the scheduler has no `_preempt` to observe)."""
    from dynaspec.engine.engine import LLMEngine

    def factory() -> Any:
        engine = LLMEngine(config)
        scheduler = getattr(engine, "scheduler", None)
        original = getattr(scheduler, "_preempt", None)
        if original is not None:
            counts["preemptions"] = 0

            def preempt(*args: Any, **kwargs: Any) -> Any:
                counts["preemptions"] += 1
                return original(*args, **kwargs)

            scheduler._preempt = preempt
        return engine

    return factory


def print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 24))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 24))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny",
                    help="'tiny' (random tiny Llama + word-level tokenizer, default), 'smollm2' (the default "
                         "SmolLM2-135M), or any model spec the loader takes")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--cancel-fraction", type=float, default=0.2)
    ap.add_argument("--distinct-prompts", type=int, default=40)
    ap.add_argument("--max-prompt-tokens", type=int, default=120)
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--num-kv-blocks", type=int, default=48, help="small, to force preemption")
    ap.add_argument("--max-model-len", type=int, default=256)
    ap.add_argument("--max-draft-len", type=int, default=4)
    ap.add_argument("--request-timeout", type=float, default=300.0, help="seconds per HTTP call")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="deadline of the whole soak")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or not 0.0 <= args.cancel_fraction <= 1.0:
        ap.error("--requests and --concurrency must be >= 1, --cancel-fraction in [0, 1]")
    if args.max_prompt_tokens + max(MAX_TOKENS_CHOICES) >= args.max_model_len:
        ap.error("--max-prompt-tokens + 64 must stay below --max-model-len")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dynaspec import NGramDecodingConfig
    from dynaspec.config import DEFAULT_MODEL, EngineConfig
    from dynaspec.models.loader import load_tokenizer
    from dynaspec.server import create_app
    from dynaspec.server.background import serve_in_thread

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="dynaspec-soak-") as tmp:
        model = {"tiny": None, "smollm2": DEFAULT_MODEL}.get(args.model, args.model)
        model = str(build_tiny_model(Path(tmp))) if model is None else model
        config = EngineConfig(
            model=model, device="cpu", dtype="float32", max_model_len=args.max_model_len, block_size=args.block_size,
            num_kv_blocks=args.num_kv_blocks, max_num_seqs=args.concurrency, seed=args.seed,
            speculative_config=NGramDecodingConfig(draft_len_policy="goodput", max_draft_len=args.max_draft_len))
        tokenizer = load_tokenizer(model)
        prompts = make_prompts(tokenizer, args.distinct_prompts, rng, args.max_prompt_tokens)
        prompts = [p for p in prompts if len(tokenizer.encode(p)) + max(MAX_TOKENS_CHOICES) < args.max_model_len]
        jobs = make_jobs(args.requests, len(prompts), args.cancel_fraction, rng)

        t0 = time.monotonic()
        refs = reference_texts(config, prompts, sorted({j.max_tokens for j in jobs}))
        ref_seconds = time.monotonic() - t0
        print(f"references: {len(refs)} requests generated alone without speculation in {ref_seconds:.1f} s",
              flush=True)

        counts = {"preemptions": -1}
        app = create_app(counting_engine_factory(config, counts), model_name=MODEL_NAME, max_queue=max(256, args.requests),
                         max_model_len=args.max_model_len)
        with serve_in_thread(app, host="127.0.0.1") as base:
            print(f"server at {base}: goodput n-gram speculation (max_draft_len {args.max_draft_len}), "
                  f"{args.num_kv_blocks} KV blocks of {args.block_size} tokens; {len(jobs)} requests, "
                  f"concurrency {args.concurrency}", flush=True)
            t0 = time.monotonic()
            tally, finished = asyncio.run(soak(base, jobs, prompts, refs, args.concurrency, args.request_timeout,
                                               args.max_seconds))
            duration = time.monotonic() - t0
            final_kv, (free, total, running, waiting) = wait_kv_empty(base, app, timeout=60.0)
            with httpx.Client(base_url=base, timeout=10.0, trust_env=False) as client:
                page = client.get("/metrics").text
            server_5xx = sum(float(v) for v in re.findall(r'^dynaspec_http_requests_total\{[^}]*status="5\d\d"[^}]*\} '
                                                          r'([0-9.e+-]+)$', page, re.MULTILINE))
            stats = app.state.engine.call(lambda e: e.get_stats()).result(timeout=30)

    expected_completed = sum(1 for j in jobs if j.cancel_after is None)
    errors = sum(tally.errors.values())
    print_table([
        ("requests", len(jobs)),
        ("cancelled mid-stream", f"{tally.cancelled} ({tally.cancelled_before_end} before their last chunk)"),
        ("completed", f"{tally.completed} of {expected_completed} not cancelled"),
        ("mismatches vs alone", tally.mismatches),
        ("errors", f"{errors} {dict(tally.errors) if errors else ''}".strip()),
        ("server 5xx (/metrics)", int(server_5xx)),
        ("peak KV usage", f"{tally.peak_kv:.1%} of {total} blocks"),
        ("KV usage after", f"{final_kv} (free {free}/{total}, running {running}, waiting {waiting})"),
        ("preemptions", counts["preemptions"] if counts["preemptions"] >= 0 else "n/a"),
        ("drafted / accepted", f"{stats.get('num_drafted')} / {stats.get('num_accepted')}"),
        ("duration", f"{duration:.1f} s (+ {ref_seconds:.1f} s of references)"),
    ])
    for line in tally.mismatch_examples:
        print("mismatch:", line)
    ok = (finished and tally.mismatches == 0 and errors == 0 and server_5xx == 0 and final_kv == 0.0
          and free == total and tally.completed == expected_completed)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

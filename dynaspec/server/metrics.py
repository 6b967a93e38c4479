"""Prometheus metrics of one server app, on the app's own CollectorRegistry (no global registry).

Request-level metrics (counters, TTFT / inter-token latency histograms) are updated as events happen;
engine-level numbers (queue depth, KV use, speculation statistics) are read at scrape time from the
latest EngineSnapshot the engine thread published, by a custom collector
(https://prometheus.github.io/client_python/collector/custom/). Names follow the Prometheus naming
guide: a `dynaspec_` prefix, base units (seconds), `_total` on counters.

Speculation counters with vLLM's names and meaning (vllm/v1/metrics/loggers.py, SpecDecodingProm), under
a `dynaspec:` prefix (a colon is legal in a Prometheus metric name): `dynaspec:spec_decode_num_drafts`
(request-steps that verified >= 1 draft token), `..._num_draft_tokens`, `..._num_accepted_tokens` and
`..._num_accepted_tokens_per_pos{position}` (0-based, as vLLM's), all counters, so a dashboard takes
`rate()` of them: acceptance rate = accepted / draft tokens, mean acceptance length = 1 + accepted / drafts.
Beside them the gauges `dynaspec:spec_decode_draft_length` (k of the last decode step),
`dynaspec:kv_cache_usage_perc` (vLLM's name: a fraction, 1 = full) and, when the engine's stats carry
them, the prefix cache's hit rate and its query / hit token counters (vLLM's `prefix_cache_queries` /
`prefix_cache_hits`). docs/grafana_dashboard.json is a dashboard over these.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dynaspec.server.async_engine import EngineSnapshot

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)


ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
"""Paths counted under their own label; any other path is counted as "other" (a client requesting
random paths must not grow the counter's label set without bound)."""


class ServerMetrics:
    """The collectors of one app. `snapshot` returns the engine thread's latest EngineSnapshot.

    Every answer a client gets is counted in `dynaspec_http_requests_total{endpoint, status}`, including
    the overload answers (429 queue full, 503 engine down or too many connections) and 413s.
    """

    def __init__(self, snapshot: Callable[[], EngineSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dynaspec_http_requests", "HTTP API requests answered, by endpoint and status code "
            "(499: client disconnected before the end)", ["endpoint", "status"], registry=r)
        self.finished = Counter(
            "dynaspec_request_finished", "Engine requests finished, by finish reason", ["finish_reason"],
            registry=r)
        self.prompt_tokens = Counter("dynaspec_prompt_tokens", "Prompt tokens of started requests", registry=r)
        self.generation_tokens = Counter("dynaspec_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "dynaspec_time_to_first_token_seconds", "From admission to the first generated token",
            buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram(
            "dynaspec_inter_token_latency_seconds", "Time per generated token after the first (a step that "
            "yields several tokens, as speculation does, splits its interval among them)",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(
            "dynaspec_e2e_request_latency_seconds", "From admission to the last token", buckets=_TTFT_BUCKETS,
            registry=r)
        r.register(_EngineCollector(snapshot))

    def record_status(self, endpoint: str, status: int) -> None:
        endpoint = endpoint if endpoint in ENDPOINTS else "other"
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Engine gauges and speculation statistics, read from the snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], EngineSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Any]:
        return []  # families are data-dependent; skip registration-time collisions checks

    def collect(self) -> Iterable[Any]:
        s = self._snapshot()
        yield GaugeMetricFamily("dynaspec_num_requests_waiting",
                                "Requests admitted and not yet scheduled (engine queue + hand-off)",
                                value=s.num_waiting + s.num_pending)
        yield GaugeMetricFamily("dynaspec_num_requests_running", "Requests being scheduled", value=s.num_running)
        yield GaugeMetricFamily("dynaspec_kv_cache_usage_ratio", "Fraction of KV blocks in use (0..1)",
                                value=s.kv_cache_usage)
        if s.num_total_blocks is not None:
            yield GaugeMetricFamily("dynaspec_kv_blocks_total", "KV blocks in the pool", value=s.num_total_blocks)
        if s.num_free_blocks is not None:
            yield GaugeMetricFamily("dynaspec_kv_blocks_free", "KV blocks free", value=s.num_free_blocks)
        yield GaugeMetricFamily("dynaspec_engine_loop_alive", "1 while the engine thread runs",
                                value=1.0 if s.loop_alive else 0.0)
        yield GaugeMetricFamily("dynaspec:kv_cache_usage_perc", "KV-cache usage (vLLM's name): 1 means 100 percent",
                                value=s.kv_cache_usage)
        yield from _spec_families(s.stats)
        yield from _spec_decode_counters(s.stats)
        yield from _prefix_cache_families(s.stats)


def _spec_families(stats: dict[str, Any]) -> Iterable[Any]:
    """Speculative-decoding families from engine.get_stats() (absent keys: nothing emitted)."""
    acc = stats.get("acceptance_rate_per_position")
    if acc is not None:
        g = GaugeMetricFamily("dynaspec_spec_acceptance_rate",
                              "Acceptance rate of the draft token at each position (1-based)",
                              labels=["position"])
        for i, rate in enumerate(acc):
            g.add_metric([str(i + 1)], float(rate))
        yield g
    for key, name, doc in (("num_drafted", "dynaspec_spec_draft_tokens", "Draft tokens proposed"),
                           ("num_accepted", "dynaspec_spec_accepted_tokens", "Draft tokens accepted")):
        if stats.get(key) is not None:
            yield CounterMetricFamily(name, doc, value=float(stats[key]))
    hist = stats.get("k_histogram")
    if hist:
        by_k: dict[int, float] = {}
        steps = CounterMetricFamily("dynaspec_spec_draft_length_steps",
                                    "Counts of draft length k chosen, by decode batch size",
                                    labels=["batch_size", "k"])
        for batch_size, counts in sorted(hist.items(), key=lambda kv: int(kv[0])):
            for k, count in sorted(counts.items(), key=lambda kv: int(kv[0])):
                steps.add_metric([str(batch_size), str(k)], float(count))
                by_k[int(k)] = by_k.get(int(k), 0.0) + float(count)
        yield steps
        cumulative, buckets = 0.0, []
        for k in range(0, max(by_k) + 1):
            cumulative += by_k.get(k, 0.0)
            buckets.append((str(float(k)), cumulative))
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily("dynaspec_spec_draft_length", "Draft length k chosen (all batch sizes)",
                                    buckets=buckets, sum_value=sum(k * c for k, c in by_k.items()))


def _spec_decode_counters(stats: dict[str, Any]) -> Iterable[Any]:
    """vLLM's speculative-decoding counters (SpecDecodingProm) from SpecStats' totals, plus the draft
    length in force. Nothing is emitted before the engine published its stats."""
    if stats.get("num_drafts") is None:
        return
    for key, name, doc in (
        ("num_drafts", "dynaspec:spec_decode_num_drafts",
         "Draft proposals: request-steps that verified at least one draft token"),
        ("drafted", "dynaspec:spec_decode_num_draft_tokens", "Draft tokens verified"),
        ("accepted", "dynaspec:spec_decode_num_accepted_tokens", "Draft tokens accepted"),
    ):
        yield CounterMetricFamily(name, doc, value=float(stats.get(key) or 0))
    per_pos = CounterMetricFamily("dynaspec:spec_decode_num_accepted_tokens_per_pos",
                                  "Draft tokens accepted at each draft position (0-based)", labels=["position"])
    for position, count in enumerate(stats.get("accepted_per_position") or []):
        per_pos.add_metric([str(position)], float(count))
    yield per_pos
    last = stats.get("last_step") or {}
    yield GaugeMetricFamily("dynaspec:spec_decode_draft_length", "Draft length k of the last decode step",
                            value=float(last.get("k", 0)))
    yield CounterMetricFamily("dynaspec:spec_decode_ragged_steps",
                              "Decode steps whose requests had different draft lengths (draft_len_policy: adaptive)",
                              value=float(stats.get("ragged_steps") or 0))
    yield CounterMetricFamily("dynaspec:spec_decode_trimmed_positions",
                              "Drafted positions left unverified by the drafter's calibrated confidence "
                              "(draft_len_policy: adaptive)", value=float(stats.get("trimmed_positions") or 0))
    per_request = CounterMetricFamily("dynaspec:spec_decode_request_draft_length",
                                      "Request-steps by batch size and the request's own draft length k_i",
                                      labels=["batch_size", "draft_length"])
    for batch, by_k in (stats.get("draft_len_histogram") or {}).items():
        for k, count in by_k.items():
            per_request.add_metric([str(batch), str(k)], float(count))
    yield per_request


def _prefix_cache_families(stats: dict[str, Any]) -> Iterable[Any]:
    """Prefix-cache numbers where the engine's stats carry them (absent keys: nothing emitted)."""
    if stats.get("prefix_cache_hit_rate") is not None:
        yield GaugeMetricFamily("dynaspec:prefix_cache_hit_rate", "Prefix-cache hit rate (hit / queried tokens)",
                                value=float(stats["prefix_cache_hit_rate"]))
    for key, name, doc in (("prefix_cache_queries", "dynaspec:prefix_cache_queries",
                            "Prompt tokens looked up in the prefix cache"),
                           ("prefix_cache_hits", "dynaspec:prefix_cache_hits", "Prompt tokens found in the prefix cache")):
        if stats.get(key) is not None:
            yield CounterMetricFamily(name, doc, value=float(stats[key]))

"""vLLM-style speculation counters on /metrics (server/metrics.py, issue 23): they move as drafts are made,
with vLLM's meaning (num_drafts: request-steps that verified >= 1 draft token), and the mean acceptance
length a dashboard computes from them (1 + accepted / drafts) equals get_stats()'s."""

from __future__ import annotations

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from dynaspec import LLM, SamplingParams
from dynaspec.server.async_engine import EngineSnapshot
from dynaspec.server.metrics import ServerMetrics
from dynaspec.spec.config import NGramDecodingConfig
from tests.tiny_models import make_tiny_checkpoint


def scrape(stats: dict, kv_cache_usage: float = 0.0) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics rendering of these engine stats."""
    metrics = ServerMetrics(lambda: EngineSnapshot(stats=stats, kv_cache_usage=kv_cache_usage))
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counters(samples: dict) -> tuple[float, float, float, dict[str, float]]:
    per_pos = {dict(labels)["position"]: v for (name, labels), v in samples.items()
               if name == "dynaspec:spec_decode_num_accepted_tokens_per_pos_total"}
    return (samples[("dynaspec:spec_decode_num_drafts_total", ())],
            samples[("dynaspec:spec_decode_num_draft_tokens_total", ())],
            samples[("dynaspec:spec_decode_num_accepted_tokens_total", ())], per_pos)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    target = make_tiny_checkpoint(tmp_path_factory.mktemp("counters"), "llama", seed=0)
    return LLM(model=str(target), block_size=4, speculative_config=NGramDecodingConfig(max_draft_len=3))


def _generate(llm: LLM) -> None:
    gen = torch.Generator().manual_seed(3)
    motif = torch.randint(0, 512, (5,), generator=gen).tolist()
    prompts = [motif * 3 + torch.randint(0, 512, (2 + 3 * i,), generator=gen).tolist() for i in range(3)]
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))


def test_counters_move_as_drafts_are_made(llm):
    before = counters(scrape(llm.get_stats()))
    _generate(llm)
    _generate(llm)  # the n-gram pool now holds the first call's text: drafts get accepted
    stats = llm.get_stats()
    after = scrape(stats)
    drafts, draft_tokens, accepted, per_pos = counters(after)
    assert drafts > before[0] and draft_tokens > before[1] and accepted > before[2]
    assert (drafts, draft_tokens, accepted) == (stats["num_drafts"], stats["drafted"], stats["accepted"])
    assert draft_tokens >= drafts  # a draft holds >= 1 token
    assert per_pos == {str(j): float(n) for j, n in enumerate(stats["accepted_per_position"])}
    assert sum(per_pos.values()) == accepted
    # what a dashboard computes from the counters
    assert 1 + accepted / drafts == pytest.approx(stats["mean_acceptance_length"])
    assert accepted / draft_tokens == pytest.approx(stats["acceptance_rate"])
    assert after[("dynaspec:spec_decode_draft_length", ())] == stats["last_step"]["k"]


def test_counters_never_decrease(llm):
    first = counters(scrape(llm.get_stats()))
    _generate(llm)
    second = counters(scrape(llm.get_stats()))
    assert all(b >= a for a, b in zip(first[:3], second[:3]))
    assert all(second[3].get(p, 0) >= v for p, v in first[3].items())


def test_kv_usage_and_prefix_cache_hit_rate_when_present():
    stats = {"num_drafts": 0, "drafted": 0, "accepted": 0, "accepted_per_position": [], "last_step": {}}
    without = scrape(stats, kv_cache_usage=0.25)
    assert without[("dynaspec:kv_cache_usage_perc", ())] == 0.25
    assert without[("dynaspec:spec_decode_draft_length", ())] == 0.0
    assert not any(name.startswith("dynaspec:prefix_cache") for name, _ in without)
    with_cache = scrape({**stats, "prefix_cache_hit_rate": 0.75, "prefix_cache_queries": 8, "prefix_cache_hits": 6})
    assert with_cache[("dynaspec:prefix_cache_hit_rate", ())] == 0.75
    assert with_cache[("dynaspec:prefix_cache_queries_total", ())] == 8
    assert with_cache[("dynaspec:prefix_cache_hits_total", ())] == 6


def test_existing_metrics_stay():
    samples = scrape({"num_drafted": 4, "num_accepted": 2, "acceptance_rate_per_position": [0.5], "num_drafts": 2,
                      "drafted": 4, "accepted": 2, "accepted_per_position": [2], "last_step": {"k": 2}})
    assert samples[("dynaspec_spec_draft_tokens_total", ())] == 4
    assert samples[("dynaspec_spec_acceptance_rate", (("position", "1"),))] == 0.5


def test_grafana_dashboard_reads_only_exported_metrics():
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana_dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in exprs for name in re.findall(r"dynaspec[a-z0-9_:]*", e)}
    stats = {"num_drafts": 1, "drafted": 2, "accepted": 1, "accepted_per_position": [1], "last_step": {"k": 2},
             "prefix_cache_hit_rate": 0.5}
    text = ServerMetrics(lambda: EngineSnapshot(stats=stats)).render().decode()
    exported = set(re.findall(r"^(?:# TYPE )?(dynaspec[a-z0-9_:]*)", text, re.MULTILINE))
    exported |= {name + "_bucket" for name in re.findall(r"^# TYPE (\S+) histogram", text, re.MULTILINE)}
    assert used and used <= exported, used - exported


def test_ragged_steps_and_per_request_draft_lengths_are_exported():
    """`draft_len_policy: adaptive` stats (ragged steps, request-steps by batch size and k_i) as counters."""
    stats = {"num_drafts": 3, "drafted": 6, "accepted": 2, "accepted_per_position": [2], "last_step": {"k": 4},
             "ragged_steps": 5, "draft_len_histogram": {"2": {"0": 4, "4": 6}, "8": {"1": 8}}, "trimmed_positions": 7}
    samples = scrape(stats)
    assert samples[("dynaspec:spec_decode_ragged_steps_total", ())] == 5
    assert samples[("dynaspec:spec_decode_trimmed_positions_total", ())] == 7
    per_request = {tuple(dict(labels).values()): v for (name, labels), v in samples.items()
                   if name == "dynaspec:spec_decode_request_draft_length_total"}
    assert per_request == {("2", "0"): 4, ("2", "4"): 6, ("8", "1"): 8}

"""Goodput planner on synthetic cost / acceptance tables: argmax, regimes, hysteresis, hooks (probes and
exploration: test_planner_exploration.py)."""

import random

import pytest

from dynaspec.spec.acceptance_estimator import AcceptanceEstimator
from dynaspec.spec.catch_up import CatchUpCost
from dynaspec.runtime.cost_model import StepCostModel
from dynaspec.spec.planner import GoodputPlanner
from dynaspec.spec.planner_settings import PlannerSettings
from dynaspec.spec.policy import StepOutcome
from dynaspec.spec.stats import SpecStats

PER_REQUEST_MAX_BATCH = PlannerSettings().per_request_max_batch
# The settings these unit tests were written for: no hysteresis, exploration or probes, no explore budget,
# a fresh goodput table after every observation (the engine's are PlannerSettings()).
UNIT = PlannerSettings(hysteresis=0.0, explore_every=None, replan_every=1, probe_margin=None, explore_budget=None)

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KS = (0, 1, 2, 3, 4, 6)


def _cost(fn, batches=BATCHES, ks=KS) -> StepCostModel:
    model = StepCostModel()
    for b in batches:
        for k in ks:
            model.add(b, k, fn(b, k))
    return model


def _settings(**changes) -> PlannerSettings:
    """UNIT with some settings changed (validated)."""
    return PlannerSettings(**{**UNIT.model_dump(), **changes})


def _planner(cost, alphas, ks=KS, ema_rate=0.05, catch_up=None, backlog=None, padded_batch=None, **settings):
    estimator = AcceptanceEstimator(max(ks), profile=alphas, ema_rate=ema_rate)
    return GoodputPlanner(cost, estimator, ks, _settings(**settings), catch_up, backlog, padded_batch)


def _brute_force_goodput(cost: StepCostModel, alphas_per_request, batch: int, k: int) -> float:
    """Independent reference: mean over requests of sum_j prod_{i<j} alpha_i, plus one, times batch / T."""
    expected = 0.0
    for alphas in alphas_per_request:
        for j in range(1, k + 1):
            p = 1.0
            for i in range(j):
                p *= alphas[i]
            expected += p
    expected /= len(alphas_per_request)
    return (expected + 1.0) * batch / cost.cost(batch, k)


def test_picks_the_argmax_on_random_tables():
    rng = random.Random(1234)
    for trial in range(150):
        base = rng.uniform(0.005, 0.05)
        per_token = rng.uniform(0.0, 2e-4)
        draft = rng.uniform(0.0, 0.01)
        noise = {(b, k): rng.uniform(0.8, 1.2) for b in BATCHES for k in KS}
        cost = _cost(lambda b, k: (base + per_token * b * (1 + k) + draft * k) * noise[b, k])
        alphas = [rng.uniform(0.0, 1.0) for _ in range(max(KS))]
        planner = _planner(cost, alphas)
        for _ in range(10):
            batch = rng.randint(1, 300)
            goodput = {k: _brute_force_goodput(cost, [alphas], batch, k) for k in KS}
            best = max(KS, key=lambda k: goodput[k])
            fresh = _planner(cost, alphas)
            assert fresh.draft_len(batch, batch) == best, (trial, batch, goodput)
            assert planner.best_k(batch) == best
            assert fresh.goodputs(batch) == pytest.approx(goodput)


def test_picks_the_argmax_with_per_request_estimates():
    rng = random.Random(99)
    for trial in range(40):
        noise = {(b, k): rng.uniform(0.7, 1.3) for b in BATCHES for k in KS}
        cost = _cost(lambda b, k: (0.01 + 5e-5 * b * (1 + k)) * noise[b, k])
        planner = _planner(cost, [rng.uniform(0.2, 0.9) for _ in range(max(KS))])
        ids = [f"r{i}" for i in range(rng.randint(1, 12))]
        for _ in range(20):  # random history per request
            drafted = [rng.randint(0, max(KS)) for _ in ids]
            accepted = [rng.randint(0, d) for d in drafted]
            planner.observe_acceptance(max(KS), drafted, accepted, ids)
        batch = len(ids)
        per_request = [planner.estimator.alphas(r) for r in ids]
        goodput = {k: _brute_force_goodput(cost, per_request, batch, k) for k in KS}
        best = max(KS, key=lambda k: goodput[k])
        assert planner.best_k(batch, ids) == best
        assert planner.goodputs(batch, ids) == pytest.approx(goodput)


def test_memory_bound_and_high_acceptance_picks_max_k():
    cost = _cost(lambda b, k: 0.02 + 1e-6 * b)  # verify is free in k: flat
    planner = _planner(cost, [0.9] * max(KS))
    for batch in (1, 3, 8, 50, 256):
        assert planner.draft_len(batch, batch) == max(KS)


def test_compute_bound_and_low_acceptance_picks_zero():
    cost = _cost(lambda b, k: 1e-4 * b * (1 + k) + 1e-6)  # ~ tokens processed
    planner = _planner(cost, [0.2] * max(KS))
    for batch in (1, 3, 8, 50, 256):
        assert planner.draft_len(batch, batch) == 0


def test_speculation_switches_off_as_the_batch_grows():
    # Memory-bound until batch * (1 + k) tokens reach 256, compute-bound after: SmartSpec's regime change.
    cost = _cost(lambda b, k: max(0.01, 0.01 * b * (1 + k) / 256))
    planner = _planner(cost, [0.8] * max(KS))
    ks = [planner.draft_len(b, b) for b in BATCHES]
    assert ks[0] == max(KS)  # batch 1: drafts are free
    assert ks[-1] == 0  # batch 256: every draft costs a full token
    assert ks == sorted(ks, reverse=True)  # k never grows with the batch here


def _two_k_planner(hysteresis: float) -> GoodputPlanner:
    # batch 1: goodput(0) = 1 / 0.010 = 100 tok/s; goodput(1) = (1 + alpha_0) / 0.015.
    cost = StepCostModel()
    cost.add(1, 0, 0.010)
    cost.add(1, 1, 0.015)
    cost.add(8, 0, 0.010)
    cost.add(8, 1, 0.015)
    # ema_rate 1: every step sets alpha_0 to that step's acceptance, so the test controls it exactly.
    estimator = AcceptanceEstimator(1, profile=[0.5], ema_rate=1.0)
    return GoodputPlanner(cost, estimator, [0, 1], _settings(hysteresis=hysteresis))


def _set_alpha(planner: GoodputPlanner, accepted_of_200: int) -> None:
    planner.observe_acceptance(1, [1] * 200, [1] * accepted_of_200 + [0] * (200 - accepted_of_200))


def test_hysteresis_holds_small_changes_and_follows_large_ones():
    planner = _two_k_planner(hysteresis=0.05)
    _set_alpha(planner, 112)  # alpha 0.56: goodput(1) = 104 > 100
    assert planner.draft_len(1, 1) == 1
    _set_alpha(planner, 91)  # alpha 0.455: goodput(1) = 97; k=0 better by 3% < 5%: keep k=1
    assert planner.goodputs(1)[1] == pytest.approx(97.0)
    assert planner.best_k(1) == 0
    assert planner.draft_len(1, 1) == 1
    assert planner.last_decision["reason"] == "hysteresis"
    _set_alpha(planner, 40)  # alpha 0.2: goodput(1) = 80; k=0 better by 25%: switch
    assert planner.draft_len(1, 1) == 0
    _set_alpha(planner, 109)  # alpha 0.545: goodput(1) = 103, 3% better: stay at 0
    assert planner.draft_len(1, 1) == 0
    _set_alpha(planner, 130)  # alpha 0.65: goodput(1) = 110, 10% better: switch back
    assert planner.draft_len(1, 1) == 1
    assert planner.last_decision["reason"] == "argmax"


def test_without_hysteresis_the_same_fluctuation_flips_k():
    planner = _two_k_planner(hysteresis=0.0)
    flips, previous = 0, None
    for accepted in (112, 91, 112, 91, 112):  # alpha alternates 0.56 / 0.455
        _set_alpha(planner, accepted)
        k = planner.draft_len(1, 1)
        flips += previous is not None and k != previous
        previous = k
    assert flips == 4
    held = _two_k_planner(hysteresis=0.05)
    ks = []
    for accepted in (112, 91, 112, 91, 112):
        _set_alpha(held, accepted)
        ks.append(held.draft_len(1, 1))
    assert ks == [1, 1, 1, 1, 1]


def test_hysteresis_state_is_per_batch_bucket():
    planner = _two_k_planner(hysteresis=0.05)
    _set_alpha(planner, 112)
    assert planner.draft_len(1, 1) == 1  # bucket 1 now holds k=1
    _set_alpha(planner, 91)
    assert planner.draft_len(1, 1) == 1  # held
    assert planner.draft_len(5, 5) == 0  # bucket 8 has no history: plain argmax
    assert planner.bucket(5) == 8 and planner.bucket(1) == 1 and planner.bucket(100) == 8


def test_goodput_table_is_reused_until_replan_every_observations():
    planner = _two_k_planner(hysteresis=0.0)
    planner.replan_every = 3
    _set_alpha(planner, 200)  # alpha 1: goodput(1) = 133 > 100
    assert planner.draft_len(1, 1) == 1
    _set_alpha(planner, 0)  # alpha 0: k = 0 is best now, but the table of batch 1 is 1 observation old
    assert planner.best_k(1) == 0 and planner.draft_len(1, 1) == 1
    assert planner.draft_len(8, 8) == 0  # a batch without a table gets a fresh one
    planner.observe_step_time(1, 1, 0.015)  # 2 observations old: still reused
    assert planner.draft_len(1, 1) == 1
    planner.observe_step_time(1, 1, 0.015)  # 3: recomputed
    assert planner.draft_len(1, 1) == 0
    computed = []  # refresh() computes a due table ahead of the decision, which then reuses it
    goodputs = planner.goodputs
    planner.goodputs = lambda *args: computed.append(args) or goodputs(*args)
    _set_alpha(planner, 200)
    planner.observe_step_time(1, 1, 0.015)
    planner.observe_step_time(1, 1, 0.015)
    planner.refresh(1)
    assert computed == [(1, None)]
    assert planner.draft_len(1, 1) == 1 and len(computed) == 1
    planner.refresh(1)  # not due: nothing recomputed
    assert len(computed) == 1
    every = _two_k_planner(hysteresis=0.0)  # replan_every 1 (UNIT's): every observation counts
    _set_alpha(every, 200)
    assert every.draft_len(1, 1) == 1
    _set_alpha(every, 0)
    assert every.draft_len(1, 1) == 0


def test_requests_own_acceptance_only_up_to_per_request_max_batch():
    cost = _cost(lambda b, k: 0.02)
    planner = _planner(cost, [0.5] * max(KS), ema_rate=1.0)
    small = [f"s{i}" for i in range(PER_REQUEST_MAX_BATCH)]
    planner.observe_acceptance(4, [4] * len(small), [4] * len(small), small)
    assert planner.estimator.num_tracked_requests == PER_REQUEST_MAX_BATCH
    large = [f"l{i}" for i in range(PER_REQUEST_MAX_BATCH + 1)]
    planner.observe_acceptance(4, [4] * len(large), [0] * len(large), large)  # the global estimate only
    assert planner.estimator.num_tracked_requests == PER_REQUEST_MAX_BATCH
    assert planner.estimator.global_alphas()[0] == 0.0
    # At batch 16 the requests' own all-accepted history lifts the estimate; at 17 only the global one counts.
    assert planner.goodputs(len(small), small)[4] > planner.goodputs(len(small))[4]
    assert planner.goodputs(len(large), small + ["x"]) == planner.goodputs(len(large))


def test_max_concurrency_forces_zero():
    cost = _cost(lambda b, k: 0.02)
    planner = _planner(cost, [0.9] * max(KS), max_concurrency=8)
    assert planner.draft_len(4, 8) == max(KS)
    assert planner.draft_len(4, 9) == 0
    assert planner.last_decision["reason"] == "max_concurrency"
    assert planner.reachable_draft_lens(4) == set(KS)


def test_explain_rows():
    cost = _cost(lambda b, k: 0.01 * (1 + 0.1 * k))
    planner = _planner(cost, [0.5] * max(KS))
    rows = planner.explain(4)
    assert [row["k"] for row in rows] == list(KS)
    goodput = planner.goodputs(4)
    for row in rows:
        assert row["step_seconds"] == pytest.approx(cost.cost(4, row["k"]))
        assert row["expected_accepted"] == pytest.approx(planner.estimator.expected_accepted(row["k"]))
        assert row["goodput_tokens_per_s"] == pytest.approx(goodput[row["k"]])
    assert rows[0]["goodput_tokens_per_s"] == pytest.approx(4 / 0.01)


def test_observe_last_step_from_spec_stats_and_release():
    cost = _cost(lambda b, k: 0.02)
    planner = _planner(cost, [0.5] * max(KS), ema_rate=1.0)
    stats = SpecStats()
    stats.record(3, 4, drafted=[4, 4, 2], accepted=[4, 1, 2])
    planner.observe_last_step(stats.last_step, request_ids=["a", "b", "c"])
    # position 0: 3 of 3; position 1: a, c accepted, b rejected; position 2: a accepted, c short -> rejected
    assert planner.estimator.global_alphas()[:3] == pytest.approx([1.0, 2 / 3, 0.5])
    assert planner.estimator.num_tracked_requests == 3
    planner.release("b")
    assert planner.estimator.num_tracked_requests == 2
    stats.record(3, 0, drafted=[0, 0, 0], accepted=[0, 0, 0])
    planner.observe_last_step(stats.last_step)  # k=0: nothing observed
    assert planner.estimator.global_alphas()[:3] == pytest.approx([1.0, 2 / 3, 0.5])


def test_engine_facing_properties():
    cost = _cost(lambda b, k: 0.02, ks=(0, 2, 4))
    planner = _planner(cost, [0.5] * 4, ks=(2, 4))  # 0 is added
    assert planner.candidate_ks == [0, 2, 4]
    assert planner.reachable_draft_lens(1) == {0, 2, 4}
    assert planner.max_draft_len == 4


def test_validation_errors():
    cost = _cost(lambda b, k: 0.02, ks=(0, 2))
    est = AcceptanceEstimator(4)
    message = r"candidate k values \[3\] have no step-cost measurement; measured k values: \[0, 2\]"
    with pytest.raises(ValueError, match=message):
        GoodputPlanner(cost, est, [2, 3])
    with pytest.raises(ValueError, match=r"candidate k 2 exceeds the acceptance estimator's max_draft_len \(1\)"):
        GoodputPlanner(cost, AcceptanceEstimator(1), [2])
    # the settings are validated once, where they are made
    for field, bad in (("hysteresis", -0.1), ("max_concurrency", 0), ("explore_every", 0), ("replan_every", 0)):
        with pytest.raises(ValueError, match=field):
            PlannerSettings(**{field: bad})


def test_build_from_spec_config(tmp_path):
    import json

    from dynaspec.spec.config import NGramDecodingConfig
    from dynaspec.spec.planner import build_goodput_planner

    profile = tmp_path / "copy.json"
    profile.write_text(json.dumps({"acceptance_per_position": [0.9, 0.8, 0.7, 0.6]}))
    config = NGramDecodingConfig(
        max_draft_len=4,
        max_concurrency=16,
        draft_len_policy="goodput",
        goodput_hysteresis=0.1,
        acceptance_profile=str(profile),
    )
    cost = _cost(lambda b, k: 0.02, ks=(0, 1, 2, 4, 6))  # k=6 is above max_draft_len: not a default candidate
    planner = build_goodput_planner(config, cost)
    assert planner.candidate_ks == [0, 1, 2, 4]
    assert planner.hysteresis == 0.1 and planner.max_concurrency == 16
    # every other setting is the engine's, PlannerSettings' one set of defaults
    assert planner.settings == PlannerSettings(hysteresis=0.1, max_concurrency=16)
    assert planner.settings.replan_every == 16 and planner.settings.probe_margin == 0.10
    assert planner.settings.explore_every == 64 and planner.settings.explore_budget == 0.01
    assert NGramDecodingConfig().goodput_hysteresis == PlannerSettings().hysteresis == 0.02
    assert planner.estimator.global_alphas() == [0.9, 0.8, 0.7, 0.6]
    assert planner.draft_len(2, 2) == 4
    assert planner.draft_len(2, 17) == 0
    with pytest.raises(ValueError, match=r"candidate k values \[6\] exceed max_draft_len \(4\)"):
        build_goodput_planner(config, cost, candidate_ks=[2, 6])


def test_padded_batches_are_priced_at_their_cuda_graphs_batch():
    """97 requests replay the batch-128 graph: the probed cost is read at 128, not interpolated between
    the graphs of 64 and 128, so k = 1 (which wins only at the interpolated price) is not chosen."""
    # compute-bound: T = 1 ms + 0.1 ms per verified token (batch * (1 + k))
    cost = _cost(lambda b, k: 0.001 + 0.0001 * b * (1 + k), batches=(64, 128), ks=(0, 1))
    graph = {64: 64, 128: 128}

    def padded(batch: int, k: int) -> int:
        return min(b for b in graph if b >= batch)

    eager = _planner(cost, [0.9], ks=(0, 1))
    graphs = _planner(cost, [0.9], ks=(0, 1), padded_batch=padded)
    assert eager.probed_seconds(97, 1) == pytest.approx(0.001 + 0.0001 * 97 * 2)
    assert graphs.probed_seconds(97, 1) == pytest.approx(0.001 + 0.0001 * 128 * 2)
    # k = 0 has real steps of the full bucket (12.8 ms + 1 ms); its prior is the same either way
    for planner in (eager, graphs):
        for _ in range(4):
            planner.observe_step_time(128, 0, 0.0138)
    # eager: 1.9 * 97 / 20.4 ms = 9,033 tok/s against 97 / 13.8 ms = 7,029: k = 1
    assert eager.draft_len(97, 97) == 1
    # graphs: 1.9 * 97 / 26.6 ms = 6,929 tok/s: k = 0
    assert graphs.draft_len(97, 97) == 0


def test_engine_at_concurrency_1_follows_each_requests_own_acceptance(tmp_path):
    """One request at a time, workloads alternating (replayed: every draft accepted / none): the engine
    names the decoding requests, so once finished requests showed that they differ the planner runs the largest k on an
    accepting request right after a rejecting one, and k = 0 on a rejecting one after its first steps.
    (A pooled estimate at concurrency 1 is the previous request's acceptance.)"""
    import json

    from dynaspec import LLM, NGramDecodingConfig, SamplingParams
    from dynaspec.spec.replay import profile_index
    from tests.tiny_models import make_tiny_checkpoint

    (tmp_path / "all.json").write_text(json.dumps({"acceptance_per_position": [1.0]}))
    (tmp_path / "none.json").write_text(json.dumps({"acceptance_per_position": [0.0]}))
    profiles = f"{tmp_path / 'all.json'},{tmp_path / 'none.json'}"
    # Step costs fixed (a k = 4 step costs 1.4 plain ones): what is tested is the acceptance estimate, and
    # this CPU's step times, which would refine the table online, vary from run to run.
    table = StepCostModel()
    for batch in (1, 2, 4, 8):
        for k in range(5):
            table.add(batch, k, 0.01 * (1 + 0.1 * k))
    table.save(tmp_path / "cost.json")
    # Warm start: either workload accepts every position after the first (a chain stops only at position 0).
    (tmp_path / "start.json").write_text(json.dumps({"acceptance_per_position": [0.5, 1.0, 1.0, 1.0]}))
    spec = NGramDecodingConfig(max_draft_len=4, draft_len_policy="goodput", replay_acceptance_profile=profiles,
                               acceptance_profile=str(tmp_path / "start.json"),
                               step_cost_file=str(tmp_path / "cost.json"))
    engine = LLM(model=str(make_tiny_checkpoint(tmp_path, "llama")), block_size=4, speculative_config=spec).engine
    planner = engine.policy
    planner.observe_step_time = lambda batch, k, seconds: None
    planner.probe_margin = None  # (probes wait for real step times, which this test does not feed)
    planner.replan_every = 1  # a fresh table each step: the decisions follow the estimate at once
    planner.backlog = None  # switches from k = 0 unpriced (the catch-up price is timed on this CPU)
    # Explore often whatever it costs: a request at k = 0 learns only from explorations, and what is
    # tested is how the estimate uses them, not how often the budget allows them.
    planner.explore_every, planner.explore_budget = 8, None
    ids = {0: [], 1: []}  # profile index -> request ids replaying it
    n = 0
    while min(len(v) for v in ids.values()) < 12:
        ids[profile_index(f"req-{n}", 2)].append(f"req-{n}")
        n += 1
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    ks: dict[str, dict[str, int]] = {}  # request -> its decode steps per k

    def histogram() -> dict[str, int]:
        return dict(engine.get_stats()["k_histogram"].get("1", {}))

    for accepting, rejecting in zip(ids[0], ids[1]):
        for rid in (rejecting, accepting):
            before = histogram()
            engine.add_request(rid, [3, 1, 4, 1, 5, 9, 2, 6], params)
            while engine.has_unfinished_requests():
                engine.step()
            ks[rid] = {k: n - before.get(k, 0) for k, n in histogram().items() if n > before.get(k, 0)}
    assert planner.estimator.effective_blend_count < 4  # learned: requests differ
    for accepting, rejecting in list(zip(ids[0], ids[1]))[-4:]:
        assert ks[accepting].get("4", 0) >= 0.7 * sum(ks[accepting].values()), ks
        assert ks[rejecting].get("0", 0) >= 0.6 * sum(ks[rejecting].values()), ks


def test_observe_feeds_a_step_outcome_to_acceptance_step_times_or_catch_up():
    cost = _cost(lambda b, k: 0.02)
    planner = _planner(cost, [0.5] * max(KS), ema_rate=1.0, catch_up=CatchUpCost(0.0), backlog=lambda: (0, 0))
    planner.observe(StepOutcome(["a", "b"], 2, drafted=[2, 2], accepted=[2, 0], seconds=0.03))
    assert planner.estimator.global_alphas()[:2] == pytest.approx([0.5, 1.0])
    assert planner.estimator.num_tracked_requests == 2
    assert planner.observed.count(planner.bucket(2), 2) == 1
    planner.observe(StepOutcome(["a", "b"], 0, seconds=0.02))  # a plain step: its time only
    assert planner.observed.count(planner.bucket(2), 0) == 1
    assert planner.estimator.global_alphas()[:2] == pytest.approx([0.5, 1.0])
    # the first speculative step after plain ones: 10 ms beyond T(2, 2) = 30 ms prices 5,000 tokens
    planner.observe(StepOutcome(["a", "b"], 2, drafted=[2, 2], accepted=[2, 2], seconds=0.04, catch_up_tokens=5000))
    assert planner.observed.count(planner.bucket(2), 2) == 1  # no sample of T
    assert planner.catch_up.seconds_per_token == pytest.approx(0.010 / 5000)
    planner.observe(StepOutcome(["a"], 1, drafted=[1], accepted=[1]))  # a step that also prefilled: no time
    assert planner.observed.count(planner.bucket(1), 1) == 0


def test_a_planner_setting_assigned_replaces_the_settings():
    planner = _planner(_cost(lambda b, k: 0.02), [0.5] * max(KS))
    planner.explore_every, planner.replan_every = 3, 5
    assert planner.settings == _settings(explore_every=3, replan_every=5)
    assert planner.stats()["planner_decision"] == {}
    planner.draft_len(4, 4)
    assert planner.stats()["planner_decision"]["k"] == planner.last_decision["k"]

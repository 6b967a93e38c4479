"""Verifier: greedy matching and rejection sampling (Leviathan et al. 2023), incl. a chi-square test
that the first committed token follows the target distribution for random and one-hot drafts."""

import pytest
import torch
from scipy.stats import chisquare

from dynaspec.spec.verifier import VerifyOutput, finite_rows, greedy_accept, rejection_sample

V = 8


def _onehot_rows(ids, vocab=V) -> torch.Tensor:
    p = torch.zeros(len(ids), vocab)
    p[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    return p


def _temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def _top_p_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose mass reaches top_p, renormalise."""
    probs = torch.softmax(logits, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p[mass_before >= top_p] = 0.0
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)


# --- greedy ----------------------------------------------------------------------------------------


def test_greedy_accept_all_gives_bonus():
    assert greedy_accept([5, 6, 7, 8], [5, 6, 7]) == ([5, 6, 7, 8], 3)


def test_greedy_first_mismatch_takes_target_token():
    assert greedy_accept([5, 9, 7, 8], [5, 6, 7]) == ([5, 9], 1)
    assert greedy_accept([1, 6, 7, 8], [5, 6, 7]) == ([1], 0)


def test_greedy_empty_draft():
    assert greedy_accept([4], []) == ([4], 0)


def test_greedy_from_logits_ids_and_flat():
    drafts = [[3, 1], [], [2, 2, 2]]
    rows = [[3, 1, 4], [6], [2, 5, 2, 0]]
    logits = [torch.randn(len(r), V) + 10 * _onehot_rows(r) for r in rows]
    expected = VerifyOutput(tokens=[[3, 1, 4], [6], [2, 5]], num_accepted=[2, 0, 1])
    greedy = [True] * 3
    assert rejection_sample(logits, drafts, None, greedy) == expected
    assert rejection_sample([torch.tensor(r) for r in rows], drafts, None, greedy) == expected
    assert rejection_sample(torch.cat(logits), drafts, None, greedy) == expected


# --- rejection sampling, hand-built --------------------------------------------------------------


def test_sampling_full_accept_when_target_is_certain_of_the_drafts():
    draft = [2, 5, 1]
    p = _onehot_rows(draft + [7])  # target puts all mass on each draft token, then on 7
    q = torch.full((3, V), 1.0 / V)
    g = torch.Generator().manual_seed(0)
    for probs in (q, None):
        out = rejection_sample([p], [draft], [probs], [False], generator=g)
        assert out.tokens == [[2, 5, 1, 7]] and out.num_accepted == [3]


def test_sampling_early_reject_recovers_from_residual():
    draft = [2, 5, 1]
    p = torch.zeros(4, V)
    p[0, 2] = 1.0  # accepted surely
    p[1, 3], p[1, 4] = 0.5, 0.5  # p(5) = 0: rejected surely
    p[2:] = 1.0 / V
    q = torch.zeros(3, V)
    q[0, 2] = 1.0
    q[1, 5], q[1, 3] = 0.5, 0.5  # residual max(p - q, 0) at row 1 is all on token 4
    q[2, 1] = 1.0
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        out = rejection_sample([p], [draft], [q], [False], generator=g)
        assert out.tokens == [[2, 4]] and out.num_accepted == [1]


def test_one_hot_reject_never_returns_the_rejected_token():
    p = torch.zeros(2, V)
    p[0, 2], p[0, 6] = 0.5, 0.5
    p[1] = 1.0 / V
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(200):
        out = rejection_sample([p], [[2]], None, [False], generator=g)
        seen.add(tuple(out.tokens[0][:1]))
        if out.num_accepted[0] == 0:
            assert out.tokens[0] == [6]  # p with the draft token removed
    assert seen == {(2,), (6,)}


def test_empty_draft_gives_exactly_one_bonus_token():
    p = torch.zeros(1, V)
    p[0, 3] = 1.0
    out = rejection_sample([p], [[]], [None], [False], generator=torch.Generator().manual_seed(0))
    assert out == VerifyOutput(tokens=[[3]], num_accepted=[0])


def test_mixed_batch_greedy_sampled_onehot_dense_and_empty():
    drafts = [[1, 2], [4], [], [0, 0]]
    targets = [
        torch.tensor([1, 7, 3]),  # greedy ids: accept 1, reject 2 -> 7
        _onehot_rows([4, 6]),  # sampled one-hot draft, certain accept + bonus 6
        _onehot_rows([5]),  # sampled, empty draft -> bonus 5
        _onehot_rows([0, 0, 2]),  # sampled dense q, certain accept + bonus 2
    ]
    q = [None, None, None, torch.full((2, V), 1.0 / V)]
    out = rejection_sample(targets, drafts, q, [True, False, False, False], generator=torch.Generator().manual_seed(0))
    assert out.tokens == [[1, 7], [4, 6], [5], [0, 0, 2]]
    assert out.num_accepted == [1, 1, 0, 2]


def test_seeded_requests_reproduce_regardless_of_batch():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(4, V), dim=-1)
    q = torch.softmax(torch.randn(3, V), dim=-1)
    draft = [1, 2, 3]

    def run_alone():
        return rejection_sample([p], [draft], [q], [False], [torch.Generator().manual_seed(42)]).tokens[0]

    def run_in_batch():
        other = torch.softmax(torch.randn(2, V), dim=-1)
        out = rejection_sample([other, p], [[5], draft], [None, q], [False, False], [None, torch.Generator().manual_seed(42)])
        return out.tokens[1]

    results = {tuple(run_alone()) for _ in range(3)} | {tuple(run_in_batch()) for _ in range(3)}
    assert len(results) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (([torch.ones(2, V)], [[1, 2]], None, [False]), r"target\[0\] must have d \+ 1 = 3 rows"),
        (([torch.tensor([1, 2])], [[1]], None, [False]), r"request 0 samples, so target\[0\] must be"),
        (([torch.ones(2, V)], [[1]], [torch.ones(2, V)], [False]), r"draft_probs\[0\] must be \(d, vocab\) = \(1, 8\)"),
        (([torch.ones(2, V)], [[1]], None, [False, True]), "one greedy entry per request"),
        ((torch.ones(3, V), [[1]], None, [True]), r"a flat target must be \(sum\(d_i\+1\), vocab\) = \(2, V\)"),
    ],
)
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        rejection_sample(*args)


# --- statistical: the committed distribution is the target's -------------------------------------

N_SAMPLES = 20_000


def _first_token_counts(p_rows: torch.Tensor, q_rows: torch.Tensor | None, draft_source: torch.Tensor, seed: int):
    """Verify N_SAMPLES independent requests (2 drafts each) and count their first committed token.

    draft_source: (2, V) distribution the draft tokens are drawn from (q itself for a draft model; any
    proposal for one-hot drafts, which are deterministic given the draft token).
    """
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(draft_source, N_SAMPLES, replacement=True, generator=g).T.tolist()  # (N, 2)
    out = rejection_sample(
        p_rows.repeat(N_SAMPLES, 1),  # flat (N * 3, V)
        drafts,
        None if q_rows is None else [q_rows] * N_SAMPLES,
        [False] * N_SAMPLES,
        generator=g,
    )
    assert all(1 <= len(t) <= 3 for t in out.tokens)
    first = torch.tensor([t[0] for t in out.tokens])
    return torch.bincount(first, minlength=p_rows.shape[1]), out


def _assert_matches(counts: torch.Tensor, p: torch.Tensor) -> None:
    support = p > 0
    assert counts[~support].sum() == 0, "tokens outside the target's support were committed"
    p_support = p[support].double()
    expected = p_support / p_support.sum() * counts.sum()
    result = chisquare(counts[support].double().numpy(), expected.numpy())
    assert result.pvalue > 1e-3, result


def _processed_targets():
    torch.manual_seed(1234)
    logits = torch.randn(3, V) * 2
    return {
        "temperature": _temperature_probs(logits, 0.7),
        "top_p": _top_p_probs(logits, 0.8),
    }


@pytest.mark.parametrize("processing", ["temperature", "top_p"])
def test_rejection_sampling_preserves_target_with_random_draft_distribution(processing):
    p = _processed_targets()[processing]  # (3, V)
    q = torch.softmax(torch.randn(2, V, generator=torch.Generator().manual_seed(7)) * 1.5, dim=-1)
    counts, out = _first_token_counts(p, q, q, seed=11)
    _assert_matches(counts, p[0])
    # Sanity: the draft differs from the target, so both acceptance and rejection happen.
    acc = torch.tensor(out.num_accepted)
    assert (acc == 0).any() and (acc == 2).any()


@pytest.mark.parametrize("processing", ["temperature", "top_p"])
def test_rejection_sampling_preserves_target_with_one_hot_drafts(processing):
    p = _processed_targets()[processing]
    # n-gram-like drafts: deterministic per request, varied across requests with a skewed frequency (a
    # uniform mix of proposals would hide a residual that forgets to remove the draft token).
    proposal = torch.softmax(torch.randn(2, V, generator=torch.Generator().manual_seed(9)) * 2, dim=-1)
    counts, _ = _first_token_counts(p, None, proposal, seed=12)
    _assert_matches(counts, p[0])


def test_second_token_after_acceptance_follows_target_row():
    """Given the first draft was accepted, the next committed token follows the target's second row."""
    p = _processed_targets()["temperature"]
    q = torch.softmax(torch.randn(2, V, generator=torch.Generator().manual_seed(8)), dim=-1)
    _, out = _first_token_counts(p, q, q, seed=13)
    second = torch.tensor([t[1] for t, a in zip(out.tokens, out.num_accepted) if a >= 1])
    assert len(second) > 5000
    _assert_matches(torch.bincount(second, minlength=V), p[1])


@pytest.mark.parametrize("one_hot", [False, True])
def test_rejection_sampling_preserves_target_on_a_ragged_batch(one_hot):
    """Per-request draft lengths (issue 20): one flat batch where request i verifies d_i in 0..3 drafts
    (rows of different requests interleave in the flat layout); for every d_i the first committed token
    follows the target's first row, and after an accepted first draft the second follows its second row."""
    p = _processed_targets()["temperature"]  # (3, V): rows for positions 0, 1, 2
    p = torch.cat([p, p[2:]])  # (4, V): d_i up to 3 (the last row repeats)
    q = torch.softmax(torch.randn(3, V, generator=torch.Generator().manual_seed(21)) * 1.5, dim=-1)
    g = torch.Generator().manual_seed(22)
    lens = [i % 4 for i in range(N_SAMPLES)]  # d_i = 0, 1, 2, 3, 0, ...
    drafts = [torch.multinomial(q[:d], 1, generator=g).flatten().tolist() if d else [] for d in lens]
    out = rejection_sample(
        torch.cat([p[: 1 + d] for d in lens]),  # flat (sum(1 + d_i), V)
        drafts,
        None if one_hot else [q[:d] for d in lens],
        [False] * N_SAMPLES,
        generator=g,
    )
    assert [len(t) for t in out.tokens] == [1 + a for a in out.num_accepted]
    assert all(a <= d for a, d in zip(out.num_accepted, lens))
    for d in range(4):
        first = torch.tensor([t[0] for t, n in zip(out.tokens, lens) if n == d])
        _assert_matches(torch.bincount(first, minlength=V), p[0])
    second = torch.tensor([t[1] for t, a, n in zip(out.tokens, out.num_accepted, lens) if n >= 2 and a >= 1])
    assert len(second) > 500
    _assert_matches(torch.bincount(second, minlength=V), p[1])
    assert any(a == d == 3 for a, d in zip(out.num_accepted, lens)) or one_hot  # long drafts accepted whole


class _Forced:
    """An acceptance strategy that decides request 1's accepted length (as the benchmarks' replay does)."""

    def forced_lengths(self, batch):
        return [None, 1, None]


@pytest.mark.parametrize("acceptance", [None, _Forced()])
def test_read_ahead_verifies_as_the_logits_do(acceptance):
    """A chained step's verification from its rows read ahead (argmax and finiteness only) commits what
    verify() commits from the logits: drafts matched, bonus tokens, a request with a non-finite row failed."""
    from dynaspec.sampling_params import SamplingParams
    from dynaspec.spec.verifier import ReadAhead, VerifyBatch, verify

    torch.manual_seed(0)
    logits = torch.randn(3 + 4 + 2, 50)
    argmax = logits.argmax(-1).tolist()
    drafts = [argmax[0:2], [argmax[3], 7 if argmax[4] != 7 else 8, argmax[5]], [argmax[7]]]  # all / miss at 1 / all
    logits[8, 3] = float("nan")  # request 2's bonus row
    greedy = SamplingParams(temperature=0.0)
    batch = VerifyBatch(drafts, [None] * 3, [greedy] * 3, [None] * 3, ["a", "b", "c"], [5, 9, 2])
    expected = verify(logits, batch, acceptance=acceptance)
    got = verify(ReadAhead.of(logits), batch, acceptance=acceptance)
    assert got == expected
    assert got.failed == [False, False, True] and got.tokens[0] == argmax[0:3]
    with pytest.raises(ValueError, match="greedy requests only"):
        sampled = VerifyBatch(drafts, [None] * 3, [SamplingParams(temperature=1.0)] * 3, [None] * 3, ["a", "b", "c"], [5, 9, 2])
        verify(ReadAhead.of(logits), sampled)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_rows_flags_exactly_the_rows_with_an_inf_or_a_nan(dtype):
    """A row is flagged for an inf, a -inf, a NaN or both infinities, never for large finite logits (float16's
    own sum of 32k logits of 60 would overflow; the sum is taken in float32)."""
    logits = torch.full((7, 32000), 60.0, dtype=dtype)
    logits[1, 5] = float("inf")
    logits[2, 31999] = float("-inf")
    logits[3, 0] = float("nan")
    logits[4, 7], logits[4, 8] = float("inf"), float("-inf")
    logits[5] = -60.0
    logits[6, ::2] = -60.0
    expected = torch.isfinite(logits).all(dim=-1)
    assert finite_rows(logits).tolist() == expected.tolist() == [True, False, False, False, False, True, True]

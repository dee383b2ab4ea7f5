"""The papers' analyses on a tiny model: each number equals a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from calmrl.analysis.is_variance import is_variance, log_importance_weights, weight_stats
from calmrl.sampling import HFBackend, Method

PROMPTS = ["a", "bb", "a third prompt"]


@pytest.fixture(scope="module")
def backend(tiny):
    return HFBackend(*tiny)


def test_weight_stats_equal_their_formulas():
    rho = torch.tensor([0.5, 1.0, 2.5, 4.0])
    stats = weight_stats(rho.log(), cap=2.0)
    mean = sum(rho.tolist()) / 4
    assert stats["mean"] == pytest.approx(mean)
    assert stats["variance"] == pytest.approx(sum((r - mean) ** 2 for r in rho.tolist()) / 4)
    assert stats["ess"] == pytest.approx(
        sum(rho.tolist()) ** 2 / (4 * sum(r * r for r in rho.tolist()))
    )
    assert stats["frac_above_cap"] == pytest.approx(0.5)


def test_ess_is_scale_invariant_and_survives_underflow_and_the_clamp():
    # Sequence weights of long low-temperature rows: exp(-300) underflows, and the +-20 clamp
    # would make them equal (ESS 1). Kish's ESS of w equals that of w * c for any c > 0.
    log_rho = torch.tensor([-300.0, -301.0, -305.0, -340.0], dtype=torch.float64)
    scaled = (log_rho + 300).exp().tolist()
    expected = sum(scaled) ** 2 / (4 * sum(w * w for w in scaled))
    stats = weight_stats(log_rho, cap=2.0)
    assert stats["ess"] == pytest.approx(expected) and stats["ess"] < 0.5
    assert stats["mean"] == pytest.approx(math.exp(-20))  # clamped, as TIS weighs them
    assert weight_stats(torch.zeros(3), cap=2.0)["ess"] == pytest.approx(1.0)


def test_at_tau_one_every_weight_is_one_and_annealing_spreads_them(backend):
    ead = {"tau_max": 1.5, "tau_min": 0.3, "d0": 3.0, "warmup_tokens": 0}
    schedules = [
        ("T1", Method("constant", {"tau": 1.0})),
        ("hot", Method("constant", {"tau": 1.5})),
        ("ead", Method("ead", ead)),
    ]
    rows = {
        (r.schedule, r.level): r
        for r in is_variance(backend, PROMPTS, schedules, n=4, max_new_tokens=10)
    }
    for level in ("token", "sequence"):
        assert rows["T1", level].mean == pytest.approx(1.0, abs=1e-5)
        assert rows["T1", level].ess == pytest.approx(1.0, abs=1e-6)
        assert rows["hot", level].ess < 1.0 and rows["ead", level].ess < 1.0
    # The sequence weights are the products of the token weights of each row.
    rollouts = backend.generate(PROMPTS, schedules[2][1], n=4, max_new_tokens=10, seed=0)
    _, log_sequence = log_importance_weights(rollouts)
    on = rollouts.response_mask.bool()
    products = [math.prod(token_row) for token_row in (
        (rollouts.logprobs[i][on[i]] - rollouts.behaviour_logprobs[i][on[i]]).exp().tolist()
        for i in range(len(rollouts)))]  # fmt: skip
    assert log_sequence.exp().tolist() == pytest.approx(products, rel=1e-4)
    assert rows["ead", "token"].units == int(on.sum())


def test_entropy_by_position_equals_a_plain_loop(backend):
    from calmrl.analysis.entropy_position import entropy_by_position

    rollouts = backend.generate(PROMPTS, Method("constant", {"tau": 1.0}), n=3, max_new_tokens=12)
    curve = entropy_by_position(rollouts)
    lengths = rollouts.response_lengths.tolist()
    for t in range(len(curve.mean)):
        values = [float(rollouts.entropies[i, t]) for i in range(len(rollouts)) if lengths[i] > t]
        assert curve.count[t] == len(values)
        assert curve.mean[t] == pytest.approx(sum(values) / len(values), rel=1e-6)
        assert curve.lo[t] <= curve.mean[t] <= curve.hi[t]
    summary = curve.summary(threshold=100.0)
    assert summary["first_below"] == 0 and summary["slope"] is not None


def test_token_entropy_groups_equal_a_direct_count(backend, tiny):
    from calmrl.analysis.token_entropy import class_groups, entropies_by_token, top_tokens

    _, tokenizer = tiny
    rollouts = backend.generate(PROMPTS, Method("constant", {"tau": 1.0}), n=4, max_new_tokens=12)
    grouped = entropies_by_token(rollouts, tokenizer)
    on = rollouts.response_mask.bool()
    assert sum(len(v) for v in grouped.values()) == int(on.sum())
    first = rollouts.response_ids[0, 0].item()
    key = tokenizer.decode([first]).strip().lower()
    direct = [
        float(rollouts.entropies[i, t])
        for i in range(len(rollouts))
        for t in range(rollouts.response_ids.shape[1])
        if on[i, t] and tokenizer.decode([int(rollouts.response_ids[i, t])]).strip().lower() == key
    ]
    assert sorted(grouped[key]) == pytest.approx(sorted(direct))
    top = top_tokens(grouped, k=5, min_count=1)
    assert [g.mean for g in top] == sorted((g.mean for g in top), reverse=True)
    classes = class_groups({"wait": [1.0, 2.0], "so": [3.0], "x": [0.5, 0.7]})
    by_name = {g.name: g for g in classes}
    assert by_name["reflective"].mean == pytest.approx(1.5)
    assert by_name["pivotal"].count == 1 and by_name["other"].mean == pytest.approx(0.6)


class Recording:
    """A backend that remembers the prompts it was given."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def generate(self, prompts, method, **kwargs):
        self.prompts.append(list(prompts))
        return self.inner.generate(prompts, method, **kwargs)


class Anything:
    def verify(self, responses, golds):
        return [len(r) % 2 == 0 for r in responses]

    def extract(self, response):
        return str(len(response) % 3)

    def group(self, answers):
        classes = {a: i for i, a in enumerate(dict.fromkeys(answers))}  # dense, as a verifier's
        return [classes[a] for a in answers]


def test_forking_branches_are_the_references_prefixes(backend, tiny):
    from calmrl.analysis.forking import fork, prompt_tokens, response_tokens
    from calmrl.data import Problem

    _, tokenizer = tiny
    spy = Recording(backend)
    problems = [Problem(str(i), p, "0", {}) for i, p in enumerate(PROMPTS)]
    reference, branchings = fork(
        spy, tokenizer, problems, PROMPTS, Anything(), positions=[0, 3, 100], k=4,
        method=Method("constant", {"tau": 1.0}), max_new_tokens=8,
    )  # fmt: skip
    assert [b.position for b in branchings] == [0, 3, 100]
    for call, position in zip(spy.prompts[1:], (0, 3, 100), strict=True):
        for i, prefix in enumerate(call):
            expected = prompt_tokens(reference, i) + response_tokens(reference, i)[:position]
            assert prefix == expected
    for b in branchings:
        assert all(p.n == 4 for p in b.problems) and "pass@4" in b.metrics and "maj@4" in b.metrics

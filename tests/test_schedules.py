import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmrl.sampling.schedules import (
    PRESETS,
    ConstantSchedule,
    EADSchedule,
    ReverseEADSchedule,
    make_schedule,
)


def ead_reference(t, s, tau_max, tau_min, d0, alpha, d_max, c, k):
    """DESIGN 3.1 written out for one scalar position."""
    if t < c:
        return 1.0
    d = min(d0 + alpha * s, d_max)
    return max(1.0 + tau_max - math.exp(min(t / (k * d), 700.0)), tau_min)


def reverse_reference(t, s, tau_max, tau_min, d0, alpha, d_max, c, k):
    if t < c:
        return 1.0
    d = min(d0 + alpha * s, d_max)
    return min(tau_min + math.exp(min(t / (k * d), 700.0)), tau_max)


params = st.fixed_dictionaries(
    {
        "tau_min": st.floats(0.05, 1.0),
        "span": st.floats(0.0, 1.5),
        "d0": st.floats(1.0, 200.0),
        "alpha": st.floats(0.0, 50.0),
        "d_extra": st.floats(0.0, 1000.0),
        "c": st.integers(0, 20),
        "k": st.sampled_from([1.0, 20.0, 3.5]),
        "step": st.integers(0, 10_000),
    }
)


@settings(max_examples=200, deadline=None)
@given(params)
def test_ead_and_reverse_equal_formula(p):
    kw = dict(
        tau_max=p["tau_min"] + p["span"],
        tau_min=p["tau_min"],
        d0=p["d0"],
        alpha=p["alpha"],
        d_max=p["d0"] + p["d_extra"],
        warmup_tokens=p["c"],
        time_scale=p["k"],
    )
    positions = torch.tensor([0, 1, p["c"] - 1, p["c"], p["c"] + 1, 17, 250, 4000, 10**6])
    positions = positions.clamp(min=0)
    ref_args = (
        p["step"],
        kw["tau_max"],
        kw["tau_min"],
        kw["d0"],
        kw["alpha"],
        kw["d_max"],
        kw["warmup_tokens"],
        kw["time_scale"],
    )
    for cls, ref in [(EADSchedule, ead_reference), (ReverseEADSchedule, reverse_reference)]:
        got = cls(**kw).temperatures(positions, step=p["step"])
        want = torch.tensor([ref(int(t), *ref_args) for t in positions])
        assert got.dtype == torch.float32 and got.shape == positions.shape
        torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=1e-6)


def test_hand_computed_paper_values():
    s = EADSchedule()  # tau_max 1.2, tau_min 0.1, d0 25, alpha 5, c 10
    tau = s.temperatures(torch.tensor([0, 9, 10, 15, 19, 20, 100]), step=0).tolist()
    assert tau[:2] == [1.0, 1.0]  # warm-up
    assert tau[2] == pytest.approx(2.2 - math.exp(10 / 25), abs=1e-6)  # 0.7082
    assert tau[3] == pytest.approx(2.2 - math.exp(15 / 25), abs=1e-6)  # 0.3779
    # 2.2 - e^(19/25) = 0.0618 < 0.1 -> floor; the paper formula floors after ~19 tokens.
    assert tau[4:] == pytest.approx([0.1, 0.1, 0.1])
    official = PRESETS["ead-official"].temperatures(torch.tensor([19, 370, 400]), 0).tolist()
    assert official[0] == pytest.approx(2.2 - math.exp(19 / 500), abs=1e-6)
    assert official[1] > 0.1 and official[2] == pytest.approx(0.1)


def test_step_aware_decay_and_cap():
    s = EADSchedule(d0=25, alpha=5, d_max=100)
    assert [s.decay(k) for k in (0, 1, 10, 15, 10**6)] == [25, 30, 75, 100, 100]
    # A larger step anneals more slowly: temperature at a fixed position is non-decreasing in s.
    t = torch.tensor([30])
    temps = [s.temperatures(t, step).item() for step in range(0, 30)]
    assert all(a <= b + 1e-7 for a, b in itertools.pairwise(temps))
    assert ConstantSchedule(0.7).decay(3) == math.inf


def test_mixed_positions_in_one_batch():
    s = EADSchedule(d0=10)
    rng = random.Random(0)
    positions = torch.tensor([[rng.randrange(0, 200) for _ in range(7)] for _ in range(5)])
    batch = s.temperatures(positions, step=3)
    single = torch.stack([s.temperatures(positions[i], step=3) for i in range(5)])
    assert torch.equal(batch, single) and batch.shape == (5, 7)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tau_min": 0.0}, "tau_min"),
        ({"tau_min": -1.0}, "tau_min"),
        ({"tau_min": 1.5, "tau_max": 1.2}, "tau_max"),
        ({"d0": 0.0}, "d0"),
        ({"d0": 50.0, "d_max": 40.0}, "d_max"),
        ({"alpha": -1.0}, "alpha"),
        ({"warmup_tokens": -1}, "warmup_tokens"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"tau_max": float("nan")}, "tau_max"),
    ],
)
def test_invalid_parameters_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"params\.{field}"):
        EADSchedule(**kwargs)
    with pytest.raises(ValueError, match=rf"params\.{field}"):
        ReverseEADSchedule(**kwargs)


def test_constant_and_make_schedule():
    assert ConstantSchedule(0.6).temperatures(torch.arange(4)).tolist() == pytest.approx([0.6] * 4)
    with pytest.raises(ValueError, match="params.tau"):
        ConstantSchedule(0.0)
    assert make_schedule("ead-official") == EADSchedule(time_scale=20.0)
    assert make_schedule("ead-paper", tau_min=0.8) == EADSchedule(tau_min=0.8)
    assert make_schedule("ead", d0=5.0) == EADSchedule(d0=5.0)
    assert make_schedule("constant", tau=0.6) == ConstantSchedule(0.6)
    with pytest.raises(ValueError, match="method: unknown schedule"):
        make_schedule("annealing")
    with pytest.raises(ValueError, match="params.tau_maxx"):
        make_schedule("ead", tau_maxx=1.0)

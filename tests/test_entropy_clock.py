"""Entropy-clocked EAD: EAD's formula on an accumulated-entropy clock; exact behaviour log-probs."""

import math

import pytest
import torch

from calmrl.config import ConfigError, load_config
from calmrl.models import tiny_model
from calmrl.sampling import generate, sampling_log_probs
from calmrl.sampling.entropy_clock import EntropyClockSampler
from calmrl.sampling.methods import make_sampler
from calmrl.sampling.schedules import EADSchedule


def entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def run(sampler: EntropyClockSampler, logits_per_step, step: int = 0) -> torch.Tensor:
    """Drive the sampler like the engine does; returns [rows, steps] temperatures."""
    rows = torch.arange(logits_per_step[0].shape[0])
    sampler.reset(len(rows), torch.device("cpu"))
    taus = []
    for t, logits in enumerate(logits_per_step):
        positions = torch.full((len(rows),), t)
        _, tau = sampler.behaviour_log_probs(logits, positions, step, None, rows)
        sampler.update(logits.argmax(-1), rows, entropy(logits))
        taus.append(tau)
    return torch.stack(taus, dim=1)


def test_constant_entropy_equal_to_the_reference_gives_ead():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[1:] = logits[0]  # one entropy for every row
    schedule = EADSchedule(tau_max=1.2, tau_min=0.1, d0=6.0, alpha=2.0, warmup_tokens=4)
    sampler = EntropyClockSampler(schedule, entropy_ref=float(entropy(logits[0])))
    taus = run(sampler, [logits] * 30, step=3)
    expected = schedule.temperatures(torch.arange(30), step=3)
    torch.testing.assert_close(taus, expected.expand(3, 30), atol=1e-5, rtol=0)


def test_certain_tokens_do_not_spend_the_exploration_budget():
    schedule = EADSchedule(tau_max=1.2, tau_min=0.1, d0=5.0, warmup_tokens=2)
    certain = torch.full((2, 20), -1e4)
    certain[:, 0] = 0.0  # entropy 0
    uncertain = torch.zeros(2, 20)  # uniform: entropy log(20)
    sampler = EntropyClockSampler(schedule, entropy_ref=math.log(20))
    taus = run(sampler, [certain] * 6 + [uncertain] * 12)
    assert torch.all(taus[:, :2] == 1.0)  # warm-up in tokens, as EAD
    torch.testing.assert_close(taus[:, 2:7], torch.full((2, 5), 1.2))  # clock still at 0
    # From the first uncertain token on, one unit of clock per token: EAD's curve from clock 1.
    torch.testing.assert_close(taus[0, 7:], schedule.annealed(torch.arange(1, 12), 0).float())
    assert torch.all(taus[0, 7:].diff() <= 0)  # annealing never reverses


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_position_weight_mixes_position_and_entropy_clocks(weight):
    schedule = EADSchedule(d0=8.0, warmup_tokens=0)
    generator = torch.Generator().manual_seed(3)
    logits = [torch.randn(2, 30, generator=generator) * 3 for _ in range(12)]
    sampler = EntropyClockSampler(schedule, entropy_ref=0.7, position_weight=weight)
    taus = run(sampler, logits)
    entropies = torch.stack([entropy(x) for x in logits], dim=1)  # [rows, steps]
    increments = weight + (1 - weight) * entropies / 0.7
    clock = torch.cumsum(increments, dim=1) - increments
    torch.testing.assert_close(taus, schedule.annealed(clock, 0).float(), atol=1e-5, rtol=0)
    if weight == 1.0:  # the position clock: EAD whatever the entropies
        expected = schedule.temperatures(torch.arange(12), 0)
        torch.testing.assert_close(taus, expected.expand(2, 12), atol=1e-5, rtol=0)


def test_rows_keep_their_own_clock_when_the_batch_is_compacted():
    schedule = EADSchedule(d0=3.0, warmup_tokens=0)
    sampler = EntropyClockSampler(schedule, entropy_ref=1.0)
    sampler.reset(3, torch.device("cpu"))
    uniform = torch.zeros(3, 4)  # entropy log 4 each
    sampler.behaviour_log_probs(uniform, torch.zeros(3), 0, None, torch.arange(3))
    sampler.update(torch.zeros(3), torch.arange(3), entropy(uniform))
    # Row 1 finished: only rows 0 and 2 remain, in that order.
    rows = torch.tensor([0, 2])
    _, tau = sampler.behaviour_log_probs(torch.zeros(2, 4), torch.ones(2), 0, None, rows)
    expected = schedule.annealed(torch.tensor([math.log(4)] * 2), 0).float()
    torch.testing.assert_close(tau, expected)
    sampler.update(torch.zeros(2), rows, entropy(torch.zeros(2, 4)))
    # Row 2 then sees a certain token; row 0 an uncertain one: their clocks part.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]])
    sampler.behaviour_log_probs(logits, torch.full((2,), 2), 0, None, rows)
    sampler.update(torch.zeros(2), rows, entropy(logits))
    _, tau = sampler.behaviour_log_probs(torch.zeros(2, 4), torch.full((2,), 3), 0, None, rows)
    expected = schedule.annealed(torch.tensor([3 * math.log(4), 2 * math.log(4)]), 0).float()
    torch.testing.assert_close(tau, expected)


def test_engine_records_exact_behaviour_logprobs_and_clock_temperatures():
    model, tokenizer = tiny_model("qwen2", seed=2)
    sampler = make_sampler(
        "ead-entropy", {"d0": 4.0, "alpha": 1.0, "warmup_tokens": 2, "entropy_ref": 2.0}
    )
    step = 3
    rollouts = generate(model, tokenizer, ["hi", "a longer prompt here", "7+8="], sampler,
                        n=2, max_new_tokens=16, seed=0, step=step)  # fmt: skip
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float()  # fmt: skip
    width, steps = rollouts.prompt_ids.shape[1], rollouts.response_ids.shape[1]
    h = logits[:, width - 1 : width - 1 + steps]
    # The clock before token t: the entropies of tokens 0..t-1, from the independent forward.
    clock = torch.cumsum(entropy(h), dim=1) - entropy(h)
    tau = sampler.schedule.annealed(clock / 2.0, step).float()
    tau = torch.where(torch.arange(steps) < 2, torch.ones_like(tau), tau)
    behaviour = sampling_log_probs(h.reshape(-1, h.shape[-1]), tau.reshape(-1)).view_as(h)
    behaviour = behaviour.gather(-1, rollouts.response_ids.unsqueeze(-1)).squeeze(-1)
    on = rollouts.response_mask.bool()
    torch.testing.assert_close(rollouts.temperatures[on], tau[on], atol=1e-4, rtol=0)
    torch.testing.assert_close(rollouts.behaviour_logprobs[on], behaviour[on], atol=1e-4, rtol=0)
    assert rollouts.temperatures[on].min() < 1.0 < rollouts.temperatures[on].max()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"entropy_ref": 0.0}, "params.entropy_ref: must be a positive"),
        ({"entropy_ref": float("inf")}, "params.entropy_ref"),
        ({"depth": 3}, "params.depth: not a parameter of 'ead-entropy'; allowed: .*entropy_ref"),
        ({"tau_min": -1.0}, "params.tau_min"),
        ({"position_weight": 1.5}, "params.position_weight: must lie in"),
    ],
)
def test_invalid_parameters_name_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        make_sampler("ead-entropy", params)
    override = "{" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}"
    with pytest.raises(ConfigError, match="rollout." + message):
        load_config(None, ["rollout.method=ead-entropy", f"rollout.params={override}"])


def test_unknown_method_lists_every_method():
    with pytest.raises(ValueError, match="unknown method 'eadd'.*ead-entropy, led"):
        make_sampler("eadd")

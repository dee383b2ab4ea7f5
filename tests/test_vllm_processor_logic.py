"""calmrl's vLLM processor without vLLM: the schedule table, both runner adapters, the request
checks. The adapters are driven by fakes of vLLM's interfaces (V1: ``BatchUpdate``; V2, as in
vLLM 0.33's ``vllm/v1/worker/gpu/sample/logits_processor/interface.py``:
``LogitsProcRequestState`` and ``LogitsContext``). ``tests/vllm/`` runs them inside vLLM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum, auto
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calmrl.config import ConfigError, load_config
from calmrl.integrations.vllm.runners import V1Rows, V2Slots
from calmrl.integrations.vllm.spec import check_method, check_request, request_args
from calmrl.integrations.vllm.table import ScheduleTable
from calmrl.models.functional import entropy_from_logits
from calmrl.sampling import Method, make_sampler
from calmrl.sampling.entropy_clock import EntropyClockSampler

SCHEDULES = [
    ("constant", {"tau": 0.7}),
    ("ead", {"tau_min": 0.3, "d0": 4.0, "warmup_tokens": 3}),
    ("ead-paper", {}),
    ("ead-paper-7b", {}),
    ("ead-official", {"d0": 2.0}),
    ("reverse-ead", {"d0": 6.0, "tau_max": 1.5}),
]


def _spec(name, params, step=0):
    return check_request(request_args(Method(name, params), step))


@pytest.mark.parametrize(("name", "params"), SCHEDULES)
@pytest.mark.parametrize("step", [0, 7, 3000])
def test_table_gives_the_registry_temperatures_bit_for_bit(name, params, step):
    table = ScheduleTable(4)
    table.set(2, _spec(name, params, step))
    table.flush()
    positions = torch.arange(400)
    slots = torch.full_like(positions, 2)
    got = table.temperatures(slots, positions, torch.zeros(400, 3), any_entropic=False)
    want = make_sampler(name, params).schedule.temperatures(positions, step)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_rows_of_one_batch_keep_their_own_method_and_step_and_empty_slots_get_one():
    table = ScheduleTable(8)
    rows = [("ead-paper", {}, 0), ("ead-paper", {}, 400), ("reverse-ead", {}, 3), (None, {}, 0)]
    for slot, (name, params, step) in enumerate(rows):
        table.set(slot, _spec(name, params, step) if name else None)
    table.flush()
    positions = torch.tensor([50, 50, 50, 50])
    got = table.temperatures(torch.arange(4), positions, torch.zeros(4, 3), any_entropic=False)
    for slot, (name, params, step) in enumerate(rows[:3]):
        want = make_sampler(name, params).schedule.temperatures(positions[slot : slot + 1], step)
        assert got[slot] == want[0]
    assert got[0] != got[1]  # the step-aware decay differs between steps 0 and 400
    assert got[3].item() == 1.0


def test_entropy_clock_equals_calmrls_sampler_and_ignores_a_discarded_sample():
    params = {"d0": 3.0, "entropy_ref": 0.5, "position_weight": 0.25, "warmup_tokens": 2}
    sampler = make_sampler("ead-entropy", params)
    assert isinstance(sampler, EntropyClockSampler)
    sampler.reset(1, torch.device("cpu"))
    table = ScheduleTable(3)
    table.set(1, _spec("ead-entropy", params, step=4))
    table.flush()
    generator = torch.Generator().manual_seed(0)
    for t in range(30):
        logits = torch.randn(1, 50, generator=generator) * 3
        _, tau_want = sampler.behaviour_log_probs(
            logits, torch.tensor([t]), 4, None, torch.tensor([0])
        )
        # vLLM may run a row and drop its token (chunked prefill): the clock must not move.
        for _ in range(2 if t % 7 == 3 else 1):
            tau = table.temperatures(
                torch.tensor([1]), torch.tensor([t]), logits, any_entropic=True
            )
        assert torch.equal(tau, tau_want)
        # the engine's tau = 1 entropy of the step, as sampling/engine.py computes it
        sampler.update(None, torch.tensor([0]), entropy_from_logits(logits, logits.log_softmax(-1)))


class Move(Enum):
    UNIDIRECTIONAL = auto()
    SWAP = auto()


@dataclass
class FakeBatchUpdate:  # vLLM V1's BatchUpdate: removed, then added, then moved
    batch_size: int
    removed: list
    added: list
    moved: list


def _params(extra_args=None, temperature=1.0):
    return SimpleNamespace(extra_args=extra_args, temperature=temperature, min_p=0.0)


def test_v1_rows_follow_adds_moves_and_removals_and_leave_other_rows_bit_identical():
    rows = V1Rows(capacity=4, device="cpu")
    ead = _params(request_args(Method("ead", {"tau_min": 0.2, "d0": 2.0, "warmup_tokens": 0}), 0))
    out_a, out_b = [1, 2, 3], [4]
    rows.update(FakeBatchUpdate(2, [], [(0, ead, [9], out_a), (1, _params(), [9], out_b)], []))
    logits = torch.randn(2, 11)
    before = logits.clone()
    rows.apply(logits)
    schedule = make_sampler("ead", {"tau_min": 0.2, "d0": 2.0, "warmup_tokens": 0}).schedule
    tau = schedule.temperatures(torch.tensor([3]), 0)  # len(out_a) is the position
    assert torch.equal(logits[0], before[0] / tau)
    assert torch.equal(logits[1], before[1])
    # the calmrl request moves to index 1 and its list grows: it keeps its state
    rows.update(FakeBatchUpdate(2, [], [], [(0, 1, Move.SWAP)]))
    out_a.append(7)
    logits = torch.randn(2, 11)
    before = logits.clone()
    rows.apply(logits)
    assert torch.equal(logits[1], before[1] / schedule.temperatures(torch.tensor([4]), 0))
    assert torch.equal(logits[0], before[0])
    rows.update(FakeBatchUpdate(1, [1], [], []))
    logits = torch.randn(1, 11)
    assert torch.equal(rows.apply(logits.clone()), logits)


@dataclass
class FakeUva:  # vLLM's UvaBackedTensor: host numpy and a device copy the runner replaces
    np: np.ndarray

    @property
    def gpu(self):
        return torch.from_numpy(self.np.copy())


def test_v2_slots_read_positions_from_ctx_pos_and_prompt_len_and_reinitialise_reused_slots():
    prompt_len = FakeUva(np.zeros(4, dtype=np.int32))
    req_states = SimpleNamespace(max_num_reqs=4, device=torch.device("cpu"), prompt_len=prompt_len)
    slots = V2Slots(req_states)
    method = Method("ead-paper", {"d0": 3.0})
    prompt_len.np[2], prompt_len.np[0] = 5, 3
    assert slots.add(2, _params(request_args(method, 9))) is True
    assert slots.add(0, _params()) is False  # declined: apply must leave its row alone
    slots.flush()
    # rows are reordered each step: row 0 -> slot 0, row 1 -> slot 2
    ctx = SimpleNamespace(
        expanded_idx_mapping=torch.tensor([0, 2], dtype=torch.int32),
        idx_mapping_np=np.array([0, 2]),
        pos=torch.tensor([7, 5 + 11 - 1]),  # slot 2 samples generated token t = 11
    )
    logits = torch.randn(2, 13)
    before = logits.clone()
    slots.apply(logits, ctx)
    tau = make_sampler("ead-paper", {"d0": 3.0}).schedule.temperatures(torch.tensor([11]), 9)
    assert torch.equal(logits[1], before[1] / tau)
    assert torch.equal(logits[0], before[0])
    # slot 2 is recycled for a plain request: nothing of the old one survives
    slots.add(2, _params())
    slots.flush()
    logits = torch.randn(2, 13)
    assert torch.equal(slots.apply(logits.clone(), ctx), logits)


BAD_REQUESTS = [
    ({"method": "nope"}, "extra_args.calmrl.method: unknown method 'nope'"),
    ({"method": "ead-paper", "params": {"tau_min": -1}}, "extra_args.calmrl.params.tau_min:"),
    ({"method": "ead-paper", "params": {"depth": 2}}, "extra_args.calmrl.params.depth: not a"),
    ({"method": "led"}, "hidden states, which a vLLM logits processor never sees"),
    ({"method": "ead-paper", "step": -1}, "extra_args.calmrl.step: must be an integer >= 0"),
    ({"method": "ead-paper", "stp": 1}, "extra_args.calmrl.stp: unknown key"),
    ("{not json", "extra_args.calmrl: a string here must be a JSON object"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_REQUESTS)
def test_each_bad_request_fails_with_one_line(raw, message):
    with pytest.raises(ValueError, match=None) as error:
        check_request({"calmrl": raw})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_temperature_and_min_p_with_a_schedule_are_refused_and_json_strings_accepted():
    args = {"calmrl": json.dumps({"method": "ead-paper", "step": 3})}  # vllm_xargs form
    assert check_request(args) is not None
    with pytest.raises(ValueError, match=r"^temperature: must be 1.0 with extra_args.calmrl"):
        check_request(args, temperature=0.7)
    with pytest.raises(ValueError, match=r"^min_p: vLLM applies min-p before"):
        check_request(args, min_p=0.05)
    assert check_request(None) is None and check_request({"other": 1}) is None
    check_method(Method("constant", {"tau": 0.6}, min_p=0.1))  # vLLM's own temperature
    with pytest.raises(ValueError, match=r"^min_p:"):
        check_method(Method("ead-paper", min_p=0.1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.method=led"], "rollout.method: 'led' reads the model's intermediate"),
        (["rollout.min_p=0.1"], "rollout.min_p: vLLM applies min-p before"),
        (["train.eval_method=led", "train.eval_params={}"], "train.eval_method: 'led' reads"),
        (["rollout.vllm.gpu_memory_utilization=0"], "rollout.vllm.gpu_memory_utilization:"),
    ],
)
def test_config_refuses_what_vllm_cannot_host_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["rollout.backend=vllm", *overrides])
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_backend_options_carry_the_engine_settings_only_for_vllm():
    assert load_config().rollout.backend_options() == {"batch_size": None}
    options = load_config(overrides=["rollout.backend=vllm"]).rollout.backend_options()
    assert options["engine"]["enforce_eager"] is True
    # LED stays fine with the hf backend
    load_config(overrides=["rollout.method=led"])

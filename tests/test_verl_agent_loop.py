"""The ``calmrl_ead`` agent loop inside veRL 0.9.1 (run with `make test-verl`).

The loop is built from veRL's own registry with ``hydra.utils.instantiate``, as veRL's
agent-loop worker builds it, and ``run()`` gets what veRL's v1 worker passes (the prompt's
fields, ``global_steps`` among them). A stand-in server records the request, so this checks
what would reach vLLM's ``SamplingParams``; no vLLM or GPU is involved.
"""

from __future__ import annotations

from typing import Any

import pytest

from calmrl.integrations.verl import PREFIX
from calmrl.models import tiny_tokenizer

pytestmark = pytest.mark.verl

pytest.importorskip("verl", reason="veRL is not installed; run `make test-verl`")
agent_loop = pytest.importorskip("verl.experimental.agent_loop.agent_loop")
import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

EAD = {"method": "ead", "params": {"tau_max": 1.2, "tau_min": 0.1, "d0": 25.0, "alpha": 5.0}}


class RecordingServer:
    """Answers every request with three tokens and keeps the request's sampling params."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def generate(self, *, sampling_params: dict[str, Any], **_: Any) -> TokenOutput:
        self.requests.append(sampling_params)
        return TokenOutput(token_ids=[70, 71, 72], log_probs=[-0.1, -0.2, -0.3])


def _loop(server: RecordingServer, *, temperature: float = 1.0, calmrl: Any = EAD) -> Any:
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": 64, "response_length": 8, "temperature": temperature}
            },
            "data": {},
            "calmrl": {"rollout": calmrl},
        }
    )
    return hydra.utils.instantiate(
        agent_loop._agent_loop_registry[PREFIX + "ead"],
        trainer_config=agent_loop.DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tiny_tokenizer(),
        processor=None,
        hf_model_type=None,
        dataset_cls=None,
        data_config=agent_loop.DictConfigWrap(config.data),
    )


def _run(loop: Any, sampling_params: dict[str, Any], **fields: Any) -> Any:
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    # On veRL's own event loop, the one the agent loop took when it was built.
    return loop.loop.run_until_complete(
        loop.run(dict(sampling_params), raw_prompt=prompt, **fields)
    )


TRAIN = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


@pytest.mark.parametrize(("global_steps", "step"), [(1, 0), (5, 4), (300, 299)])
def test_training_requests_carry_eads_method_and_the_step(global_steps: int, step: int) -> None:
    server = RecordingServer()
    output = _run(_loop(server), TRAIN, global_steps=global_steps, index=3, uid="u3")
    (request,) = server.requests
    assert request["extra_args"] == {"calmrl": {**EAD, "step": step}}
    assert {k: v for k, v in request.items() if k != "extra_args"} == TRAIN
    assert output.response_ids == [70, 71, 72]
    assert output.response_logprobs == [-0.1, -0.2, -0.3]  # behaviour log-probs, for TIS


def test_existing_extra_args_are_kept() -> None:
    server = RecordingServer()
    _run(_loop(server), {**TRAIN, "extra_args": {"kv_transfer_params": {"a": 1}}}, global_steps=2)
    assert server.requests[0]["extra_args"] == {
        "kv_transfer_params": {"a": 1},
        "calmrl": {**EAD, "step": 1},
    }


@pytest.mark.parametrize("temperature", [0.6, 0.0], ids=["val_kwargs", "greedy"])
def test_requests_at_another_temperature_are_left_alone(temperature: float) -> None:
    server = RecordingServer()
    params = {**TRAIN, "temperature": temperature}
    _run(_loop(server), params, global_steps=7)
    assert server.requests == [params]


def test_the_processors_request_check_accepts_it() -> None:
    spec = pytest.importorskip(
        "calmrl.integrations.vllm.spec", reason="calmrl's vLLM processor is not on this branch"
    )
    server = RecordingServer()
    _run(_loop(server), TRAIN, global_steps=9)
    assert spec.check_request(server.requests[0]["extra_args"], temperature=1.0) is not None


def test_no_step_field_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"global_steps: .*trainer\.use_v1=true"):
        _run(_loop(RecordingServer()), TRAIN)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.7}, r"actor_rollout_ref\.rollout\.temperature: must be 1\.0"),
        ({"calmrl": None}, r"calmrl\.rollout: the calmrl_ead agent loop needs"),
        ({"calmrl": {"method": "nope"}}, r"calmrl\.rollout\.method: unknown method 'nope'"),
        (
            {"calmrl": {"method": "ead", "params": {"tau": 1}}},
            r"calmrl\.rollout\.params\.tau: not a parameter of 'ead'",
        ),
        ({"calmrl": {"method": "ead", "top_k": 3}}, r"calmrl\.rollout\.top_k: unknown key"),
    ],
    ids=["temperature", "no_method", "unknown_method", "unknown_param", "unknown_key"],
)
def test_bad_settings_fail_when_the_loop_is_built(kwargs: dict[str, Any], message: str) -> None:
    # veRL builds the loop through hydra, which wraps the ValueError and keeps its message.
    with pytest.raises((ValueError, hydra.errors.InstantiationException), match=message):
        _loop(RecordingServer(), **kwargs)

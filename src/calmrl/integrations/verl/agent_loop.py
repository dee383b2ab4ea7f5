"""The agent loop ``calmrl_ead``: veRL's single-turn loop with EAD's per-request temperatures.

veRL 0.9's agent-loop worker builds one ``sampling_params`` dict per sample and passes it to
``agent_loop.run(sampling_params, **fields)``; the vLLM server turns it into
``SamplingParams(**sampling_params)``, ``extra_args`` included. This loop adds
``extra_args["calmrl"] = {"method", "params", "step"}``, which calmrl's vLLM logits processor
(``calmrl.integrations.vllm``, loaded by vLLM from its ``vllm.logits_processors`` entry point)
turns into each token's temperature.

The training step: ``run()`` gets no step argument, but veRL's v1 trainer stores
``global_steps`` on every prompt batch it submits (``tu.assign_non_tensor_data``), and the v1
agent-loop worker passes each batch field to ``run()`` as a keyword, so ``global_steps`` arrives
with every sample. It is the step at which the prompt was submitted: with the async trainer
modes a rollout can finish a step or more later, and EAD then uses the older, hotter schedule
for it. veRL's legacy trainer keeps the step in ``meta_info``, which ``run()`` never sees; the
loop refuses to run there rather than guess.

Select it with ``actor_rollout_ref.rollout.agent.default_agent_loop=calmrl_ead`` (or an
``agent_name`` column in the dataset); ``calmrl.rollout`` in the config names the method.
"""

from __future__ import annotations

import math
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from calmrl.integrations.verl import PREFIX
from calmrl.integrations.verl.settings import ead_sampling_params, read_settings

NAME = f"{PREFIX}ead"


@register(NAME)
class EADAgentLoop(SingleTurnAgentLoop):
    """Single-turn generation whose requests carry EAD's method and the training step."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        method = read_settings(self.config).method
        if method is None:
            raise ValueError(f"calmrl.rollout: the {NAME} agent loop needs calmrl.rollout.method")
        # The schedule sets every token's temperature; veRL's rollout temperature must be 1 so
        # that the actor's log-probs (pi_old for TIS) are taken at tau = 1, as calmrl's are.
        temperature = float(self.rollout_config.temperature)
        if not math.isclose(temperature, 1.0):
            raise ValueError(
                "actor_rollout_ref.rollout.temperature: must be 1.0 with calmrl EAD "
                f"(the method sets each token's temperature), got {temperature}"
            )
        self.method = method

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        params = ead_sampling_params(sampling_params, self.method, kwargs.get("global_steps"))
        return await super().run(params, **kwargs)

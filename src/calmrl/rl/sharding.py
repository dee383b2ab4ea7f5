"""FSDP2 (``train.parallel=fsdp2``): the policy's parameters sharded over ranks.

``fully_shard`` on every decoder layer and on the root (PyTorch's FSDP2). What calmrl adds:

- **Sampling with full parameters.** Ranks sample different numbers of decode steps (rows end
  at different lengths), while a sharded forward is a collective that every rank must join.
  Generation and the no-grad passes therefore run inside ``gathered()``: every layer is
  unsharded once and stays so until the block ends (what rollout engines do with the
  weights), so those forwards communicate nothing.
- **Updates in lock step.** Every rank runs the same number of micro-batches (a rank with
  fewer runs extra ones with weight 0); gradients are reduce-scattered on the last one.
- **Full state dicts for checkpoints**, gathered to rank 0 (``torch.distributed.checkpoint``),
  so a checkpoint is the same HF directory as without sharding.

Without sharding every method is a no-op or the identity, so the update and the trainer need
no second code path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PreTrainedModel

from calmrl.rl.checkpoint import load_model_weights
from calmrl.rl.distributed import World


class Sharding:
    def __init__(self, model: PreTrainedModel, world: World, *, enabled: bool):
        self.model, self.world, self.enabled = model, world, enabled and world.distributed
        self._modules: list[Any] = []
        if self.enabled:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import FSDPModule, fully_shard

            device = next(model.parameters()).device
            mesh = init_device_mesh(device.type, (world.size,))
            for layer in model.get_decoder().layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            self._modules = [m for m in model.modules() if isinstance(m, FSDPModule)]

    @property
    def loss_scale(self) -> float:
        """FSDP2 averages gradients over ranks; the losses are shares of the global loss."""
        return float(self.world.size) if self.enabled else 1.0

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Full parameters on every rank for the block (generation, no-grad passes)."""
        if not self.enabled:
            yield
            return
        for module in self._modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        try:
            yield
        finally:
            for module in self._modules:
                module.reshard()
                module.set_reshard_after_forward(True, recurse=False)

    def sync_gradients(self, sync: bool) -> None:
        """Reduce-scatter in this backward (the last micro-batch) or accumulate locally."""
        for module in self._modules:
            module.set_requires_gradient_sync(sync, recurse=False)

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The full state dict on rank 0 (CPU), None elsewhere; every rank must call it."""
        if not self.enabled:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not self.enabled:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, optimizer, options=options)

    def load(
        self, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        """A checkpoint's full weights and optimizer state (``state["optimizer"]``) into the
        model, sharded or not, on every rank."""
        if not self.enabled:
            load_model_weights(weights, self.model)
            optimizer.load_state_dict(state["optimizer"])
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, weights, options=options)
        set_optimizer_state_dict(self.model, optimizer, state["optimizer"], options=options)

    def saveable(self, state: dict[str, torch.Tensor] | None) -> PreTrainedModel:
        """A plain HF model holding the full weights, for ``save_pretrained`` (rank 0)."""
        if not self.enabled:
            return self.model
        from transformers import AutoModelForCausalLM

        copy = AutoModelForCausalLM.from_config(self.model.config)
        copy.load_state_dict(state, strict=False)
        copy.generation_config = self.model.generation_config
        return copy

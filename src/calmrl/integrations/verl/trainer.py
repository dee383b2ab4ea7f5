"""Trainer modes ``calmrl_<mode>``: veRL's v1 trainers with the entropy-shaped actor loss.

veRL 0.9 chooses the actor's loss function inside the worker (``partial(ppo_loss, config=...)``)
and offers one way to change it: ``set_loss_fn`` on the actor worker group, callable from the
driver. Each of veRL's registered trainer modes (``sync``, ``colocate_async``,
``separate_async``) gets a ``calmrl_`` twin whose ``on_init_end`` (veRL's hook after the
workers are built) installs :func:`~calmrl.integrations.verl.algos.entropy_shaped_ppo_loss`
with ``alpha`` and ``kappa`` from the config's ``calmrl.entropy_shaping``::

    trainer.v1.trainer_mode=calmrl_sync actor_rollout_ref.actor.calculate_entropy=true

Everything else is the base trainer's. veRL's legacy trainer (``trainer.use_v1=false``) has no
trainer registry and is not covered.
"""

from __future__ import annotations

from functools import partial
from types import ModuleType
from typing import Any

from calmrl.integrations.verl import PREFIX
from calmrl.integrations.verl.algos import entropy_shaped_ppo_loss
from calmrl.integrations.verl.settings import read_settings


def entropy_shaping_loss_fn(config: Any) -> partial[Any]:
    """The actor loss function for a full veRL config; checks what it needs first."""
    actor = config.actor_rollout_ref.actor
    if not actor.get("calculate_entropy", False):
        raise ValueError(
            "actor_rollout_ref.actor.calculate_entropy: must be true for entropy shaping "
            "(the loss reads the entropy of each update forward)"
        )
    distillation = config.get("distillation") or {}
    if distillation.get("enabled", False):
        raise ValueError(
            "distillation.enabled: entropy shaping replaces ppo_loss, not distillation's"
        )
    from verl.utils.config import omega_conf_to_dataclass

    settings = read_settings(config)
    # The ActorConfig the worker builds from the same node (init_model), for ppo_loss.
    actor_config = omega_conf_to_dataclass(actor)
    return partial(
        entropy_shaped_ppo_loss, config=actor_config, alpha=settings.alpha, kappa=settings.kappa
    )


def entropy_shaping_trainer(base: type) -> type:
    """A subclass of veRL trainer ``base`` that installs the entropy-shaped loss."""

    def on_init_end(self: Any) -> None:
        base.on_init_end(self)
        self.actor_rollout_wg.set_loss_fn(entropy_shaping_loss_fn(self.config))

    name = f"Calmrl{base.__name__}"
    cls = type(name, (base,), {"on_init_end": on_init_end, "__module__": __name__})
    globals()[name] = cls  # findable by its name, as a class defined in this module would be
    return cls


def register_trainers(v1: ModuleType) -> list[str]:
    """``calmrl_<mode>`` for each mode in veRL's trainer registry (``verl.trainer.ppo.v1``)."""
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    names = []
    for mode, base in list(TRAINER_REGISTRY.items()):
        if mode.startswith(PREFIX) or PREFIX + mode in TRAINER_REGISTRY:
            continue
        v1.register_trainer(PREFIX + mode)(entropy_shaping_trainer(base))
        names.append(PREFIX + mode)
    return names

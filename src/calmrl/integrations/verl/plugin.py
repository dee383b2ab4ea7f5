"""The ``verl.plugins`` entry point: importing this module registers calmrl with veRL.

veRL 0.9 loads every entry point of the group ``verl.plugins`` at the end of ``import verl``
(``VERL_USE_EXTERNAL_PLUGINS``: ``auto`` by default, ``none`` to disable, or a comma list of
entry-point names such as ``calmrl``) and logs a failing plug-in at debug level only, so a
failure here is also logged as a warning before it propagates.
"""

from __future__ import annotations

import logging
from types import ModuleType

from calmrl.integrations.verl import PREFIX
from calmrl.integrations.verl.hooks import when_imported

logger = logging.getLogger(__name__)
AGENT_LOOPS = "verl.experimental.agent_loop"
TRAINERS = "verl.trainer.ppo.v1"


def register_algorithms() -> list[str]:
    """calmrl's estimators and policy losses in veRL's registries; returns the names."""
    from verl.trainer.ppo.core_algos import (
        ADV_ESTIMATOR_REGISTRY,
        POLICY_LOSS_REGISTRY,
        register_adv_est,
        register_policy_loss,
    )

    from calmrl.integrations.verl import algos

    names = []
    for name in algos.estimator_names():
        if PREFIX + name not in ADV_ESTIMATOR_REGISTRY:  # register_adv_est refuses a second fn
            register_adv_est(PREFIX + name)(algos.make_estimator(name))
        names.append(PREFIX + name)
    for name in algos.policy_loss_names():
        if PREFIX + name not in POLICY_LOSS_REGISTRY:
            register_policy_loss(PREFIX + name)(algos.make_policy_loss(name))
        names.append(PREFIX + name)
    return names


def _register_agent_loop(_module: ModuleType) -> None:
    # Its @register runs on import; the package __init__ has imported veRL's own loops by now.
    import calmrl.integrations.verl.agent_loop  # noqa: F401


def _register_trainers(module: ModuleType) -> None:
    from calmrl.integrations.verl.trainer import register_trainers

    register_trainers(module)


try:
    register_algorithms()
except Exception as error:
    logger.warning("calmrl: registering with veRL failed: %s: %s", type(error).__name__, error)
    raise
when_imported(AGENT_LOOPS, _register_agent_loop)
when_imported(TRAINERS, _register_trainers)

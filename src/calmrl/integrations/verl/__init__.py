"""calmrl inside veRL 0.9.x: a ``verl.plugins`` entry point, no fork.

``pip install calmrl[verl]`` installs the entry point ``calmrl = calmrl.integrations.verl.plugin``;
``import verl`` loads it (``VERL_USE_EXTERNAL_PLUGINS``, default ``auto``), and it registers:

- advantage estimators ``calmrl_grpo``, ``calmrl_dr_grpo``, ``calmrl_rloo`` with veRL's
  ``register_adv_est`` (``algorithm.adv_estimator=calmrl_grpo``);
- policy losses ``calmrl_vanilla``, ``calmrl_clip_cov``, ``calmrl_kl_cov`` with
  ``register_policy_loss`` (``actor_rollout_ref.actor.policy_loss.loss_mode=calmrl_vanilla``);
- the agent loop ``calmrl_ead`` (``actor_rollout_ref.rollout.agent.default_agent_loop=calmrl_ead``):
  veRL's single-turn loop whose requests carry EAD's ``extra_args["calmrl"]`` with the step,
  for calmrl's vLLM logits processor;
- trainer modes ``calmrl_sync``, ``calmrl_colocate_async``, ``calmrl_separate_async``
  (``trainer.v1.trainer_mode=calmrl_sync``): veRL's trainers with the entropy-shaped actor loss
  (Cheng et al. 2025) set through the actor's ``set_loss_fn``.

The agent loop and the trainer modes are registered when veRL imports the modules that hold
those registries (``hooks.py``), so ``import verl`` stays as light as it was. The settings live
in a top-level ``calmrl:`` section of the veRL config (``settings.py``); the recipe is
``examples/verl/``, the option mapping ``docs/algorithms.md``.

Importing this package imports nothing from veRL.
"""

PREFIX = "calmrl_"
"""Every name calmrl registers with veRL starts with this, so none can shadow veRL's own."""

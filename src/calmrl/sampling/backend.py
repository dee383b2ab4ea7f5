"""``RolloutBackend``: where rollouts come from. The trainer, evaluation, ``calmrl sample``, the
demo and the analyses sample only through this protocol, so an engine can be swapped by config
(``rollout.backend``).

- ``hf`` (``calmrl.sampling.engine.HFBackend``): calmrl's own engine over the trainer's module.
- ``vllm`` (``calmrl.integrations.vllm``): a colocated vLLM engine with calmrl's schedules as a
  vLLM logits processor; needs the ``vllm`` extra.
- further backends register themselves with ``register_backend``; ``build_backend`` imports a
  known plug-in module on first use, so optional engines stay optional imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from calmrl.sampling.methods import Method
from calmrl.sampling.rollouts import Rollouts


class RolloutBackend(Protocol):
    """Samples ``n`` rollouts per prompt with a registered sampling method."""

    name: str

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        method: Method,
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        seed: int | None = None,
        step: int = 0,
        prompt_indices: Sequence[int] | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Rollouts:
        """Rows of one prompt are adjacent; row ``j`` of prompt ``i`` is reproducible from
        (``seed``, ``step``, ``prompt_indices[i]``, ``j``) alone."""
        ...

    def check(self, method: Method) -> None:
        """Raise a one-line ``ValueError`` if this backend cannot sample ``method`` (before any
        sampling: LED's parameters are checked against the model's layers here)."""
        ...

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Make the backend sample from ``model``'s current weights (after an optimizer step)."""
        ...

    def close(self) -> None: ...


BackendFactory = Callable[..., RolloutBackend]
_FACTORIES: dict[str, BackendFactory] = {}
# Backends of optional engines: the module registers the name when imported.
# The one sanctioned upward reference (docs/architecture.md): a module path, imported lazily.
_PLUGINS: dict[str, str] = {"vllm": "calmrl.integrations.vllm"}


def register_backend(name: str, factory: BackendFactory) -> None:
    """``factory(model, tokenizer, **options) -> RolloutBackend`` under ``name``."""
    _FACTORIES[name] = factory


def backend_names() -> list[str]:
    return sorted({*_FACTORIES, *_PLUGINS})


def build_backend(
    name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> RolloutBackend:
    if name not in _FACTORIES and name in _PLUGINS:
        importlib.import_module(_PLUGINS[name])
    if name not in _FACTORIES:
        raise ValueError(f"backend: unknown {name!r}; choose one of: {', '.join(backend_names())}")
    return _FACTORIES[name](model, tokenizer, **options)

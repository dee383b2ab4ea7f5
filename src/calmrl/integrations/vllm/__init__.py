"""calmrl on vLLM: EAD as a vLLM logits processor, and vLLM as a calmrl rollout backend.

- ``processor.CalmrlLogitsProcessor``: registered under vLLM's ``vllm.logits_processors``
  entry points, so any vLLM engine (``vllm serve``, offline ``LLM``, TRL, veRL) samples
  calmrl's schedules per request (``spec.py`` documents the request format).
- ``backend.VLLMBackend``: ``rollout.backend: vllm``, a colocated ``vllm.LLM`` in the
  trainer's process.

Importing this package imports neither vLLM nor the backend: the config checks methods
against vLLM's limits (``spec.check_method``) in any environment, and ``build_backend("vllm")``
imports the engine only when it is used.
"""

from __future__ import annotations

from typing import Any

from calmrl.sampling.backend import register_backend


def _factory(model: Any, tokenizer: Any, **options: Any) -> Any:
    from calmrl.integrations.vllm.backend import VLLMBackend

    return VLLMBackend(model, tokenizer, **options)


register_backend("vllm", _factory)

"""``CalmrlLogitsProcessor``: calmrl's per-token temperature schedules inside any vLLM engine.

Installed with calmrl, it is registered under vLLM's ``vllm.logits_processors`` entry-point
group (``pyproject.toml``), so every engine loads it with no configuration; requests opt in
through ``SamplingParams.extra_args["calmrl"]`` (``spec.py``) and all others are untouched.

One class serves both of vLLM's processor interfaces (``runners.py``): it subclasses the V1
base and, where the installed vLLM has it, the V2 base, so V1's loader and V2's loader (which
rejects classes that are not V2 subclasses) both accept it; the constructor's arguments tell
which runner built it. The EAD authors' processor targeted vLLM's removed V0 engine, on which
today's vLLM returns importance weights of ~1 (issue 12); here vLLM's own
``logprobs_mode="processed_logprobs"`` reports the exact behaviour log-probs
``log_softmax(truncate(h / tau_t))`` of the tokens it sampled.

Limits: speculative decoding is not supported for calmrl requests (a request then owns several
logits rows per step); an ``ead-entropy`` request preempted and re-admitted mid-answer restarts
its entropy clock at its position (EAD's clock), since vLLM does not replay the logits of the
tokens it already has (its behaviour log-probs stay exact; only the schedule differs).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from calmrl.integrations.vllm.runners import V1Rows, V2Slots, spec_of_params

try:  # vLLM >= 0.32 ships the Model Runner V2 interface; older releases do not.
    from vllm.v1.worker.gpu.sample.logits_processor.interface import (
        LogitsProcessor as V2LogitsProcessor,
    )

    _BASES: tuple[type, ...] = (V1LogitsProcessor, V2LogitsProcessor)
except ImportError:
    _BASES = (V1LogitsProcessor,)


class CalmrlLogitsProcessor(*_BASES):  # type: ignore[misc]
    """EAD, reverse EAD, constant and entropy-clocked EAD per request, as calmrl samples them."""

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        # V1 calls (vllm_config, device, is_pin_memory); V2 calls (vllm_config, req_states).
        if len(args) == 1 and hasattr(args[0], "prompt_len"):
            self._v2: V2Slots | None = V2Slots(args[0])
            self._v1: V1Rows | None = None
        else:
            device = args[0] if args else torch.device("cpu")
            self._v1 = V1Rows(int(vllm_config.scheduler_config.max_num_seqs), device)
            self._v2 = None

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """At admission: a bad ``extra_args["calmrl"]`` fails the request with one line."""
        spec_of_params(sampling_params)

    # ---- V1 ----------------------------------------------------------------------------

    def is_argmax_invariant(self) -> bool:
        # True places it after vLLM's temperature and before top-k/top-p, and skips greedy
        # rows; a positive temperature never changes the argmax.
        return True

    def update_state(self, batch_update: Any) -> None:
        if self._v1 is not None:
            self._v1.update(batch_update)

    # ---- V2 ----------------------------------------------------------------------------

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        return self._v2.add(req_idx, sampling_params) if self._v2 is not None else False

    def apply_staged_writes(self) -> None:
        if self._v2 is not None:
            self._v2.flush()

    # ---- both ----------------------------------------------------------------------------

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if self._v2 is not None:
            return self._v2.apply(logits, ctx)
        assert self._v1 is not None
        return self._v1.apply(logits)

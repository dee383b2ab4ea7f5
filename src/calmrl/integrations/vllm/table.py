"""The processor's per-slot state: every request's schedule as columns of tensors.

One batch mixes requests with different methods, parameters and steps, so nothing here loops
over requests: a slot (vLLM's persistent batch index or request slot) holds a row of
parameters, and one step's temperatures are a handful of tensor ops over the rows being
sampled. The formulas are those of ``calmrl.sampling.schedules`` and
``calmrl.sampling.entropy_clock``, op for op in the same order and dtype (float64, then
float32), so a row gets bit-for-bit the temperature calmrl's own engine would give it
(``tests/vllm/test_table.py`` checks it against the registry).

Parameters change only when requests arrive or leave; they are written on the host and
copied to the device once per batch change (``flush``), never per token. The entropy clock is
device state, advanced inside ``temperatures``.
"""

from __future__ import annotations

from dataclasses import astuple, fields

import numpy as np
import torch

from calmrl.integrations.vllm.spec import CONSTANT, ENTROPY, REVERSE, RequestSpec
from calmrl.models.functional import entropy_from_logits

# The schedule's numbers, and 1.0 in "used" where a slot holds a calmrl request.
_COLUMNS = (*(f.name for f in fields(RequestSpec)), "used")
_COL = {name: i for i, name in enumerate(_COLUMNS)}


class ScheduleTable:
    """Schedules of ``capacity`` slots; a slot without a request has temperature exactly 1."""

    def __init__(self, capacity: int, device: torch.device | str = "cpu"):
        self.capacity, self.device = capacity, torch.device(device)
        self.host = np.zeros((len(_COLUMNS), capacity), dtype=np.float64)
        self.used = np.zeros(capacity, dtype=bool)
        """Host copy: which slots hold a calmrl request (skips work without a device sync)."""
        self.entropic = np.zeros(capacity, dtype=bool)
        self._params = torch.zeros((len(_COLUMNS), capacity), dtype=torch.float64)
        self._params = self._params.to(self.device)
        self._dirty = False
        # Entropy clock per slot: the clock of the token being sampled, and the increment of
        # the last sampled position, committed once the next position shows it was kept
        # (vLLM may sample a row and discard the token, e.g. mid chunked prefill).
        self.clock = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        self.pending = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        self.pending_pos = torch.full((capacity,), -1, dtype=torch.long, device=self.device)
        self._resets: list[int] = []

    # ---- slot bookkeeping (on batch changes, host side) ------------------------------------

    def set(self, slot: int, spec: RequestSpec | None) -> None:
        self.used[slot] = spec is not None
        self.entropic[slot] = spec is not None and spec.kind == ENTROPY
        self.host[:, slot] = (*astuple(spec), 1.0) if spec is not None else 0.0
        self._resets.append(slot)
        self._dirty = True

    def swap(self, a: int, b: int) -> None:
        for array in (self.host, self.used, self.entropic):
            array[..., [a, b]] = array[..., [b, a]]
        self.flush()  # the device clock moves with the rows, so parameters must be current
        for state in (self.clock, self.pending, self.pending_pos):
            state[[a, b]] = state[[b, a]]
        self._dirty = True

    def move(self, src: int, dst: int) -> None:
        for array in (self.host, self.used, self.entropic):
            array[..., dst] = array[..., src]
        self.flush()
        for state in (self.clock, self.pending, self.pending_pos):
            state[dst] = state[src]
        self.set(src, None)

    def flush(self) -> None:
        """Copy changed parameters to the device and start the clocks of new requests."""
        if self._resets:
            slots = torch.tensor(self._resets, dtype=torch.long, device=self.device)
            self.clock[slots], self.pending[slots], self.pending_pos[slots] = 0.0, 0.0, -1
            self._resets.clear()
        if self._dirty:
            self._params.copy_(torch.from_numpy(self.host), non_blocking=True)
            self._dirty = False

    # ---- one decode step (device side) -----------------------------------------------------

    def temperatures(
        self,
        slots: torch.Tensor,
        positions: torch.Tensor,
        logits: torch.Tensor,
        *,
        any_entropic: bool,
    ) -> torch.Tensor:
        """Temperature [R] (float32) of each logits row: ``slots`` [R] its slot, ``positions``
        [R] the 0-based index of the token being sampled (prompt excluded). Slots without a
        request get 1.0 exactly, so dividing their logits by it changes no bit."""
        p = self._params[:, slots]
        time = positions.to(torch.float64)
        if any_entropic:
            time = torch.where(
                p[_COL["kind"]] == ENTROPY, self._tick(slots, positions, logits), time
            )
        # EAD / reverse EAD, as schedules._DecaySchedule._growth and the subclasses' formulas.
        growth = torch.exp((time / p[_COL["scale"]].clamp(min=1e-300)).clamp(max=700.0))
        annealed = (1.0 + p[_COL["tau_max"]] - growth).clamp(min=p[_COL["tau_min"]])
        reverse = (p[_COL["tau_min"]] + growth).clamp(max=p[_COL["tau_max"]])
        kind = p[_COL["kind"]]
        tau = torch.where(kind == REVERSE, reverse, annealed)
        tau = torch.where(positions < p[_COL["warmup"]], torch.ones_like(tau), tau)
        tau = torch.where(kind == CONSTANT, p[_COL["tau"]], tau)
        return torch.where(p[_COL["used"]] > 0, tau, 1.0).to(torch.float32)

    def _tick(
        self, slots: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor:
        """The entropy clock of each row (``entropy_clock.EntropyClockSampler``): commit the
        previous position's increment if that token was kept, then stage this one's."""
        p = self._params[:, slots]
        clock, pending = self.clock[slots], self.pending[slots]
        last = self.pending_pos[slots]
        clock = torch.where(positions == last + 1, clock + pending, clock)
        # A request re-admitted mid-answer (after preemption) has no record of its earlier
        # entropies: its clock restarts at its position, EAD's clock (exact when H = H_ref).
        clock = torch.where((last < 0) & (positions > 0), positions.to(torch.float64), clock)
        entropy = entropy_from_logits(logits.float(), logits.float().log_softmax(-1))
        w, ref = p[_COL["position_weight"]], p[_COL["entropy_ref"]]
        increment = w + (1 - w) * entropy.to(torch.float64) / ref
        self.clock[slots], self.pending[slots], self.pending_pos[slots] = (
            clock,
            increment,
            positions,
        )
        return clock

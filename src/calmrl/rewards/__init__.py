"""Verifiable rewards: math answer extraction, Math-Verify with a time bound, a registry."""

from calmrl.rewards.extract import extract_boxed, extract_last_number, normalize_gold
from calmrl.rewards.registry import (
    PerItemReward,
    RewardFunction,
    Verifier,
    available_rewards,
    evaluation_verifier,
    get_reward,
    register_reward,
)
from calmrl.rewards.verifier import (
    MathVerifier,
    answers_equivalent,
    default_verifier,
    is_safe_answer,
    math_reward,
)

__all__ = [
    "MathVerifier",
    "PerItemReward",
    "RewardFunction",
    "Verifier",
    "answers_equivalent",
    "available_rewards",
    "default_verifier",
    "evaluation_verifier",
    "extract_boxed",
    "extract_last_number",
    "get_reward",
    "is_safe_answer",
    "math_reward",
    "normalize_gold",
    "register_reward",
]

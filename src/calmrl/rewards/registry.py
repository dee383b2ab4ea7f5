"""Reward registry: built-in rewards by name, user rewards by import path.

A reward is any callable ``reward(responses: list[str], golds: list[str]) -> list[float]``.
`get_reward` accepts
- a registered name (``"math"``), whose factory is called with the keyword arguments;
- ``"package.module:attribute"``: a class (or other factory registered the same way) is
  instantiated with the keyword arguments; a plain function is taken to score one item,
  ``fn(response, gold, **kwargs) -> float``, and is mapped over the batch.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Protocol

from calmrl.rewards.verifier import MathVerifier


class RewardFunction(Protocol):
    """The training reward: one float per (response, gold)."""

    def __call__(self, responses: Sequence[str], golds: Sequence[str]) -> list[float]: ...


class Verifier(Protocol):
    """What evaluation needs: correctness, the extracted answer, and answer classes for maj@k."""

    def verify(self, responses: Sequence[str], golds: Sequence[str]) -> list[bool]: ...

    def extract(self, response: str) -> str | None: ...

    def group(self, answers: Sequence[str | None]) -> list[int]: ...


def evaluation_verifier(reward: object) -> Verifier:
    """The reward itself if it is a ``Verifier`` (the math reward is), else the math verifier:
    a custom ``module:function`` training reward then still gets a well-defined evaluation."""
    if all(callable(getattr(reward, name, None)) for name in ("verify", "extract", "group")):
        return reward  # type: ignore[return-value]
    return MathVerifier()


_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}


def register_reward(name: str, factory: Callable[..., RewardFunction]) -> None:
    """Make ``get_reward(name, **kwargs)`` return ``factory(**kwargs)``."""
    if name in _REGISTRY:
        raise ValueError(f"reward {name!r} is already registered")
    _REGISTRY[name] = factory


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


class PerItemReward:
    """Batch wrapper around a one-item reward ``fn(response, gold) -> float``."""

    def __init__(self, fn: Callable[[str, str], float]) -> None:
        self.fn = fn

    def __call__(self, responses: Sequence[str], golds: Sequence[str]) -> list[float]:
        if len(responses) != len(golds):
            raise ValueError(f"got {len(responses)} responses but {len(golds)} golds")
        return [float(self.fn(r, g)) for r, g in zip(responses, golds, strict=True)]


def get_reward(name_or_path: str, **kwargs: object) -> RewardFunction:
    """A reward by registered name or ``"package.module:attribute"`` import path."""
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path](**kwargs)
    if ":" not in name_or_path:
        raise ValueError(
            f"unknown reward {name_or_path!r}: use one of {available_rewards()} "
            "or an import path 'package.module:function'"
        )
    module_name, _, attribute = name_or_path.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward {name_or_path!r}: {e}") from e
    if inspect.isclass(target):
        return target(**kwargs)
    return PerItemReward(functools.partial(target, **kwargs))


register_reward("math", MathVerifier)

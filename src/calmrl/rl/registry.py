"""Name -> function registries for advantage estimators and policy losses (as veRL's
``register_adv_est`` / ``register_policy_loss``): adding one is one decorated function.

A registered function takes its fixed tensor arguments positionally and its options as
keyword arguments; ``call`` passes it the options it names, taken from a mapping (the
algorithm config), so a new option needs no plumbing anywhere else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._functions: dict[str, Callable[..., Any]] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, **traits: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator; ``traits`` are facts the caller needs (e.g. ``needs_values=True``)."""

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._functions:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._functions[name] = function
            self._traits[name] = traits
            return function

        return decorator

    def trait(self, name: str, trait: str, default: Any = None) -> Any:
        self.get(name)
        return self._traits[name].get(trait, default)

    def names(self) -> list[str]:
        return list(self._functions)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._functions:
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._functions)}"
            )
        return self._functions[name]

    def call(self, name: str, *args: Any, options: Mapping[str, Any], **kwargs: Any) -> Any:
        """``function(*args, **kwargs, **{the options it accepts})``."""
        function = self.get(name)
        accepted = inspect.signature(function).parameters
        chosen = {k: v for k, v in options.items() if k in accepted and k not in kwargs}
        return function(*args, **kwargs, **chosen)

"""Run a function right after a module has been imported (a post-import hook, PEP 369's idea).

veRL keeps its agent-loop registry (``verl.experimental.agent_loop``) and its trainer registry
(``verl.trainer.ppo.v1``) in modules that ``import verl`` does not load, and every Ray process
imports a different subset of them. Importing them from the plug-in would make every
``import verl`` pay for both trees (and their server and engine imports); a hook registers
calmrl's entries in exactly the processes that load a registry, when they load it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)
Hook = Callable[[ModuleType], None]


def _run(name: str, hooks: Sequence[Hook], module: ModuleType) -> None:
    # A failing hook must not break veRL's own import; say so loudly instead (veRL's plug-in
    # loader would log at debug level only).
    for hook in hooks:
        try:
            hook(module)
        except Exception as error:
            logger.warning(
                "calmrl: registering with %s failed: %s: %s", name, type(error).__name__, error
            )


class _HookedLoader(importlib.abc.Loader):
    """The module's own loader, then the hooks."""

    def __init__(self, loader: Any, name: str, hooks: list[Hook]):
        self._loader, self._name, self._hooks = loader, name, hooks

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Give the module its real loader back, so that source lookups (inspect, tracebacks)
        # and pkgutil see the file's loader, not this wrapper.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _run(self._name, self._hooks, module)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._loader, attribute)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.hooks: dict[str, list[Hook]] = {}
        self._finding: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.hooks or fullname in self._finding:
            return None
        self._finding.add(fullname)  # the lookup below asks this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _HookedLoader(spec.loader, fullname, self.hooks.pop(fullname))
        return spec


_FINDER = _Finder()


def when_imported(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once ``name`` has been imported: now if it already is."""
    module = sys.modules.get(name)
    if module is not None:
        _run(name, [hook], module)
        return
    _FINDER.hooks.setdefault(name, []).append(hook)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)

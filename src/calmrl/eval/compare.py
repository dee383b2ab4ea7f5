"""Compare sampling methods on the same problems: spec parsing, the loop, the result files.

A method spec names a sampling method and its parameters in one string::

    [label=]method[:key=value[,key=value...]]

    constant:tau=0.6                 constant temperature 0.6
    ead-paper                        EAD, paper preset (tau_max 1.2, tau_min 0.1, d0 25)
    ead:tau_max=1.2,d0=25,time_scale=20
    hot=constant:tau=1.2             the same method under the label "hot"

Values are parsed as YAML scalars (``0.6`` -> float, ``true`` -> bool). The label names the
method in the results, the plots and the result file (``<label>.json`` with characters other
than letters, digits, ``.``, ``_`` and ``-`` replaced by ``-``).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calmrl.data import Problem
from calmrl.eval.runner import EvalResult, check_ks, evaluate
from calmrl.io import write_json
from calmrl.rewards import Verifier
from calmrl.sampling import Method, RolloutBackend, validate_method

_LABEL = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def file_stem(self) -> str:
        return _UNSAFE.sub("-", self.label).strip("-")

    def to_method(self, **truncation: Any) -> Method:
        return Method(self.method, self.params, **truncation)


def parse_method_spec(spec: str) -> MethodSpec:
    """``"hot=constant:tau=1.2"`` -> ``MethodSpec("hot", "constant", {"tau": 1.2})``."""
    text = spec.strip()
    label = None
    head, colon, tail = text.partition(":")
    # A "label=" prefix can only come before the method name, i.e. before the first ':'.
    if "=" in head:
        label, _, head = head.partition("=")
        if not _LABEL.fullmatch(label):
            raise ValueError(f"method: bad label {label!r} in {spec!r}; use letters, digits, ._-")
    method = head.strip()
    if not method:
        raise ValueError(f"method: no method name in {spec!r}; e.g. constant:tau=0.6")
    params: dict[str, Any] = {}
    for pair in tail.split(",") if colon else []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"method: expected key=value after ':' in {spec!r}, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)
    return MethodSpec(label or text, method, params)


def parse_method_specs(specs: Sequence[str]) -> list[MethodSpec]:
    """Parse and check specs: known methods and parameters, distinct labels and file names.

    LED's parameter values are checked by the backend, against the model's layers.
    """
    if not specs:
        raise ValueError("method: give at least one method, e.g. --method constant:tau=0.6")
    parsed = [parse_method_spec(s) for s in specs]
    for spec in parsed:
        try:
            validate_method(spec.method, spec.params)
        except ValueError as error:
            raise ValueError(f"--method {spec.label!r}: {error}") from None
    for attribute in ("label", "file_stem"):
        names = [getattr(s, attribute) for s in parsed]
        repeated = sorted({x for x in names if names.count(x) > 1})
        if repeated:
            raise ValueError(f"method: {attribute} {repeated[0]!r} is used twice; add label=")
    return parsed


def default_ks(n: int) -> list[int]:
    """Powers of two up to ``n``, and ``n`` itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def parse_ks(text: str | None, n: int) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (sorted, deduplicated, each in [1, n]); None: default."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if text is None:
        return default_ks(n)
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(
            f"k: expected comma-separated integers such as 1,4,16, got {text!r}"
        ) from None
    check_ks(ks, n)
    return ks


def compare_methods(
    backend: RolloutBackend,
    problems: Sequence[Problem],
    specs: Sequence[MethodSpec],
    methods: Sequence[Method],
    *,
    prompts: Sequence[str],
    verifier: Verifier,
    n: int,
    ks: Sequence[int],
    max_new_tokens: int,
    seed: int = 0,
    chunk_rows: int = 64,
    keep_responses: bool = False,
    config: dict[str, Any] | None = None,
    on_start: Callable[[MethodSpec], None] | None = None,
    progress: Callable[[MethodSpec, int, float], None] | None = None,
    on_done: Callable[[MethodSpec, EvalResult], None] | None = None,
) -> list[EvalResult]:
    """Evaluate each method on the same problems with the same seed.

    The same seed for every method gives common random numbers where the methods agree, which
    narrows the noise in their differences. ``config`` (model, data, ...) is stored in every
    result, together with the method, its parameters and the wall time.
    """
    results = []
    for spec, method in zip(specs, methods, strict=True):
        if on_start is not None:
            on_start(spec)
        started = time.perf_counter()
        result = evaluate(
            backend,
            problems,
            method,
            prompts=prompts,
            verifier=verifier,
            n=n,
            ks=ks,
            max_new_tokens=max_new_tokens,
            seed=seed,
            chunk_rows=chunk_rows,
            label=spec.label,
            keep_responses=keep_responses,
            progress=None if progress is None else functools.partial(progress, spec),
        )
        result.config = {
            **(config or {}),
            "method": spec.method,
            "params": spec.params,
            "n": n,
            "ks": list(ks),
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "seconds": round(time.perf_counter() - started, 2),
        }
        results.append(result)
        if on_done is not None:
            on_done(spec, result)
    return results


def write_result(result: EvalResult, spec: MethodSpec, output_dir: Path) -> Path:
    """Write one method's results atomically to ``<output_dir>/<file_stem>.json``."""
    path = Path(output_dir) / f"{spec.file_stem}.json"
    write_json(path, result.to_dict())
    return path


def summary_metrics(ks: Sequence[int]) -> list[str]:
    """The metrics worth a column in a summary: pass@1, and pass/worst/maj at the largest k."""
    top = max(ks)
    first = ["pass@1"] if 1 in ks and top > 1 else []
    return [*first, f"pass@{top}", f"worst@{top}", f"maj@{top}"]


def format_ci(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} [{value['lo']:.3f}, {value['hi']:.3f}]"

"""Readers for jsonl, parquet and Hugging Face datasets, yielding ``(location, row)`` pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calmrl.data.problem import DataFormatError, Problem, rows_to_problems

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped), each with its ``file, line N``."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location = f"{path}, line {number}"
            try:
                yield location, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{location}: invalid JSON ({e.msg})") from e


def read_json(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a file holding one JSON array of objects."""
    with open(path, encoding="utf-8") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(rows, list):
        raise DataFormatError(f"{path}: expected a JSON array of objects (or use .jsonl)")
    for number, row in enumerate(rows):
        yield f"{path}, item {number}", row


def read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a parquet file, read with pyarrow or else pandas (both optional)."""
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except ImportError:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                f"reading {path} needs pyarrow or pandas: pip install pyarrow"
            ) from None
        rows = pd.read_parquet(path).to_dict("records")
    for number, row in enumerate(rows):
        yield f"{path}, row {number}", row


def read_hf(name: str, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """Rows of a Hugging Face hub dataset ``owner/name`` or ``owner/name:config``.

    Without `split`, takes ``test`` when the dataset has one, else its first split.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"loading the Hugging Face dataset {name!r} needs the datasets package: "
            "pip install datasets (or pass a local .jsonl/.parquet file)"
        ) from None
    path, _, config = name.partition(":")
    try:
        splits = datasets.load_dataset(path, config or None)
    except Exception as e:
        raise RuntimeError(
            f"could not load Hugging Face dataset {name!r} ({type(e).__name__}: {e}); "
            "this needs hub access (unset HF_HUB_OFFLINE) or a local .jsonl/.parquet file"
        ) from e
    if split is None:
        split = "test" if "test" in splits else next(iter(splits))
    if split not in splits:
        raise ValueError(f"dataset {name!r} has no split {split!r} (splits: {list(splits)})")
    for number, row in enumerate(splits[split]):
        yield f"{name}[{split}], row {number}", row


def load_file(
    path: str | Path,
    *,
    name: str | None = None,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    require_answer: bool = True,
) -> list[Problem]:
    """Problems from a .jsonl, .json or .parquet file; ids are ``{name}-{id or index}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    readers = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unknown file type (expected one of {FILE_SUFFIXES})")
    return rows_to_problems(
        readers[path.suffix](path),
        name=name or path.stem,
        limit=limit,
        question_field=question_field,
        answer_field=answer_field,
        require_answer=require_answer,
    )

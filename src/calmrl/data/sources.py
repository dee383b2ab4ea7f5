"""One entry point, `load_problems`, over presets, synthetic tasks, files and hub datasets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from calmrl.data.loaders import FILE_SUFFIXES, load_file, read_hf
from calmrl.data.problem import Problem, rows_to_problems
from calmrl.data.synthetic import SYNTHETIC_TASKS, parse_task_name, synthetic_task

DATA_DIR_ENV = "CALMRL_DATA_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[3]
SYNTHETIC_DEFAULT_N = 100


@dataclass(frozen=True)
class Preset:
    """A known file in the data directory and the fields holding question and gold."""

    file: str
    split: str
    question_field: str
    answer_field: str


PRESETS = {
    "gsm8k": Preset("gsm8k_test.jsonl", "test", "question", "answer"),
    "gsm8k-train": Preset("gsm8k_train.jsonl", "train", "question", "answer"),
    "math500": Preset("math500_test.jsonl", "test", "problem", "answer"),
    "aime24": Preset("aime24_test.jsonl", "test", "problem", "answer"),
    "amc23": Preset("amc23_test.jsonl", "test", "problem", "answer"),
    # Its `prompt` field has Qwen's chat template baked in; we format prompts ourselves.
    "math-train": Preset("math_lvl3to5_8k_train.jsonl", "train", "question", "gt_answer"),
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The directory holding the preset files.

    In order: `data_dir`, ``$CALMRL_DATA_DIR``, then ``data/`` in the current directory or
    in the repository root (the Makefile points ``$CALMRL_DATA_DIR`` at the checkout's data).
    """
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data directory {path} does not exist")
        return path
    for path in (Path.cwd() / "data", _REPO_ROOT / "data"):
        if any(path.glob("*.jsonl")):
            return path.resolve()
    files = ", ".join(sorted({p.file for p in PRESETS.values()}))
    raise FileNotFoundError(
        f"no data directory found: set {DATA_DIR_ENV}=/path/to/dir holding the preset files "
        f"({files})"
    )


def _preset_name(source: str, split: str | None) -> str | None:
    """The preset meant by `source` and `split` (``gsm8k`` + ``train`` -> ``gsm8k-train``)."""
    if split is not None and f"{source}-{split}" in PRESETS:
        return f"{source}-{split}"
    if source not in PRESETS:
        return None
    if split is not None and PRESETS[source].split != split:
        raise ValueError(f"preset {source!r} has no split {split!r}")
    return source


def load_problems(
    source: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
    data_dir: str | Path | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    require_answer: bool = True,
) -> list[Problem]:
    """Load problems from any source calmrl knows.

    `source` is, in order of precedence:
    - a preset (``gsm8k``, ``gsm8k-train``, ``math500``, ``aime24``, ``amc23``, ``math-train``),
      read from the data directory (see `resolve_data_dir`);
    - a synthetic task ``arith-{add,mul,chain,word}-{1,2,3}``: `limit` problems (default 100)
      generated from `seed` and `split`;
    - a .jsonl / .json / .parquet file;
    - a Hugging Face dataset ``owner/name`` or ``owner/name:config`` (needs `datasets` and hub
      access).
    Files keep their order and `limit` takes the first problems. Question and gold fields are
    detected (``question``/``problem``/.../``prompt``, ``gt_answer``/``answer``/``solution``)
    unless given; ``require_answer=False`` accepts files of prompts with no gold.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    preset = _preset_name(source, split)
    if preset is not None:
        spec = PRESETS[preset]
        return load_file(
            resolve_data_dir(data_dir) / spec.file,
            name=preset,
            limit=limit,
            question_field=question_field or spec.question_field,
            answer_field=answer_field or spec.answer_field,
        )
    task = parse_task_name(source)
    if task is not None:
        kind, difficulty = task
        n = SYNTHETIC_DEFAULT_N if limit is None else limit
        return synthetic_task(kind, n, seed=seed, difficulty=difficulty, split=split or "test")
    if source.endswith(FILE_SUFFIXES) or Path(source).is_file():
        return load_file(
            source,
            limit=limit,
            question_field=question_field,
            answer_field=answer_field,
            require_answer=require_answer,
        )
    if "/" in source:
        return rows_to_problems(
            read_hf(source, split),
            name=source,
            limit=limit,
            question_field=question_field,
            answer_field=answer_field,
        )
    raise ValueError(
        f"unknown data source {source!r}: use a preset {sorted(PRESETS)}, a synthetic task "
        f"{list(SYNTHETIC_TASKS)}, a {'/'.join(FILE_SUFFIXES)} file or a hub dataset owner/name"
    )

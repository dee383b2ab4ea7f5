"""Datasets, built-in tasks and prompt formatting."""

from calmrl.data.loaders import load_file
from calmrl.data.problem import DataFormatError, Problem
from calmrl.data.sources import PRESETS, load_problems, resolve_data_dir
from calmrl.data.synthetic import SYNTHETIC_TASKS, few_shot_examples, synthetic_task

__all__ = [
    "PRESETS",
    "SYNTHETIC_TASKS",
    "DataFormatError",
    "Problem",
    "few_shot_examples",
    "load_file",
    "load_problems",
    "resolve_data_dir",
    "synthetic_task",
]

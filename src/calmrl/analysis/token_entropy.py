"""Which tokens are uncertain (Cheng et al. 2025, "Reasoning with Exploration", and Wang et al.
2025): token entropies over generated responses, grouped by token.

Every generated token's tau = 1 entropy is grouped by its text (stripped, lower case): the
highest-entropy tokens (at least ``min_count`` occurrences), and the mean entropy of word
classes, pivotal connectives ("first", "because", "however", "so", ...) and reflective words
("wait", "verify", "check", "again", ...), against all other tokens, with 95% normal intervals.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from calmrl.sampling import Rollouts

WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "pivotal": ("first", "because", "however", "so", "but", "thus", "therefore", "since",
                "then", "next", "suppose", "assume"),
    "reflective": ("wait", "verify", "check", "again", "recheck", "double", "hmm", "actually",
                   "mistake", "re-evaluate"),
}  # fmt: skip


@dataclass
class Group:
    name: str
    count: int
    mean: float
    lo: float
    hi: float


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token decoded alone, stripped and lower-cased (the key tokens are grouped by)."""
    return [tokenizer.decode([i]).strip().lower() for i in ids]


def entropies_by_token(
    rollouts: Rollouts, tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[float]]:
    on = rollouts.response_mask.bool()
    ids, values = rollouts.response_ids[on].tolist(), rollouts.entropies[on].tolist()
    grouped: dict[str, list[float]] = defaultdict(list)
    for text, value in zip(token_texts(tokenizer, ids), values, strict=True):
        grouped[text].append(value)
    return dict(grouped)


def top_tokens(
    grouped: Mapping[str, list[float]], *, k: int = 20, min_count: int = 3
) -> list[Group]:
    groups = [Group(t, len(v), *_interval(v)) for t, v in grouped.items() if len(v) >= min_count]
    return sorted(groups, key=lambda g: -g.mean)[:k]


def class_groups(
    grouped: Mapping[str, list[float]], classes: Mapping[str, Sequence[str]] = WORD_CLASSES
) -> list[Group]:
    """One group per word class present, and "other" for every remaining token."""
    members = {word: name for name, words in classes.items() for word in words}
    pooled: dict[str, list[float]] = defaultdict(list)
    for text, values in grouped.items():
        pooled[members.get(text, "other")].extend(values)
    return [Group(name, len(v), *_interval(v)) for name, v in pooled.items() if v]


def write_csv(grouped: Mapping[str, list[float]], path: Path) -> None:
    members = {w: name for name, words in WORD_CLASSES.items() for w in words}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["token", "class", "count", "mean_entropy", "lo", "hi"])
        for text, values in sorted(grouped.items(), key=lambda kv: -len(kv[1])):
            writer.writerow([text, members.get(text, "other"), len(values), *_interval(values)])


def plot(top: Sequence[Group], classes: Sequence[Group], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    for axis, groups in ((left, top), (right, classes)):
        means = [g.mean for g in groups]
        errors = [[g.mean - g.lo for g in groups], [g.hi - g.mean for g in groups]]
        axis.bar(range(len(groups)), means, yerr=errors, capsize=2)
        axis.set_xticks(range(len(groups)), [f"{g.name!r} ({g.count})" for g in groups],
                        rotation=60, ha="right", fontsize=7)  # fmt: skip
    left.set_ylabel("entropy at tau = 1 (nats); bars: 95% CI")
    left.set_title("highest-entropy tokens", fontsize=9)
    right.set_title("word classes", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Layer entropy analysis: shapes, bounds, and a hand recomputation of single layers."""

import csv
import math

import pytest
import torch

from calmrl.analysis.layer_entropy import layer_entropies, layer_entropy_report
from calmrl.models import tiny_model
from calmrl.sampling import HFBackend, generate
from calmrl.sampling.schedules import ConstantSchedule

PROMPTS = ["hi", "a longer prompt, left padded", "7+8="]


def hand_entropies(model, rollouts, layer, *, norm):
    """Uncached full model forward; entropies of lm_head(hidden[layer]) token by token."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
        width = rollouts.prompt_ids.shape[1]
        values = []
        for r in range(len(ids)):
            for t in range(int(rollouts.response_lengths[r])):
                h = out.hidden_states[layer][r, width - 1 + t]
                p = model.lm_head(model.model.norm(h) if norm else h).softmax(-1)
                values.append(float(-(p * p.log()).sum()))
    return torch.tensor(values, dtype=torch.float64), out.logits


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_layer_entropies_match_hand_recomputation(arch):
    model, tokenizer = tiny_model(arch, num_layers=3, seed=4)
    rollouts = generate(
        model, tokenizer, PROMPTS, ConstantSchedule(1.0), n=2, max_new_tokens=10, seed=0
    )
    rows = layer_entropies(model, rollouts)

    layers = model.config.num_hidden_layers
    assert [(r.layer, r.final_norm) for r in rows] == [
        (i, normed) for normed in (False, True) for i in range(layers + 1)
    ]
    tokens = int(rollouts.response_mask.sum())
    assert all(r.tokens == tokens for r in rows)
    assert all(0.0 <= r.entropy_mean <= math.log(len(tokenizer)) for r in rows)
    assert all(r.entropy_std >= 0.0 for r in rows)

    by_key = {(r.layer, r.final_norm): r for r in rows}
    for layer, norm in [(1, False), (1, True)]:
        expected, _ = hand_entropies(model, rollouts, layer, norm=norm)
        row = by_key[(layer, norm)]
        assert row.entropy_mean == pytest.approx(float(expected.mean()), abs=1e-5)
        assert row.entropy_std == pytest.approx(float(expected.std(correction=0)), abs=1e-5)
    # The final layer is the model's own posterior: the engine's recorded entropies.
    on = rollouts.response_mask.bool()
    final = by_key[(layers, False)]
    assert final.entropy_mean == pytest.approx(float(rollouts.entropies[on].mean()), abs=1e-4)
    assert by_key[(layers, True)].entropy_mean == final.entropy_mean


def test_report_writes_csv_and_png(tmp_path, tiny):
    model, tokenizer = tiny
    done: dict[str, list[int]] = {}

    def progress(phase: str, advance: int, total: int) -> None:
        done.setdefault(phase, [0, total])[0] += advance

    backend = HFBackend(model, tokenizer)
    summary = layer_entropy_report(
        model, backend, PROMPTS[:2], n=2, max_new_tokens=6, seed=1, out_dir=tmp_path / "out",
        progress=progress,
    )  # fmt: skip
    # The progress bars end full: 4 sampled rows, every layer twice (raw and normed).
    layers = model.config.num_hidden_layers
    assert done == {"sampling": [4, 4], "layers": [2 * (layers + 1), 2 * (layers + 1)]}
    with open(tmp_path / "out" / "layer_entropy.csv") as f:
        table = list(csv.DictReader(f))
    layers = model.config.num_hidden_layers
    assert len(table) == 2 * (layers + 1)
    assert set(table[0]) == {"layer", "final_norm", "entropy_mean", "entropy_std", "tokens"}
    assert (tmp_path / "out" / "layer_entropy.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["layers"] == layers
    assert summary["final_entropy"] == pytest.approx(float(table[layers]["entropy_mean"]))
    assert 0 <= summary["max_entropy_layer"] <= layers

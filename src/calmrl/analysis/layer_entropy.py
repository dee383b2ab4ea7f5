"""Entropy of each layer's posterior over generated tokens: the observation behind LED.

LED (Tan et al., arXiv 2602.01698, section 3) reads every layer through the output head (a
"logit lens") and finds that after RL post-training the final layer's posterior has a much
lower entropy than those of intermediate layers. For a model and prompts we

1. sample responses with the rollout engine,
2. run one uncached forward over prompt + response with ``output_hidden_states``,
3. for every layer ``i`` (HF convention: the residual stream entering layer ``i``; 0 is the
   embeddings, ``n`` the final normed state, i.e. the model's own posterior) apply ``lm_head``
   with and without the final norm, and take ``H(softmax(logits))`` (tau = 1) at the positions
   that predicted a generated token (``response_mask``),
4. report the mean and the (population) standard deviation over those tokens.

The final state is already normed, so layer ``n`` has the same entropy with and without norm.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from calmrl.models import LogitLens, entropy_from_logits, positions_from_mask
from calmrl.sampling import Method, RolloutBackend, Rollouts

# Tokens projected through lm_head at once: bounds memory to CHUNK x vocab floats.
CHUNK = 256

# progress(phase, advance, total): the CLI draws one bar per phase ("sampling", "layers").
Progress = Callable[[str, int, int], None]


@dataclass
class LayerEntropy:
    layer: int  # index into HF hidden_states: the stream entering this layer (n: final output)
    final_norm: bool  # whether the final norm was applied before lm_head
    entropy_mean: float
    entropy_std: float
    tokens: int


@torch.no_grad()
def response_hidden_states(model: PreTrainedModel, rollouts: Rollouts) -> tuple[torch.Tensor, ...]:
    """Every layer's hidden state at the positions that predicted a response token: [M, H] each."""
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    positions = positions_from_mask(mask)
    device = next(model.parameters()).device
    # The decoder alone: its hidden states are all we need, not [N, L, V] logits.
    outputs = model.get_decoder()(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        output_hidden_states=True,
    )
    width, steps = rollouts.prompt_ids.shape[1], rollouts.response_ids.shape[1]
    on = rollouts.response_mask.bool().to(device)
    return tuple(h[:, width - 1 : width - 1 + steps][on] for h in outputs.hidden_states)


@torch.no_grad()
def layer_entropies(
    model: PreTrainedModel, rollouts: Rollouts, progress: Progress | None = None
) -> list[LayerEntropy]:
    """Mean/std entropy of each layer's posterior over the generated tokens, raw and normed."""
    lens = LogitLens.of(model)
    hidden = response_hidden_states(model, rollouts)
    final = len(hidden) - 1
    rows = []
    for normed in (False, True):
        for layer, states in enumerate(hidden):
            norm = normed and layer != final  # the final state is already normed
            entropy = torch.cat(
                [entropy_from_logits(lens(chunk, norm=norm)) for chunk in states.split(CHUNK)]
            )
            rows.append(
                LayerEntropy(
                    layer=layer,
                    final_norm=normed,
                    entropy_mean=float(entropy.mean()),
                    entropy_std=float(entropy.std(correction=0)),
                    tokens=len(entropy),
                )
            )
            if progress:
                progress("layers", 1, 2 * len(hidden))
    return rows


def write_csv(rows: Sequence[LayerEntropy], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)


def plot(rows: Sequence[LayerEntropy], path: str | Path, *, vocab_size: int, title: str) -> None:
    """Mean entropy per layer (band: one std), raw and through the final norm; PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for normed, label in ((False, "lm_head(h)"), (True, "lm_head(norm(h))")):
        part = [r for r in rows if r.final_norm == normed]
        x = [r.layer for r in part]
        mean = torch.tensor([r.entropy_mean for r in part])
        std = torch.tensor([r.entropy_std for r in part])
        ax.plot(x, mean, marker="o", markersize=3, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.axhline(math.log(vocab_size), color="grey", ls=":", label="log V")
    ax.set_xlabel("layer (0 = embeddings, last = final output)")
    ax.set_ylabel("entropy (nats), mean over generated tokens")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_entropy_report(
    model: PreTrainedModel,
    backend: RolloutBackend,
    prompts: Sequence[str],
    *,
    n: int = 4,
    max_new_tokens: int = 128,
    seed: int = 0,
    out_dir: str | Path,
    temperature: float = 0.6,
    title: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Sample, measure, write ``layer_entropy.csv`` and ``layer_entropy.png``; return a summary."""
    rollouts = backend.generate(
        prompts,
        Method("constant", {"tau": temperature}),
        n=n,
        max_new_tokens=max_new_tokens,
        seed=seed,
        progress=(lambda done: progress("sampling", done, len(prompts) * n)) if progress else None,
    )
    rows = layer_entropies(model, rollouts, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "layer_entropy.csv", out / "layer_entropy.png"
    write_csv(rows, csv_path)
    lens = LogitLens.of(model)
    if title is None:
        name = getattr(model.config, "name_or_path", "") or model.config.model_type
        title = f"Layer entropy: {Path(name).name}"
    plot(rows, png_path, vocab_size=lens.vocab_size, title=title)
    raw = [r for r in rows if not r.final_norm]
    top = max(raw, key=lambda r: r.entropy_mean)
    return {
        "csv": str(csv_path),
        "png": str(png_path),
        "tokens": raw[0].tokens,
        "layers": len(raw) - 1,
        "final_entropy": raw[-1].entropy_mean,
        "max_entropy_layer": top.layer,
        "max_entropy": top.entropy_mean,
        "rows": [asdict(r) for r in rows],
    }

"""``Rollouts``: what the engine returns, one row per generated sequence."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

# Per-token tensors [N, T], right-padded; per-prompt tensors [N, P], left-padded.
TOKEN_FIELDS = (
    "response_ids",
    "response_mask",
    "temperatures",
    "behaviour_logprobs",
    "logprobs",
    "entropies",
)
PROMPT_FIELDS = ("prompt_ids", "prompt_mask")


@dataclass
class Rollouts:
    """A batch of sampled sequences with everything the trainer needs per generated token.

    - ``prompt_ids``/``prompt_mask`` [N, P]: the left-padded prompt actually fed to the model.
    - ``response_ids``/``response_mask`` [N, T]: generated tokens (EOS included), right-padded.
    - ``temperatures`` [N, T]: the temperature each token was sampled at.
    - ``behaviour_logprobs`` [N, T]: log-prob of the token under the true sampling distribution
      (temperature and truncation applied), for truncated importance sampling.
    - ``logprobs`` [N, T]: log-prob under the policy itself (tau = 1, no truncation): pi_old.
    - ``entropies`` [N, T]: entropy of the policy's distribution (tau = 1) at that step.
    - ``group_index`` [N]: which prompt a row came from (rows of one prompt are adjacent).
    - ``texts``: decoded responses (cut at a stop string if one was hit).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    temperatures: torch.Tensor
    behaviour_logprobs: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    group_index: torch.Tensor
    texts: list[str]
    finish_reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=-1)

    def select(self, index: torch.Tensor | list[int]) -> Rollouts:
        """Rows ``index`` (a list or long tensor), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        tensors = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        rows = index.tolist()
        texts = [self.texts[i] for i in rows]
        reasons = [self.finish_reasons[i] for i in rows] if self.finish_reasons else []
        return replace(self, **tensors, texts=texts, finish_reasons=reasons)

    def to(self, device: torch.device | str) -> Rollouts:
        tensors = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **tensors)

    @staticmethod
    def concat(parts: list[Rollouts], pad_token_id: int) -> Rollouts:
        """Stack batches of different prompt/response widths; group indices are kept as is."""
        if len(parts) == 1:
            return parts[0]
        prompt_width = max(p.prompt_ids.shape[1] for p in parts)
        response_width = max(p.response_ids.shape[1] for p in parts)
        out: dict[str, Any] = {}
        for name in PROMPT_FIELDS:
            fill = pad_token_id if name == "prompt_ids" else 0
            out[name] = torch.cat(
                [_pad(getattr(p, name), prompt_width, fill, left=True) for p in parts]
            )
        for name in TOKEN_FIELDS:
            fill = pad_token_id if name == "response_ids" else 0
            out[name] = torch.cat(
                [_pad(getattr(p, name), response_width, fill, left=False) for p in parts]
            )
        out["group_index"] = torch.cat([p.group_index for p in parts])
        out["texts"] = [t for p in parts for t in p.texts]
        out["finish_reasons"] = [r for p in parts for r in p.finish_reasons]
        return Rollouts(**out)

    def to_records(self, *, with_tokens: bool = False) -> list[dict[str, Any]]:
        """One JSON-able dict per row; per-token arrays only where the mask is on."""
        records = []
        lengths = self.response_lengths.tolist()
        for i, text in enumerate(self.texts):
            record: dict[str, Any] = {
                "group": int(self.group_index[i]),
                "text": text,
                "num_tokens": int(lengths[i]),
                "finish_reason": self.finish_reasons[i] if self.finish_reasons else None,
            }
            if with_tokens:
                n = int(lengths[i])
                for name in ("response_ids", *TOKEN_FIELDS[2:]):
                    record[name] = getattr(self, name)[i, :n].tolist()
            records.append(record)
        return records


def _pad(tensor: torch.Tensor, width: int, fill: float, *, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = tensor.new_full((tensor.shape[0], missing), fill)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)

"""Per-row randomness: a row's tokens depend on (seed, step, prompt, sample), nothing else.

One generator for a whole batch makes a row's tokens depend on its batch-mates, on the batch
size and on which rows were compacted away, so a 2-process run could not reproduce a
1-process run and another backend could not match per request. Here every row has its own
64-bit stream: the row seed mixes (seed, step, prompt index, sample index) with SplitMix64
(Steele et al. 2014, "Fast splittable pseudorandom number generators"), and the uniform for
generated token ``t`` is SplitMix64 of ``row_seed + (t + 1) * gamma``. The token is drawn by
inverting the row's CDF at that uniform, which samples exactly from the given distribution.
Everything is vectorised over rows; integers wrap modulo 2^64 as int64 tensors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

_GAMMA = -7046029254386353131  # 0x9e3779b97f4a7c15 as a signed 64-bit integer
_MUL1 = -4658895280553007687  # 0xbf58476d1ce4e5b9
_MUL2 = -7723592293110705685  # 0x94d049bb133111eb


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic on negatives)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (a bijection of 64-bit words)."""
    x = x ^ _shift_right(x, 30)
    x = x * _MUL1
    x = x ^ _shift_right(x, 27)
    x = x * _MUL2
    return x ^ _shift_right(x, 31)


def _signed(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def _absorb(state: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold one more part into a seed; the ``+ gamma`` keeps 0 from being a fixed point."""
    value = torch.as_tensor(value if isinstance(value, torch.Tensor) else _signed(value))
    return mix64(state ^ mix64(value.to(state.device) + _GAMMA))


def row_seeds(
    seed: int, step: int, prompt_indices: Sequence[int], n: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Seeds ``[len(prompt_indices) * n]``, rows prompt-major (a prompt's rows adjacent)."""
    prompts = torch.as_tensor(list(prompt_indices), dtype=torch.long, device=device)
    samples = torch.arange(n, dtype=torch.long, device=device)
    base = _absorb(_absorb(torch.tensor(_GAMMA, device=device), seed), step)
    per_prompt = _absorb(base, prompts).repeat_interleave(n)
    return _absorb(per_prompt, samples.repeat(len(prompts)))


def uniforms(seeds: torch.Tensor, t: int) -> torch.Tensor:
    """One uniform in [0, 1) per row for generated token ``t``: float64 ``[R]``."""
    bits = mix64(seeds + _signed((t + 1) * _GAMMA))
    return _shift_right(bits, 11).double() / float(1 << 53)


# Vocabulary block of the two-level inverse CDF (``sample_tokens``).
_BLOCK = 256


def sample_tokens(log_probs: torch.Tensor, seeds: torch.Tensor, t: int) -> torch.Tensor:
    """Draw one token per row from ``softmax``-normalised ``log_probs`` [R, V] by inverse CDF.

    Tokens with ``p < 3.2e-38`` (``log p`` within 1 of the fp32 normal range's end) get mass
    exactly 0: ``exp`` is ~15x slower where its input or result is subnormal or infinite (at
    tau = 0.1 over 49k tokens it took 18 of a step's 20 ms of sampling), and together such
    tokens hold < 2e-33 of the mass, far below the 2^-53 resolution of the uniform.

    The CDF is inverted in two levels, the same token as one float64 cumsum over the whole
    vocabulary up to float64 rounding of the prefix sums: block sums of ``_BLOCK`` tokens and
    their cumsum find the block, then a cumsum of that block alone finds the token. In a
    SmolLM2 decode step at 64 rows (49152 tokens, 2-core Xeon, torch.profiler) the flat
    float64 cumsum took 7.6 ms; the two levels take about 4 ms.
    """
    floor = math.log(torch.finfo(log_probs.dtype).tiny) + 1.0
    probs = log_probs.clamp(min=floor).exp().masked_fill_(log_probs < floor, 0.0)
    rows, vocab = probs.shape
    blocks = -(-vocab // _BLOCK)
    if blocks * _BLOCK != vocab:  # zero mass on the padding: never drawn
        probs = F.pad(probs, (0, blocks * _BLOCK - vocab))
    per_block = probs.view(rows, blocks, _BLOCK)
    block_cdf = per_block.sum(-1, dtype=torch.float64).cumsum(-1)
    target = uniforms(seeds, t).to(probs.device).unsqueeze(-1) * block_cdf[:, -1:]
    block = _invert(block_cdf, target)
    before = block_cdf.gather(-1, (block - 1).clamp(min=0)).masked_fill_(block == 0, 0.0)
    chosen = per_block.gather(1, block.unsqueeze(-1).expand(-1, -1, _BLOCK)).squeeze(1)
    inner_cdf = chosen.double().cumsum(-1) + before
    return (block * _BLOCK + _invert(inner_cdf, target)).squeeze(-1)


def _invert(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The first index whose ``cdf`` [R, N] exceeds ``target`` [R, 1]: zero-mass entries repeat
    their predecessor's value and are never it. Where rounding puts the target at or past
    the end, the last entry with mass (the first to reach the end value)."""
    index = torch.searchsorted(cdf, target, right=True)
    last = torch.searchsorted(cdf, cdf[:, -1:].contiguous(), right=False)
    return torch.minimum(index, last)


def derive_seed(*parts: int | str) -> int:
    """A 62-bit seed from named parts, e.g. ``derive_seed(seed, step, "update-order")``: distinct
    names never collide the way small integer salts did."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2

"""Seeded weights for golden-output tests: the same recipe fills TAO's model (scripts/make_fan_golden.py) and ours.

A recipe (JSON, stored next to the golden outputs) names a seed and an ordered list of rules; the first rule whose
``match`` regex finds the key (and whose ``ndim``, if given, equals the tensor's) decides how the tensor is drawn.
Every key gets its own ``torch.Generator`` seeded with ``crc32(f"{seed}:{key}")``, so a tensor depends only on
its key, shape and the recipe, never on which other keys exist or in which order a model lists them.
"""

from __future__ import annotations

import math
import re
import zlib

import torch


def key_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded from the recipe seed and the state-dict key (stable across processes)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))


def draw(rule: dict, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One float32 tensor of ``shape`` from ``rule['dist']``: zeros, normal(mean, std), uniform(low, high),
    or fan_in_normal(gain): normal(0, gain / sqrt(prod(shape[1:])))."""
    dist = rule["dist"]
    if dist == "zeros":
        return torch.zeros(shape)
    if dist == "normal":
        return torch.randn(shape, generator=gen) * rule["std"] + rule["mean"]
    if dist == "uniform":
        return torch.rand(shape, generator=gen) * (rule["high"] - rule["low"]) + rule["low"]
    if dist == "fan_in_normal":
        return torch.randn(shape, generator=gen) * (rule["gain"] / math.sqrt(math.prod(shape[1:])))
    raise ValueError(f"unknown dist {dist!r} in recipe rule {rule}")


def seeded_tensor(recipe: dict, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The recipe's tensor for ``key`` (``num_batches_tracked`` counters are int64 zeros)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    for rule in recipe["rules"]:
        if re.search(rule["match"], key) and rule.get("ndim", len(shape)) == len(shape):
            return draw(rule, tuple(shape), key_generator(recipe["seed"], key))
    raise ValueError(f"no recipe rule matches {key} {tuple(shape)}")


def seeded_state_dict(recipe: dict, shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Key -> tensor for every key of ``shapes`` (a state dict's key -> shape), visited in sorted order."""
    return {k: seeded_tensor(recipe, k, tuple(shapes[k])) for k in sorted(shapes)}


def seeded_input(recipe: dict) -> torch.Tensor:
    """The (batch, 3, H, W) float32 input image, normal(0, 1) (already 'normalized')."""
    n, (h, w) = recipe["batch"], recipe["img_size"]
    return torch.randn((n, 3, h, w), generator=torch.Generator().manual_seed(recipe["input_seed"]))

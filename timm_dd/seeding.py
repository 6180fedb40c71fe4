"""Derived random streams: one reproducible seed per (seed, key, ...) tuple, e.g. (seed, epoch, rank, stream)."""
import torch

__all__ = ['derive_seed', 'generator_for']


def derive_seed(seed: int, *keys: int) -> int:
    """A stable mix of ``seed`` and integer ``keys``: the same tuple always gives the same seed."""
    value = int(seed)
    for k in keys:
        value = (value * 1_000_003 + int(k) + 1) % (2 ** 62)
    return value


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (one independent stream per key tuple)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))

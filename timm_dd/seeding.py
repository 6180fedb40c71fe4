"""Derived random streams: one reproducible seed per (seed, key, ...) tuple, e.g. (seed, epoch, rank, stream)."""
import contextlib
from typing import Iterator, Optional

import torch

__all__ = ['derive_seed', 'generator_for', 'seeded']


def derive_seed(seed: int, *keys: int) -> int:
    """A stable mix of ``seed`` and integer ``keys``: the same tuple always gives the same seed."""
    value = int(seed)
    for k in keys:
        value = (value * 1_000_003 + int(k) + 1) % (2 ** 62)
    return value


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (one independent stream per key tuple)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def seeded(seed: int, *keys: int, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run the block with torch's global RNG seeded from ``(seed, *keys)``, restoring it afterwards.

    For code that draws from the global RNG and cannot take a generator: timm's weight initialisation, dropout.
    The CPU generator is always forked; a CUDA ``device``'s generator too.
    """
    devices = [device] if device is not None and torch.device(device).type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, *keys))
        yield

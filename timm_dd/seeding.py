"""Derived random streams: one reproducible seed per (seed, key, ...) tuple, e.g. (seed, epoch, rank, stream)."""
import contextlib
from typing import Iterator, Optional

import numpy as np
import torch

__all__ = ['derive_seed', 'generator_for', 'device_generator', 'numpy_rng', 'seeded', 'Stream']


class Stream:
    """The named random streams: the last key of a ``generator_for`` / ``seeded`` tuple says what it draws.

    The values are part of every recorded result (a resumed run, a reproduced table): never renumber one. Names are
    per use, so two uses may share a value where their other keys already keep them apart (plain ints, not an enum,
    whose equal values would become aliases of one name).
    """
    TRAIN_ORDER = 0  # (seed, epoch, .): a training epoch's batch order
    TRAIN_DROP_PATH = 1  # (seed, epoch, rank, .): DropPath masks
    TRAIN_AUGMENT = 2  # (seed, epoch, rank, .): DSA / CutMix draws
    TRAIN_GLOBAL = 3  # (seed, epoch, rank, .): dropout and other global-RNG draws of an epoch
    EXPERT_INIT = 0  # (seed, expert, .): an expert's initial weights
    EXPERT_ORDER = 1  # (seed, expert, .): its batch order
    EXPERT_AUGMENT = 2  # (seed, expert, .): its DSA draws
    SYNTHETIC_INIT = 3  # (seed, 0, .): the synthetic images' initial real samples
    MATCH_STEP = 7  # (seed, iteration, .): a trajectory-matching iteration's start epoch, batches and DSA draws
    EXPERT_PASS_ORDER = 101  # (seed, pass, .): the order experts are used in, reshuffled every pass
    DM_NETWORK = 31  # (seed, iteration, .): a DM iteration's randomly initialised network
    DM_STEP = 37  # (seed, iteration, .): a DM iteration's real batches and DSA draws
    EVAL_NETWORK = 53  # (seed, eval seed, .): the initial weights of a network evaluating the synthetic set


def derive_seed(seed: int, *keys: int) -> int:
    """A stable mix of ``seed`` and integer ``keys``: the same tuple always gives the same seed."""
    value = int(seed)
    for k in keys:
        value = (value * 1_000_003 + int(k) + 1) % (2 ** 62)
    return value


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (one independent stream per key tuple)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def device_generator(device: torch.device) -> torch.Generator:
    """An unseeded generator on ``device`` (for draws made there, e.g. DropPath masks); seed it with
    ``manual_seed(derive_seed(...))`` before each use."""
    return torch.Generator(device=device)


def numpy_rng(generator: Optional[torch.Generator] = None) -> np.random.Generator:
    """A NumPy generator seeded by one draw from the torch ``generator`` (the global CPU RNG when None): for
    distributions torch samples without a generator argument (e.g. Beta), replayable from the same stream."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))


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

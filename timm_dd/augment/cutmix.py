"""CutMix of a batch's images (not its labels), as DD-Ranking's ``Cutmix`` augmentation applies it.

DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking) evaluates soft-label sets (SRe2L, RDED, ...) with CutMix on the images only:
the labels come from a teacher that sees the mixed images (``relabel``), or stay as they are. One box for the whole
batch: ``lam ~ Beta(beta, beta)``, sides ``int(H * sqrt(1 - lam))`` and ``int(W * sqrt(1 - lam))`` around a uniform
centre, clipped to the image, filled from a random permutation of the batch.
"""
import math
from typing import Optional

import torch

from ..seeding import numpy_rng

__all__ = ['cutmix_images']


def cutmix_images(images: torch.Tensor, beta: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A new batch: ``images`` with one box pasted from a permutation of the batch. Draws come from ``generator``
    (a CPU generator; the global CPU RNG when None), so they are the same on every device."""
    if not beta > 0:
        raise ValueError(f'cutmix beta must be positive, got {beta}')
    n, _, h, w = images.shape
    perm = torch.randperm(n, generator=generator)
    lam = numpy_rng(generator).beta(beta, beta)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator) % torch.tensor([h, w]))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[perm.to(images.device), :, y0:y1, x0:x1]
    return out

"""Image grid of a distilled set: one row per class, written atomically as PNG."""
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ..io import atomic_write
from .distilled_set import DistilledSet

__all__ = ['save_grid', 'make_class_grid']


def make_class_grid(
        dset: DistilledSet,
        max_per_class: int = 10,
        classes: Optional[Sequence[int]] = None,
        padding: int = 2,
        pad_value: float = 1.0,
        scale: int = 1,
) -> torch.Tensor:
    """``[3, rows * (H * scale + padding) + padding, cols * (W * scale + padding) + padding]`` grid in [0, 1].

    Row ``r`` shows the first ``max_per_class`` images of class ``classes[r]`` (all classes by default) mapped to
    pixel space and clipped; missing cells are filled with ``pad_value``.
    """
    if max_per_class < 1 or scale < 1 or padding < 0:
        raise ValueError(f'need max_per_class >= 1, scale >= 1, padding >= 0; got {max_per_class}, {scale}, {padding}')
    c, h, w = dset.image_shape
    if c not in (1, 3):
        raise ValueError(f'save_grid needs 1- or 3-channel images, got {c} channels')
    classes = list(range(dset.num_classes)) if classes is None else [int(k) for k in classes]
    bad = [k for k in classes if not 0 <= k < dset.num_classes]
    if bad or not classes:
        raise ValueError(f'classes must be a non-empty list of ids in [0, {dset.num_classes}), got {classes}')
    labels = dset.labels.detach().cpu()
    idx = [torch.nonzero(labels == k).flatten()[:max_per_class] for k in classes]
    cols = max(1, max(len(i) for i in idx))
    with torch.no_grad():
        pixels = dset.to_pixel_space(dset.images.detach()).cpu().clamp_(0, 1)
    cells = torch.full((len(classes) * cols, c, h, w), pad_value, dtype=torch.float32)
    for r, i in enumerate(idx):
        cells[r * cols:r * cols + len(i)] = pixels[i]
    if scale > 1:
        cells = cells.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return make_grid(cells, nrow=cols, padding=padding, pad_value=pad_value)


def save_grid(
        dset: DistilledSet,
        path: Union[str, os.PathLike],
        max_per_class: int = 10,
        classes: Optional[Sequence[int]] = None,
        padding: int = 2,
        pad_value: float = 1.0,
        scale: int = 1,
) -> Path:
    """Write a PNG grid of ``dset`` (one row per class, see :func:`make_class_grid`) atomically.

    Args:
        dset: The distilled set.
        path: Output file (PNG).
        max_per_class: Images (columns) per class.
        classes: Class ids to show, one row each (default: all).
        padding: Pixels between cells.
        pad_value: Padding / empty-cell value in [0, 1].
        scale: Integer nearest-neighbour upscaling of each image.

    Returns:
        ``path``.
    """
    grid = make_class_grid(dset, max_per_class, classes, padding, pad_value, scale)
    arr = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(arr)).save(f, format='PNG')
    return path

"""Image grids of a distilled set: one row per class, written atomically as PNG.

:func:`save_grid` is what a person looks at: images upscaled (nearest neighbour) to at least ``min_size`` pixels,
the class name at the start of each row, and optionally the real images the set started from as a second panel
beside it. :func:`make_class_grid` is the bare tensor grid (for trackers such as TensorBoard).
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from ..data.space import to_uint8
from ..io import atomic_write
from .distilled_set import DistilledSet

__all__ = ['save_grid', 'make_class_grid', 'class_grid_image', 'GridLayout']


def _check(dset: DistilledSet, max_per_class: int, classes: Optional[Sequence[int]], padding: int) -> List[int]:
    if max_per_class < 1 or padding < 0:
        raise ValueError(f'need max_per_class >= 1, padding >= 0; got {max_per_class}, {padding}')
    c = dset.image_shape[0]
    if c not in (1, 3):
        raise ValueError(f'save_grid needs 1- or 3-channel images, got {c} channels')
    classes = list(range(dset.num_classes)) if classes is None else [int(k) for k in classes]
    bad = [k for k in classes if not 0 <= k < dset.num_classes]
    if bad or not classes:
        raise ValueError(f'classes must be a non-empty list of ids in [0, {dset.num_classes}), got {classes}')
    return classes


def _class_cells(dset: DistilledSet, images: Optional[torch.Tensor], labels: torch.Tensor, classes: List[int],
                 max_per_class: int, cols: Optional[int], pad_value: float) -> Tuple[torch.Tensor, int]:
    """``([rows * cols, C, H, W] pixels in [0, 1], cols)``: row r holds the first images of class ``classes[r]``."""
    c, h, w = dset.image_shape
    labels = labels.detach().cpu()
    idx = [torch.nonzero(labels == k).flatten()[:max_per_class] for k in classes]
    cols = cols or max(1, max(len(i) for i in idx))
    with torch.no_grad():
        pixels = dset.to_pixel_space(None if images is None else images.detach()).cpu().clamp_(0, 1)
    cells = torch.full((len(classes) * cols, c, h, w), pad_value, dtype=torch.float32)
    for r, i in enumerate(idx):
        i = i[:cols]
        cells[r * cols:r * cols + len(i)] = pixels[i]
    return cells, cols


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
    pixel space and clipped; missing cells are filled with ``pad_value``. No labels (see :func:`save_grid`).
    """
    if scale < 1:
        raise ValueError(f'need scale >= 1, got {scale}')
    classes = _check(dset, max_per_class, classes, padding)
    cells, cols = _class_cells(dset, None, dset.labels, classes, max_per_class, None, pad_value)
    if scale > 1:
        cells = cells.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return make_grid(cells, nrow=cols, padding=padding, pad_value=pad_value)


@dataclass
class GridLayout:
    """Where the cells of a :func:`class_grid_image` are.

    Attributes:
        panels: the panel titles, left to right (``['real images it started from', 'ATT distilled']``, or one).
        rows: the class names, top to bottom.
        cols: images per class (columns of each panel).
        cell: ``(height, width)`` of one upscaled image in pixels.
        scale: the nearest-neighbour upscaling factor.
        origins: ``(panel, row, col) -> (left, top)`` of each cell.
    """
    panels: List[str]
    rows: List[str]
    cols: int
    cell: Tuple[int, int]
    scale: int
    origins: Dict[Tuple[int, int, int], Tuple[int, int]]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> Tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_text(draw: ImageDraw.ImageDraw, xy: Tuple[int, int], text: str, font) -> None:
    """``text`` with the top-left of its ink at ``xy``."""
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - left, xy[1] - top), text, fill=(0, 0, 0), font=font)


def class_grid_image(
        dset: DistilledSet,
        max_per_class: int = 10,
        classes: Optional[Sequence[int]] = None,
        padding: int = 2,
        pad_value: float = 1.0,
        scale: Optional[int] = None,
        min_size: int = 64,
        labels: bool = True,
        real: Optional[Union[torch.Tensor, DistilledSet]] = None,
        titles: Optional[Sequence[str]] = None,
) -> Tuple[Image.Image, GridLayout]:
    """The grid of :func:`save_grid` as an RGB ``PIL.Image`` and its :class:`GridLayout`.

    Without labels and ``real`` the image is exactly :func:`make_class_grid`'s. ``real``: the real images the set
    started from, either a tensor in the set's image space and label order (what MTT/ATT/DM start from: the same
    shape as ``dset.images``) or another :class:`DistilledSet`; drawn as a first panel with the same rows.
    """
    classes = _check(dset, max_per_class, classes, padding)
    c, h, w = dset.image_shape
    if scale is None:
        scale = max(1, math.ceil(min_size / min(h, w)))
    if scale < 1:
        raise ValueError(f'need scale >= 1, got {scale}')
    panels = _panels(dset, real)
    cols = max(max(1, min(max_per_class, int((lab.detach().cpu() == k).sum()))) for _, _, lab in panels
               for k in classes)
    grids = [_panel_pixels(owner, images, lab, classes, max_per_class, cols, pad_value, scale, padding)
             for owner, images, lab in panels]
    if titles is None:
        method = str(dset.method or 'distilled')
        titles = (['real images it started from'] if real is not None else []) + \
                 [f'{method} distilled' if method.lower() != 'real' else 'images']
    titles = list(titles)
    if len(titles) != len(grids):
        raise ValueError(f'titles needs {len(grids)} entries, got {len(titles)}')
    names = [str(dset.class_names[k]) if dset.class_names else str(k) for k in classes]
    ch, cw = h * scale, w * scale
    font = _font(max(11, min(16, ch // 3)))
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    label_w = max(_text_size(probe, n, font)[0] for n in names) + 10 if labels else 0
    title_h = (_text_size(probe, 'Ag', font)[1] + 10) if (labels or len(grids) > 1) else 0
    gap = 3 * ch // 8 + 8 if len(grids) > 1 else 0
    gh, gw = grids[0].shape[:2]
    layout = _layout(titles, names, cols, (ch, cw), scale, padding, label_w, title_h, gw, gap)
    if not labels and len(grids) == 1:  # exactly make_class_grid's picture
        return Image.fromarray(np.ascontiguousarray(grids[0])), layout
    canvas = Image.new('RGB', (label_w + len(grids) * gw + (len(grids) - 1) * gap, title_h + gh), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for p, grid in enumerate(grids):
        left = label_w + p * (gw + gap)
        canvas.paste(Image.fromarray(np.ascontiguousarray(grid)), (left, title_h))
        if title_h:
            tw, _ = _text_size(draw, titles[p], font)
            _draw_text(draw, (left + max(0, (gw - tw) // 2), 4), titles[p], font)
    for r, name in enumerate(names if labels else []):
        tw, th = _text_size(draw, name, font)
        _draw_text(draw, (label_w - 6 - tw, title_h + padding + r * (ch + padding) + (ch - th) // 2), name, font)
    return canvas, layout


def _panels(dset: DistilledSet, real: Optional[Union[torch.Tensor, DistilledSet]]) -> List[tuple]:
    """``(owner, images or None, labels)`` per panel: the real images first (when given), then the set."""
    panels = []
    if isinstance(real, DistilledSet):
        if real.image_shape != dset.image_shape or real.num_classes != dset.num_classes:
            raise ValueError(f'the real images ({real.image_shape}, {real.num_classes} classes) do not match the '
                             f'set ({dset.image_shape}, {dset.num_classes} classes)')
        panels.append((real, None, real.labels))
    elif real is not None:
        if tuple(real.shape) != tuple(dset.images.shape):
            raise ValueError(f'real images must have the shape of the set\'s images {tuple(dset.images.shape)} '
                             f'(the same label order), got {tuple(real.shape)}')
        panels.append((dset, real, dset.labels))
    return panels + [(dset, None, dset.labels)]


def _panel_pixels(owner: DistilledSet, images: Optional[torch.Tensor], labels: torch.Tensor, classes: List[int],
                  max_per_class: int, cols: int, pad_value: float, scale: int, padding: int) -> np.ndarray:
    """One panel's grid as uint8 ``[H, W, 3]``, upscaled by ``scale`` (nearest)."""
    cells, _ = _class_cells(owner, images, labels, classes, max_per_class, cols, pad_value)
    cells = cells.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3) if scale > 1 else cells
    grid = make_grid(cells, nrow=cols, padding=padding, pad_value=pad_value)
    return to_uint8(grid).permute(1, 2, 0).numpy()


def _layout(titles, names, cols, cell, scale, padding, left, top, panel_w, gap) -> GridLayout:
    origins = {}
    for p in range(len(titles)):
        for r in range(len(names)):
            for k in range(cols):
                origins[(p, r, k)] = (left + p * (panel_w + gap) + padding + k * (cell[1] + padding),
                                      top + padding + r * (cell[0] + padding))
    return GridLayout(list(titles), list(names), cols, cell, scale, origins)


def save_grid(
        dset: DistilledSet,
        path: Union[str, os.PathLike],
        max_per_class: int = 10,
        classes: Optional[Sequence[int]] = None,
        padding: int = 2,
        pad_value: float = 1.0,
        scale: Optional[int] = None,
        labels: bool = True,
        real: Optional[Union[torch.Tensor, DistilledSet]] = None,
        min_size: int = 64,
) -> Path:
    """Write a PNG grid of ``dset`` atomically: one row per class, its name at the start of the row.

    Args:
        dset: The distilled set.
        path: Output file (PNG).
        max_per_class: Images (columns) per class.
        classes: Class ids to show, one row each (default: all).
        padding: Pixels between cells.
        pad_value: Padding / empty-cell value in [0, 1].
        scale: Integer nearest-neighbour upscaling of each image (default: the smallest that makes each image at
            least ``min_size`` pixels on its shorter side).
        labels: Class names at the start of each row (and panel titles).
        real: The real images the set started from (a tensor in the set's image space with the shape of
            ``dset.images``, or a :class:`DistilledSet`): drawn as a panel beside the distilled images.
        min_size: See ``scale``.

    Returns:
        ``path``. ``labels=False, scale=1`` without ``real`` gives :func:`make_class_grid`'s picture.
    """
    image, _ = class_grid_image(dset, max_per_class, classes, padding, pad_value, scale, min_size, labels, real)
    path = Path(path)
    with atomic_write(path) as f:
        image.save(f, format='PNG')
    return path

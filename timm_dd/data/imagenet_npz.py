"""Downsampled ImageNet-1K (Chrabaszcz, Loshchilov and Hutter 2017, "A downsampled variant of ImageNet as an
alternative to the CIFAR datasets"): the 64x64 (or 32x32, 16x16) release that TESLA distils, read into one uint8 set.

The release is a folder of ``.npz`` batches: ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` (the train
split, often in ``Imagenet64_train_part1_npz/`` and ``..._part2_npz/``) and ``val_data.npz`` (the 50,000 validation
images, the ``'test'`` split here). Each holds ``data``, uint8 rows of ``3 * S * S`` values (the red plane, then
green, then blue: already channel-first), and ``labels`` from 1 to 1000. The set is allocated once (after checking
that it fits in memory) and filled batch by batch, so loading needs the set's uint8 size plus one batch; it is then
cached like a decoded folder and read back memory-mapped.
"""
import logging
import os
import time
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .cache import cache_key, cache_path, load_cached, save_cached_or_warn, tree_fingerprint
from .folders import check_fits_in_memory
from .sets import ImageSet
from .space import ImageSpace

__all__ = ['IMAGENET_NPZ', 'load_imagenet_npz', 'imagenet_npz_files']

_logger = logging.getLogger(__name__)

#: the dataset names that read the downsampled release (the side comes from the files)
IMAGENET_NPZ = ('imagenet64', 'imagenet32', 'imagenet16')
_SPLIT_FILES = {'train': 'train_data_batch_*.npz', 'test': 'val_data.npz', 'val': 'val_data.npz'}


def imagenet_npz_files(root: Path, split: str) -> List[Path]:
    """The ``.npz`` batches of ``split`` under ``root`` (searched recursively), in batch order."""
    if split not in _SPLIT_FILES:
        raise ValueError(f"downsampled ImageNet has the splits 'train' and 'test' (its validation images), got "
                         f"{split!r}")
    files = sorted(root.rglob(_SPLIT_FILES[split]),
                   key=lambda p: (len(p.stem), p.stem))  # batch_2 before batch_10
    if not files:
        raise FileNotFoundError(f'no {_SPLIT_FILES[split]} under {root}: download the downsampled ImageNet release '
                                f'(the npz files of Imagenet64_train_part1/2 and Imagenet64_val) into one folder and '
                                f'pass it as --data-root (root= in Python)')
    return files


def _side(row_length: int, where: Path) -> int:
    side = int(round((row_length / 3) ** 0.5))
    if 3 * side * side != row_length:
        raise ValueError(f'{where}: rows of {row_length} values are not 3 x S x S images')
    return side


def load_imagenet_npz(name: str, split: str, root: Union[str, os.PathLike],
                      cache_dir: Optional[Union[str, os.PathLike]] = None, use_cache: bool = True) -> ImageSet:
    """The ``split`` of the downsampled ImageNet in ``root`` as uint8 pixels with ImageNet's normalization
    statistics; class ``k`` is the release's label ``k + 1`` (class names are the indices)."""
    root = Path(root).expanduser()
    files = imagenet_npz_files(root, split)
    cache_file = None
    if use_cache:
        key = cache_key(kind='imagenet_npz', checksum=tree_fingerprint(root), split=split)
        cache_file = cache_path(cache_dir, name, split, key)
        cached = load_cached(cache_file)
        if cached is not None:
            return _as_set(cached[0], cached[1], name, split)
    t0 = time.perf_counter()
    images, labels = _read_batches(files)
    _logger.info('read %d images from %d npz files under %s in %.1f s', len(labels), len(files), root,
                 time.perf_counter() - t0)
    if cache_file is not None:
        save_cached_or_warn(cache_file, images, labels, [str(k) for k in range(1000)], str(root))
    return _as_set(images, labels, name, split)


def _read_batches(files: List[Path]) -> Tuple[torch.Tensor, torch.Tensor]:
    counts, row = [], None
    for path in files:  # the labels only: an npz member is read when asked for
        with np.load(path) as npz:
            counts.append(len(npz['labels']))
            if row is None:
                row = npz['data'].shape[1] if 'data' in npz.files else None
    if row is None:
        raise ValueError(f'{files[0]}: no "data" array (is it a downsampled ImageNet batch?)')
    side, total = _side(row, files[0]), sum(counts)
    check_fits_in_memory(total * row, files[0].parent, f'{total:,} images of 3x{side}x{side}')
    images = torch.empty((total, 3, side, side), dtype=torch.uint8)
    labels = torch.empty(total, dtype=torch.int64)
    start = 0
    for path, count in zip(files, counts):
        with np.load(path) as npz:
            data, batch_labels = npz['data'], np.asarray(npz['labels'])
        if data.shape != (count, row) or data.dtype != np.uint8:
            raise ValueError(f'{path}: data is {data.dtype} {data.shape}, expected uint8 ({count}, {row})')
        if batch_labels.min() < 1 or batch_labels.max() > 1000:
            raise ValueError(f'{path}: labels range over [{batch_labels.min()}, {batch_labels.max()}], not 1..1000')
        images.numpy()[start:start + count] = data.reshape(count, 3, side, side)
        labels[start:start + count] = torch.from_numpy(batch_labels.astype(np.int64) - 1)
        start += count
        del data
    return images, labels


def _as_set(images: torch.Tensor, labels: torch.Tensor, name: str, split: str) -> ImageSet:
    return ImageSet(images, labels, [str(k) for k in range(1000)], ImageSpace.normalized(IMAGENET_MEAN, IMAGENET_STD),
                    name, split, num_classes=1000)

"""In-memory image datasets for distillation: CIFAR-10/100, image folders and zip archives, scikit-learn digits.

Everything is loaded into one float32 tensor ``[N, C, H, W]`` of pixels in [0, 1] (distillation touches every
image many times, so a per-item ``Dataset`` would only add overhead). Sources:

* ``'cifar10'`` / ``'cifar100'``: torchvision's python-pickle copies under ``root`` (``root/cifar-10-batches-py``),
  or, when those are absent, an image-folder/zip copy in ``root``: ``root`` itself or a sub-folder named after the
  dataset (``root/cifar10``, ``root/cifar-10``, ``root/cifar10-jpeg``, ...) holding ``train/`` and ``test/`` class
  folders or ``train.zip`` / ``test.zip``. Such a copy must have the dataset's classes (CIFAR-10's ten names; 100
  classes for CIFAR-100, whose names sort alphabetically like torchvision's) and gets the dataset's name and
  statistics. Nothing is downloaded unless ``download=True``. A folder given as the dataset itself that holds
  torchvision's files (``DIR/cifar-10-batches-py``) is read as CIFAR too.
* A directory in torchvision ``ImageFolder`` layout (``<class>/**/<image>``), or the same layout inside a
  ``.zip`` archive (see :mod:`timm_dd.data.folders`).
* ``'imagenet64'`` / ``'imagenet32'`` / ``'imagenet16'``: ImageNet-1K at that side under ``root``: the downsampled
  release's npz batches (:mod:`timm_dd.data.imagenet_npz`; labels as the release numbers them), or ``train/`` and
  ``val/`` folders of images already at that size, one class folder per wnid (the layout TESLA's code reads with
  ``ImageFolder``; labels in sorted-wnid order, torchvision's). The release's numbering need not be the sorted-wnid
  order: evaluate a set on the layout it was distilled from.
* MTT's ImageNet subsets (``'imagenette'``, ``'imagewoof'``, ...; :mod:`timm_dd.data.imagenet_subsets`): ten
  ImageNet-1K classes at 128x128, read from ImageNet-1K's folders or fast.ai's release under ``root``.
* A folder of parquet files (a Hugging Face Hub dataset repo's layout, :mod:`timm_dd.data.parquet_images`), or
  ``hf://datasets/<owner>/<name>[@<revision>]`` for such a repo on the Hub (its parquet files are downloaded once
  into the Hugging Face cache). The named datasets above also take such a folder or ``hf://`` repo as ``root``.
* ``'digits'``: scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), works offline.

Normalization statistics (``ImageSet.normalization``; the images themselves stay [0, 1] pixels): the values
researchers use for CIFAR-10/100; for folders, archives and parquet files CIFAR-10's when the class names are exactly
the 10 CIFAR-10 classes in order and the images are RGB, ImageNet's for other RGB data, and the mean of ImageNet's
three channels for greyscale data; for digits the statistics of its train split (see :data:`DIGITS_MEAN`).
"""
import logging
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets as tvd

from .._optional import require
from ..constants import (
    BUILTIN_DATASETS, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN,
    IMAGENET_STD,
)
from .folders import IMG_EXTENSIONS, load_image_tree
from .imagenet_npz import IMAGENET_NPZ, load_imagenet_npz
from .imagenet_subsets import IMAGENET_SUBSETS, load_imagenet_subset
from .parquet_images import (
    HUB_DATASET_PREFIX, IMAGENET_TEST_FILES, fetch_hub_dataset, is_parquet_folder, load_parquet_images,
)
from .sets import ImageSet
from .space import ImageSpace

__all__ = [
    'load_dataset', 'select_ipc', 'BUILTIN_DATASETS', 'CIFAR10_CLASSES', 'CIFAR10_MEAN',
    'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD', 'IMAGENET_MEAN', 'IMAGENET_STD', 'DIGITS_MEAN', 'DIGITS_STD',
    'IMG_EXTENSIONS',
]


_logger = logging.getLogger(__name__)

# greyscale folders: the mean of ImageNet's channel statistics
# mean / population std of all pixels of the digits train split after the 32x32 resize (tests recompute them)
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3228,)


DIGITS_SIZE = 32
DIGITS_TRAIN_FRACTION = 0.8

ImageSize = Union[int, Tuple[int, int]]


def load_dataset(
        name_or_path: str,
        split: str = 'train',
        root: Optional[Union[str, os.PathLike]] = None,
        download: bool = False,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        image_size: Optional[ImageSize] = None,
        use_cache: bool = True,
) -> ImageSet:
    """Load a whole dataset split into memory.

    Args:
        name_or_path: ``'cifar10'``, ``'cifar100'``, ``'digits'``, ``'imagenet64'`` (the downsampled ImageNet-1K
            release's npz files under ``root``, see :mod:`timm_dd.data.imagenet_npz`; also ``'imagenet32'``,
            ``'imagenet16'``), MTT's ImageNet subsets ``'imagenette'``, ``'imagewoof'``, ``'imagemeow'``,
            ``'imagesquawk'``, ``'imagefruit'``, ``'imageyellow'`` (128x128, from ImageNet-1K or fast.ai's release
            folder under ``root``, see :mod:`timm_dd.data.imagenet_subsets`) (case-insensitive), or the path of an
            ``ImageFolder``-layout directory, a ``.zip`` of one, or a folder holding ``<split>/`` or
            ``<split>.zip``.
        split: ``'train'`` or ``'test'`` (any name for folders: picks ``<split>/`` or ``<split>.zip``; a bare
            class-folder tree or an archive given directly is used as the requested split, except that an
            archive named after a split, such as ``test.zip``, is recorded as that split).
        root: data folder for CIFAR (default ``$TIMM_DD_DATA`` or ``~/.cache/timm_dd/data``): torchvision's files
            (``root/cifar-10-batches-py``), else an image-folder/zip copy (see the module docstring).
        download: let torchvision download CIFAR into ``root`` when missing.
        cache_dir: where decoded folder/zip images are cached (default :func:`default_cache_dir`).
        image_size: resize every image to ``(size, size)`` or ``(height, width)`` (bilinear, aspect ratio not
            kept). Without it, the images of a folder/zip must all share one size.
        use_cache: read/write the decode cache (folders and archives only; CIFAR and digits need no decoding).

    Returns:
        The :class:`ImageSet`.

    Raises:
        FileNotFoundError: missing CIFAR files (with how to get them), missing path or split, empty classes.
        ValueError: unknown split, undecodable image (naming the file), images of different sizes.
    """
    size = _check_size(image_size)
    name_or_path = os.fspath(name_or_path)
    if name_or_path.startswith(HUB_DATASET_PREFIX):  # a Hub dataset repo of parquet files
        return load_parquet_images(fetch_hub_dataset(name_or_path), split, cache_dir, size, use_cache,
                                   name=name_or_path[len(HUB_DATASET_PREFIX):].split('@')[0].split('/')[-1])
    if root is not None and os.fspath(root).startswith(HUB_DATASET_PREFIX):
        root = fetch_hub_dataset(os.fspath(root))
    key = name_or_path.lower()
    if key in BUILTIN_DATASETS and os.path.sep not in name_or_path:
        if key == 'digits':
            return _load_digits(split, size)
        if key in IMAGENET_NPZ:
            if size is not None:
                raise ValueError(f'{key} comes at its own size; image_size does not apply (use imagenet32/16 for '
                                 f'smaller releases)')
            npz_root = Path(root).expanduser() if root is not None else _default_root() / key
            if (npz_root / 'train').is_dir():  # TESLA's layout: train/ and val/ folders of small images
                return load_image_tree(npz_root / ('val' if split == 'test' else split), split, cache_dir, None,
                                       use_cache, name=key)
            if is_parquet_folder(npz_root):  # a parquet copy (a Hub dataset repo)
                return load_parquet_images(npz_root, split, cache_dir, None, use_cache, name=key,
                                           file_splits=IMAGENET_TEST_FILES if split == 'test' else None)
            return load_imagenet_npz(key, split, npz_root, cache_dir, use_cache)
        if key in IMAGENET_SUBSETS:
            return load_imagenet_subset(key, split, Path(root) if root is not None else _default_root() / key,
                                        cache_dir, size, use_cache)
        return _load_cifar(key, split, root, download, size, cache_dir, use_cache)
    path = Path(name_or_path).expanduser()
    if is_parquet_folder(path):
        return load_parquet_images(path, split, cache_dir, size, use_cache)
    for name, folder in _TORCHVISION_FOLDERS.items():  # a torchvision data folder given as the dataset
        if (path / folder).is_dir() and _tree_copy(path) is None:
            return _load_cifar(name, split, path, False, size, cache_dir, use_cache)
    return load_image_tree(path, split, cache_dir, size, use_cache)


def select_ipc(
        labels: torch.Tensor,
        ipc: int,
        generator: Optional[torch.Generator] = None,
        num_classes: Optional[int] = None,
) -> torch.Tensor:
    """Pick ``ipc`` random images per class.

    Args:
        labels: int labels ``[N]``.
        ipc: images per class (>= 1).
        generator: CPU generator for the draw (``None`` = global RNG).
        num_classes: classes ``0..num_classes-1`` to select from (default ``labels.max() + 1``).

    Returns:
        int64 indices ``[num_classes * ipc]`` on the CPU: class 0's first, then class 1's, ...; ascending within
        a class.

    Raises:
        ValueError: ``ipc < 1`` or a class with fewer than ``ipc`` images.
    """
    labels = torch.as_tensor(labels).detach().cpu().long()
    if labels.ndim != 1:
        raise ValueError(f'labels must be 1-D, got shape {tuple(labels.shape)}')
    if int(ipc) != ipc or ipc < 1:
        raise ValueError(f'ipc must be a positive integer, got {ipc!r}')
    ipc = int(ipc)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < ipc:
            raise ValueError(f'class {c} has {idx.numel()} images, fewer than ipc={ipc}')
        pick = torch.randperm(idx.numel(), generator=generator)[:ipc]
        out.append(idx[pick].sort().values)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# builtin datasets

def _check_size(image_size: Optional[ImageSize]) -> Optional[Tuple[int, int]]:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f'image_size must be a positive int or (height, width), got {image_size!r}')
    return size


def _resize_float(images: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode='bilinear', align_corners=False, antialias=True).clamp_(0, 1)


def _default_root() -> Path:
    env = os.environ.get('TIMM_DD_DATA')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'timm_dd' / 'data'


_TORCHVISION_FOLDERS = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}


def _tree_copy(folder: Path) -> Optional[Path]:
    """``folder`` when it holds a train or test split as a folder or zip (an image-folder copy), else ``None``."""
    if any((folder / s).is_dir() or (folder / f'{s}.zip').is_file() for s in ('train', 'test')):
        return folder
    return None


def _find_cifar_copy(name: str, root: Path) -> Optional[Path]:
    """An image-folder/zip copy of ``name`` in ``root``: ``root`` itself, else a sub-folder whose name is the
    dataset's with any punctuation and an alphabetic suffix (``cifar10``, ``CIFAR-10``, ``cifar10-jpeg``; never
    ``cifar100`` for ``cifar10``)."""
    if not root.is_dir():
        return None
    if _tree_copy(root) is not None:
        return root
    for entry in sorted(root.iterdir()):
        squashed = ''.join(ch for ch in entry.name.lower() if ch.isalnum())
        if entry.is_dir() and squashed.startswith(name) and not squashed[len(name):len(name) + 1].isdigit():
            if _tree_copy(entry) is not None:
                return entry
    return None


def _load_cifar(
        name: str,
        split: str,
        root: Optional[Union[str, os.PathLike]],
        download: bool,
        size: Optional[Tuple[int, int]],
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        use_cache: bool = True,
) -> ImageSet:
    if split not in ('train', 'test'):
        raise ValueError(f"{name} has splits 'train' and 'test', got {split!r}")
    root = Path(root).expanduser() if root is not None else _default_root()
    tv_folder = _TORCHVISION_FOLDERS[name]
    if not (root / tv_folder).is_dir():
        copy = _find_cifar_copy(name, root)
        if copy is not None:
            return _load_cifar_copy(name, copy, split, cache_dir, size, use_cache)
    cls = tvd.CIFAR10 if name == 'cifar10' else tvd.CIFAR100
    try:
        ds = cls(str(root), train=split == 'train', download=download)
    except RuntimeError as e:
        if download:
            raise
        if (root / tv_folder).is_dir():
            raise FileNotFoundError(f"torchvision's {name} files in {root / tv_folder} are incomplete or corrupted "
                                    f"({e}); replace them, or pass --data-root DIR for another copy") from None
        raise FileNotFoundError(
            f"{name} not found under {root}: it holds neither torchvision's {tv_folder}/ nor an "
            f"image-folder/zip copy (train/ and test/ class folders, or train.zip and test.zip, in {root} or in "
            f"{root / name}). On the command line pass --data-root DIR, a folder holding torchvision's {tv_folder}/ "
            f"or such a copy, or --dataset DIR|ZIP for an image-folder copy itself; from Python, root=<folder>, or "
            f"download=True to let torchvision download it into {root}.") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float().div_(255)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == 'cifar10' else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageSet(_resize_float(images, size), torch.as_tensor(ds.targets, dtype=torch.int64),
                    list(ds.classes), ImageSpace.normalized(mean, std), name, split)


def _load_cifar_copy(
        name: str,
        folder: Path,
        split: str,
        cache_dir: Optional[Union[str, os.PathLike]],
        size: Optional[Tuple[int, int]],
        use_cache: bool,
) -> ImageSet:
    """CIFAR-10/100 from an image-folder/zip copy, checked to have the dataset's classes."""
    ds = load_image_tree(folder, split, cache_dir, size, use_cache)
    if name == 'cifar10' and tuple(ds.class_names) != CIFAR10_CLASSES:
        raise ValueError(f'{folder} holds the classes {ds.class_names}, not CIFAR-10\'s {list(CIFAR10_CLASSES)}; '
                         f'pass it as --dataset {folder} (its own classes) or point --data-root at a CIFAR-10 copy')
    if name == 'cifar100' and ds.num_classes != 100:
        raise ValueError(f'{folder} holds {ds.num_classes} classes, not CIFAR-100\'s 100; pass it as --dataset '
                         f'{folder} (its own classes) or point --data-root at a CIFAR-100 copy')
    if ds.images.shape[1] != 3:
        raise ValueError(f'{folder} holds greyscale images; {name} is RGB')
    _logger.info('%s %s read from the image-folder copy %s', name, split, folder)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == 'cifar10' else (CIFAR100_MEAN, CIFAR100_STD)
    return ImageSet(ds.images, ds.labels, ds.class_names, ImageSpace.normalized(mean, std), name, split)


def _digits_split_indices(targets: torch.Tensor, split: str) -> torch.Tensor:
    # fixed forever: per class, the first floor(80 %) of its images in scikit-learn's order are train
    keep = torch.zeros(targets.numel(), dtype=torch.bool)
    for c in range(10):
        idx = (targets == c).nonzero().flatten()
        keep[idx[:int(idx.numel() * DIGITS_TRAIN_FRACTION)]] = True
    return (keep if split == 'train' else ~keep).nonzero().flatten()


def _load_digits(split: str, size: Optional[Tuple[int, int]]) -> ImageSet:
    """scikit-learn's digits as 1x32x32 images in [0, 1].

    Pixels are divided by 16 and upsampled from 8x8 with bilinear interpolation (``align_corners=False``, to
    ``image_size`` if given, else 32x32). Split (fixed): per class, the first 80 % (rounded down) of the images
    in scikit-learn's order form ``'train'`` (1,433 images), the rest ``'test'`` (364); order is ascending
    original index. Normalization: :data:`DIGITS_MEAN` / :data:`DIGITS_STD` (train split statistics at 32x32).
    """
    if split not in ('train', 'test'):
        raise ValueError(f"digits has splits 'train' and 'test', got {split!r}")
    bunch = require('sklearn.datasets', 'demo', "the embedded 'digits' dataset").load_digits()
    targets = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx = _digits_split_indices(targets, split)
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[idx].unsqueeze(1) / 16.0
    x = F.interpolate(x, size=size or (DIGITS_SIZE, DIGITS_SIZE), mode='bilinear', align_corners=False)
    return ImageSet(x.contiguous(), targets[idx].contiguous(), [str(i) for i in range(10)],
                    ImageSpace.normalized(DIGITS_MEAN, DIGITS_STD), 'digits', split)

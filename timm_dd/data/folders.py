"""Image datasets stored as files: a directory in torchvision's ``ImageFolder`` layout, or the same inside a zip.

Class folders at the top (or inside one top-level folder of an archive); a parent folder holding ``<split>/`` or
``<split>.zip`` gives the split. Classes sort like ``ImageFolder`` (plain string sort); hidden entries (``.*``,
``__MACOSX``) are skipped. Images are decoded with PIL: to 1 channel when every image is greyscale, else RGB (alpha
dropped). Decoded tensors are cached on disk (see :mod:`timm_dd.data.cache`).
"""
import hashlib
import io
import logging
import os
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..constants import BUILTIN_DATASETS, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from ..io import available_memory, file_sha256, walk_files
from .cache import cache_key, cache_path, load_cached, save_cached_or_warn, tree_fingerprint
from .sets import ImageSet
from .space import ImageSpace

__all__ = ['load_image_tree', 'decode_images', 'check_fits_in_memory', 'IMG_EXTENSIONS', 'SPLIT_NAMES']

_logger = logging.getLogger(__name__)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLIT_NAMES = ('train', 'test', 'val', 'valid', 'validation')
_GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F')
# greyscale folders: the mean of ImageNet's channel statistics
GREY_MEAN = (0.449,)
GREY_STD = (0.226,)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _hidden(part: str) -> bool:
    return part.startswith('.') or part == '__MACOSX'


def _check_zip(path: Path, hint: str) -> None:
    if not zipfile.is_zipfile(path):
        raise ValueError(f'{path} is not a zip archive ({hint})')


def _resolve_tree(path: Path, split: str) -> Tuple[str, Path, str]:
    """``(kind, path, name)`` with kind ``'zip'`` or ``'dir'``."""
    if path.is_file():
        _check_zip(path, f'expected a dataset name {BUILTIN_DATASETS}, a folder or a .zip')
        name = path.parent.name if path.stem in SPLIT_NAMES else path.stem
        return 'zip', path, name
    if not path.is_dir():
        raise FileNotFoundError(f'no dataset {str(path)!r}: not one of {BUILTIN_DATASETS} and no such file or '
                                f'folder')
    if (path / split).is_dir():
        return 'dir', path / split, path.name
    if (path / f'{split}.zip').is_file():
        _check_zip(path / f'{split}.zip', f'the {split} split of {path} is read from it: replace it with a zip of '
                                          f'class folders of images, or remove it')
        return 'zip', path / f'{split}.zip', path.name
    found = [s for s in SPLIT_NAMES if (path / s).is_dir() or (path / f'{s}.zip').is_file()]
    if found:
        raise FileNotFoundError(f'no split {split!r} in {path} (neither {split}/ nor {split}.zip); found {found}')
    return 'dir', path, path.name


def _list_zip(zf: zipfile.ZipFile, source: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names (sorted) and, per image in label-then-path order, ``(member name, label)``."""
    members = [m.filename for m in zf.infolist() if not m.is_dir()]
    rel = [PurePosixPath(m) for m in members]
    visible = [p for p in rel if not any(_hidden(s) for s in p.parts)]
    tops = {p.parts[0] for p in visible}
    # class folders wrapped in one top-level folder: strip it
    if len(tops) == 1 and visible and all(len(p.parts) >= 3 for p in visible):
        rel = [PurePosixPath(*p.parts[1:]) if p.parts[0] in tops else p for p in rel]
    return _class_entries(rel, members, source)


def class_order(names: Iterable[str], source: Path) -> List[str]:
    """Class folder names in label order: alphabetical (torchvision's ``ImageFolder``), except that names which
    are all integers (``0`` ... ``99``, as tools write CIFAR-100 class indices) sort as numbers, so ``10`` is label 10
    and not 2. Two names of the same number (``1`` and ``01``) are ambiguous: an error."""
    names = sorted(names)
    if not names or not all(n.isdigit() for n in names):
        return names
    by_value: Dict[int, str] = {}
    for n in names:
        if int(n) in by_value:
            raise ValueError(f'{source}: class folders {by_value[int(n)]!r} and {n!r} are the same number: which label '
                             f'each gets is ambiguous; rename one')
        by_value[int(n)] = n
    return [by_value[v] for v in sorted(by_value)]


def _list_dir(root: Path, classes: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names in label order and ``(path, label)`` per image; with ``classes``, only those class folders are
    read (a subset of a large tree), labelled in the given order."""
    if classes is None:
        classes = class_order((e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name)), root)
        walks = [walk_files(root, skip=_hidden)]  # loops and doubly linked folders refused, naming the link
    else:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f'{root} has no class folders {missing}')
        walks = [walk_files(root / c, skip=_hidden) for c in classes]  # paths under root/c, relative to root below
    rel, full = [], []
    for walk in walks:
        for p in walk:
            rel.append(PurePosixPath(p.relative_to(root).as_posix()))
            full.append(str(p))
    return _class_entries(rel, full, root, list(classes), ordered=True)


def _class_entries(
        rel: List[PurePosixPath],
        keys: List[str],
        source: Path,
        all_classes: Optional[List[str]] = None,
        ordered: bool = False,
) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names and ``(key, label)`` per image; the classes sort like ``ImageFolder``'s unless ``ordered``
    (``all_classes`` is then the label order)."""
    by_class = {}
    for p, k in zip(rel, keys):
        if len(p.parts) >= 2 and not any(_hidden(s) for s in p.parts) and _is_image(p.name):
            by_class.setdefault(p.parts[0], []).append((p, k))
    classes = list(all_classes or ()) if ordered else class_order(set(by_class) | set(all_classes or ()), source)
    empty = [c for c in classes if c not in by_class]
    if empty or not classes:
        raise FileNotFoundError(f'no image files ({", ".join(IMG_EXTENSIONS)}) for the classes {empty} in '
                                f'{source}' if classes else f'no class folders with images in {source}')
    entries = []
    for label, c in enumerate(classes):
        entries.extend((k, label) for _, k in sorted(by_class[c], key=lambda e: e[0].parts))
    return classes, entries


def _decode_image(fp, size: Optional[Tuple[int, int]]) -> np.ndarray:
    with Image.open(fp) as im:
        im.load()  # decode now so truncated files fail here
        im = im.convert('L' if im.mode in _GREY_MODES else 'RGB')
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(
        items: Iterable[Tuple[str, Any]],
        count: int,
        source: Path,
        size: Optional[Tuple[int, int]],
) -> torch.Tensor:
    """uint8 ``[count, C, H, W]`` from ``items``, ``(key, image)`` pairs in order: ``image`` is a path or a file
    object PIL can open, ``key`` names it in errors.

    The tensor is allocated once, when the first image gives the size, after a check that it fits in memory, and
    filled in place (no list of arrays stacked at the end: that would need the set twice)."""
    if size is not None:  # at least one channel of the given size: refuse before decoding anything
        check_fits_in_memory(count * size[0] * size[1], source, f'{count:,} images of {size[0]}x{size[1]} pixels')
    out, first, decoded = None, None, 0
    for i, (key, image) in enumerate(items):
        if i == count:
            raise ValueError(f'{source}: more than the {count:,} images announced')
        try:
            arr = _decode_image(image, size)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise ValueError(f'cannot decode image {key!r} in {source}: {type(e).__name__}: {e}') from e
        if first is None:
            first = (key, arr.shape[:2])
            check_fits_in_memory(count * arr.size, source, f'{count:,} images of {arr.shape[2]}x{arr.shape[0]}x'
                                                           f'{arr.shape[1]}')
            out = torch.empty((count, arr.shape[2]) + arr.shape[:2], dtype=torch.uint8)
        elif arr.shape[:2] != first[1]:
            raise ValueError(
                f'images differ in size: {first[0]!r} is {first[1][1]}x{first[1][0]} but {key!r} is '
                f'{arr.shape[1]}x{arr.shape[0]} (width x height) in {source}; pass image_size= to resize all')
        if arr.shape[2] > out.shape[1]:  # the first RGB image after grey ones: the whole set becomes RGB
            out = out.expand(-1, 3, -1, -1).contiguous()
        out.numpy()[i] = np.moveaxis(arr, 2, 0)  # a grey image broadcasts to RGB
        decoded = i + 1
    if decoded != count:
        raise ValueError(f'{source}: {decoded:,} images where {count:,} were announced')
    return out if out is not None else torch.empty((0, 3, 0, 0), dtype=torch.uint8)


def check_fits_in_memory(nbytes: int, source: Path, what: str) -> None:
    """Refuse a set of ``nbytes`` (as uint8) that the machine's available memory cannot hold, before allocating it,
    with the figure it would need. Where the available memory cannot be read, nothing is refused."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(f'{source}: {what} need {nbytes / 2 ** 30:.1f} GiB of memory as uint8 pixels, but this '
                          f'machine has {available / 2 ** 30:.1f} GiB available; use a machine with more memory, a '
                          f'smaller image_size, or a subset of the folder')


def tree_stats(class_names: List[str], channels: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if channels == 1:
        return GREY_MEAN, GREY_STD
    if tuple(class_names) == CIFAR10_CLASSES:
        return CIFAR10_MEAN, CIFAR10_STD
    return IMAGENET_MEAN, IMAGENET_STD


def load_image_tree(
        path: Path,
        split: str,
        cache_dir: Optional[Union[str, os.PathLike]],
        size: Optional[Tuple[int, int]],
        use_cache: bool,
        classes: Optional[Sequence[str]] = None,
        name: Optional[str] = None,
) -> ImageSet:
    """The ``split`` of the folder or zip ``path`` as uint8 pixels (decoded once, then read from the cache).

    ``classes``: read only these class folders of a directory, labelled in this order (a subset of a large tree such
    as ImageNet's); ``name``: the set's name (default: the folder's or archive's)."""
    kind, src, tree_name = _resolve_tree(path, split)
    name = name or tree_name
    if kind == 'zip' and src == path and src.stem in SPLIT_NAMES:
        split = src.stem  # an archive named after its split ('test.zip') is that split
    if classes is not None and kind == 'zip':
        raise ValueError(f'{src}: a selection of classes is read from folders only; extract the archive')
    cache_file = None
    if use_cache:
        checksum = file_sha256(src) if kind == 'zip' else _folder_fingerprint(src, classes)
        key = cache_key(kind=kind, checksum=checksum, image_size=size,
                        **({'classes': list(classes)} if classes is not None else {}))
        cache_file = cache_path(cache_dir, name, split, key)
        cached = load_cached(cache_file)
        if cached is not None:
            images_u8, labels, class_names, _ = cached
            _logger.debug('loaded %s from cache %s', src, cache_file)
            return _tree_dataset(images_u8, labels, class_names, name, split)

    t0 = time.perf_counter()
    if kind == 'zip':
        try:
            with zipfile.ZipFile(src) as zf:
                class_names, entries = _list_zip(zf, src)
                images_u8 = decode_images(((k, io.BytesIO(zf.read(k))) for k, _ in entries), len(entries), src, size)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:  # truncated, or a damaged entry
            raise ValueError(f'{src} is a damaged zip archive ({e}): copy or download it again') from None
    else:
        class_names, entries = _list_dir(src, classes)
        images_u8 = decode_images(((k, k) for k, _ in entries), len(entries), src, size)
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    _logger.info('decoded %d images from %s in %.1f s', len(entries), src, time.perf_counter() - t0)
    if cache_file is not None:
        save_cached_or_warn(cache_file, images_u8, labels, class_names, str(src))
    return _tree_dataset(images_u8, labels, class_names, name, split)


def _folder_fingerprint(src: Path, classes: Optional[Sequence[str]]) -> str:
    """:func:`tree_fingerprint` of the folder, or of just the chosen class folders (a subset of ImageNet's 1.28
    million files need not list the rest)."""
    if classes is None:
        return tree_fingerprint(src, skip=_hidden)
    rows = [f'{c}\t{tree_fingerprint(src / c, skip=_hidden)}' for c in classes]
    return hashlib.sha256('\n'.join(rows).encode('utf-8')).hexdigest()


def _tree_dataset(
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        class_names: List[str],
        name: str,
        split: str,
) -> ImageSet:
    mean, std = tree_stats(class_names, images_u8.shape[1])
    return ImageSet(images_u8, labels, class_names, ImageSpace.normalized(mean, std), name, split)

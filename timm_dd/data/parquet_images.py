"""Image-classification datasets stored as parquet files, the layout of datasets on the Hugging Face Hub.

A folder of ``.parquet`` files (a Hub dataset repo downloaded, or files written by ``datasets``' ``to_parquet``): each
row holds an encoded image (``datasets``' ``Image`` feature: a struct of ``bytes`` and ``path``) and an integer
label. Class names come from the ``ClassLabel`` feature that ``datasets`` records in the files' schema metadata
(else the label numbers). The files of a split are those whose name starts with it (``train-00000-of-00004.parquet``)
or that lie in a folder of that name (``data/train/...``); the ``'test'`` split falls back to ``validation`` / ``val``
files, as ImageNet-style repos name their evaluation images. Images are decoded once, row group by row group, into one
preallocated uint8 set (as image folders are, :mod:`timm_dd.data.folders`), then read back from the memory-mapped
cache. ``hf://datasets/<owner>/<name>[@<revision>]`` sources are fetched by :mod:`timm_dd.hub` (parquet files and
card only) and read the same way.
"""
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .._optional import require
from .cache import cache_key, cache_path, load_cached, save_cached_or_warn
from .folders import decode_images, tree_stats
from .sets import ImageSet
from .space import ImageSpace

__all__ = ['HUB_DATASET_PREFIX', 'is_parquet_folder', 'parquet_split_files', 'load_parquet_images', 'parquet_labels',
           'parquet_class_names', 'register_hub_fetcher', 'fetch_hub_dataset', 'IMAGENET_TEST_FILES']

_logger = logging.getLogger(__name__)

#: the prefix of a Hub dataset repo given as a dataset (huggingface_hub's ``HfFileSystem`` spelling)
HUB_DATASET_PREFIX = 'hf://datasets/'
_SPLIT_FALLBACKS = {'test': ('test', 'validation', 'val', 'valid')}
#: ImageNet's labelled evaluation images are its validation split (the Hub's imagenet-1k ``test`` is unlabelled)
IMAGENET_TEST_FILES = ('validation', 'val', 'valid', 'test')
_IMAGE_NAMES = ('image', 'img', 'images', 'pixel_values')
_LABEL_NAMES = ('label', 'labels', 'fine_label', 'class', 'target')
_ROWS_PER_READ = 256

#: ``fetch(repo_id, revision) -> folder``: set by :mod:`timm_dd.hub` (which owns every Hub call) on ``import timm_dd``
_hub_fetcher: Optional[Callable[[str, Optional[str]], Path]] = None


def register_hub_fetcher(fetch: Callable[[str, Optional[str]], Path]) -> None:
    """Install the function that downloads a Hub dataset repo's parquet files (:mod:`timm_dd.hub` does)."""
    global _hub_fetcher
    _hub_fetcher = fetch


def fetch_hub_dataset(source: str) -> Path:
    """The local folder of ``hf://datasets/<owner>/<name>[@<revision>]``, downloaded (parquet files and card) once
    into the Hugging Face cache."""
    repo, _, revision = source[len(HUB_DATASET_PREFIX):].strip('/').partition('@')
    if not repo or repo.count('/') > 1:
        raise ValueError(f'{source}: expected {HUB_DATASET_PREFIX}<owner>/<name>[@<revision>]')
    if _hub_fetcher is None:
        raise RuntimeError(f'{source}: Hub datasets are fetched through timm_dd.hub: import timm_dd first')
    return _hub_fetcher(repo, revision or None)


#: where a dataset repo keeps its parquet files: at the top, one folder down (``data/``, ``train/``), or in a split
#: folder of a config (``default/train/``); an image folder is never walked through its class folders to find out
_PARQUET_GLOBS = ('*.parquet', '*/*.parquet', *(f'*/{split}/*.parquet' for split in ('train', 'test', 'validation')))


def is_parquet_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of parquet files (see :data:`_PARQUET_GLOBS`)."""
    return path.is_dir() and any(next(path.glob(pattern), None) is not None for pattern in _PARQUET_GLOBS)


def _split_of(rel: Path, split: str) -> bool:
    return (re.match(rf'{re.escape(split)}([-_.]|$)', rel.name) is not None
            or split in (p.lower() for p in rel.parts[:-1]))


def parquet_split_files(folder: Path, split: str, file_splits: Optional[Sequence[str]] = None) -> List[Path]:
    """The parquet files of ``split`` under ``folder``, sorted (shard 00000 first); ``file_splits``: the split names
    to look for in the file names, first found wins (default: ``split``, and for ``'test'`` also ``validation``)."""
    files = sorted(p for p in folder.rglob('*.parquet') if not any(s.startswith('.') for s in p.parts))
    for name in file_splits or _SPLIT_FALLBACKS.get(split, (split,)):
        chosen = [p for p in files if _split_of(p.relative_to(folder), name.lower())]
        if chosen:
            return chosen
    found = sorted({p.name.split('-')[0] for p in files})
    raise FileNotFoundError(f'no parquet files of the {split!r} split in {folder} (names starting with {split!r} or in '
                            f'a {split}/ folder); the files start with {found}')


def _features(schema: Any) -> Dict[str, Any]:
    """The ``datasets`` feature description recorded in a parquet schema (empty when another tool wrote it)."""
    meta = schema.metadata or {}
    raw = meta.get(b'huggingface')
    if raw is None:
        return {}
    try:
        return json.loads(raw).get('info', {}).get('features', {}) or {}
    except (ValueError, AttributeError):
        return {}


def _columns(schema: Any, features: Dict[str, Any], where: Path) -> Tuple[str, str]:
    """The image column and the label column of a file."""
    names = list(schema.names)
    typed = {name: (f or {}).get('_type') for name, f in features.items() if isinstance(f, dict)}
    images = [n for n in names if typed.get(n) == 'Image'] or [n for n in _IMAGE_NAMES if n in names]
    labels = [n for n in names if typed.get(n) == 'ClassLabel'] or [n for n in _LABEL_NAMES if n in names]
    if not images or not labels:
        raise ValueError(f'{where}: needs an image column and an integer label column (a datasets Image and '
                         f'ClassLabel, or columns named {_IMAGE_NAMES[0]!r} and {_LABEL_NAMES[0]!r}); it has {names}')
    return images[0], labels[0]


def _image_source(value: Any, where: str) -> Any:
    """What PIL opens for one cell of the image column: the encoded bytes (``datasets``' struct) or raw bytes."""
    data = value.get('bytes') if isinstance(value, dict) else value
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f'{where}: the image cell holds no encoded bytes (a path-only cell points at a file this '
                         f'copy does not hold); re-export the dataset with embedded images')
    return io.BytesIO(data)


def parquet_labels(files: List[Path], label_col: str) -> torch.Tensor:
    """Every row's label (the label column alone is read), checked to be labelled."""
    pq = require('pyarrow.parquet', 'hub', 'parquet datasets')
    parts = [torch.tensor(pq.read_table(p, columns=[label_col]).column(label_col).to_numpy(), dtype=torch.int64)
             for p in files]  # a copy: arrow's buffers are read-only
    labels = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f'{files[0].parent}: label {int(labels.min())} in the {label_col!r} column: this split is '
                         f'unlabelled (an ImageNet-style test split); use the validation split')
    return labels


def _rows(files: List[Path], image_col: str, keep: torch.Tensor) -> Iterator[Tuple[str, Any]]:
    """``(key, image)`` per kept row (``keep[i]``: row ``i`` of the files in order) without decoding the others."""
    pq = require('pyarrow.parquet', 'hub', 'parquet datasets')
    row = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_ROWS_PER_READ, columns=[image_col]):
            cells = batch.column(image_col)
            wanted = keep[row:row + len(cells)].nonzero().flatten().tolist()
            for j in wanted:
                key = f'{path.name} row {row + j}'
                yield key, _image_source(cells[j].as_py(), key)
            row += len(cells)


def load_parquet_images(
        folder: Union[str, os.PathLike],
        split: str,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        size: Optional[Tuple[int, int]] = None,
        use_cache: bool = True,
        name: Optional[str] = None,
        classes: Optional[Sequence[int]] = None,
        file_splits: Optional[Sequence[str]] = None,
) -> ImageSet:
    """The ``split`` of the parquet dataset in ``folder`` as uint8 pixels (see the module docstring).

    ``classes``: keep only the rows of these labels, relabelled by position (``classes[i]`` becomes label ``i``; the
    other rows are never decoded); ``name``: the set's name (default: the folder's); ``file_splits``: see
    :func:`parquet_split_files`."""
    folder = Path(folder).expanduser()
    files = parquet_split_files(folder, split, file_splits)
    image_col, label_col, class_names = _layout(files)
    name = name or folder.name
    cache_file = None
    if use_cache:
        listing = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        key = cache_key(kind='parquet', files=listing, columns=[image_col, label_col], image_size=size,
                        classes=list(classes) if classes is not None else None)
        cache_file = cache_path(cache_dir, name, split, key)
        cached = load_cached(cache_file)
        if cached is not None:
            return _as_set(cached[0], cached[1], cached[2], name, split)
    all_labels = parquet_labels(files, label_col)
    num_classes = max(len(class_names), int(all_labels.max()) + 1 if all_labels.numel() else 0)
    if class_names and len(class_names) < num_classes:
        raise ValueError(f'{folder}: labels reach {num_classes - 1} but the ClassLabel names only {len(class_names)} '
                         f'classes')
    class_names = class_names or [str(k) for k in range(num_classes)]
    keep = torch.ones_like(all_labels, dtype=torch.bool)
    labels = all_labels
    if classes is not None:
        position = torch.full((max(num_classes, max(classes) + 1),), -1, dtype=torch.int64)
        position[torch.as_tensor(list(classes))] = torch.arange(len(classes))
        keep = position[all_labels] >= 0
        labels = position[all_labels[keep]]
        class_names = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    t0 = time.perf_counter()
    images = decode_images(_rows(files, image_col, keep), int(keep.sum()), folder, size)
    _logger.info('decoded %d images from %d parquet files in %s in %.1f s', len(labels), len(files), folder,
                 time.perf_counter() - t0)
    if cache_file is not None:
        save_cached_or_warn(cache_file, images, labels, class_names, str(folder))
    return _as_set(images, labels, class_names, name, split)


def _layout(files: List[Path]) -> Tuple[str, str, List[str]]:
    """The image column, the label column and the ``ClassLabel`` names (empty when not recorded) of a split."""
    pq = require('pyarrow.parquet', 'hub', 'parquet datasets')
    schema = pq.read_schema(files[0])
    features = _features(schema)
    image_col, label_col = _columns(schema, features, files[0])
    return image_col, label_col, list((features.get(label_col) or {}).get('names') or [])


def parquet_class_names(folder: Union[str, os.PathLike], split: str,
                        file_splits: Optional[Sequence[str]] = None) -> List[str]:
    """The ``ClassLabel`` names of the parquet dataset's ``split`` (empty when the files do not record them)."""
    return _layout(parquet_split_files(Path(folder).expanduser(), split, file_splits))[2]


def _as_set(images: torch.Tensor, labels: torch.Tensor, class_names: List[str], name: str, split: str) -> ImageSet:
    mean, std = tree_stats(class_names, images.shape[1])
    return ImageSet(images, labels, class_names, ImageSpace.normalized(mean, std), name, split,
                    num_classes=len(class_names))

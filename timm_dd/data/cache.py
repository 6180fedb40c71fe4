"""On-disk cache of decoded image tensors.

Decoded images are stored as uint8 ``[N, C, H, W]`` plus int64 labels in one ``.safetensors`` file per source,
keyed by a checksum of the source (sha256 of an archive, or of a file listing for a directory) and the decode
options. Files are written atomically (temporary file in the same directory, then ``os.replace``) so a reader
never sees a partial file. Each file carries a CRC-32 of its tensors; a truncated or corrupted file is reported
as a cache miss (logged) and rebuilt by the caller.
"""
import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_write_with, walk_files

__all__ = ['CACHE_VERSION', 'default_cache_dir', 'tree_fingerprint', 'cache_key', 'load_cached',
           'save_cached']

_logger = logging.getLogger(__name__)

# bump when the decoded content for the same source changes (decode rules, layout of the file)
CACHE_VERSION = 2  # 2: class folders named by integers are labelled in numeric order

PathLike = Union[str, os.PathLike]


def default_cache_dir() -> Path:
    """``$TIMM_DD_CACHE`` if set, else ``~/.cache/timm_dd/datasets``."""
    env = os.environ.get('TIMM_DD_CACHE')
    return Path(env).expanduser() if env else Path.home() / '.cache' / 'timm_dd' / 'datasets'


def tree_fingerprint(root: PathLike, skip: Callable[[str], bool] = lambda name: False) -> str:
    """Hex sha256 of the listing (relative path, size, mtime in ns) of every file under ``root`` (names ``skip``
    accepts left out, links followed as :func:`timm_dd.io.walk_files` does).

    Cheap compared with hashing the contents; any added, removed, resized or touched file changes it.
    """
    root = Path(root)
    rows = []
    for p in walk_files(root, skip):
        st = p.stat()
        rows.append(f'{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}')
    return hashlib.sha256('\n'.join(rows).encode('utf-8')).hexdigest()


def cache_key(**fields: Any) -> str:
    """Hex sha256 of the JSON of ``fields`` plus :data:`CACHE_VERSION`."""
    blob = json.dumps({'cache_version': CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode('utf-8')).hexdigest()


def _crc32(*tensors: torch.Tensor) -> str:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().numpy(), crc)
    return f'{crc:08x}'


def save_cached(
        path: PathLike,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: List[str],
        extra: Optional[Dict[str, str]] = None,
) -> None:
    """Atomically write uint8 ``images`` ``[N, C, H, W]``, int64 ``labels`` and ``class_names`` to ``path``."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f'cached images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}')
    images = images.contiguous()
    labels = labels.to(torch.int64).contiguous()
    meta = {
        'cache_version': str(CACHE_VERSION),
        'class_names': json.dumps(list(class_names)),
        'crc32': _crc32(images, labels),
        **(extra or {}),
    }
    atomic_write_with(path, lambda tmp: save_file({'images': images, 'labels': labels}, tmp, metadata=meta))


def load_cached(path: PathLike) -> Optional[Tuple[torch.Tensor, torch.Tensor, List[str], Dict[str, str]]]:
    """Read a file written by :func:`save_cached`.

    Returns ``(images_uint8, labels, class_names, metadata)``, or ``None`` when the file is missing, unreadable,
    truncated, of another cache version, or fails its CRC (the latter cases are logged as warnings).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            images = f.get_tensor('images')
            labels = f.get_tensor('labels')
        if meta.get('cache_version') != str(CACHE_VERSION):
            _logger.warning('ignoring cache file %s of another cache version (%s)', path, meta.get('cache_version'))
            return None
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f'unexpected tensors {images.dtype} {tuple(images.shape)} / {tuple(labels.shape)}')
        if _crc32(images, labels) != meta.get('crc32'):
            raise ValueError('CRC-32 mismatch')
        class_names = json.loads(meta['class_names'])
    except Exception as e:  # safetensors raises its own error type for truncated/garbled files
        _logger.warning('cache file %s is corrupt (%s: %s); rebuilding it', path, type(e).__name__, e)
        return None
    return images, labels, class_names, meta

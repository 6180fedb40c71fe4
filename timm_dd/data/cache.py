"""On-disk cache of decoded image tensors.

Decoded images are stored as uint8 ``[N, C, H, W]`` plus int64 labels in one ``.safetensors`` file per source,
keyed by a checksum of the source (sha256 of an archive, or of a file listing for a directory) and the decode
options. The file is written straight from the tensors' memory and read back memory-mapped (copy-on-write pages of
the file, no copy in the process): safetensors' own ``save_file`` and ``get_tensor`` make a full copy each, which
would double the memory of an ImageNet-sized set. The layout is safetensors' (an 8-byte header length, the JSON
header with dtypes, shapes, offsets and the metadata, then the raw bytes), readable by any safetensors reader.
Files are written atomically (temporary file in the same directory, then ``os.replace``) so a reader
never sees a partial file. Each file carries a CRC-32 of its tensors; a truncated or corrupted file is reported
as a cache miss (logged) and rebuilt by the caller.
"""
import hashlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..io import atomic_write, walk_files

__all__ = ['CACHE_VERSION', 'default_cache_dir', 'tree_fingerprint', 'cache_key', 'cache_path', 'load_cached',
           'save_cached', 'save_cached_or_warn']

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


def cache_path(cache_dir: Optional[PathLike], name: str, split: str, key: str) -> Path:
    """The cache file of ``name``'s ``split`` under ``key`` in ``cache_dir`` (default :func:`default_cache_dir`)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    safe = ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in f'{name}-{split}')
    return folder / f'{safe}-{key[:24]}.safetensors'


def _crc32(*tensors: torch.Tensor) -> str:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().numpy(), crc)
    return f'{crc:08x}'


_DTYPES = {torch.uint8: ('U8', np.uint8), torch.int64: ('I64', np.int64)}
_NUMPY = {code: dtype for code, dtype in _DTYPES.values()}


def _write_safetensors(f: BinaryIO, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """``tensors`` (contiguous, CPU, uint8/int64) to the open file ``f`` in the safetensors layout, written from their
    own memory."""
    header: Dict[str, Any] = {'__metadata__': metadata}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {'dtype': _DTYPES[t.dtype][0], 'shape': list(t.shape), 'data_offsets': [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(',', ':')).encode('utf-8')
    blob += b' ' * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    f.write(struct.pack('<Q', len(blob)))
    f.write(blob)
    for t in tensors.values():
        f.write(t.numpy().data)


def _map_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors of a safetensors file, memory-mapped copy-on-write, and its metadata."""
    with open(path, 'rb') as f:
        length = struct.unpack('<Q', f.read(8))[0]
        if length > os.path.getsize(path):
            raise ValueError(f'header length {length} beyond the end of the file')
        header = json.loads(f.read(length))
    start, tensors = 8 + length, {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        begin, end = info['data_offsets']
        dtype = _NUMPY[info['dtype']]
        if end - begin != int(np.prod(info['shape'])) * np.dtype(dtype).itemsize:
            raise ValueError(f'tensor {name!r}: its offsets do not match its shape')
        array = np.memmap(path, dtype=dtype, mode='c', offset=start + begin, shape=tuple(info['shape']))
        tensors[name] = torch.from_numpy(array)
    return tensors, header.get('__metadata__') or {}


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
    with atomic_write(path) as f:
        _write_safetensors(f, {'images': images, 'labels': labels}, meta)


def save_cached_or_warn(path: PathLike, images: torch.Tensor, labels: torch.Tensor, class_names: List[str],
                        source: str) -> None:
    """:func:`save_cached`, logging a failure to write (a read-only cache must not stop loading)."""
    try:
        save_cached(path, images, labels, class_names, {'source': source})
    except OSError as e:
        _logger.warning('could not write cache file %s: %s', path, e)


def load_cached(path: PathLike) -> Optional[Tuple[torch.Tensor, torch.Tensor, List[str], Dict[str, str]]]:
    """Read a file written by :func:`save_cached`.

    Returns ``(images_uint8, labels, class_names, metadata)``, the images memory-mapped from the file, or ``None``
    when the file is missing, unreadable, truncated, of another cache version, or fails its CRC (the latter cases are
    logged as warnings).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        tensors, meta = _map_safetensors(path)
        images, labels = tensors['images'], tensors['labels'].clone()
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

"""The folder format of a distilled set: file names, format version, checksums, reading and writing the files.

A set is a folder, the same locally and in a Hub dataset repo:

* ``distilled.safetensors`` -- ``images [N, C, H, W]`` (float32/fp16/bf16, in ``image_space``), ``labels [N]``
  int64, optional ``soft_labels [N, K]`` and learned ``lr`` (0-d float32); one header key repeats the format.
* ``distill_config.json`` -- machine-readable metadata, authoritative over the card; includes the sha256 of
  each tensor file so silent corruption is caught on load. Its ``image_size`` is ``[C, H, W]`` (format version 1).
* ``README.md`` -- dataset card (standard YAML keys only, description, metadata and eval tables, usage).
* ``zca.safetensors`` -- ``mean_vector``, ``transform_matrix``, ``transform_inv`` when ``image_space='zca'``.

This module knows files, not sets: :class:`~timm_dd.distilled.DistilledSet` turns itself into the pieces
written here and is built from the pieces read here.
"""
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..data.zca import ZCA, ZCA_KEYS
from ..io import atomic_folder, atomic_write, check_replaceable, file_sha256
from ..version import __version__
from .parquet import PARQUET_FILE

__all__ = [
    'DistilledSetError', 'DISTILLED_FILE', 'CONFIG_FILE', 'ZCA_FILE', 'CARD_FILE', 'FORMAT_NAME', 'FORMAT_VERSION',
    'SAFETENSORS_HEADER_KEY', 'write_set_folder', 'read_set_folder', 'file_of_field',
]

_logger = logging.getLogger(__name__)

DISTILLED_FILE = 'distilled.safetensors'
CONFIG_FILE = 'distill_config.json'
ZCA_FILE = 'zca.safetensors'
CARD_FILE = 'README.md'
# every file a saved set can consist of: a folder holding anything else is not replaced (it holds a user's files)
SET_FILES = (DISTILLED_FILE, CONFIG_FILE, ZCA_FILE, CARD_FILE, PARQUET_FILE)
FORMAT_NAME = 'timm_dd.distilled'
FORMAT_VERSION = 1
SAFETENSORS_HEADER_KEY = 'timm_dd'
_REQUIRED_CONFIG_KEYS = ('format', 'format_version', 'method', 'num_classes', 'image_size', 'image_space')
_TENSOR_NAMES = ('images', 'labels', 'soft_labels', 'lr')
# which file a validation problem belongs to, by field name
_FIELD_FILES = {'images': DISTILLED_FILE, 'labels': DISTILLED_FILE, 'soft_labels': DISTILLED_FILE,
                'lr': DISTILLED_FILE, 'zca': ZCA_FILE}


class DistilledSetError(ValueError):
    """An invalid distilled set, or a folder that does not hold a valid one.

    ``field`` names the offending :class:`~timm_dd.distilled.DistilledSet` field when known.
    """

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


def file_of_field(field: Optional[str]) -> str:
    """The file of a set's folder that holds ``field``."""
    return _FIELD_FILES.get(field, CONFIG_FILE)


def safetensors_header(**values: Any) -> Dict[str, str]:
    # ONE header key holding sorted JSON: safetensors writes several keys in a random order, which would make
    # identical sets differ byte-wise (and re-uploads to the Hub never be no-ops)
    header = {'format': FORMAT_NAME, 'format_version': str(FORMAT_VERSION), **{k: str(v) if not isinstance(v, str)
                                                                               else v for k, v in values.items()}}
    return {SAFETENSORS_HEADER_KEY: json.dumps(header, sort_keys=True)}


# writing

def _write_tensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    with atomic_write(path) as f:  # inside a temporary folder: atomic_write adds the fsync
        f.write(_safetensors_bytes(tensors, metadata))


def _safetensors_bytes(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> bytes:
    return save(tensors, metadata=metadata)


def write_set_folder(
        folder: Path,
        tensors: Dict[str, torch.Tensor],
        header: Dict[str, str],
        config: Dict[str, Any],
        card: Any,
        zca: Optional[ZCA] = None,
        extra_files: Any = None,
) -> Path:
    """Write a set's files into ``folder`` atomically (a temporary sibling renamed into place).

    ``card(parquet_file)`` renders the README; ``extra_files(tmp) -> parquet file name or None`` writes optional
    views first. An existing ``folder`` is replaced only if it is empty or holds a distilled set.
    """
    check_replaceable(folder, SET_FILES, 'distilled set')
    with atomic_folder(folder) as tmp:
        checksums = {}
        _write_tensors(tensors, tmp / DISTILLED_FILE, header)
        checksums[DISTILLED_FILE] = file_sha256(tmp / DISTILLED_FILE)
        if zca is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in zca.state_dict().items()}
            meta = json.loads(header[SAFETENSORS_HEADER_KEY])
            _write_tensors(state, tmp / ZCA_FILE, safetensors_header(**{**meta, 'eps': repr(zca.eps)}))
            checksums[ZCA_FILE] = file_sha256(tmp / ZCA_FILE)
        with atomic_write(tmp / CONFIG_FILE, 'w') as f:
            f.write(json.dumps({**config, 'sha256': checksums}, indent=2, allow_nan=False) + '\n')
        parquet_file = extra_files(tmp) if extra_files is not None else None
        with atomic_write(tmp / CARD_FILE, 'w') as f:
            f.write(card(parquet_file))
    return folder


# reading

def _read_safetensors(path: Path, device: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    if not path.is_file():
        raise DistilledSetError(f'{path}: file not found')
    try:
        with safe_open(str(path), framework='pt', device=device) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError, OSError, ... for damaged files
        raise DistilledSetError(f'{path}: cannot read safetensors file (truncated or corrupt?): {e}') from e
    _check_header(path, metadata)
    return tensors, metadata


def _check_header(path: Path, metadata: Mapping[str, str]) -> None:
    try:
        metadata = json.loads(metadata.get(SAFETENSORS_HEADER_KEY, '{}'))
    except json.JSONDecodeError as e:
        raise DistilledSetError(f'{path}: unreadable {SAFETENSORS_HEADER_KEY!r} header: {e}') from e
    fmt = metadata.get('format')
    if fmt is not None and fmt != FORMAT_NAME:
        raise DistilledSetError(f'{path}: header format is {fmt!r}, expected {FORMAT_NAME!r}')
    ver = metadata.get('format_version')
    if ver is not None and ver != str(FORMAT_VERSION):
        raise DistilledSetError(f'{path}: header format_version is {ver!r}; this timm_dd reads {FORMAT_VERSION}')


def _read_config(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        experts = [p for pattern in ('expert_*.safetensors', 'replay_buffer_*', 'buffer_config.json')
                   for p in path.parent.glob(pattern)]
        if experts:
            raise DistilledSetError(f'{path.parent} holds expert trajectories ({experts[0].name}, ...), not a '
                                    f'distilled set: pass it to `distill.py distill --experts`, and a set (a folder '
                                    f'with {CONFIG_FILE}) to --data')
        raise DistilledSetError(f'{path}: file not found')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistilledSetError(f'{path}: not valid JSON: {e}') from e
    if not isinstance(config, dict):
        raise DistilledSetError(f'{path}: expected a JSON object, got {type(config).__name__}')
    if config.get('format') != FORMAT_NAME:
        raise DistilledSetError(f'{path}: unknown format {config.get("format")!r}, expected {FORMAT_NAME!r}')
    ver = config.get('format_version')
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise DistilledSetError(f'{path}: invalid format_version {ver!r}')
    if ver > FORMAT_VERSION:
        raise DistilledSetError(
            f'{path}: format_version {ver} is newer than this timm_dd {__version__} supports ({FORMAT_VERSION}); '
            f'upgrade timm_dd')
    if ver != FORMAT_VERSION:
        raise DistilledSetError(f'{path}: unsupported format_version {ver} (supported: {FORMAT_VERSION})')
    missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise DistilledSetError(f'{path}: missing keys {missing}')
    return config


def _check_tensors(path: Path, tensors: Dict[str, torch.Tensor], config: Dict[str, Any]) -> None:
    """The tensors the config announces, no more and no fewer, of the announced size."""
    for key in ('images', 'labels'):
        if key not in tensors:
            raise DistilledSetError(f'{path}: missing tensor {key!r} (has {sorted(tensors)})')
    soft, lr = config.get('label_type', 'hard') in ('soft', 'learned'), config.get('learned_lr', False)
    if soft and 'soft_labels' not in tensors:
        raise DistilledSetError(f'{path}: missing tensor \'soft_labels\' ({CONFIG_FILE} says label_type soft)')
    if lr and 'lr' not in tensors:
        raise DistilledSetError(f'{path}: missing tensor \'lr\' ({CONFIG_FILE} says learned_lr true)')
    if not soft and 'soft_labels' in tensors:
        raise DistilledSetError(f'{path}: has soft_labels but {CONFIG_FILE} says label_type hard')
    if not lr and 'lr' in tensors:
        raise DistilledSetError(f'{path}: has lr but {CONFIG_FILE} says learned_lr false')
    unknown = sorted(set(tensors) - set(_TENSOR_NAMES))
    if unknown:
        _logger.warning(f'{path}: ignoring unknown tensors {unknown}')
    images = tensors['images']
    if list(images.shape[1:]) != config['image_size']:
        raise DistilledSetError(f'{path}: images have size {list(images.shape[1:])} but {CONFIG_FILE} says '
                                f'image_size {config["image_size"]}')
    if 'num_images' in config and images.shape[0] != config['num_images']:
        raise DistilledSetError(f'{path}: {images.shape[0]} images but {CONFIG_FILE} says num_images '
                                f'{config["num_images"]}')


def _read_zca(folder: Path, config: Dict[str, Any], images: torch.Tensor, device: str) -> Optional[ZCA]:
    zca_cfg = config.get('zca')
    if zca_cfg is None:
        return None
    eps = zca_cfg.get('eps') if isinstance(zca_cfg, dict) else None
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise DistilledSetError(f'{folder / CONFIG_FILE}: zca must be {{"eps": <float>, "file": "{ZCA_FILE}"}} or null')
    path = folder / zca_cfg.get('file', ZCA_FILE)
    state, _ = _read_safetensors(path, device)
    missing = [k for k in ZCA_KEYS if k not in state]
    if missing:
        raise DistilledSetError(f'{path}: missing tensors {missing}')
    d = images[0].numel()
    for k, shape in {'mean_vector': (1, d), 'transform_matrix': (d, d), 'transform_inv': (d, d)}.items():
        if tuple(state[k].shape) != shape:
            raise DistilledSetError(f'{path}: {k} has shape {tuple(state[k].shape)}, expected {shape} for images of '
                                    f'size {list(images.shape[1:])}')
    try:
        return ZCA.from_state_dict(state, eps=eps)
    except (ValueError, KeyError, TypeError) as e:
        raise DistilledSetError(f'{path}: invalid ZCA state: {e}') from e


def verify_checksums(folder: Path, config: Dict[str, Any], strict: bool = False) -> List[str]:
    """Compare the files' sha256 with those recorded in the config; returns notes on files that have none.

    A mismatch is always an error. A set file without a recorded digest (a set edited by hand, its ``sha256`` entry
    deleted) cannot be verified: a note (logged, and carried into results by the caller), or an error when
    ``strict``.
    """
    recorded = config.get('sha256') or {}
    if not isinstance(recorded, dict):
        raise DistilledSetError(f'{folder / CONFIG_FILE}: sha256 must be a mapping of file name to digest')
    for name, digest in recorded.items():
        path = folder / name
        if path.is_file() and file_sha256(path) != digest:
            raise DistilledSetError(
                f'{path}: sha256 differs from the one recorded in {CONFIG_FILE}; the file was modified or '
                f'corrupted after saving (load with verify=False to skip this check)')
    files = [DISTILLED_FILE] + ([ZCA_FILE] if config.get('zca') else [])
    notes = [f'{folder / name} has no sha256 in {CONFIG_FILE}: its content cannot be verified (it may have been '
             f'changed after saving)' for name in files if name not in recorded]
    if notes and strict:
        raise DistilledSetError(f'{notes[0]}; strict loading (--strict) refuses unverifiable sets: save the set '
                                f'again with timm_dd, or load it without --strict')
    for note in notes:
        _logger.warning(note)
    return notes


def read_set_folder(folder: Path, device: str = 'cpu') -> Tuple[Dict[str, Any], Dict[str, torch.Tensor],
                                                                 Optional[ZCA]]:
    """``(config, tensors, zca)`` of the set in ``folder``, structurally checked (values are checked by the set)."""
    if not folder.is_dir():
        raise DistilledSetError(f'{folder}: distilled set folder not found')
    config = _read_config(folder / CONFIG_FILE)
    tensors, _ = _read_safetensors(folder / DISTILLED_FILE, device)
    _check_tensors(folder / DISTILLED_FILE, tensors, config)
    return config, tensors, _read_zca(folder, config, tensors['images'], device)

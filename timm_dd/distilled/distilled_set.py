"""A distilled (synthetic) training set and its on-disk format.

A set is a folder (``ecosystem.md`` §3.3), the same locally and in a Hub dataset repo:

* ``distilled.safetensors`` -- ``images [N, C, H, W]`` (float32/fp16/bf16, in ``image_space``), ``labels [N]``
  int64, optional ``soft_labels [N, K]`` and learned ``lr`` (0-d float32); header metadata repeats the format.
* ``distill_config.json`` -- machine-readable metadata, authoritative over the card; includes the sha256 of
  each tensor file so silent corruption is caught on load.
* ``README.md`` -- dataset card (standard YAML keys only, description, metadata and eval tables, usage).
* ``zca.safetensors`` -- ``mean_vector``, ``transform_matrix``, ``transform_inv`` when ``image_space='zca'``.

Saving is atomic: everything is written to a temporary sibling folder that is then renamed into place.
Loading validates structure and values and raises :class:`DistilledSetError` naming the file and problem.
"""
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_folder

from ..data.zca import ZCA, ZCA_KEYS
from ..version import __version__

__all__ = [
    'DistilledSet', 'DistilledSetError', 'load_distilled_folder', 'DISTILLED_FILE', 'CONFIG_FILE', 'ZCA_FILE',
    'CARD_FILE', 'FORMAT_NAME', 'FORMAT_VERSION', 'IMAGE_SPACES', 'SOFT_LABEL_KINDS',
]

_logger = logging.getLogger(__name__)

DISTILLED_FILE = 'distilled.safetensors'
CONFIG_FILE = 'distill_config.json'
ZCA_FILE = 'zca.safetensors'
CARD_FILE = 'README.md'
FORMAT_NAME = 'timm_dd.distilled'
FORMAT_VERSION = 1

IMAGE_SPACES = ('normalized', 'zca', 'pixel')
SOFT_LABEL_KINDS = ('logits', 'probs')
_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_REQUIRED_CONFIG_KEYS = ('format', 'format_version', 'method', 'num_classes', 'image_size', 'image_space')
# which file a validation problem belongs to, by field name
_FIELD_FILES = {'images': DISTILLED_FILE, 'labels': DISTILLED_FILE, 'soft_labels': DISTILLED_FILE,
                'lr': DISTILLED_FILE, 'zca': ZCA_FILE}


class DistilledSetError(ValueError):
    """An invalid distilled set, or a folder that does not hold a valid one.

    ``field`` names the offending :class:`DistilledSet` field when known.
    """

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


def _fail(field_name: Optional[str], message: str) -> None:
    raise DistilledSetError(message, field=field_name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


@dataclass(eq=False)
class DistilledSet:
    """Distilled images with their labels, optional soft labels / learned LR / ZCA, and metadata.

    Validated on construction (:meth:`validate`), so an invalid set can be neither built nor saved.
    Inferred when left ``None``: ``num_classes`` (from ``class_names``, soft-label width, or ``labels.max() + 1``),
    ``ipc`` (when every class has the same number of images), ``image_space`` ('zca' if ``zca`` is given,
    'normalized' if ``normalization`` is given, else 'pixel') and ``soft_label_kind`` ('logits').

    Args:
        images: ``[N, C, H, W]`` float32 (fp16/bf16/fp64 kept as is), in the space named by ``image_space``.
        labels: ``[N]`` hard labels in ``[0, num_classes)``; integer tensors are converted to int64.
        method: Distillation method, e.g. 'MTT', 'ATT', 'DM', 'real'.
        source_dataset: Dataset the set was distilled from, e.g. 'cifar10'.
        num_classes: Number of classes.
        class_names: Class names, ``num_classes`` of them.
        ipc: Images per class.
        image_space: 'normalized' (``(pixel - mean) / std``), 'zca' (ZCA of pixels, or of normalized pixels
            when ``normalization`` is also given) or 'pixel' (in [0, 1]).
        normalization: ``{'mean': [C floats], 'std': [C floats]}`` that was applied to pixels, or ``None``.
        soft_labels: ``[N, num_classes]`` logits or probabilities.
        soft_label_kind: 'logits' or 'probs'.
        soft_label_temperature: Temperature the soft labels are meant to be used with.
        lr: Learned learning rate (MTT/TESLA), stored as a 0-d float32 tensor.
        zca: The ZCA transform when ``image_space='zca'``.
        distill_arch: Architecture used for distillation, e.g. 'convnet3'.
        seed: Random seed of the distillation run.
        license: License identifier for the card (``None`` -> 'unknown').
        library_version: timm_dd version that created the set.
        eval_results: List of dicts, e.g. ``{'arch', 'top1_mean', 'top1_std', 'num_eval', 'protocol'}``.
        extra: Free JSON-serializable dict (hyper-parameters and the like).
    """
    images: torch.Tensor
    labels: torch.Tensor
    method: str = 'unknown'
    source_dataset: str = 'unknown'
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    ipc: Optional[int] = None
    image_space: Optional[str] = None
    normalization: Optional[Dict[str, List[float]]] = None
    soft_labels: Optional[torch.Tensor] = None
    soft_label_kind: Optional[str] = None
    soft_label_temperature: Optional[float] = None
    lr: Optional[Union[float, torch.Tensor]] = None
    zca: Optional[ZCA] = None
    distill_arch: Optional[str] = None
    seed: Optional[int] = None
    license: Optional[str] = None
    library_version: str = __version__
    eval_results: List[Dict[str, Any]] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.labels, (list, tuple)):
            self.labels = torch.tensor(self.labels, dtype=torch.int64)
        if isinstance(self.labels, torch.Tensor) and self.labels.dtype != torch.int64 \
                and not self.labels.is_floating_point() and not self.labels.is_complex() \
                and self.labels.dtype != torch.bool:
            self.labels = self.labels.to(torch.int64)
        if self.lr is not None:
            if _is_number(self.lr):
                self.lr = torch.tensor(float(self.lr), dtype=torch.float32)
            elif isinstance(self.lr, torch.Tensor) and self.lr.numel() == 1 and self.lr.is_floating_point():
                self.lr = self.lr.detach().reshape(()).to(torch.float32)
        if self.image_space is None:
            self.image_space = 'zca' if self.zca is not None else 'normalized' if self.normalization else 'pixel'
        elif self.image_space == 'pixel01':
            self.image_space = 'pixel'
        if self.normalization is not None and isinstance(self.normalization, Mapping):
            self.normalization = {
                k: [float(v) if _is_number(v) or isinstance(v, torch.Tensor) else v for v in vs]
                if isinstance(vs, (list, tuple, torch.Tensor)) else vs
                for k, vs in self.normalization.items()}
        if self.class_names is not None and isinstance(self.class_names, (list, tuple)):
            self.class_names = list(self.class_names)
        if self.soft_labels is not None and self.soft_label_kind is None:
            self.soft_label_kind = 'logits'
        if self.num_classes is None:
            self.num_classes = self._infer_num_classes()
        self.validate()
        if self.ipc is None:
            counts = torch.bincount(self.labels.detach().cpu(), minlength=self.num_classes)
            if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
                self.ipc = int(counts[0])

    def _infer_num_classes(self) -> Optional[int]:
        if isinstance(self.class_names, list):
            return len(self.class_names)
        if isinstance(self.soft_labels, torch.Tensor) and self.soft_labels.dim() == 2:
            return self.soft_labels.shape[1]
        if isinstance(self.labels, torch.Tensor) and self.labels.dtype == torch.int64 and self.labels.numel():
            return int(self.labels.max()) + 1
        return None

    def __repr__(self) -> str:
        dtype = str(self.images.dtype).replace('torch.', '') if isinstance(self.images, torch.Tensor) else '?'
        shape = list(self.images.shape) if isinstance(self.images, torch.Tensor) else '?'
        parts = [f'method={self.method!r}', f'source_dataset={self.source_dataset!r}', f'images={shape} {dtype}',
                 f'num_classes={self.num_classes}', f'ipc={self.ipc}', f'image_space={self.image_space!r}',
                 f'labels={self.label_type}']
        if self.lr is not None:
            parts.append(f'lr={float(self.lr):.4g}')
        if self.zca is not None:
            parts.append(f'zca_eps={self.zca.eps}')
        return f'{self.__class__.__name__}({", ".join(parts)})'

    # properties

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> Tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])

    @property
    def label_type(self) -> str:
        return 'soft' if self.soft_labels is not None else 'hard'

    # validation

    def validate(self) -> None:
        """Check every field; raises :class:`DistilledSetError` (its ``field`` names the culprit)."""
        x = self.images
        if not isinstance(x, torch.Tensor):
            _fail('images', f'images must be a torch.Tensor, got {type(x).__name__}')
        if x.dim() != 4:
            _fail('images', f'images must be 4-D [N, C, H, W], got shape {tuple(x.shape)}')
        if x.dtype not in _IMAGE_DTYPES:
            _fail('images', f'images must be float32, float16, bfloat16 or float64, got {x.dtype}')
        if x.shape[0] < 1 or x[0].numel() == 0:
            _fail('images', f'images must be non-empty, got shape {tuple(x.shape)}')
        if not _all_finite(x):
            _fail('images', 'images contain NaN or Inf values')
        n, c = x.shape[:2]

        if not _is_int(self.num_classes) or self.num_classes < 1:
            _fail('num_classes', f'num_classes must be a positive int, got {self.num_classes!r}')
        k = self.num_classes
        y = self.labels
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
            _fail('labels', f'labels must be an int64 tensor, got {getattr(y, "dtype", type(y).__name__)}')
        if tuple(y.shape) != (n,):
            _fail('labels', f'labels must have shape [{n}] (one per image), got {tuple(y.shape)}')
        if int(y.min()) < 0 or int(y.max()) >= k:
            _fail('labels', f'labels must lie in [0, {k}) (num_classes={k}), '
                            f'got range [{int(y.min())}, {int(y.max())}]')
        if self.class_names is not None:
            if not isinstance(self.class_names, list) or not all(isinstance(s, str) for s in self.class_names):
                _fail('class_names', 'class_names must be a list of str')
            if len(self.class_names) != k:
                _fail('class_names', f'class_names has {len(self.class_names)} entries but num_classes is {k}')
        if self.ipc is not None and (not _is_int(self.ipc) or self.ipc < 1):
            _fail('ipc', f'ipc must be a positive int or None, got {self.ipc!r}')

        s = self.soft_labels
        if s is not None:
            if not isinstance(s, torch.Tensor) or not s.is_floating_point():
                _fail('soft_labels', f'soft_labels must be a floating point tensor, got {getattr(s, "dtype", s)}')
            if tuple(s.shape) != (n, k):
                _fail('soft_labels', f'soft_labels must have shape [{n}, {k}] (images x classes), '
                                     f'got {tuple(s.shape)}')
            if not _all_finite(s):
                _fail('soft_labels', 'soft_labels contain NaN or Inf values')
            if self.soft_label_kind not in SOFT_LABEL_KINDS:
                _fail('soft_label_kind',
                      f'soft_label_kind must be one of {SOFT_LABEL_KINDS}, got {self.soft_label_kind!r}')
            if self.soft_label_kind == 'probs':
                p = s.detach().float()
                if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-2):
                    _fail('soft_labels', "soft_labels of kind 'probs' must be non-negative rows summing to 1")
        elif self.soft_label_kind is not None or self.soft_label_temperature is not None:
            _fail('soft_labels', 'soft_label_kind / soft_label_temperature given without soft_labels')
        t = self.soft_label_temperature
        if t is not None and (not _is_number(t) or not math.isfinite(t) or t <= 0):
            _fail('soft_label_temperature', f'soft_label_temperature must be a positive number, got {t!r}')

        lr = self.lr
        if lr is not None:
            if not isinstance(lr, torch.Tensor) or lr.shape != () or lr.dtype != torch.float32:
                _fail('lr', f'lr must be a number or a 1-element float tensor, got {lr!r}')
            if not _all_finite(lr):
                _fail('lr', 'lr is NaN or Inf')
            if float(lr) <= 0:
                _fail('lr', f'learned lr must be positive, got {float(lr)}')

        if self.image_space not in IMAGE_SPACES:
            _fail('image_space', f'image_space must be one of {IMAGE_SPACES}, got {self.image_space!r}')
        norm = self.normalization
        if norm is not None:
            if not isinstance(norm, dict) or set(norm) != {'mean', 'std'}:
                _fail('normalization', f"normalization must be {{'mean': [...], 'std': [...]}}, got {norm!r}")
            for key in ('mean', 'std'):
                v = norm[key]
                if not isinstance(v, list) or len(v) != c or not all(_is_number(a) and math.isfinite(a) for a in v):
                    _fail('normalization',
                          f'normalization[{key!r}] must be {c} finite numbers (one per channel), got {v!r}')
            if any(a <= 0 for a in norm['std']):
                _fail('normalization', f'normalization std must be positive, got {norm["std"]}')
        if self.image_space == 'normalized' and norm is None:
            _fail('normalization', "image_space='normalized' needs normalization={'mean': [...], 'std': [...]}")
        if self.image_space == 'pixel' and norm is not None:
            _fail('normalization', "image_space='pixel' must not have a normalization (images are in [0, 1])")
        z = self.zca
        if self.image_space == 'zca':
            if not isinstance(z, ZCA):
                _fail('zca', f"image_space='zca' needs a ZCA transform, got {type(z).__name__}")
            d = x[0].numel()
            if z.dim != d:
                _fail('zca', f'ZCA has {z.dim} features but images have C*H*W = {d}')
            if z.transform_inv is None:
                _fail('zca', 'ZCA has no transform_inv (fit with compute_inv=True); it is needed to recover pixels')
        elif z is not None:
            _fail('zca', f"a ZCA transform is given but image_space is {self.image_space!r}, not 'zca'")

        for name in ('method', 'source_dataset', 'library_version'):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                _fail(name, f'{name} must be a non-empty str, got {v!r}')
        for name in ('distill_arch', 'license'):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                _fail(name, f'{name} must be a str or None, got {v!r}')
        if self.seed is not None and not _is_int(self.seed):
            _fail('seed', f'seed must be an int or None, got {self.seed!r}')
        if not isinstance(self.eval_results, list) or not all(isinstance(r, dict) for r in self.eval_results):
            _fail('eval_results', 'eval_results must be a list of dicts')
        if not isinstance(self.extra, dict):
            _fail('extra', f'extra must be a dict, got {type(self.extra).__name__}')
        for name in ('eval_results', 'extra'):
            try:
                json.dumps(getattr(self, name), allow_nan=False)
            except (TypeError, ValueError) as e:
                _fail(name, f'{name} must be JSON-serializable without NaN/Inf: {e}')

    # pixel space

    def to_pixel_space(self, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Map ``images`` (default: the set's) to pixel space, nominally [0, 1]; float32, not clipped.

        Inverse ZCA for 'zca', de-normalization for 'normalized' (and after inverse ZCA when both apply),
        identity for 'pixel'. Differentiable.
        """
        x = self.images if images is None else images
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_size:
            size = ', '.join(map(str, self.image_size))
            raise ValueError(f'images must have shape [N, {size}], got {tuple(x.shape)}')
        x = x.float()
        if self.image_space == 'zca':
            x = self.zca.inverse_transform(x)
        if self.normalization is not None:
            mean = torch.tensor(self.normalization['mean'], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.normalization['std'], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = x * std + mean
        return x

    # serialization

    def to_config(self) -> Dict[str, Any]:
        """The ``distill_config.json`` content (without checksums)."""
        return {
            'format': FORMAT_NAME,
            'format_version': FORMAT_VERSION,
            'library_version': self.library_version,
            'method': self.method,
            'source_dataset': self.source_dataset,
            'num_classes': self.num_classes,
            'class_names': self.class_names,
            'ipc': self.ipc,
            'num_images': self.num_images,
            'image_size': list(self.image_size),
            'image_dtype': str(self.images.dtype).replace('torch.', ''),
            'image_space': self.image_space,
            'normalization': self.normalization,
            'zca': None if self.zca is None else {'eps': self.zca.eps, 'file': ZCA_FILE},
            'label_type': self.label_type,
            'soft_label_kind': self.soft_label_kind,
            'soft_label_temperature': self.soft_label_temperature,
            'learned_lr': self.lr is not None,
            'distill_arch': self.distill_arch,
            'seed': self.seed,
            'license': self.license,
            'eval': self.eval_results,
            'extra': self.extra,
        }

    def _safetensors_metadata(self, **extra: str) -> Dict[str, str]:
        # ONE header key holding sorted JSON: safetensors writes several keys in a random order, which would make
        # identical sets differ byte-wise (and re-uploads to the Hub never be no-ops)
        header = {
            'format': FORMAT_NAME, 'format_version': str(FORMAT_VERSION), 'method': self.method,
            'source_dataset': self.source_dataset, 'ipc': str(self.ipc), 'num_classes': str(self.num_classes),
            'image_space': self.image_space, **extra,
        }
        return {SAFETENSORS_HEADER_KEY: json.dumps(header, sort_keys=True)}

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The tensors of ``distilled.safetensors`` (detached, contiguous, on CPU)."""
        out = {'images': self.images, 'labels': self.labels}
        if self.soft_labels is not None:
            out['soft_labels'] = self.soft_labels
        if self.lr is not None:
            out['lr'] = self.lr
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def to_card(self, repo_id: Optional[str] = None, parquet_file: Optional[str] = None) -> str:
        """The dataset card (``README.md``); ``repo_id`` is shown in the usage snippet."""
        from .card import render_card
        return render_card(self, repo_id, parquet_file)

    def save(self, folder: Union[str, os.PathLike], overwrite: bool = True, repo_id: Optional[str] = None,
             parquet_view: bool = False) -> Path:
        """Write the set to ``folder`` atomically and return its path.

        Files go to a temporary sibling folder that is renamed into place. An existing ``folder`` is replaced
        only if it is empty or holds a distilled set (has ``distill_config.json``): it is renamed aside, the new
        folder is moved in, then the old one is deleted (its other files, if any, go with it).

        Args:
            folder: Target folder.
            overwrite: Replace an existing set; ``False`` raises ``FileExistsError`` instead.
            repo_id: Name shown in the card's usage snippet (default: ``folder`` as given).
            parquet_view: Also write the parquet view for ``datasets`` / the Hub's viewer (needs ``datasets``).
        """
        self.validate()
        folder = Path(folder)
        if folder.exists():
            if not folder.is_dir():
                raise FileExistsError(f'{folder} exists and is not a folder')
            if not overwrite:
                raise FileExistsError(f'{folder} exists (pass overwrite=True to replace it)')
            if any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
                raise FileExistsError(f'{folder} is a non-empty folder without {CONFIG_FILE}; refusing to replace it')
        with atomic_folder(folder) as tmp:
            self._write_files(tmp, repo_id=str(folder) if repo_id is None else repo_id, parquet_view=parquet_view)
        _logger.info(f'saved distilled set ({self.num_images} images, {self.method}) to {folder}')
        return folder

    def _write_files(self, folder: Path, repo_id: str, parquet_view: bool = False) -> None:
        checksums = {}
        meta = self._safetensors_metadata()
        _write_tensors(self.tensors(), folder / DISTILLED_FILE, meta)
        checksums[DISTILLED_FILE] = _sha256(folder / DISTILLED_FILE)
        if self.zca is not None:
            zca_state = {k: v.detach().cpu().contiguous() for k, v in self.zca.state_dict().items()}
            _write_tensors(zca_state, folder / ZCA_FILE, self._safetensors_metadata(eps=repr(self.zca.eps)))
            checksums[ZCA_FILE] = _sha256(folder / ZCA_FILE)
        config = self.to_config()
        config['sha256'] = checksums
        _write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, allow_nan=False) + '\n')
        parquet_file = None
        if parquet_view:
            from .parquet import PARQUET_FILE, write_parquet_view
            write_parquet_view(self, folder)
            parquet_file = PARQUET_FILE
        _write_text(folder / CARD_FILE, self.to_card(repo_id, parquet_file))

    @classmethod
    def load(cls, folder: Union[str, os.PathLike], verify: bool = True, device: str = 'cpu') -> 'DistilledSet':
        """Load and validate a set saved by :meth:`save`.

        Args:
            folder: The set's folder.
            verify: Check the files' sha256 against ``distill_config.json`` (when recorded).
            device: Device for the tensors.

        Raises:
            DistilledSetError: Missing/corrupt files or keys, inconsistent shapes, invalid values, unknown format.
        """
        return _load_folder(cls, Path(folder), verify=verify, device=device)


def load_distilled_folder(
        folder: Union[str, os.PathLike],
        verify: bool = True,
        device: str = 'cpu',
) -> DistilledSet:
    """Load and validate the distilled set in ``folder`` (see :meth:`DistilledSet.load`)."""
    return DistilledSet.load(folder, verify=verify, device=device)


# file helpers, module level so tests can patch them

SAFETENSORS_HEADER_KEY = 'timm_dd'

def _write_tensors(tensors: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    save_file(tensors, str(path), metadata=metadata)
    _fsync_file(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _read_safetensors(path: Path, device: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    if not path.is_file():
        raise DistilledSetError(f'{path}: file not found')
    try:
        with safe_open(str(path), framework='pt', device=device) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError, OSError, ... for damaged files
        raise DistilledSetError(f'{path}: cannot read safetensors file (truncated or corrupt?): {e}') from e
    return tensors, metadata


def _check_file_format(path: Path, metadata: Mapping[str, str]) -> None:
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
    if not _is_int(ver) or ver < 1:
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


def _load_folder(cls, folder: Path, verify: bool, device: str) -> DistilledSet:
    if not folder.is_dir():
        raise DistilledSetError(f'{folder}: distilled set folder not found')
    config_path, tensors_path = folder / CONFIG_FILE, folder / DISTILLED_FILE
    config = _read_config(config_path)

    tensors, metadata = _read_safetensors(tensors_path, device)
    _check_file_format(tensors_path, metadata)
    for key in ('images', 'labels'):
        if key not in tensors:
            raise DistilledSetError(f'{tensors_path}: missing tensor {key!r} (has {sorted(tensors)})')
    soft = config.get('label_type', 'hard') in ('soft', 'learned')
    if soft and 'soft_labels' not in tensors:
        raise DistilledSetError(f'{tensors_path}: missing tensor \'soft_labels\' ({CONFIG_FILE} says label_type soft)')
    if config.get('learned_lr', False) and 'lr' not in tensors:
        raise DistilledSetError(f'{tensors_path}: missing tensor \'lr\' ({CONFIG_FILE} says learned_lr true)')
    if not soft and 'soft_labels' in tensors:
        raise DistilledSetError(f'{tensors_path}: has soft_labels but {CONFIG_FILE} says label_type hard')
    if not config.get('learned_lr', False) and 'lr' in tensors:
        raise DistilledSetError(f'{tensors_path}: has lr but {CONFIG_FILE} says learned_lr false')
    unknown = sorted(set(tensors) - {'images', 'labels', 'soft_labels', 'lr'})
    if unknown:
        _logger.warning(f'{tensors_path}: ignoring unknown tensors {unknown}')

    images, labels = tensors['images'], tensors['labels']
    if list(images.shape[1:]) != config['image_size']:
        raise DistilledSetError(
            f'{tensors_path}: images have size {list(images.shape[1:])} but {CONFIG_FILE} says image_size '
            f'{config["image_size"]}')
    if 'num_images' in config and images.shape[0] != config['num_images']:
        raise DistilledSetError(
            f'{tensors_path}: {images.shape[0]} images but {CONFIG_FILE} says num_images {config["num_images"]}')

    zca = None
    zca_cfg = config.get('zca')
    if zca_cfg is not None:
        if not isinstance(zca_cfg, dict) or not _is_number(zca_cfg.get('eps')):
            raise DistilledSetError(f'{config_path}: zca must be {{"eps": <float>, "file": "{ZCA_FILE}"}} or null')
        zca_path = folder / zca_cfg.get('file', ZCA_FILE)
        zca_state, zca_meta = _read_safetensors(zca_path, device)
        _check_file_format(zca_path, zca_meta)
        missing = [k for k in ZCA_KEYS if k not in zca_state]
        if missing:
            raise DistilledSetError(f'{zca_path}: missing tensors {missing}')
        d = images[0].numel()
        expected = {'mean_vector': (1, d), 'transform_matrix': (d, d), 'transform_inv': (d, d)}
        for k, shape in expected.items():
            if tuple(zca_state[k].shape) != shape:
                raise DistilledSetError(
                    f'{zca_path}: {k} has shape {tuple(zca_state[k].shape)}, expected {shape} for images of size '
                    f'{list(images.shape[1:])}')
        try:
            zca = ZCA.from_state_dict(zca_state, eps=zca_cfg['eps'])
        except (ValueError, KeyError, TypeError) as e:
            raise DistilledSetError(f'{zca_path}: invalid ZCA state: {e}') from e

    try:
        dset = cls(
            images=images,
            labels=labels,
            method=config['method'],
            source_dataset=config.get('source_dataset', 'unknown'),
            num_classes=config['num_classes'],
            class_names=config.get('class_names'),
            ipc=config.get('ipc'),
            image_space=config['image_space'],
            normalization=config.get('normalization'),
            soft_labels=tensors.get('soft_labels') if soft else None,
            soft_label_kind=config.get('soft_label_kind') if soft else None,
            soft_label_temperature=config.get('soft_label_temperature') if soft else None,
            lr=tensors.get('lr') if config.get('learned_lr', False) else None,
            zca=zca,
            distill_arch=config.get('distill_arch'),
            seed=config.get('seed'),
            license=config.get('license'),
            library_version=config.get('library_version', 'unknown'),
            eval_results=config.get('eval', []),
            extra=config.get('extra', {}),
        )
    except DistilledSetError as e:
        path = folder / _FIELD_FILES.get(e.field, CONFIG_FILE)
        raise DistilledSetError(f'{path}: {e}', field=e.field) from e
    if not isinstance(labels, torch.Tensor) or dset.labels is not labels:
        raise DistilledSetError(f'{tensors_path}: labels must be stored as int64, got {labels.dtype}', field='labels')

    if verify:
        recorded = config.get('sha256') or {}
        if not isinstance(recorded, dict):
            raise DistilledSetError(f'{config_path}: sha256 must be a mapping of file name to digest')
        for name, digest in recorded.items():
            path = folder / name
            if path.is_file() and _sha256(path) != digest:
                raise DistilledSetError(
                    f'{path}: sha256 differs from the one recorded in {CONFIG_FILE}; the file was modified or '
                    f'corrupted after saving (load with verify=False to skip this check)')
    return dset

"""The checks a :class:`~timm_dd.distilled.DistilledSet` passes on construction, save and load, one per concern.

Each check raises :class:`~timm_dd.distilled.format.DistilledSetError` whose ``field`` names the culprit, so that a
loader can say which file holds it.
"""
import json
import math
from typing import Any, Mapping, Optional, Tuple

import torch

from ..data.space import SPACE_NAMES, ImageSpace
from ..data.zca import ZCA
from .format import DistilledSetError

# the checks read a DistilledSet's fields; typed loosely so that this module does not import the set's module
DistilledSet = Any

__all__ = ['validate', 'space_from_parts', 'IMAGE_SPACES', 'SOFT_LABEL_KINDS']

IMAGE_SPACES = SPACE_NAMES
SOFT_LABEL_KINDS = ('logits', 'probs')
#: the largest magnitude a valid image value has in any space (ZCA-whitened CIFAR stays within tens; even 0..255
#: pixels stay below); beyond it a set is damaged or mis-scaled and training on it can only overflow
MAX_ABS_PIXEL = 1e4
_IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _fail(field_name: str, message: str) -> None:
    raise DistilledSetError(message, field=field_name)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.detach()).all())


def check_images(x: Any) -> None:
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
    low, high = x.min().item(), x.max().item()
    if max(-low, high) > MAX_ABS_PIXEL:
        _fail('images', f'images range over [{low:.3g}, {high:.3g}]; images in any space (pixels in [0, 1], '
                        f'normalized or ZCA-whitened values of a few units) lie within +-{MAX_ABS_PIXEL:g}: the file '
                        f'is damaged or was scaled by mistake (a training on it would only diverge)')


def check_labels(dset: DistilledSet) -> None:
    n, k, y = dset.images.shape[0], dset.num_classes, dset.labels
    if not is_int(k) or k < 1:
        _fail('num_classes', f'num_classes must be a positive int, got {k!r}')
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        _fail('labels', f'labels must be an int64 tensor, got {getattr(y, "dtype", type(y).__name__)}')
    if tuple(y.shape) != (n,):
        _fail('labels', f'labels must have shape [{n}] (one per image), got {tuple(y.shape)}')
    if int(y.min()) < 0 or int(y.max()) >= k:
        _fail('labels', f'labels must lie in [0, {k}) (num_classes={k}), got range [{int(y.min())}, {int(y.max())}]')
    names = dset.class_names
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            _fail('class_names', 'class_names must be a list of str')
        if len(names) != k:
            _fail('class_names', f'class_names has {len(names)} entries but num_classes is {k}')
    if dset.ipc is not None and (not is_int(dset.ipc) or dset.ipc < 1):
        _fail('ipc', f'ipc must be a positive int or None, got {dset.ipc!r}')
    if dset.ipc is not None:
        _check_histogram(y, k, dset.ipc)


def _check_histogram(labels: torch.Tensor, num_classes: int, ipc: int) -> None:
    """``ipc`` claims ``ipc`` images of every class: a set whose labels say otherwise (a class missing, another
    doubled) must not be reported as "ipc 10"."""
    counts = torch.bincount(labels.detach().cpu(), minlength=num_classes).tolist()
    wrong = [f'class {c} has {n}' for c, n in enumerate(counts) if n != ipc]
    if wrong:
        shown = ', '.join(wrong[:4]) + (f' and {len(wrong) - 4} more' if len(wrong) > 4 else '')
        _fail('labels', f'the labels do not match ipc={ipc} ({ipc} images of each of the {num_classes} classes): '
                        f'{shown}; the labels or the ipc entry were changed (set ipc to null for a set with unequal '
                        f'classes)')


def check_soft_labels(dset: DistilledSet) -> None:
    s, n, k = dset.soft_labels, dset.images.shape[0], dset.num_classes
    if s is None:
        if dset.soft_label_kind is not None or dset.soft_label_temperature is not None:
            _fail('soft_labels', 'soft_label_kind / soft_label_temperature given without soft_labels')
        return
    if not isinstance(s, torch.Tensor) or not s.is_floating_point():
        _fail('soft_labels', f'soft_labels must be a floating point tensor, got {getattr(s, "dtype", s)}')
    if tuple(s.shape) != (n, k):
        _fail('soft_labels', f'soft_labels must have shape [{n}, {k}] (images x classes), got {tuple(s.shape)}')
    if not _all_finite(s):
        _fail('soft_labels', 'soft_labels contain NaN or Inf values')
    if dset.soft_label_kind not in SOFT_LABEL_KINDS:
        _fail('soft_label_kind', f'soft_label_kind must be one of {SOFT_LABEL_KINDS}, got {dset.soft_label_kind!r}')
    if dset.soft_label_kind == 'probs':
        p = s.detach().float()
        if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-2):
            _fail('soft_labels', "soft_labels of kind 'probs' must be non-negative rows summing to 1")
    t = dset.soft_label_temperature
    if t is not None and (not is_number(t) or not math.isfinite(t) or t <= 0):
        _fail('soft_label_temperature', f'soft_label_temperature must be a positive number, got {t!r}')


def check_lr(lr: Any) -> None:
    if lr is None:
        return
    if not isinstance(lr, torch.Tensor) or lr.shape != () or lr.dtype != torch.float32:
        _fail('lr', f'lr must be a number or a 1-element float tensor, got {lr!r}')
    if not _all_finite(lr):
        _fail('lr', 'lr is NaN or Inf')
    if float(lr) <= 0:
        _fail('lr', f'learned lr must be positive, got {float(lr)}')


def space_from_parts(image_space: Optional[str], normalization: Any, zca: Any,
                     channels: Optional[int] = None) -> ImageSpace:
    """The :class:`~timm_dd.data.ImageSpace` that a space name, a ``{'mean': [...], 'std': [...]}`` normalization and
    a ZCA transform describe (the form files and other tools give them in), each part checked with its own error.
    ``image_space`` is inferred when ``None``: 'zca' with a ZCA, 'normalized' with a normalization, else 'pixel'."""
    if image_space is None:
        image_space = 'zca' if zca is not None else 'normalized' if normalization else 'pixel'
    if image_space not in IMAGE_SPACES:
        _fail('image_space', f'image_space must be one of {IMAGE_SPACES}, got {image_space!r}')
    mean, std = _check_normalization(normalization, channels)
    if image_space == 'normalized' and normalization is None:
        _fail('normalization', "image_space='normalized' needs normalization={'mean': [...], 'std': [...]}")
    if image_space == 'pixel' and normalization is not None:
        _fail('normalization', "image_space='pixel' must not have a normalization (images are in [0, 1])")
    if image_space != 'zca' and zca is not None:
        _fail('zca', f"a ZCA transform is given but image_space is {image_space!r}, not 'zca'")
    if image_space == 'zca' and not isinstance(zca, ZCA):
        _fail('zca', f"image_space='zca' needs a ZCA transform, got {type(zca).__name__}")
    return ImageSpace(mean, std, zca)


def _check_normalization(norm: Any, channels: Optional[int]) -> Tuple[Optional[Tuple[float, ...]], ...]:
    if norm is None:
        return None, None
    if not isinstance(norm, Mapping) or set(norm) != {'mean', 'std'}:
        _fail('normalization', f"normalization must be {{'mean': [...], 'std': [...]}}, got {norm!r}")
    values = {}
    for key in ('mean', 'std'):
        v = norm[key]
        v = v.tolist() if isinstance(v, torch.Tensor) else v
        count = len(v) if isinstance(v, (list, tuple)) else -1
        if count < 1 or count != (channels or len(norm['mean'])) or not all(is_number(a) and math.isfinite(a)
                                                                            for a in v):
            _fail('normalization', f'normalization[{key!r}] must be {channels or "C"} finite numbers (one per '
                                   f'channel), got {v!r}')
        values[key] = tuple(float(a) for a in v)
    if any(a <= 0 for a in values['std']):
        _fail('normalization', f'normalization std must be positive, got {list(values["std"])}')
    return values['mean'], values['std']


def check_space(dset: DistilledSet) -> None:
    """The set's :class:`~timm_dd.data.ImageSpace` fits its images: one mean/std per channel, a ZCA of C*H*W
    features that can be inverted (pixels must be recoverable)."""
    space = dset.space
    if not isinstance(space, ImageSpace):
        _fail('image_space', f'space must be an ImageSpace, got {type(space).__name__}')
    if space.mean is not None and len(space.mean) != dset.images.shape[1]:
        _fail('normalization', f'normalization needs {dset.images.shape[1]} values per statistic (one per channel), '
                               f'got {len(space.mean)}')
    z = space.zca
    if z is None:
        return
    d = dset.images[0].numel()
    if z.dim != d:
        _fail('zca', f'ZCA has {z.dim} features but images have C*H*W = {d}')
    if z.transform_inv is None:
        _fail('zca', 'ZCA has no transform_inv (fit with compute_inv=True); it is needed to recover pixels')


def check_metadata(dset: DistilledSet) -> None:
    for name in ('method', 'source_dataset', 'library_version'):
        v = getattr(dset, name)
        if not isinstance(v, str) or not v:
            _fail(name, f'{name} must be a non-empty str, got {v!r}')
    for name in ('distill_arch', 'license'):
        v = getattr(dset, name)
        if v is not None and not isinstance(v, str):
            _fail(name, f'{name} must be a str or None, got {v!r}')
    if dset.seed is not None and not is_int(dset.seed):
        _fail('seed', f'seed must be an int or None, got {dset.seed!r}')
    if not isinstance(dset.eval_results, list) or not all(isinstance(r, dict) for r in dset.eval_results):
        _fail('eval_results', 'eval_results must be a list of dicts')
    if not isinstance(dset.extra, dict):
        _fail('extra', f'extra must be a dict, got {type(dset.extra).__name__}')
    for name in ('eval_results', 'extra'):
        try:
            json.dumps(getattr(dset, name), allow_nan=False)
        except (TypeError, ValueError) as e:
            _fail(name, f'{name} must be JSON-serializable without NaN/Inf: {e}')


def validate(dset: DistilledSet) -> None:
    """Every check, in the order a reader would look: images, labels, soft labels, lr, space, metadata."""
    check_images(dset.images)
    check_labels(dset)
    check_soft_labels(dset)
    check_lr(dset.lr)
    check_space(dset)
    check_metadata(dset)

"""Distilled sets made by other tools, in and out: MTT / ATT / DATM / FTD, FRePo (as DP+KD uses it), DD-Ranking, and
folders of image files.

Layouts (all tensors saved with plain ``torch.save``):

=============  ========================================================================================================
``mtt``        MTT, ATT, DATM, FTD: ``images_best.pt`` (or a numbered snapshot ``images_{it}.pt``, or ATT/FTD's EMA
               ``ema_images_best.pt``) float ``[N, C, H, W]`` class-major (``images_zca_best.pt``, the
               inverse-ZCA'd copy MTT saves for viewing, when that is all there is: pixel space); ``labels_best.pt``
               int64 ``[N]``, or learned soft labels ``[N, K]`` (DATM: logits, temperature 1); optional ``lr_best.pt`` or
               ``syn_lr.pt`` (the learned step size). Images are in ZCA space when the run used ``--zca`` (kornia
               ZCA, eps 0.1, fitted on the [0, 1] train split), else mean/std-normalized.
``frepo``      The same tensors; the labels ``[N, K]`` are logits, used as ``softmax(y / 0.3)`` by the DP+KD code
               (0.3 is this layout's default temperature).
``ddranking``  DD-Ranking: ``images.pt``, ``labels.pt`` (hard ``[N]`` or soft ``[N, K]``, logits at temperature 1),
               optional ``lr.pt``.
``folder``     An ImageFolder tree of image files (one folder per class, in class order): 8-bit quantised previews,
               they lose precision against the float tensors.
=============  ========================================================================================================

What a file cannot say is stated by the caller: the real dataset the set was distilled from (``dataset``: a name,
folder or zip; it gives the class names, the normalization, and the ZCA, refitted on its train split with
``zca_eps``) and the image space. Ambiguous imports fail with the list of missing facts. The imported images are
checked against the claimed space: their per-channel spread must be within a factor of 4 of what the real train
split has in that space (and pixel-space images mostly inside [0, 1]); a failed check names the statistics and the
spaces that would fit.
"""
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from PIL import Image

from ..constants import CIFAR10_MEAN, CIFAR10_STD
from ..data import load_dataset
from ..data.space import ImageSpace
from ..io import atomic_write, atomic_write_json, read_torch_file
from .distilled_set import DistilledSet
from .format import CONFIG_FILE, DistilledSetError

__all__ = ['LAYOUTS', 'import_distilled', 'export_distilled', 'detect_layout', 'ImportFacts']

_logger = logging.getLogger(__name__)

LAYOUTS = ('mtt', 'frepo', 'ddranking', 'folder')
#: written by :func:`export_distilled` beside the other tool's files: the method, source dataset and space
EXPORT_FACTS_FILE = 'timm_dd_export.json'
SPACES = ('zca', 'normalized', 'pixel')
_FILES = {
    'mtt': (('images_best.pt', 'images_zca_best.pt'), ('labels_best.pt',), ('lr_best.pt', 'syn_lr.pt')),
    'frepo': (('images_best.pt', 'images.pt'), ('labels_best.pt', 'labels.pt'), ('lr_best.pt', 'lr.pt')),
    'ddranking': (('images.pt',), ('labels.pt',), ('lr.pt',)),
}
_SPREAD_FACTOR = 4.0
#: the temperature each tool turns its logit labels into targets with (``softmax(y / T)``): FRePo as DP+KD uses it
#: 0.3; DATM (``mtt`` layout) and DD-Ranking 1
LAYOUT_TEMPERATURE = {'frepo': 0.3, 'mtt': 1.0, 'ddranking': 1.0}


class ImportFacts(ValueError):
    """An import that needs facts the files do not carry (listed in the message)."""


def _first(folder: Path, names: Tuple[str, ...]) -> Optional[Path]:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _load_tensor(path: Path) -> torch.Tensor:
    value = read_torch_file(path)
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f'{path}: expected a tensor, found {type(value).__name__}')
    return value.detach()


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # an unreadable subfolder is not a set
        return False


def detect_layout(source: Union[str, os.PathLike]) -> str:
    """``'timm_dd'`` for a timm_dd set or a Hub repo id, else the layout its files show (``mtt``, ``ddranking``, or
    ``folder`` for class folders of images); a folder that holds sets (a distillation run's output) is an error naming
    them."""
    folder = Path(source)
    if not folder.is_dir() or (folder / CONFIG_FILE).is_file():
        return 'timm_dd'
    if _first(folder, _FILES['mtt'][0]) is not None or any(_SNAPSHOT_NAME.fullmatch(p.name) for p in folder.iterdir()):
        return 'mtt'
    if _first(folder, _FILES['ddranking'][0]) is not None:
        return 'ddranking'
    sets = sorted(p.name for p in folder.iterdir() if _is_file(p / CONFIG_FILE))
    if sets:  # a distillation run's output folder: its sets are subfolders
        raise ValueError(f'{folder} is not a distilled set but holds some: pass one of '
                         + ', '.join(str(folder / name) for name in sets))
    if any(p.is_dir() for p in folder.iterdir()):
        return 'folder'
    return 'timm_dd'  # loading it says what is missing


def import_distilled(
        source: Union[str, os.PathLike],
        layout: str,
        *,
        dataset: Optional[str] = None,
        image_space: Optional[str] = None,
        zca_eps: Optional[float] = None,
        lr: Optional[float] = None,
        soft_label_temperature: Optional[float] = None,
        method: Optional[str] = None,
        soft_label_kind: Optional[str] = None,
        iteration: Optional[int] = None,
        ema: bool = False,
        normalization_stats: Optional[str] = None,
) -> DistilledSet:
    """Read a distilled set made by another tool into a :class:`DistilledSet` (see the module docstring).

    Args:
        source: A local folder (``timm_dd.import_distilled`` also takes a Hub dataset repo id).
        layout: One of :data:`LAYOUTS`.
        dataset: The real dataset it was distilled from (name, folder or zip): class names, normalization, ZCA.
        image_space: 'zca', 'normalized' or 'pixel' (``folder`` layouts are pixel space).
        zca_eps: The ZCA's eps: 0.1 for MTT, ATT, DATM and DD-Ranking (whose dataset ZCA is kornia's
            ``ZCAWhitening(eps=0.1, compute_inv=True)``; its 1e-6 is a per-batch wrapper, not the dataset's ZCA).
        lr: The learned step size, when the files do not hold it.
        soft_label_temperature: How soft-label logits are used (``softmax(y / t)``); default the layout's tool's
            (``LAYOUT_TEMPERATURE``: ``frepo`` 0.3, ``mtt`` (DATM) and ``ddranking`` 1).
        method: Recorded method name (default: the layout's, or the one a timm_dd export recorded).
        iteration: ``mtt`` layout: the numbered snapshot ``images_{iteration}.pt`` instead of ``images_best.pt``.
        ema: ``mtt`` layout: ATT/FTD's EMA images (``ema_images_best.pt`` or ``ema_images_{iteration}.pt``, in the
            folder or its ``ema/`` subfolder).
        normalization_stats: For ``normalized`` images: ``'dataset'`` (its own mean/std) or ``'cifar10'``. Default:
            each tool's convention; MTT, ATT, DATM, DD-Ranking (layouts ``mtt``, ``ddranking``) normalize CIFAR-100
            with CIFAR-10's statistics, others with the dataset's. (The spread check cannot tell the two apart: they
            differ by under 10 %; the set records the mean/std used.)
        soft_label_kind: What [N, K] float labels hold: 'logits' (default; FRePo, DATM) or 'probs' (rows that sum
            to 1, checked).

    Raises:
        ImportFacts: a fact the files cannot give is missing (the message lists them).
        ValueError: a file is unreadable, or the images do not look like the claimed space.
    """
    folder = Path(source)
    facts = _export_facts(folder)  # a set exported by timm_dd: its method name and space come back with it
    method = method or facts.get('method')
    dataset = dataset or facts.get('source_dataset')
    image_space = image_space or facts.get('image_space')
    if zca_eps is None:
        zca_eps = facts.get('zca_eps') or 0.1
    if soft_label_temperature is None:
        soft_label_temperature = facts.get('soft_label_temperature')
    soft_label_kind = soft_label_kind or facts.get('soft_label_kind') or 'logits'
    for name, value in (('lr', lr), ('zca_eps', zca_eps), ('soft_label_temperature', soft_label_temperature)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f'{name}={value}: must be a positive number (given for importing {folder})')
    image_space = _check_facts(folder, layout, dataset, image_space)
    if layout == 'folder':
        images, labels, soft, file_lr, note = _read_folder(folder)
    else:
        images, labels, soft, file_lr, note = _read_tensors(folder, layout, iteration, ema)
        if note:
            image_space = 'pixel'
    train = _real_train(dataset, images.shape[-2:])
    num_classes = len(train.class_names)
    _check_labels(labels, soft, num_classes, folder)
    normalization = _normalization_of(train, layout, normalization_stats) if image_space == 'normalized' else None
    space = ImageSpace.fit(image_space, train.stored_pixels() if image_space == 'zca' else None, zca_eps, normalization)
    _check_space(images, space, train, folder)
    if soft is not None and soft_label_temperature is None and soft_label_kind == 'logits':
        soft_label_temperature = LAYOUT_TEMPERATURE.get(layout)  # the temperature the layout's tool trains with
    if lr is None:
        lr = file_lr
    try:
        dset = DistilledSet(
            images=images.float(), labels=labels, method=method or layout.upper(), source_dataset=str(dataset),
            class_names=list(train.class_names), space=space,
            soft_labels=soft, soft_label_kind=soft_label_kind if soft is not None else None,
            soft_label_temperature=soft_label_temperature, lr=lr,
            extra={'imported_from': str(source), 'layout': layout, **({'note': note} if note else {}),
                   **({'iteration': iteration} if iteration is not None else {}), **({'ema': True} if ema else {})})
    except DistilledSetError as e:  # name the files the bad value came from
        raise DistilledSetError(f'{folder} ({layout} layout): {e}', field=e.field) from e
    _logger.info('imported %d images (%s, %s space) from %s', dset.num_images, layout, image_space, source)
    return dset


def _export_facts(folder: Path) -> Dict[str, Any]:
    """The facts :func:`export_distilled` wrote beside the files (``{}`` for sets of other tools)."""
    path = folder / EXPORT_FACTS_FILE
    if not _is_file(path):
        return {}
    try:
        facts = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f'{path}: not readable JSON ({e}); delete it and pass dataset/image_space yourself') from e
    if not isinstance(facts, dict):
        raise ValueError(f'{path}: expected a JSON object of facts, found {type(facts).__name__}')
    for key, types in _FACT_TYPES.items():
        value = facts.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f'{path}: {key}={value!r} is not a {" or ".join(t.__name__ for t in types)}; delete the '
                             f'file (and pass the facts yourself) or correct it')
    for key, allowed in (('image_space', SPACES), ('soft_label_kind', ('logits', 'probs'))):
        if facts.get(key) is not None and facts[key] not in allowed:
            raise ValueError(f'{path}: {key}={facts[key]!r} is not one of {allowed}; delete the file (and pass the '
                             f'facts yourself) or correct it')
    return facts


_FACT_TYPES = {'method': (str,), 'source_dataset': (str,), 'image_space': (str,), 'zca_eps': (int, float),
               'ipc': (int,), 'soft_label_temperature': (int, float), 'soft_label_kind': (str,)}


def _check_facts(folder: Path, layout: str, dataset: Optional[str], image_space: Optional[str]) -> str:
    """The image space to import in, once every fact the files cannot give is there (else :class:`ImportFacts`
    listing the missing ones)."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; known layouts: {", ".join(LAYOUTS)}')
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: no such folder')
    if layout == 'folder':
        image_space = image_space or 'pixel'
    missing = []
    if dataset is None:
        missing.append('dataset (the real dataset it was distilled from: a name like cifar10, a folder or a zip; it '
                       'gives the class names, normalization and ZCA)')
    if image_space is None:
        missing.append(f"image_space (one of {SPACES}: 'zca' for runs with --zca, else 'normalized')")
    elif image_space not in SPACES:
        raise ValueError(f'image_space must be one of {SPACES}, got {image_space!r}')
    if missing:
        raise ImportFacts(f'cannot import {folder} ({layout} layout) without: ' + '; '.join(missing))
    return image_space


def _snapshot_files(folder: Path, iteration: Optional[int], ema: bool) -> Tuple[Path, Tuple[Tuple[str, ...], ...]]:
    """The folder and candidate file names of one MTT/ATT snapshot: ``images_best.pt`` (default), the numbered
    ``images_{it}.pt`` of iteration ``it``, or ATT/FTD's EMA images (``ema_images_*.pt``, in the folder given or its
    ``ema/`` subfolder), each with its labels and, where the tool saved it, its lr."""
    prefix, tag = ('ema_' if ema else ''), ('best' if iteration is None else str(iteration))
    if ema and not _is_file(folder / f'ema_images_{tag}.pt') and (folder / 'ema').is_dir():
        folder = folder / 'ema'
    return folder, ((f'{prefix}images_{tag}.pt', f'{prefix}images_zca_{tag}.pt'),
                    (f'{prefix}labels_{tag}.pt', f'{prefix}labels_best.pt', 'labels_best.pt'),
                    (f'{prefix}lr_{tag}.pt',) + (('syn_lr.pt',) if tag == 'best' else ()))


def _snapshots_in(folder: Path) -> str:
    found = sorted({(m.group(1) or '') + m.group(2) for p in folder.iterdir()
                    if (m := _SNAPSHOT_NAME.fullmatch(p.name))}, key=lambda s: (s.startswith('ema_'), len(s), s))
    return f'; snapshots there: {", ".join(found)} (pick one with iteration= / --iteration, EMA ones with --ema)' \
        if found else ''


_SNAPSHOT_NAME = re.compile(r'(ema_)?images_(?:zca_)?(\d+|best)\.pt')


def _read_tensors(folder: Path, layout: str, iteration: Optional[int] = None, ema: bool = False):
    if layout == 'mtt':
        folder, (image_names, label_names, lr_names) = _snapshot_files(folder, iteration, ema)
    elif iteration is not None or ema:
        raise ValueError(f'{folder}: iteration and ema pick MTT/ATT snapshots (layout mtt), not {layout} files')
    else:
        image_names, label_names, lr_names = _FILES[layout]
    image_path = _first(folder, image_names)
    label_path = _first(folder, label_names) or (_first(folder.parent, label_names) if ema else None)
    if image_path is None or label_path is None:
        raise FileNotFoundError(f'{folder}: the {layout} layout needs {" or ".join(image_names)} and '
                                f'{" or ".join(label_names)}; found {sorted(p.name for p in folder.iterdir())[:12]}'
                                f'{_snapshots_in(folder)}')
    images, labels = _load_tensor(image_path), _load_tensor(label_path)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f'{image_path}: images must be a floating-point [N, C, H, W] tensor, got {images.dtype} of '
                         f'shape {tuple(images.shape)}')
    soft = None
    if labels.dim() == 2 and labels.is_floating_point():
        soft, labels = labels.float(), labels.argmax(1) if labels.shape[1] else labels[:, 0]
    elif labels.dim() != 1 or labels.dtype == torch.bool or (
            labels.is_floating_point() and not bool((labels == labels.round()).all())):
        raise ValueError(f'{label_path}: labels must be [N] class indices or [N, K] soft labels (logits), got '
                         f'{labels.dtype} of shape {tuple(labels.shape)}')
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f'{label_path}: {labels.shape[0]} labels for {images.shape[0]} images')
    lr_path = _first(folder, lr_names)
    note = None
    if 'images_zca_' in image_path.name:
        note = f'{image_path.name} is MTT\'s inverse-ZCA\'d viewing copy: imported in pixel space'
    return images, labels.long(), soft, _read_lr(lr_path) if lr_path is not None else None, note


def _read_lr(path: Path) -> float:
    lr = _load_tensor(path)
    if lr.numel() != 1 or not (lr.is_floating_point() or lr.dtype in (torch.int64, torch.int32)):
        raise ValueError(f'{path}: the learned lr must be one number, got {lr.dtype} of shape {tuple(lr.shape)}')
    return float(lr.reshape(-1)[0])


def _read_folder(folder: Path):
    ds = load_dataset(str(folder), 'train', use_cache=False)
    note = 'imported from image files: 8-bit previews, less precise than the float tensors of the distillation'
    _logger.warning('%s: %s', folder, note)
    return ds.pixels(), ds.labels, None, None, note


def _real_train(dataset: str, size):
    train = load_dataset(str(dataset), 'train')
    if tuple(train.images.shape[-2:]) != tuple(size):
        train = load_dataset(str(dataset), 'train', image_size=tuple(int(s) for s in size))
    return train


def _check_labels(labels: torch.Tensor, soft: Optional[torch.Tensor], num_classes: int, where: Path) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'{where}: labels range over [{int(labels.min())}, {int(labels.max())}] but the dataset has '
                         f'{num_classes} classes; is dataset= the one the set was distilled from?')
    if soft is not None and soft.shape[1] != num_classes:
        raise ValueError(f'{where}: soft labels have {soft.shape[1]} columns but the dataset has {num_classes} '
                         f'classes')


def _normalization_of(train, layout: str, stats: Optional[str]) -> ImageSpace:
    """The mean/std a normalized set was made with: the dataset's own, or CIFAR-10's, which MTT, ATT, DATM,
    DD-Ranking and ELF use for CIFAR-100 too (their ``get_dataset``), so that is the default for their layouts."""
    if stats is None:
        stats = 'cifar10' if train.name == 'cifar100' and layout in _CIFAR10_STATS_FOR_CIFAR100 else 'dataset'
    if stats == 'cifar10':
        return ImageSpace.normalized(CIFAR10_MEAN, CIFAR10_STD)
    if stats == 'dataset':
        return train.normalization
    raise ValueError(f"normalization_stats must be 'dataset' or 'cifar10', got {stats!r}")


#: layouts whose tools normalize CIFAR-100 with CIFAR-10's mean/std
_CIFAR10_STATS_FOR_CIFAR100 = ('mtt', 'ddranking')


def _space_stats(train, space: ImageSpace) -> torch.Tensor:
    x = space.to_model(train.pixels(slice(0, 2000)))
    return x.transpose(0, 1).reshape(x.shape[1], -1).std(1)


def _check_space(images: torch.Tensor, space: ImageSpace, train, where: Path) -> None:
    """Per-channel spread of the imported images against the real train split's in the claimed space."""
    if images.shape[1] != train.images.shape[1]:
        raise ValueError(f'{where}: {images.shape[1]}-channel images, but the dataset has {train.images.shape[1]}')
    spread = images.float().transpose(0, 1).reshape(images.shape[1], -1).std(1)
    expected = _space_stats(train, space)
    ratio = (spread / expected.clamp_min(1e-8)).max().item(), (spread / expected.clamp_min(1e-8)).min().item()
    plausible = ratio[0] <= _SPREAD_FACTOR and ratio[1] >= 1 / _SPREAD_FACTOR
    if space.name == 'pixel':
        inside = ((images >= -0.25) & (images <= 1.25)).float().mean().item()
        plausible = plausible and inside >= 0.95
    if not plausible:
        raise ValueError(
            f'{where}: the images do not look like {space.name} space of this dataset: per-channel std '
            f'{[round(v, 3) for v in spread.tolist()]} vs {[round(v, 3) for v in expected.tolist()]} for the real '
            f'train split in that space (allowed: within x{_SPREAD_FACTOR:g}). Check image_space (and zca_eps, '
            f'dataset)')


def export_distilled(dset: DistilledSet, folder: Union[str, os.PathLike], layout: str = 'ddranking') -> Path:
    """Write ``dset`` in another tool's layout: ``'ddranking'`` (``images.pt``, ``labels.pt``, ``lr.pt``), ``'mtt'``
    and ``'frepo'`` (``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``), or ``'folder'`` (one folder of 8-bit
    PNG images per class, named by the class index, in pixel space: what image-folder tools read). Tensor layouts
    keep the set's own space (say so to the other tool: DD-Ranking's dataset ZCA uses eps 0.1, as MTT's) and write
    soft labels as labels when the set has them. Beside the files, ``timm_dd_export.json`` keeps what the files
    cannot say (method, source dataset, space, ZCA eps, ipc, label kind), which :func:`import_distilled` reads back.
    """
    names = {'ddranking': ('images.pt', 'labels.pt', 'lr.pt'),
             'mtt': ('images_best.pt', 'labels_best.pt', 'lr_best.pt'),
             'frepo': ('images_best.pt', 'labels_best.pt', 'lr_best.pt')}
    if layout not in (*names, 'folder'):
        raise ValueError(f'export layouts: {", ".join([*names, "folder"])}; got {layout!r}')
    folder = Path(folder)
    if layout == 'folder':
        _write_class_folders(dset, folder)
    else:
        image_name, label_name, lr_name = names[layout]
        tensors: Dict[str, Any] = {
            image_name: dset.images.detach().cpu().clone(),
            label_name: (dset.soft_labels if dset.soft_labels is not None else dset.labels).cpu()}
        if dset.lr is not None:
            tensors[lr_name] = torch.as_tensor(dset.lr).detach().cpu().clone()
        for name, value in tensors.items():
            with atomic_write(folder / name) as f:
                torch.save(value, f)
    pixels = layout == 'folder'
    # what the other tool's files cannot say; it ignores this file, import_distilled reads it back
    atomic_write_json(folder / EXPORT_FACTS_FILE, {
        'method': dset.method, 'source_dataset': dset.source_dataset,
        'image_space': 'pixel' if pixels else dset.space.name,
        'zca_eps': dset.space.zca.eps if dset.space.zca is not None and not pixels else None, 'ipc': dset.ipc,
        'soft_label_temperature': None if pixels else dset.soft_label_temperature,
        'soft_label_kind': None if pixels else dset.soft_label_kind})
    return folder


def _write_class_folders(dset: DistilledSet, folder: Path) -> None:
    """One PNG per image under ``<folder>/<class index>/`` (hard labels: image files carry no soft labels)."""
    pixels = dset.space.to_uint8(dset.images.detach()).cpu()
    for i, (image, label) in enumerate(zip(pixels, dset.labels.tolist())):
        array = image.permute(1, 2, 0).numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        buffer = io.BytesIO()
        picture.save(buffer, format='PNG')
        with atomic_write(folder / str(label) / f'{i:05d}.png') as f:
            f.write(buffer.getvalue())

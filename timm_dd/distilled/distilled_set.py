"""A distilled (synthetic) training set: images, labels, provenance, and conversion to a trainable set.

The set is validated on construction (:mod:`timm_dd.distilled.validation`) and saved to / loaded from a folder
(:mod:`timm_dd.distilled.format`: the file layout, checksums and versions); its card is rendered from its config
(:mod:`timm_dd.distilled.card`). Saving is atomic; loading raises :class:`DistilledSetError` naming the file and
problem.
"""
import logging
import os
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..data import ImageSet, ImageSpace
from ..data.sets import HasImages
from ..data.zca import ZCA
from ..version import __version__
from .card import render_card
from .format import (
    DISTILLED_FILE, FORMAT_NAME, FORMAT_VERSION, ZCA_FILE, DistilledSetError, file_of_field, read_set_folder,
    safetensors_header, verify_checksums, write_set_folder,
)
from .parquet import PARQUET_FILE, write_parquet_view
from .validation import is_number, space_from_parts, validate

__all__ = ['DistilledSet']

_logger = logging.getLogger(__name__)


@dataclass(eq=False)
class DistilledSet(HasImages):
    """Distilled images with their labels, optional soft labels / learned LR / ZCA, and metadata.

    Validated on construction (:meth:`validate`), so an invalid set can be neither built nor saved.
    Inferred when left ``None``: ``num_classes`` (from ``class_names``, soft-label width, or ``labels.max() + 1``),
    ``ipc`` (when every class has the same number of images), the space (from its parts, below) and
    ``soft_label_kind`` ('logits').

    The images' space is one stored value, ``space`` (an :class:`~timm_dd.data.ImageSpace`). It may be given
    instead as the parts files and other tools state it, ``image_space``, ``normalization`` and ``zca`` (each checked
    with its own error); ``image_space`` is then inferred when left ``None`` ('zca' if ``zca`` is given,
    'normalized' if ``normalization`` is given, else 'pixel'). After construction the three names are read-only
    views of ``space``.

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
        space: The :class:`~timm_dd.data.ImageSpace` of the images (instead of the three parts above).
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
    image_space: InitVar[Optional[str]] = None
    normalization: InitVar[Optional[Dict[str, List[float]]]] = None
    soft_labels: Optional[torch.Tensor] = None
    soft_label_kind: Optional[str] = None
    soft_label_temperature: Optional[float] = None
    lr: Optional[Union[float, torch.Tensor]] = None
    zca: InitVar[Optional[ZCA]] = None
    distill_arch: Optional[str] = None
    seed: Optional[int] = None
    license: Optional[str] = None
    library_version: str = __version__
    eval_results: List[Dict[str, Any]] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    space: Optional[ImageSpace] = None
    # what loading found that a reader of numbers made with this set must know (files without checksums); not saved
    load_notes: List[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self, image_space: Optional[str], normalization: Optional[Dict[str, List[float]]],
                      zca: Optional[ZCA]) -> None:
        if isinstance(self.labels, (list, tuple)):
            self.labels = torch.tensor(self.labels, dtype=torch.int64)
        if isinstance(self.labels, torch.Tensor) and self.labels.dtype != torch.int64 \
                and not self.labels.is_floating_point() and not self.labels.is_complex() \
                and self.labels.dtype != torch.bool:
            self.labels = self.labels.to(torch.int64)
        if self.lr is not None:
            if is_number(self.lr):
                self.lr = torch.tensor(float(self.lr), dtype=torch.float32)
            elif isinstance(self.lr, torch.Tensor) and self.lr.numel() == 1 and self.lr.is_floating_point():
                self.lr = self.lr.detach().reshape(()).to(torch.float32)
        self._set_space(image_space, normalization, zca)
        if self.class_names is not None and isinstance(self.class_names, (list, tuple)):
            self.class_names = list(self.class_names)
        if self.soft_labels is not None and self.soft_label_kind is None:
            self.soft_label_kind = 'logits'
        if self.num_classes is None:
            self.num_classes = self._infer_num_classes()
        validate(self)
        if self.ipc is None:
            counts = torch.bincount(self.labels.detach().cpu(), minlength=self.num_classes)
            if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
                self.ipc = int(counts[0])

    def _set_space(self, image_space: Optional[str], normalization: Any, zca: Optional[ZCA]) -> None:
        given_as_parts = image_space is not None or normalization is not None or zca is not None
        if self.space is not None and given_as_parts:
            raise DistilledSetError('give the space either as space=ImageSpace(...) or as its parts (image_space, '
                                    'normalization, zca), not both', field='image_space')
        if self.space is None:
            x = self.images
            channels = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 4 else None
            self.space = space_from_parts(image_space, normalization, zca, channels)

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
                 f'num_classes={self.num_classes}', f'ipc={self.ipc}', f'image_space={self.space.name!r}',
                 f'labels={self.label_type}']
        if self.lr is not None:
            parts.append(f'lr={float(self.lr):.4g}')
        if self.space.zca is not None:
            parts.append(f'zca_eps={self.space.zca.eps}')
        return f'{self.__class__.__name__}({", ".join(parts)})'

    # properties

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def label_type(self) -> str:
        return 'soft' if self.soft_labels is not None else 'hard'

    def validate(self) -> None:
        """Check every field; raises :class:`DistilledSetError` (its ``field`` names the culprit)."""
        validate(self)

    # space and training

    def to_pixel_space(self, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Map ``images`` (default: the set's) to pixel space, nominally [0, 1]; float32, not clipped.

        Inverse ZCA for 'zca', de-normalization for 'normalized' (and after inverse ZCA when both apply),
        identity for 'pixel'. Differentiable.
        """
        x = self.images if images is None else images
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            size = ', '.join(map(str, self.image_shape))
            raise ValueError(f'images must have shape [N, {size}], got {tuple(x.shape)}')
        return self.space.to_pixels(x)

    def soft_label_probs(self, temperature: Optional[float] = None) -> torch.Tensor:
        """The soft labels as probabilities: ``softmax(y / t)`` for logits (``temperature`` or the set's own),
        checked as they are for probabilities."""
        y = self.soft_labels.float()
        if self.soft_label_kind == 'probs':
            sums = y.sum(1)
            if (y < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise ValueError(f'the soft labels are declared probabilities but their rows sum to '
                                 f'[{sums.min():.4f}, {sums.max():.4f}] (or are negative); are they logits?')
            return y
        t = temperature if temperature is not None else self.soft_label_temperature
        if t is None:
            raise ValueError('the distilled set has soft labels as logits and no temperature: pass '
                             '--soft-label-temperature (the recipe field soft_label_temperature; FRePo/DP+KD use 0.3)')
        if not t > 0:
            raise ValueError(f'soft_label_temperature must be positive, got {t}')
        return torch.softmax(y / t, dim=1)

    def to_image_set(self, soft_label_temperature: Optional[float] = None) -> ImageSet:
        """The set to train on: float32 images in their space, soft labels as probabilities (else hard labels),
        the learned lr."""
        labels = self.soft_label_probs(soft_label_temperature) if self.soft_labels is not None else self.labels
        return ImageSet(self.images.float(), labels, list(self.class_names or []), name=self.source_dataset,
                        split='distilled', space=self.space, num_classes=self.num_classes,
                        learned_lr=float(self.lr) if self.lr is not None else None)

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
            'image_size': list(self.image_shape),  # [C, H, W] in format version 1
            'image_dtype': str(self.images.dtype).replace('torch.', ''),
            'image_space': self.space.name,
            'normalization': self.space.normalization,
            'zca': None if self.space.zca is None else {'eps': self.space.zca.eps, 'file': ZCA_FILE},
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
        return render_card(self.to_config(), float(self.lr) if self.lr is not None else None, repo_id, parquet_file)

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
        validate(self)
        folder = Path(folder)
        if folder.is_dir() and not overwrite:
            raise FileExistsError(f'{folder} exists (pass overwrite=True to replace it)')
        header = safetensors_header(method=self.method, source_dataset=self.source_dataset, ipc=self.ipc,
                                    num_classes=self.num_classes, image_space=self.space.name)
        repo_id = str(folder) if repo_id is None else repo_id
        write_set_folder(folder, self.tensors(), header, self.to_config(),
                         lambda parquet_file: self.to_card(repo_id, parquet_file), self.space.zca,
                         self._write_parquet if parquet_view else None)
        _logger.info(f'saved distilled set ({self.num_images} images, {self.method}) to {folder}')
        return folder

    def _write_parquet(self, folder: Path) -> str:
        write_parquet_view(self, folder)
        return PARQUET_FILE

    @classmethod
    def load(cls, folder: Union[str, os.PathLike], verify: bool = True, device: str = 'cpu',
             strict: bool = False) -> 'DistilledSet':
        """Load and validate a set saved by :meth:`save`.

        Args:
            folder: The set's folder.
            verify: Check the files' sha256 against ``distill_config.json``. A file without a recorded digest is
                loaded with a warning, also kept in ``load_notes`` (training results carry it).
            device: Device for the tensors.
            strict: A file without a recorded digest is an error instead.

        Raises:
            DistilledSetError: Missing/corrupt files or keys, inconsistent shapes, invalid values, unknown format.
        """
        folder = Path(folder)
        config, tensors, zca = read_set_folder(folder, device)
        soft, labels = config.get('label_type', 'hard') in ('soft', 'learned'), tensors['labels']
        try:
            dset = cls(
                images=tensors['images'], labels=labels, method=config['method'],
                source_dataset=config.get('source_dataset', 'unknown'), num_classes=config['num_classes'],
                class_names=config.get('class_names'), ipc=config.get('ipc'), image_space=config['image_space'],
                normalization=config.get('normalization'),
                soft_labels=tensors.get('soft_labels') if soft else None,
                soft_label_kind=config.get('soft_label_kind') if soft else None,
                soft_label_temperature=config.get('soft_label_temperature') if soft else None,
                lr=tensors.get('lr') if config.get('learned_lr', False) else None, zca=zca,
                distill_arch=config.get('distill_arch'), seed=config.get('seed'), license=config.get('license'),
                library_version=config.get('library_version', 'unknown'), eval_results=config.get('eval', []),
                extra=config.get('extra', {}))
        except DistilledSetError as e:
            raise DistilledSetError(f'{folder / file_of_field(e.field)}: {e}', field=e.field) from e
        if dset.labels is not labels:
            raise DistilledSetError(f'{folder / DISTILLED_FILE}: labels must be stored as int64, got {labels.dtype}',
                                    field='labels')
        if verify:
            dset.load_notes = verify_checksums(folder, config, strict)
        return dset



# read-only views of the one stored space, under the names files use (set after the class: during its creation the
# names are the constructor's InitVars)
DistilledSet.image_space = property(lambda self: self.space.name,
                                    doc="'zca', 'normalized' or 'pixel' (``space.name``).")
DistilledSet.normalization = property(lambda self: self.space.normalization,
                                      doc="``{'mean': [...], 'std': [...]}`` or ``None`` (``space.normalization``).")
DistilledSet.zca = property(lambda self: self.space.zca, doc='The ZCA transform or ``None`` (``space.zca``).')

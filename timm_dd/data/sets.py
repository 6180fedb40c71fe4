"""The one in-memory container for labelled images, and the train/test pair a run works on.

:class:`ImageSet` holds a whole set as tensors (distillation and training on tiny sets touch every image many
times, so a per-item ``Dataset`` would only add overhead): images in a stated :class:`ImageSpace`, hard labels
``[N]`` or soft labels ``[N, K]`` (probabilities), class names and, for a distilled set, its learned step size. A
loaded dataset is an ``ImageSet`` of [0, 1] pixels with its normalization statistics; the trainer, the experiment
runner and distillation all take ``ImageSet`` s; :class:`~timm_dd.distilled.DistilledSet` adds provenance and a
file format and converts with ``to_image_set``.

Sizes: ``image_size`` is ``(height, width)`` everywhere in the package; ``image_shape`` is ``(C, H, W)``.
"""
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..io import tensor_checksum
from .space import ImageSpace

__all__ = ['ImageSet', 'ImageSetDataset', 'DataSplits', 'HasImages', 'as_image_set']


class HasImages:
    """The size properties of anything that holds ``images [N, C, H, W]`` (an image set, a distilled set)."""
    images: torch.Tensor

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(height, width)``."""
        return tuple(self.images.shape[-2:])

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(channels, height, width)``."""
        return tuple(self.images.shape[1:])

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]


@dataclass
class ImageSet(HasImages):
    """A whole labelled image set in memory.

    A dataset read from image files keeps its images as they were decoded, uint8 ``[N, C, H, W]`` pixels: four
    times less memory than float32, and no float copy of the whole set. Its ``space`` then says what a batch becomes:
    :meth:`batch` converts the rows it takes (``space.to_model(pixels / 255)``, on the device), and
    :meth:`in_space` to a normalization only changes ``space``. Only a ZCA space, whose whitening mixes all pixels
    of an image, is applied to the whole set at once (a float copy, as for CIFAR-sized data). Code that needs every
    image as floats at once calls :meth:`float_images`.

    Attributes:
        images: float ``[N, C, H, W]`` in ``space`` (the images themselves), or uint8 ``[N, C, H, W]`` pixels that
            ``space`` maps batch by batch.
        labels: int64 ``[N]`` in ``[0, num_classes)``, or soft labels ``[N, K]``: probabilities, rows summing to 1.
        class_names: name of each class, indexed by label (may be empty when unknown).
        normalization: the source data's per-channel mean/std as a space (``None`` when unknown): what
            'normalized' space means for this data, whatever space ``images`` are in now.
        name: short name of the source (``'cifar10'``, ``'digits'``, a folder or archive name).
        split: the split (``'train'``, ``'test'``, ...).
        space: the space ``images`` are in (default: pixels).
        learned_lr: a distilled set's learned step size (MTT/ATT), the default training lr.
        num_classes: inferred from ``class_names``, the soft-label width or the largest label when not given.
    """
    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str] = field(default_factory=list)
    normalization: Optional[ImageSpace] = None
    name: str = ''
    split: str = ''
    space: ImageSpace = field(default_factory=ImageSpace)
    learned_lr: Optional[float] = None
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        self._check_images()
        self.class_names = list(self.class_names)
        if self.num_classes is None:
            self.num_classes = self._infer_num_classes()
        self._check_labels()
        stats = self.normalization
        if stats is not None:
            if not isinstance(stats, ImageSpace) or stats.mean is None or stats.zca is not None:
                raise ValueError(f'normalization must be ImageSpace.normalized(mean, std), got {stats!r}')
            if len(stats.mean) != self.images.shape[1]:
                raise ValueError(f'mean/std need {self.images.shape[1]} values, got {stats.mean} / {stats.std}')

    def _check_images(self) -> None:
        x = self.images
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not (x.is_floating_point() or x.dtype == torch.uint8):
            raise ValueError(f'images must be a float (or uint8 pixel) [N, C, H, W] tensor, got '
                             f'{getattr(x, "dtype", type(x))} {tuple(getattr(x, "shape", ()))}')
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError('images contain NaN or Inf')

    def _infer_num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        if self.labels.ndim == 2:
            return self.labels.shape[1]
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def _check_labels(self) -> None:
        y, n = self.labels, self.images.shape[0]
        if y.ndim == 2:
            if y.shape != (n, self.num_classes) or not y.is_floating_point():
                raise ValueError(f'soft labels must be float [{n}, {self.num_classes}], got {y.dtype} {tuple(y.shape)}')
            sums = y.float().sum(1)
            if bool((y < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise ValueError('soft labels must be probabilities (rows summing to 1); for logits use '
                                 'softmax(y / t) first (DistilledSet.to_image_set does it with its temperature)')
            return
        if y.shape != (n,) or y.dtype != torch.int64:
            raise ValueError(f'labels must be int64 [{n}] (or soft labels [{n}, K]), got {y.dtype} {tuple(y.shape)}')
        if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f'labels must lie in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]')

    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def stores_pixels(self) -> bool:
        """Whether ``images`` are uint8 pixels that :meth:`batch` maps into ``space`` (else float in ``space``)."""
        return self.images.dtype == torch.uint8

    def batch(self, indices: Union[torch.Tensor, Sequence[int], slice],
              device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """The images at ``indices`` as float32 in ``space``, on ``device`` (default: where they are); stored pixels
        are converted here, after the move (a uint8 batch travels, not a float one)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        x = self.images[indices]
        x = x if device is None else x.to(device, non_blocking=True)
        return self.space.to_model(x.float().div_(255)) if self.stores_pixels else x

    def pixels(self, indices: Union[torch.Tensor, Sequence[int], slice] = slice(None)) -> torch.Tensor:
        """The images at ``indices`` as float [0, 1] pixels (a new tensor)."""
        if self.stores_pixels:
            return self.images[indices].float().div_(255)
        x = self.images[indices]
        return x if self.space.name == 'pixel' else self.space.to_pixels(x)

    def stored_pixels(self) -> torch.Tensor:
        """The pixels as stored: uint8 when the set keeps them so (no copy), else as [0, 1] floats (see
        :meth:`pixels`); what a space is fitted on (``ZCA.fit`` reads uint8 chunk by chunk)."""
        return self.images if self.stores_pixels and self.space.name == 'pixel' else self.pixels()

    def float_images(self) -> 'ImageSet':
        """The same set with every image as float in ``space`` (a float copy of stored pixels; itself otherwise)."""
        return replace(self, images=self.batch(slice(None))) if self.stores_pixels else self

    def normalized(self) -> torch.Tensor:
        """The images mapped from pixels into :attr:`normalization` (a new tensor)."""
        if self.normalization is None:
            raise ValueError(f'{self!r} has no normalization statistics (mean/std)')
        return self.normalization.to_model(self.pixels())

    def in_space(self, space: ImageSpace) -> 'ImageSet':
        """The same set with its images mapped into ``space`` (through pixels). Stored pixels stay as they are when
        the space maps each pixel on its own (a normalization): only ``space`` changes, :meth:`batch` applies it."""
        if space is self.space:
            return self
        if self.stores_pixels and space.zca is None:
            return replace(self, space=space)
        return replace(self, images=space.to_model(self.pixels()), space=space)

    def subset(self, indices: Union[torch.Tensor, Sequence[int]]) -> 'ImageSet':
        """A new set holding the images at ``indices`` (in that order), with the same metadata."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return replace(self, images=self.images[idx], labels=self.labels[idx.to(self.labels.device)])

    def loader(self, batch_size: int, pin_memory: bool = False) -> DataLoader:
        """A ``DataLoader`` over the set in order, each batch converted into ``space`` when it is read (stored pixels
        stay uint8: no float copy of the set); for test sets, and ``accelerate.prepare`` can shard it."""
        return DataLoader(ImageSetDataset(self), batch_size=batch_size, shuffle=False, pin_memory=pin_memory,
                          collate_fn=_whole_batch)

    def to(self, device: Union[str, torch.device]) -> 'ImageSet':
        """A copy with images and labels on ``device``."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        stored = ' uint8 pixels' if self.stores_pixels else ''
        return (f'ImageSet(name={self.name!r}, split={self.split!r}, images={tuple(self.images.shape)}{stored}, '
                f'num_classes={self.num_classes}, space={self.space.name!r})')


class ImageSetDataset(Dataset):
    """An :class:`ImageSet` as a torch ``Dataset`` of ``(image, label)`` in its space; a batch is read at once
    (``__getitems__``, which ``DataLoader`` calls with a batch's indices) and converted as one tensor."""

    def __init__(self, images: ImageSet):
        self.images = images
        self.labels = images.labels  # what a class-balanced subset of a test loader reads

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.images.batch([index])[0], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.batch(idx), self.labels[idx]


def _whole_batch(batch: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ made the batch already


def as_image_set(images: Union[torch.Tensor, ImageSet], labels: Optional[torch.Tensor] = None) -> ImageSet:
    """``images`` when it is an :class:`ImageSet`, else the set of the tensor ``images`` (float, in the space the
    caller uses) with ``labels``: what lets a loop take either and read batches with :meth:`ImageSet.batch`."""
    if isinstance(images, ImageSet):
        return images
    return ImageSet(images, labels, num_classes=int(labels.max()) + 1 if labels.numel() else 0)


@dataclass
class DataSplits:
    """The training and test sets of a run, both in the space the networks see.

    Attributes:
        train: what the networks are trained on (a distilled set, real images per class, a whole split).
        test: the test split in the same space and size.
        name: the source dataset (``'cifar10'``, a folder).
        description: one line for tables and logs.
        source: JSON-serialisable provenance: what the data is and where it came from (``kind``, ``dataset``,
            ``path``, ``ipc``, ...), not its space (``space``); :attr:`record` is both, as results and saved models
            keep them.
        notes: what a reader of numbers trained on this data must know (a set loaded without checksums); they
            land in the results' notes.
    """
    train: ImageSet
    test: ImageSet
    name: str = ''
    description: str = ''
    source: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def class_names(self) -> List[str]:
        return self.train.class_names or self.test.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_chans(self) -> int:
        return self.train.in_chans

    @property
    def img_size(self) -> int:
        """The (square) side length, as timm's ``img_size``."""
        return self.train.images.shape[-1]

    @property
    def space(self) -> ImageSpace:
        return self.train.space

    @property
    def record(self) -> Dict[str, Any]:
        """Provenance and space in one JSON-serialisable dict (``source`` and ``space.to_dict()``): the ``data`` of
        results and run records."""
        return {**self.source, **self.space.to_dict()}

    @property
    def checksum(self) -> str:
        """Identifies the training images (recorded by experts, checked when they are used)."""
        if getattr(self, '_checksum', None) is None:
            train = self.train
            self._checksum = tensor_checksum(train.images) if not train.stores_pixels else tensor_checksum(
                (train.batch(slice(i, i + 4096)) for i in range(0, len(train), 4096)), train.images.shape)
        return self._checksum

"""The space images are stored and fed to networks in: per-channel normalization and/or ZCA whitening of pixels.

One :class:`ImageSpace` describes every such mapping in the package (datasets, distilled sets, training,
distillation, image grids): ``to_model`` maps [0, 1] pixels into the space (normalize, then whiten), ``to_pixels``
maps back (un-whiten, then de-normalize). MTT's ``--zca`` sets are ZCA of raw [0, 1] pixels (no normalization);
DC/DSA/DM sets are normalized; a set may also be ZCA of normalized pixels (both given).
"""
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from .zca import ZCA

__all__ = ['ImageSpace', 'SPACE_NAMES', 'to_uint8']

#: the names a space goes by in files and on the command line
SPACE_NAMES = ('normalized', 'zca', 'pixel')


@dataclass(frozen=True)
class ImageSpace:
    """Normalization (``mean``/``std`` per channel) and/or a ZCA transform, applied in that order.

    Args:
        mean: Per-channel mean subtracted from [0, 1] pixels, or ``None`` (no normalization).
        std: Per-channel std the pixels are divided by (given together with ``mean``).
        zca: ZCA whitening applied after the normalization, or ``None``.
    """
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    zca: Optional[ZCA] = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError('give both mean and std (normalization) or neither')
        if self.mean is not None:
            mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
            if len(mean) != len(std) or not mean:
                raise ValueError(f'mean and std need one value per channel, got {mean} / {std}')
            if any(s <= 0 for s in std):
                raise ValueError(f'normalization std must be positive, got {std}')
            object.__setattr__(self, 'mean', mean)
            object.__setattr__(self, 'std', std)

    @classmethod
    def normalized(cls, mean: Sequence[float], std: Sequence[float]) -> 'ImageSpace':
        return cls(tuple(mean), tuple(std))

    @classmethod
    def fit(cls, name: str, pixels: Optional[torch.Tensor], zca_eps: float = 0.1,
            normalization: Optional['ImageSpace'] = None) -> 'ImageSpace':
        """The space ``name`` fitted on a training split's [0, 1] ``pixels`` (only 'zca' reads them; the one place a
        space is fitted):
        'zca' is a ZCA (eps ``zca_eps``) of the pixels themselves (MTT's ``--zca``: no normalization first);
        'normalized' is ``normalization`` (a dataset's statistics, or CIFAR-10's for the sets made with them);
        'pixel' maps nothing."""
        if name == 'zca':
            if pixels is None:
                raise ValueError("the 'zca' space is fitted on the training split's pixels; none were given")
            return cls(zca=ZCA.fit(pixels, eps=zca_eps))
        if name == 'normalized':
            if normalization is None:
                raise ValueError("the 'normalized' space needs the dataset's mean and std")
            return normalization
        if name == 'pixel':
            return cls()
        raise ValueError(f'unknown image space {name!r}; one of {SPACE_NAMES}')

    @property
    def name(self) -> str:
        """``'zca'``, ``'normalized'`` or ``'pixel'``."""
        return 'zca' if self.zca is not None else 'normalized' if self.mean is not None else 'pixel'

    @property
    def normalization(self) -> Optional[Dict[str, list]]:
        """``{'mean': [...], 'std': [...]}`` or ``None``: the form stored in files."""
        return None if self.mean is None else {'mean': list(self.mean), 'std': list(self.std)}

    def _stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
                torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape))

    def to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels ``[N, C, H, W]`` into this space (a new tensor; differentiable)."""
        x = pixels
        if self.mean is not None:
            mean, std = self._stats(x)
            x = (x - mean) / std
        if self.zca is not None:
            x = self.zca.transform(x)
        return x

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Map images of this space back to pixels, nominally [0, 1] (float32, not clipped; differentiable)."""
        x = images.float()
        if self.zca is not None:
            x = self.zca.inverse_transform(x)
        if self.mean is not None:
            mean, std = self._stats(x)
            x = x * std + mean
        return x

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """Images of this space as uint8 pixels (:func:`to_uint8` of :meth:`to_pixels`): what previews store."""
        return to_uint8(self.to_pixels(images))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable description (the ZCA matrices themselves are stored as tensors, not here)."""
        out: Dict[str, Any] = {'image_space': self.name}
        if self.mean is not None:
            out.update(mean=list(self.mean), std=list(self.std))
        if self.zca is not None:
            out['zca_eps'] = self.zca.eps
        return out

    def disagreement(self, record: Mapping[str, Any], stats_tolerance: float = 0.02) -> Optional[str]:
        """``None`` when ``record`` (a :meth:`to_dict`, e.g. the space a saved model records) describes this space,
        else what differs: the space's name, the mean/std (within ``stats_tolerance``: a dataset's own statistics
        and its published rounded ones agree, two datasets' do not) or the ZCA's eps."""
        name = record.get('image_space')
        if name != self.name:
            return f'{name} space, not {self.name}'
        for key in ('mean', 'std'):
            ours, theirs = getattr(self, key), record.get(key)
            if ours is not None and theirs is not None and (
                    len(theirs) != len(ours) or any(abs(a - b) > stats_tolerance for a, b in zip(theirs, ours))):
                return f'{key} {[round(v, 4) for v in theirs]}, not {[round(v, 4) for v in ours]}'
        eps = record.get('zca_eps')
        if self.zca is not None and eps is not None and float(eps) != self.zca.eps:
            return f'ZCA eps {eps}, not {self.zca.eps}'
        return None


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels as uint8 (clamped, rounded to the nearest level): the one float -> uint8 conversion of image
    grids, previews and tracker images."""
    return pixels.clamp(0, 1).mul(255).round().to(torch.uint8)

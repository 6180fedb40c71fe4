"""Differentiable siamese augmentation (DSA), as used by DC/DSA, MTT and ATT, with replayable draws.

Six op families with the reference parameters (``DSAParams``); ``U ~ uniform[0, 1)`` drawn per sample:

============  ==================================================================================================
family        op
============  ==================================================================================================
``color``     brightness ``x + (U - 0.5) * brightness``, then saturation ``(x - m) * (U * saturation) + m`` with
              ``m`` the per-pixel channel mean, then contrast ``(x - m) * (U + contrast) + m`` with ``m`` the
              per-sample mean over (C, H, W)
``crop``      integer shift ``(ty, tx)`` uniform in ``[-s, s]``, ``s = int(H * ratio_crop_pad + 0.5)``:
              ``out[i, j] = x[i + ty, j + tx]``, 0 where that falls outside the image
``cutout``    square of side ``n = int(H * ratio_cutout + 0.5)``, centre uniform in ``[0, H + 1 - n % 2)``,
              clamped to the image, set to 0
``flip``      horizontal flip where ``U < prob_flip``
``scale``     affine ``[[sx, 0, 0], [0, sy, 0]]``, ``sx, sy ~ U(1 / ratio_scale, ratio_scale)``
``rotate``    affine rotation by ``U(-ratio_rotate, ratio_rotate)`` degrees
============  ==================================================================================================

Affine ops resample with ``affine_grid`` + ``grid_sample`` (bilinear, zero padding, ``align_corners=True``).
All ops are vectorized over the batch and differentiable w.r.t. the images.

Sampling is separate from applying so that a step can be replayed bit-identically (exact gradient
recomputation in trajectory matching): :meth:`DSA.sample` returns a :class:`DSADraw` holding the chosen
families and every per-sample parameter; :meth:`DSA.apply` is deterministic given a draw.

Randomness: every random number comes from the ``generator`` argument and is drawn on that generator's device
(a CPU generator, or the global CPU RNG when ``None``), then the draw is moved to the requested device. So a
CPU generator seeded alike gives the same parameters whether the images live on the CPU or a GPU.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ['DSA', 'DSADraw', 'DSAParams', 'DSA_FAMILIES', 'DEFAULT_STRATEGY', 'dsa', 'parse_strategy']

DSA_FAMILIES = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')
DEFAULT_STRATEGY = 'color_crop_cutout_flip_scale_rotate'

Device = Union[str, torch.device]


@dataclass(frozen=True)
class DSAParams:
    """Strengths of the DSA ops (the reference ``ParamDiffAug`` defaults)."""
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass(frozen=True, eq=False)
class DSADraw:
    """One sampled augmentation: the families in the order applied and their per-sample parameters.

    ``params`` holds, for the chosen families only (leading dim = batch size, or 1 when ``siamese``):
    ``brightness`` ``[B]`` additive shift, ``saturation`` ``[B]`` and ``contrast`` ``[B]`` factors (family
    ``color``); ``crop`` int64 ``[B, 2]`` shifts ``(ty, tx)``; ``cutout`` int64 ``[B, 4]`` clamped box
    ``(top, left, bottom, right)``, end-exclusive; ``flip`` bool ``[B]``; ``scale`` ``[B, 2]`` ``(sx, sy)``;
    ``rotate`` ``[B]`` angle in radians. A siamese draw applies to a batch of any size.
    """
    ops: Tuple[str, ...]
    params: Dict[str, torch.Tensor] = field(default_factory=dict)
    image_size: int = 0
    siamese: bool = False

    @property
    def batch_size(self) -> Optional[int]:
        """Samples the draw is for (``None`` for a siamese draw, which fits any batch)."""
        if self.siamese or not self.params:
            return None
        return next(iter(self.params.values())).shape[0]

    @property
    def device(self) -> Optional[torch.device]:
        return next(iter(self.params.values())).device if self.params else None

    def to(self, device: Device) -> 'DSADraw':
        """The same draw with its tensors on ``device``."""
        return DSADraw(self.ops, {k: v.to(device) for k, v in self.params.items()}, self.image_size, self.siamese)


def parse_strategy(strategy: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Op families of a strategy string such as ``'color_crop_cutout_flip_scale_rotate'``.

    ``''``, ``'none'`` and ``'None'`` mean no augmentation. Raises ``ValueError`` on unknown or repeated names.
    """
    if isinstance(strategy, str):
        names = () if strategy in ('', 'none', 'None') else tuple(strategy.split('_'))
    else:
        names = tuple(strategy)
    unknown = [n for n in names if n not in DSA_FAMILIES]
    if unknown:
        raise ValueError(f'unknown DSA op(s) {unknown} in strategy {strategy!r}; known: {DSA_FAMILIES}')
    if len(set(names)) != len(names):
        raise ValueError(f'repeated DSA op in strategy {strategy!r}')
    return names


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'DSA expects images [B, C, H, W], got {shape}')
    if not x.is_floating_point():
        raise ValueError(f'DSA expects floating point images, got {x.dtype}')
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f'DSA expects square images, got {x.shape[-2]}x{x.shape[-1]} (H x W)')


class DSA:
    """Differentiable siamese augmentation with separate sampling and application.

    Args:
        strategy: families joined by ``'_'`` (or a sequence of names), from :data:`DSA_FAMILIES`.
        params: op strengths.
        k: families applied per call: ``k=1`` draws one uniformly (the reference 'S' mode); ``k>1`` draws ``k``
            distinct families and applies them in random order ("k-fold DSA").

    Example::

        aug = DSA()
        draw = aug.sample(x.shape[0], x.shape[-1], x.device, generator=g)
        y = aug.apply(x, draw)          # replay later with the same draw: bit-identical
    """

    def __init__(self, strategy: Union[str, Sequence[str]] = DEFAULT_STRATEGY, params: DSAParams = DSAParams(),
                 k: int = 1):
        self.ops = parse_strategy(strategy)
        if int(k) != k or k < 1 or (self.ops and k > len(self.ops)):
            raise ValueError(f'k must be in [1, {len(self.ops)}] for strategy {strategy!r}, got {k!r}')
        self.strategy = strategy if isinstance(strategy, str) else '_'.join(self.ops)
        self.params = params
        self.k = int(k)

    def __repr__(self) -> str:
        return f'DSA(strategy={self.strategy!r}, k={self.k}, params={self.params})'

    @classmethod
    def of(cls, recipe: Any) -> Optional['DSA']:
        """The DSA a recipe asks for (a training, expert or distillation config): None without ``recipe.dsa``,
        else its ``dsa_strategy`` with ``dsa_k`` families per call (1 where the recipe has no ``dsa_k``)."""
        return cls(recipe.dsa_strategy, k=getattr(recipe, 'dsa_k', 1)) if recipe.dsa else None

    def sample(
            self,
            batch_size: int,
            image_size: int,
            device: Optional[Device] = None,
            generator: Optional[torch.Generator] = None,
            siamese: bool = False,
    ) -> DSADraw:
        """Draw the families and per-sample parameters for ``batch_size`` images of ``image_size`` pixels.

        Args:
            batch_size: samples in the batch (ignored when ``siamese``).
            image_size: height = width of the images.
            device: where the returned draw lives (default CPU).
            generator: source of all randomness (draws happen on its device; ``None`` = global CPU RNG).
            siamese: one parameter set for every sample (leading dim 1): the reference seed-sharing semantics,
                so the draw applies identically to batches of any size.
        """
        if int(batch_size) != batch_size or batch_size < 0 or int(image_size) != image_size or image_size < 1:
            raise ValueError(f'bad batch_size {batch_size!r} or image_size {image_size!r}')
        gen_device = generator.device if generator is not None else torch.device('cpu')
        if not self.ops:
            return DSADraw((), {}, int(image_size), siamese)
        pick = torch.randperm(len(self.ops), generator=generator, device=gen_device)[:self.k].tolist()
        ops = tuple(self.ops[i] for i in pick)
        n = 1 if siamese else int(batch_size)
        params = {}
        for op in ops:
            params.update(getattr(self, f'_sample_{op}')(n, int(image_size), generator, gen_device))
        draw = DSADraw(ops, params, int(image_size), siamese)
        return draw.to(device) if device is not None else draw.to('cpu')

    def apply(self, x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
        """Apply ``draw`` to images ``x`` ``[B, C, H, W]`` (deterministic, differentiable w.r.t. ``x``)."""
        _check_images(x)
        if draw.image_size != x.shape[-1]:
            raise ValueError(f'draw is for {draw.image_size} px images, got {x.shape[-1]} px')
        if draw.batch_size is not None and draw.batch_size != x.shape[0]:
            raise ValueError(f'draw is for batch size {draw.batch_size}, got {x.shape[0]} (use siamese=True to '
                             f'share one draw across batches)')
        if draw.device is not None and draw.device != x.device:
            draw = draw.to(x.device)
        for op in draw.ops:
            x = getattr(self, f'_apply_{op}')(x, draw.params)
        return x

    def __call__(
            self,
            x: torch.Tensor,
            generator: Optional[torch.Generator] = None,
            siamese: bool = False,
    ) -> torch.Tensor:
        """``apply(x, sample(...))`` with a fresh draw for ``x``."""
        _check_images(x)
        return self.apply(x, self.sample(x.shape[0], x.shape[-1], x.device, generator, siamese))

    # -- sampling (float parameters are float32; they are cast to the images' dtype when applied) ---------------

    def _sample_color(self, n, size, g, dev):
        p = self.params
        return {
            'brightness': (torch.rand(n, generator=g, device=dev) - 0.5) * p.brightness,
            'saturation': torch.rand(n, generator=g, device=dev) * p.saturation,
            'contrast': torch.rand(n, generator=g, device=dev) + p.contrast,
        }

    def _sample_crop(self, n, size, g, dev):
        s = int(size * self.params.ratio_crop_pad + 0.5)
        return {'crop': torch.randint(-s, s + 1, (n, 2), generator=g, device=dev)}

    def _sample_cutout(self, n, size, g, dev):
        side = int(size * self.params.ratio_cutout + 0.5)
        centre = torch.randint(0, size + (1 - side % 2), (n, 2), generator=g, device=dev)
        start = centre - side // 2
        # clamping the box equals clamping each covered index: the box always overlaps the image
        box = torch.cat([start.clamp(0, size), (start + side).clamp(0, size)], dim=1)
        return {'cutout': box}

    def _sample_flip(self, n, size, g, dev):
        return {'flip': torch.rand(n, generator=g, device=dev) < self.params.prob_flip}

    def _sample_scale(self, n, size, g, dev):
        r = self.params.ratio_scale
        return {'scale': torch.rand(n, 2, generator=g, device=dev) * (r - 1.0 / r) + 1.0 / r}

    def _sample_rotate(self, n, size, g, dev):
        deg = self.params.ratio_rotate
        return {'rotate': (torch.rand(n, generator=g, device=dev) - 0.5) * (2.0 * deg * math.pi / 180.0)}

    # -- application ---------------------------------------------------------------------------------------------

    @staticmethod
    def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.to(x.dtype).view(-1, 1, 1, 1)

    def _apply_color(self, x, params):
        x = x + self._per_sample(params['brightness'], x)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * self._per_sample(params['saturation'], x) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * self._per_sample(params['contrast'], x) + m

    def _apply_crop(self, x, params):
        b, _, h, w = x.shape
        shift = params['crop'].expand(b, 2)
        rows = torch.arange(h, device=x.device).unsqueeze(0) + shift[:, :1]  # [B, H] source row per output row
        cols = torch.arange(w, device=x.device).unsqueeze(0) + shift[:, 1:]
        # read from a 1-px zero border: out-of-range sources land on it, so shifted-in pixels are 0
        rows = (rows + 1).clamp(0, h + 1)
        cols = (cols + 1).clamp(0, w + 1)
        x_pad = F.pad(x, (1, 1, 1, 1))
        bidx = torch.arange(b, device=x.device).view(b, 1, 1)
        return x_pad.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _apply_cutout(self, x, params):
        b, _, h, w = x.shape
        box = params['cutout'].expand(b, 4)
        r = torch.arange(h, device=x.device).view(1, h, 1)
        c = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((r >= box[:, 0, None, None]) & (r < box[:, 2, None, None])
                  & (c >= box[:, 1, None, None]) & (c < box[:, 3, None, None]))
        return x * (~inside).unsqueeze(1).to(x.dtype)

    def _apply_flip(self, x, params):
        return torch.where(params['flip'].view(-1, 1, 1, 1), x.flip(3), x)

    @staticmethod
    def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        theta = theta.expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=True)

    def _apply_scale(self, x, params):
        s = params['scale'].to(x.dtype)
        zero = torch.zeros_like(s[:, 0])
        theta = torch.stack([torch.stack([s[:, 0], zero, zero], 1), torch.stack([zero, s[:, 1], zero], 1)], 1)
        return self._affine(x, theta)

    def _apply_rotate(self, x, params):
        a = params['rotate'].to(x.dtype)
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return self._affine(x, theta)


def dsa(
        x: torch.Tensor,
        strategy: Union[str, Sequence[str]] = DEFAULT_STRATEGY,
        k: int = 1,
        generator: Optional[torch.Generator] = None,
        siamese: bool = False,
        params: DSAParams = DSAParams(),
) -> torch.Tensor:
    """Functional DSA: ``DSA(strategy, params, k)(x, generator, siamese)``."""
    return DSA(strategy, params, k)(x, generator=generator, siamese=siamese)

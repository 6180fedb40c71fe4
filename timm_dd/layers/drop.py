"""Keep-rate DropPath: residual DropPath and the "virtual shortcut" for single-branch networks.

The DP+KD method ("Towards Mitigating Architecture Overfitting on Distilled Datasets", Zhong & Liu) drives
every droppable unit of a network with one *keep rate* ``p`` changed by a schedule during training.

* Residual DropPath: per sample, the residual branch is kept with probability ``p`` and scaled by ``1/p``
  before it is added to the shortcut (timm's ``DropPath`` with ``drop_prob = 1 - p``).
* Virtual shortcut: a single-branch block (two convs) outputs, per sample, either its main path
  (probability ``p``) or a cheap shortcut (optional 2x2 max-pool, 1x1 conv, norm), *unscaled*. In eval mode
  only the main path runs.
"""
from typing import Optional

import torch
from torch import nn
from timm.layers import DropPath as TimmDropPath

__all__ = ['DropPath', 'VirtualShortcut', 'check_keep_rate', 'sample_keep_mask']


def check_keep_rate(p: float) -> float:
    """Validate a keep rate; it must lie in (0, 1]."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f'keep rate p must be a number in (0, 1], got {p!r}') from None
    if not 0.0 < p <= 1.0:  # also rejects NaN
        raise ValueError(f'keep rate p must be in (0, 1], got {p}')
    return p


def sample_keep_mask(
        x: torch.Tensor,
        keep_rate: float,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """One Bernoulli(keep_rate) draw per sample, shaped ``(B, 1, ..., 1)`` to broadcast over ``x``."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    probs = torch.full(shape, keep_rate, device=x.device, dtype=x.dtype)
    return torch.bernoulli(probs, generator=generator)


class DropPath(TimmDropPath):
    """Residual DropPath addressed by keep rate, a drop-in subclass of timm's ``DropPath``.

    ``drop_prob = 1 - keep_rate``. Being a subclass, code that walks a model for timm ``DropPath`` modules
    (such as :func:`timm_dd.set_keep_rate`) handles ours and stock timm models alike. An optional
    ``generator`` makes the masks reproducible independently of the global RNG.
    """

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True, generator: Optional[torch.Generator] = None):
        super().__init__(drop_prob=drop_prob, scale_by_keep=scale_by_keep)
        self.generator = generator

    @property
    def keep_rate(self) -> float:
        return 1.0 - self.drop_prob

    @keep_rate.setter
    def keep_rate(self, p: float) -> None:
        self.drop_prob = 1.0 - check_keep_rate(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.:
            return x
        keep = self.keep_rate
        mask = sample_keep_mask(x, keep, self.generator)
        if self.scale_by_keep:
            mask = mask / keep
        return x * mask

    def extra_repr(self) -> str:
        return f'keep_rate={self.keep_rate:.3f}'


class VirtualShortcut(nn.Module):
    """A droppable single-branch block: per sample, the main path or (when dropped) the shortcut.

    Training: ``out = main(x) * m + shortcut(x) * (1 - m)`` with ``m ~ Bernoulli(keep_rate)`` per sample and
    no ``1/p`` rescaling, so each sample's output equals exactly one of the two paths. Eval: ``main(x)``.

    As in the reference code the shortcut is also computed when ``keep_rate == 1`` in training mode (its
    contribution is multiplied by zero). This keeps every parameter in the autograd graph, which DDP needs,
    at the cost of one extra 1x1 conv.
    """

    def __init__(
            self,
            main: nn.Module,
            shortcut: nn.Module,
            keep_rate: float = 1.0,
            generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.main = main
        self.shortcut = shortcut
        self.keep_rate = check_keep_rate(keep_rate)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        if not self.training:
            return out
        mask = sample_keep_mask(out, self.keep_rate, self.generator)
        return out * mask + self.shortcut(x) * (1.0 - mask)

    def extra_repr(self) -> str:
        return f'keep_rate={self.keep_rate:.3f}'

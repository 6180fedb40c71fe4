"""Normalization layers selected by name, as the dataset-distillation literature uses them."""
from typing import Optional

import torch
from torch import nn

__all__ = ['NORM_TYPES', 'check_norm', 'create_norm2d']

# 'instance' is GroupNorm(C, C, affine) as in the DC/DSA/MTT code: per-sample, per-channel statistics with
# affine parameters and no running buffers (nn.InstanceNorm2d has no affine parameters by default).
NORM_TYPES = ('instance', 'batch', 'group', 'layer', 'none')

_ALIASES = {
    'instancenorm': 'instance', 'in': 'instance',
    'batchnorm': 'batch', 'bn': 'batch',
    'groupnorm': 'group', 'gn': 'group',
    'layernorm': 'layer', 'ln': 'layer',
    'identity': 'none', '': 'none',
}


def check_norm(norm: str) -> str:
    """Return the canonical norm name or raise a ``ValueError`` naming the ``norm`` argument."""
    if not isinstance(norm, str):
        raise ValueError(f'norm must be one of {NORM_TYPES}, got {norm!r}')
    name = _ALIASES.get(norm.lower(), norm.lower())
    if name not in NORM_TYPES:
        raise ValueError(f'norm must be one of {NORM_TYPES}, got {norm!r}')
    return name


def create_norm2d(
        norm: str,
        num_channels: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """Build a 2d normalization layer for ``num_channels`` channels.

    ``group`` follows the DP+KD code, ``GroupNorm(C // 16, C)`` (at least one group); ``layer`` is
    ``GroupNorm(1, C)``, a layer norm over (C, H, W) with per-channel affine parameters, so it does not
    depend on the input size (the DC benchmark's ConvNet uses ``nn.LayerNorm([C, H, W])`` instead).
    """
    dd = dict(device=device, dtype=dtype)
    norm = check_norm(norm)
    if norm == 'instance':
        return nn.GroupNorm(num_channels, num_channels, affine=True, **dd)
    if norm == 'batch':
        return nn.BatchNorm2d(num_channels, **dd)
    if norm == 'group':
        return nn.GroupNorm(max(1, num_channels // 16), num_channels, affine=True, **dd)
    if norm == 'layer':
        return nn.GroupNorm(1, num_channels, affine=True, **dd)
    return nn.Identity()

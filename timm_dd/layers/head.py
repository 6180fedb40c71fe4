"""Early-pool ("flatten") classifier heads used by the ConvNet, VGG and AlexNet of the distillation literature."""
from typing import Tuple

import torch

__all__ = ['check_global_pool', 'head_in_features', 'pool_features']

_FLATTEN = ('', 'flatten')
_AVG = ('avg',)


def check_global_pool(global_pool: str) -> str:
    """``''``/``'flatten'`` flatten the whole final map (the classic head); ``'avg'`` is global average pooling."""
    if global_pool in _FLATTEN:
        return 'flatten'
    if global_pool in _AVG:
        return 'avg'
    raise ValueError(f"global_pool must be one of '', 'flatten' or 'avg', got {global_pool!r}")


def head_in_features(num_features: int, feat_size: Tuple[int, int], global_pool: str) -> int:
    if check_global_pool(global_pool) == 'flatten':
        return num_features * feat_size[0] * feat_size[1]
    return num_features


def pool_features(x: torch.Tensor, global_pool: str, feat_size: Tuple[int, int], img_size: Tuple[int, int]) -> torch.Tensor:
    """Pool an NCHW map to ``[B, features]``; a flatten head checks the map size so that a wrong input size
    fails with a clear message instead of a shape error inside the linear layer."""
    if global_pool == 'avg':
        return x.mean((2, 3))
    if tuple(x.shape[-2:]) != tuple(feat_size):
        raise ValueError(
            f'model was built for img_size={tuple(img_size)} (final map {tuple(feat_size)}), but the input gave a '
            f'final map of {tuple(x.shape[-2:])}; create the model with img_size matching your images')
    return x.flatten(1)

""" ConvNet: the training network of dataset distillation (DC, DSA, DM, MTT, FTD, ATT, DATM, ...)

Depth-D stack of ``Conv3x3 -> Norm -> ReLU -> 2x2 AvgPool`` blocks followed by a flatten + Linear head, as
defined in the DC benchmark code (Zhao & Bilen) used by MTT (Cazenavette et al., 2022). "Instance norm" there
is ``GroupNorm(C, C, affine=True)``.

Module names and parameter order (``features.0`` conv, ``features.1`` norm, ``features.2`` act,
``features.3`` pool, ..., ``classifier``) match the reference code, so flat expert trajectories and
checkpoints made with it load unchanged.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import check_norm
from ._common import (
    describe_input,
    IMAGENET_MEAN, IMAGENET_STD, check_in_chans, cifar_cfg, conv_norm_act, factory_kwargs,
    reject_drop_path,
)
from ._sequential import SequentialNet

__all__ = ['ConvNet']

_POOLS = ('avg', 'max', 'none')


class ConvNet(SequentialNet):
    """The dataset-distillation ConvNet.

    Defaults (``depth=3, width=128, norm='instance', pool='avg', img_size=32``) reproduce ConvNetD3 of the
    DC/DSA/MTT code (320,010 parameters for 10 classes). ``widths=(128, 256, 512)`` with ``norm='batch'``
    reproduces the FRePo ConvNet used as DP+KD teacher (1,562,634 parameters).

    ``global_pool``: ``''``/``'flatten'`` (default) flattens the final map into the linear layer (the
    classic head); ``'avg'`` averages it first (the "ConvNetGAP" variant).
    ConvNet has no shortcut to fall back on, so ``drop_path_rate`` must be 0.
    """

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 3,
            depth: int = 3,
            width: int = 128,
            widths: Optional[Sequence[int]] = None,
            norm: str = 'instance',
            act: str = 'relu',
            pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 32,
            global_pool: str = '',
            drop_rate: float = 0.,
            drop_path_rate: Optional[float] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            num_classes: number of classes of the linear head (0 = no head, ``forward`` returns pre-logits).
            in_chans: input channels.
            depth: number of conv blocks (ignored when ``widths`` is given).
            width: channels of every block.
            widths: per-block channels, e.g. ``(128, 256, 512)`` for the FRePo ConvNet.
            norm: one of ``instance`` (GroupNorm(C, C)), ``batch``, ``group``, ``layer``, ``none``.
            act: activation, ``relu`` (default), ``leakyrelu``, ``sigmoid`` or ``gelu``.
            pool: ``avg`` (default), ``max`` or ``none``.
            img_size: input size the flatten head is sized for.
            global_pool: ``''``/``'flatten'`` or ``'avg'`` (see class docstring).
            drop_rate: dropout before the classifier.
            drop_path_rate: must be 0 or None (no droppable units).
        """
        super().__init__()
        dd = factory_kwargs(device, dtype)
        reject_drop_path(drop_path_rate, 'ConvNet')
        check_in_chans(in_chans)
        self.in_chans = in_chans
        norm = check_norm(norm)
        if pool not in _POOLS:
            raise ValueError(f'pool must be one of {_POOLS}, got {pool!r}')
        widths = tuple(int(w) for w in widths) if widths is not None else (int(width),) * int(depth)
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f'depth/widths must describe at least one block of positive width, got {widths}')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        min_size = 2 ** len(widths) if pool != 'none' else 1
        if len(img_size) != 2 or min(img_size) < min_size:
            raise ValueError(f'img_size must be at least {min_size} for {len(widths)} pooling blocks, got {img_size}')

        self.feature_info: List[Dict[str, Any]] = []

        layers: List[nn.Module] = []
        prev_chs, feat_size, reduction = in_chans, list(img_size), 1
        for w in widths:
            layers += conv_norm_act(prev_chs, w, 3, norm, act, dd)
            if pool != 'none':
                layers += [nn.AvgPool2d(2, 2) if pool == 'avg' else nn.MaxPool2d(2, 2)]
                feat_size = [s // 2 for s in feat_size]
                reduction *= 2
            self.feature_info.append(dict(num_chs=w, reduction=reduction, module=f'features.{len(layers) - 1}'))
            prev_chs = w
        self.features = nn.Sequential(*layers)
        self._init_head(prev_chs, tuple(feat_size), img_size, num_classes, global_pool, drop_rate, dd)


def _create_convnet(variant: str, pretrained: bool = False, **kwargs) -> ConvNet:
    out_indices = kwargs.pop('out_indices', None)
    num_blocks = len(kwargs['widths']) if kwargs.get('widths') is not None else kwargs.get('depth', 3)
    feature_cfg = dict(flatten_sequential=True, out_indices=out_indices or tuple(range(num_blocks)))
    return describe_input(build_model_with_cfg(ConvNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs))


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return cifar_cfg('features.0', 'classifier', pool_size=(4, 4), url=url, **kwargs)


default_cfgs = generate_default_cfgs({
    'convnet3': _cfg(),
    'convnet4': _cfg(
        num_classes=200, input_size=(3, 64, 64), mean=IMAGENET_MEAN, std=IMAGENET_STD),
    'convnet5': _cfg(
        num_classes=10, input_size=(3, 128, 128), mean=IMAGENET_MEAN, std=IMAGENET_STD),
    'convnet3_frepo': _cfg(),
    'convnet3_w512': _cfg(),
})


@register_model
def convnet3(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNetD3 (DC/DSA/MTT/ATT, DP+KD ``convnet``): 3 x [conv128-instancenorm-relu-avgpool], 32 px."""
    model_args = dict(depth=3, width=128, norm='instance', img_size=32)
    return _create_convnet('convnet3', pretrained, **dict(model_args, **kwargs))


@register_model
def convnet4(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNetD4 (MTT Tiny-ImageNet): 4 blocks of width 128, 64 px input, 200 classes by default."""
    model_args = dict(depth=4, width=128, norm='instance', img_size=64)
    return _create_convnet('convnet4', pretrained, **dict(model_args, **kwargs))


@register_model
def convnet5(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNetD5 (MTT ImageNet subsets): 5 blocks of width 128, 128 px input."""
    model_args = dict(depth=5, width=128, norm='instance', img_size=128)
    return _create_convnet('convnet5', pretrained, **dict(model_args, **kwargs))


@register_model
def convnet3_frepo(pretrained: bool = False, **kwargs) -> ConvNet:
    """FRePo ConvNet (DP+KD ``convnetfrepo`` teacher): widths 128/256/512, batch norm, 32 px."""
    model_args = dict(widths=(128, 256, 512), norm='batch', img_size=32)
    return _create_convnet('convnet3_frepo', pretrained, **dict(model_args, **kwargs))


@register_model
def convnet3_w512(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNetD3 of width 512 (ELF ``ConvNetW512``), the ELF feature model for 32 px ResNet18/VGG11."""
    model_args = dict(depth=3, width=512, norm='instance', img_size=32)
    return _create_convnet('convnet3_w512', pretrained, **dict(model_args, **kwargs))

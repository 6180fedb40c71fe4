""" CIFAR-style AlexNet with droppable "virtual shortcut" blocks (DP+KD) and the MTT-style plain AlexNet

* ``alexnet_dd`` (DP+KD ``alexnetdp``): ``conv5x5(128) N R M``, then two droppable blocks
  ``[conv5x5(192) N R M conv3x3(256) N R]`` (shortcut: max-pool, 1x1 conv, norm) and
  ``[conv3x3(192) N R conv3x3(192) N R]`` (shortcut: 1x1 conv, norm), ``M``, one Linear head.
* ``alexnet_mtt`` (DC/DSA/MTT/ATT evaluation ``AlexNet``): the plain 5-conv network **without normalization**;
  ``norm='batch'`` gives DP+KD's plain ``alexnet``.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import check_norm, keep_rates_from_drop_path_rate
from ._common import (
    describe_input,
    cifar_cfg, check_img_size, check_in_chans, conv_dp_block, conv_norm_act, factory_kwargs,
    reject_drop_path,
)
from ._sequential import SequentialNet

__all__ = ['AlexNet']


class AlexNet(SequentialNet):
    """AlexNet for 32/64 px inputs (the dataset-distillation version: 128-192-256-192-192 channels).

    ``droppable=True`` groups conv2+conv3 and conv4+conv5 into virtual-shortcut blocks driven by a keep rate
    (``drop_path_rate=r`` means keep rate ``1 - r`` on both, or timm's linear rule with
    ``drop_path_rule='linear'``). ``droppable=False`` is the plain network and requires ``drop_path_rate=0``.
    The classifier is named ``fc`` as in the reference code.
    """
    classifier_name = 'fc'

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 3,
            droppable: bool = True,
            norm: str = 'batch',
            first_norm: Optional[str] = None,
            img_size: Union[int, Tuple[int, int]] = 32,
            global_pool: str = '',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_path_rule: str = 'uniform',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            num_classes: classes of the head (0 = no head).
            in_chans: input channels.
            droppable: build the two virtual-shortcut blocks (DP+KD) or the plain network (MTT).
            norm: ``batch``, ``instance`` (GroupNorm(C, C)), ``group``, ``layer`` or ``none``.
            first_norm: norm after the first convolution; ``None``: batch norm for the DP+KD network (its reference
                code always uses batch norm there, whatever ``--norm`` says), ``norm`` for the plain one.
            img_size: input size, a multiple of 8 and at least 8 (the map is pooled three times).
            global_pool: ``''``/``'flatten'`` (default) or ``'avg'``.
            drop_rate: dropout before the classifier.
            drop_path_rate: initial drop probability of the droppable blocks.
            drop_path_rule: ``uniform`` or ``linear``.
        """
        super().__init__()
        dd = factory_kwargs(device, dtype)
        norm = check_norm(norm)
        check_in_chans(in_chans)
        self.in_chans = in_chans
        img_size = check_img_size(img_size, min_size=8, multiple=8)
        self.feature_info: List[Dict[str, Any]] = []
        first_norm = check_norm(first_norm if first_norm is not None else ('batch' if droppable else norm))
        layers: List[nn.Module] = conv_norm_act(in_chans, 128, 5, first_norm, dd=dd) + [nn.MaxPool2d(2, 2)]
        self.feature_info.append(dict(num_chs=128, reduction=2, module=f'features.{len(layers) - 1}'))
        if droppable:
            keep_rates = keep_rates_from_drop_path_rate(drop_path_rate or 0., 2, drop_path_rule)
            layers += [conv_dp_block(128, 192, 256, (5, 3), norm, pool_between=True, keep_rate=keep_rates[0], dd=dd)]
            self.feature_info.append(dict(num_chs=256, reduction=4, module=f'features.{len(layers) - 1}'))
            layers += [conv_dp_block(256, 192, 192, (3, 3), norm, keep_rate=keep_rates[1], dd=dd)]
        else:
            reject_drop_path(drop_path_rate, 'AlexNet(droppable=False)')
            layers += conv_norm_act(128, 192, 5, norm, dd=dd) + [nn.MaxPool2d(2, 2)]
            self.feature_info.append(dict(num_chs=192, reduction=4, module=f'features.{len(layers) - 1}'))
            layers += conv_norm_act(192, 256, 3, norm, dd=dd)
            layers += conv_norm_act(256, 192, 3, norm, dd=dd)
            layers += conv_norm_act(192, 192, 3, norm, dd=dd)
        layers += [nn.MaxPool2d(2, 2)]
        self.feature_info.append(dict(num_chs=192, reduction=8, module=f'features.{len(layers) - 1}'))
        self.features = nn.Sequential(*layers)
        feat_size = (img_size[0] // 8, img_size[1] // 8)
        self._init_head(192, feat_size, img_size, num_classes, global_pool, drop_rate, dd)


def _create_alexnet(variant: str, pretrained: bool = False, **kwargs) -> AlexNet:
    out_indices = kwargs.pop('out_indices', (0, 1, 2))
    feature_cfg = dict(flatten_sequential=True, out_indices=out_indices)
    return describe_input(build_model_with_cfg(AlexNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs))


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return cifar_cfg('features.0', 'fc', pool_size=(4, 4), url=url, **kwargs)


default_cfgs = generate_default_cfgs({
    'alexnet_dd': _cfg(),
    'alexnet_mtt': _cfg(),
})


@register_model
def alexnet_dd(pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet of DP+KD (``alexnetdp``): two virtual-shortcut blocks, batch norm
    (1,957,386 parameters for 10 classes at 32 px)."""
    model_args = dict(droppable=True, norm='batch')
    return _create_alexnet('alexnet_dd', pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_mtt(pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet of the MTT/ATT cross-architecture evaluation: plain, no normalization (1,872,202 parameters for
    10 classes at 32 px; ``norm='batch'`` gives DP+KD's plain ``alexnet``, 1,874,122)."""
    model_args = dict(droppable=False, norm='none')
    return _create_alexnet('alexnet_mtt', pretrained, **dict(model_args, **kwargs))

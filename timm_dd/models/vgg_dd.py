""" CIFAR-style VGG11 with droppable "virtual shortcut" blocks (DP+KD) and the MTT-style plain VGG11

* ``vgg11_dd`` (DP+KD ``vggdp``): ``conv64 M conv128 M [conv256 conv256] M [conv512 conv512] M [conv512 conv512] M``
  where each bracketed pair is one droppable block that falls back to a 1x1-conv shortcut (or the identity
  when channels match) when dropped; batch norm by default.
* ``vgg11_mtt`` (DC/DSA/MTT/ATT evaluation ``VGG11``): the plain network, ``GroupNorm(C, C)``.

Both have conv biases, no hidden FC layers and one Linear head sized from the input resolution.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import check_norm, keep_rates_from_drop_path_rate
from ._common import (
    describe_input,
    cifar_cfg, check_img_size, check_in_chans, conv_dp_block, conv_norm_act, factory_kwargs, reject_drop_path,
)
from ._sequential import SequentialNet

__all__ = ['VGG']

# 'M' = 2x2 max-pool; a tuple (a, b) = two convs grouped into one droppable virtual-shortcut block
VGG11_CFG = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')
VGG11_DP_CFG = (64, 'M', 128, 'M', (256, 256), 'M', (512, 512), 'M', (512, 512), 'M')


class VGG(SequentialNet):
    """VGG for 32/64 px inputs: conv3x3-norm-relu layers and max-pools, then one Linear on the flattened map.

    ``cfg`` entries: an int is one conv layer, ``'M'`` a 2x2 max-pool, a pair ``(hidden, out)`` a droppable
    block of two convs with a virtual shortcut (see :func:`timm_dd.models._common.conv_dp_block`).
    ``drop_path_rate=r`` sets keep rate ``1 - r`` on every droppable block (``drop_path_rule='linear'``: timm's
    linear-by-depth rule); a cfg without droppable blocks requires ``drop_path_rate=0``.
    """

    def __init__(
            self,
            cfg: Sequence[Union[int, str, Tuple[int, int]]] = VGG11_DP_CFG,
            num_classes: int = 10,
            in_chans: int = 3,
            norm: str = 'batch',
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
            cfg: layer configuration (see class docstring).
            num_classes: classes of the head (0 = no head).
            in_chans: input channels.
            norm: ``batch``, ``instance`` (GroupNorm(C, C)), ``group``, ``layer`` or ``none``.
            img_size: input size; must be a multiple of 2**(number of pools), at least 32 for VGG11.
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
        num_pools = sum(1 for c in cfg if c == 'M')
        img_size = check_img_size(img_size, min_size=2 ** num_pools, multiple=2 ** num_pools)
        num_droppable = sum(1 for c in cfg if isinstance(c, tuple))
        if num_droppable == 0:
            reject_drop_path(drop_path_rate, 'VGG without droppable blocks')
        keep_rates = keep_rates_from_drop_path_rate(drop_path_rate or 0., num_droppable, drop_path_rule)

        layers: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        prev_chs, reduction, unit = in_chans, 1, 0
        for c in cfg:
            if c == 'M':
                layers += [nn.MaxPool2d(2, 2)]
                reduction *= 2
                self.feature_info.append(dict(num_chs=prev_chs, reduction=reduction, module=f'features.{len(layers) - 1}'))
            elif isinstance(c, tuple):
                hidden, out = c
                layers += [conv_dp_block(prev_chs, hidden, out, (3, 3), norm, keep_rate=keep_rates[unit], dd=dd)]
                prev_chs, unit = out, unit + 1
            else:
                layers += conv_norm_act(prev_chs, c, 3, norm, dd=dd)
                prev_chs = c
        self.features = nn.Sequential(*layers)
        feat_size = (img_size[0] // reduction, img_size[1] // reduction)
        self._init_head(prev_chs, feat_size, img_size, num_classes, global_pool, drop_rate, dd)


def _create_vgg(variant: str, pretrained: bool = False, **kwargs) -> VGG:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3, 4))
    feature_cfg = dict(flatten_sequential=True, out_indices=out_indices)
    return describe_input(build_model_with_cfg(VGG, variant, pretrained, feature_cfg=feature_cfg, **kwargs))


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return cifar_cfg('features.0', 'classifier', pool_size=(1, 1), url=url, **kwargs)


default_cfgs = generate_default_cfgs({
    'vgg11_dd': _cfg(),
    'vgg11_mtt': _cfg(),
})


@register_model
def vgg11_dd(pretrained: bool = False, **kwargs) -> VGG:
    """VGG11 of DP+KD (``vggdp``) with three virtual-shortcut blocks, batch norm
    (9,398,282 parameters for 10 classes at 32 px, as the reference)."""
    model_args = dict(cfg=VGG11_DP_CFG, norm='batch')
    return _create_vgg('vgg11_dd', pretrained, **dict(model_args, **kwargs))


@register_model
def vgg11_mtt(pretrained: bool = False, **kwargs) -> VGG:
    """VGG11 of the MTT/ATT cross-architecture evaluation: plain, GroupNorm(C, C) (9,231,114 parameters for 10
    classes at 32 px; with ``norm='batch'`` it is DP+KD's plain ``vgg``)."""
    model_args = dict(cfg=VGG11_CFG, norm='instance')
    return _create_vgg('vgg11_mtt', pretrained, **dict(model_args, **kwargs))

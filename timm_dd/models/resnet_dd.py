""" CIFAR-style ResNet18 / ResNet50 with keep-rate residual DropPath and the improved max-pool shortcut

Two published families share this class:

* DP+KD (Zhong & Liu, "Towards Mitigating Architecture Overfitting on Distilled Datasets"): conv biases,
  configurable norm (batch norm in the released runs), the improved shortcut ``MaxPool(s) -> Conv1x1 -> Norm``
  on downsampling blocks, and one DropPath per block: ``resnet18_dd``, ``resnet50_dd``.
* MTT-style evaluation network (DC/DSA/MTT/FTD/ATT cross-architecture tables): no conv biases,
  ``GroupNorm(C, C)`` ("instance norm"), classic strided 1x1 conv shortcut: ``resnet18_mtt``.

Both use a 3x3 stride-1 stem without max-pool (not timm's ImageNet ResNet).
Layer names follow timm's ``resnet.py`` (``conv1``, ``bn1``, ``layer1..4``, ``downsample``, ``drop_path``, ``fc``).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers import DropPath, check_norm, create_norm2d, keep_rates_from_drop_path_rate
from ._common import FeatureIntermediates, check_in_chans, cifar_cfg, describe_input, factory_kwargs

__all__ = ['ResNet', 'BasicBlock', 'Bottleneck']

SHORTCUT_TYPES = ('maxpool', 'conv')


def _downsample(
        in_chs: int, out_chs: int, stride: int, norm: str, shortcut: str, conv_bias: bool, dd: dict,
) -> nn.Module:
    if shortcut == 'conv':
        # classic: a strided 1x1 conv, which discards 3/4 of the positions when stride is 2
        return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=conv_bias, **dd),
                             create_norm2d(norm, out_chs, **dd))
    # improved (DP+KD): max-pool first so every position can contribute, then a stride-1 1x1 conv
    pool = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(in_chs, out_chs, 1, stride=1, bias=conv_bias, **dd),
                         create_norm2d(norm, out_chs, **dd))


class BasicBlock(nn.Module):
    """``relu(drop_path(bn2(conv2(relu(bn1(conv1(x)))))) + shortcut(x))``: DropPath after the last norm, before
    the add; the shortcut is never dropped."""
    expansion = 1

    def __init__(
            self, in_chs: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
            norm: str = 'batch', conv_bias: bool = True, keep_rate: float = 1.0, dd: Optional[dict] = None,
    ):
        super().__init__()
        dd = dd or {}
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=conv_bias, **dd)
        self.bn1 = create_norm2d(norm, planes, **dd)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=conv_bias, **dd)
        self.bn2 = create_norm2d(norm, planes, **dd)
        self.drop_path = DropPath(1.0 - keep_rate)
        self.act2 = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x = self.drop_path(x)
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels) residual branch with DropPath before the add."""
    expansion = 4

    def __init__(
            self, in_chs: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
            norm: str = 'batch', conv_bias: bool = True, keep_rate: float = 1.0, dd: Optional[dict] = None,
    ):
        super().__init__()
        dd = dd or {}
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=conv_bias, **dd)
        self.bn1 = create_norm2d(norm, planes, **dd)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=conv_bias, **dd)
        self.bn2 = create_norm2d(norm, planes, **dd)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=conv_bias, **dd)
        self.bn3 = create_norm2d(norm, out_chs, **dd)
        self.drop_path = DropPath(1.0 - keep_rate)
        self.act3 = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = self.drop_path(x)
        return self.act3(x + shortcut)


_BLOCKS: Dict[str, Type[nn.Module]] = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(FeatureIntermediates, nn.Module):
    """CIFAR-style ResNet (3x3 stride-1 stem, no max-pool) whose every block holds a keep-rate DropPath.

    ``drop_path_rate=r`` at creation sets keep rate ``1 - r`` on *every* block (``drop_path_rule='uniform'``,
    the DP+KD rule). timm's own models spread the rate linearly over depth instead
    (block ``i`` of ``n`` drops with ``r * i / (n - 1)``); ``drop_path_rule='linear'`` selects that.
    DropPath modules exist even when ``drop_path_rate=0`` so :func:`timm_dd.set_keep_rate` can drive them.
    """

    def __init__(
            self,
            block: str = 'basic',
            layers: Sequence[int] = (2, 2, 2, 2),
            num_classes: int = 10,
            in_chans: int = 3,
            widths: Sequence[int] = (64, 128, 256, 512),
            norm: str = 'batch',
            shortcut: str = 'maxpool',
            conv_bias: bool = True,
            img_size: Union[int, Tuple[int, int]] = 32,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_path_rule: str = 'uniform',
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """
        Args:
            block: ``basic`` (ResNet18/34) or ``bottleneck`` (ResNet50).
            layers: blocks per stage.
            num_classes: classes of the head (0 = no head).
            in_chans: input channels.
            widths: base channels of the four stages (the stem has ``widths[0]``).
            norm: ``batch``, ``instance`` (GroupNorm(C, C)), ``group``, ``layer`` or ``none``.
            shortcut: ``maxpool`` (improved: MaxPool -> 1x1 conv -> norm) or ``conv`` (strided 1x1 conv -> norm).
            conv_bias: biases in every conv (DP+KD: True; MTT: False).
            img_size: nominal input size (any size of at least 8 px works; the head pools globally).
            global_pool: timm pool type of the head (``avg``, ``max``, ``avgmax``, ``''`` = none).
            drop_rate: dropout before the classifier.
            drop_path_rate: initial drop probability of the residual branches (see class docstring).
            drop_path_rule: ``uniform`` or ``linear``.
        """
        super().__init__()
        dd = factory_kwargs(device, dtype)
        if block not in _BLOCKS:
            raise ValueError(f'block must be one of {tuple(_BLOCKS)}, got {block!r}')
        if shortcut not in SHORTCUT_TYPES:
            raise ValueError(f'shortcut must be one of {SHORTCUT_TYPES}, got {shortcut!r}')
        norm = check_norm(norm)
        check_in_chans(in_chans)
        self.in_chans = in_chans
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) != 2 or min(img_size) < 8:
            raise ValueError(f'img_size must be at least 8 px on each side, got {img_size}')
        block_cls = _BLOCKS[block]
        keep_rates = keep_rates_from_drop_path_rate(drop_path_rate or 0., sum(layers), drop_path_rule)

        self.num_classes = num_classes
        self.img_size = img_size
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=conv_bias, **dd)
        self.bn1 = create_norm2d(norm, widths[0], **dd)
        self.act1 = nn.ReLU()
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=widths[0], reduction=1, module='act1')]

        in_chs, reduction, unit = widths[0], 1, 0
        for stage_idx, (num_blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for block_idx in range(num_blocks):
                s = stride if block_idx == 0 else 1
                out_chs = planes * block_cls.expansion
                downsample = None
                if s != 1 or in_chs != out_chs:
                    downsample = _downsample(in_chs, out_chs, s, norm, shortcut, conv_bias, dd)
                blocks.append(block_cls(
                    in_chs, planes, s, downsample, norm=norm, conv_bias=conv_bias, keep_rate=keep_rates[unit], dd=dd))
                in_chs, unit = out_chs, unit + 1
            self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f'layer{stage_idx + 1}'))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool, **dd)
        self.head_drop = nn.Dropout(drop_rate)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        assert not enable, 'gradient checkpointing not supported'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        dd = dict(device=self.conv1.weight.device, dtype=self.conv1.weight.dtype)
        pool_type = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool_type, **dd)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    return describe_input(build_model_with_cfg(ResNet, variant, pretrained, **kwargs))


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return cifar_cfg('conv1', 'fc', pool_size=(4, 4), url=url, **kwargs)


default_cfgs = generate_default_cfgs({
    'resnet18_dd': _cfg(),
    'resnet50_dd': _cfg(),
    'resnet18_mtt': _cfg(),
})


@register_model
def resnet18_dd(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18 of DP+KD (``resnetdp``): BasicBlock [2,2,2,2], conv biases, batch norm, max-pool shortcut,
    residual DropPath (11,178,762 parameters for 10 classes)."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2), norm='batch', shortcut='maxpool', conv_bias=True)
    return _create_resnet('resnet18_dd', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_dd(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet50 of DP+KD (``resnet50dp``): Bottleneck [3,4,6,3], conv biases, batch norm, max-pool shortcut,
    residual DropPath (23,547,402 parameters for 10 classes)."""
    model_args = dict(block='bottleneck', layers=(3, 4, 6, 3), norm='batch', shortcut='maxpool', conv_bias=True)
    return _create_resnet('resnet50_dd', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet18_mtt(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet18 of the MTT/ATT cross-architecture evaluation: no conv biases, GroupNorm(C, C), strided 1x1 conv
    shortcut (11,173,962 parameters for 10 classes). Keeps DropPath modules (keep rate 1 by default)."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2), norm='instance', shortcut='conv', conv_bias=False)
    return _create_resnet('resnet18_mtt', pretrained, **dict(model_args, **kwargs))

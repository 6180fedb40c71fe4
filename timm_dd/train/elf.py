"""ELF (Zhao et al., arXiv 2312.05598): split an evaluation network into ``front`` and ``rear`` parts so an
intermediate feature map can be supervised by a ConvNet trained on real data.

Split points (32 px, no adapters: the front output must equal the feature model's output shape):

* ResNet (``resnet18_mtt`` = ELF's ``ResNet18_Layered``, ``resnet18_dd``): front = stem, layer1-3 and the first
  block of layer4 (512x4x4); rear = the remaining layer4 blocks, pooling and the classifier.
* VGG: front ends at the first activation with 512 channels at stride 8 (``vgg11_mtt``: the first five convs,
  ELF's ``VGG11_L5``; ``vgg11_dd``: after the second virtual-shortcut block, whose two convs cannot be split).
* ConvNet: front = all conv blocks, rear = the linear classifier (ELF's ``ConvNet_L3``).

ELF defines no AlexNet split; asking for one is an error.
"""
from typing import Callable, Tuple

import torch
from torch import nn

from ..layers import VirtualShortcut
from ..models.alexnet_dd import AlexNet
from ..models.convnet_dd import ConvNet
from ..models.resnet_dd import ResNet
from ..models.vgg_dd import VGG

__all__ = ['FeatureSplit', 'elf_split']


class FeatureSplit:
    """``front(x)`` and ``rear(feature)`` views of a model; ``rear(front(x)) == model(x)``."""

    def __init__(self, front: Callable[[torch.Tensor], torch.Tensor], rear: Callable[[torch.Tensor], torch.Tensor],
                 feature_shape: Tuple[int, int, int]):
        self.front = front
        self.rear = rear
        self.feature_shape = feature_shape


def _resnet_split(model: ResNet) -> FeatureSplit:
    def front(x: torch.Tensor) -> torch.Tensor:
        x = model.act1(model.bn1(model.conv1(x)))
        x = model.layer3(model.layer2(model.layer1(x)))
        return model.layer4[0](x)

    def rear(x: torch.Tensor) -> torch.Tensor:
        for block in list(model.layer4)[1:]:
            x = block(x)
        return model.forward_head(x)

    h, w = model.img_size
    return FeatureSplit(front, rear, (model.layer4[0].conv1.out_channels * _expansion(model), h // 8, w // 8))


def _expansion(model: ResNet) -> int:
    return type(model.layer4[0]).expansion


def _sequential_split(model: nn.Module, index: int, feature_shape: Tuple[int, int, int]) -> FeatureSplit:
    def front(x: torch.Tensor) -> torch.Tensor:
        return model.features[:index + 1](x)

    def rear(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.features[index + 1:](x))

    return FeatureSplit(front, rear, feature_shape)


def _vgg_split_index(model: VGG) -> Tuple[int, Tuple[int, int, int]]:
    x = torch.zeros(1, model.features[0].in_channels if isinstance(model.features[0], nn.Conv2d) else 3,
                    *model.img_size, device=next(model.parameters()).device)
    target_hw = (model.img_size[0] // 8, model.img_size[1] // 8)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, layer in enumerate(model.features):
                x = layer(x)
                is_activation = isinstance(layer, (nn.ReLU, VirtualShortcut))
                if is_activation and x.shape[1] == 512 and tuple(x.shape[-2:]) == target_hw:
                    return i, tuple(x.shape[1:])
    finally:
        model.train(was_training)
    raise ValueError('this VGG configuration has no 512-channel map at stride 8 to split at for ELF')


def elf_split(model: nn.Module) -> FeatureSplit:
    """The ELF front/rear split of a timm_dd model (see the module docstring)."""
    if isinstance(model, ResNet):
        return _resnet_split(model)
    if isinstance(model, VGG):
        index, shape = _vgg_split_index(model)
        return _sequential_split(model, index, shape)
    if isinstance(model, ConvNet):
        last = len(model.features) - 1
        return _sequential_split(model, last, (model.num_features, *model.feat_size))
    if isinstance(model, AlexNet):
        raise ValueError('ELF defines no split point for AlexNet; train it without --elf')
    raise ValueError(f'ELF needs a declared split point; {type(model).__name__} is not a timm_dd ConvNet, ResNet or VGG')


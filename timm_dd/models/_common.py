"""Small helpers shared by the timm_dd model files."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD', 'IMAGENET_MEAN', 'IMAGENET_STD',
           'cifar_cfg', 'create_act', 'conv_norm_act', 'conv_dp_block', 'factory_kwargs', 'check_img_size',
           'check_in_chans', 'reject_drop_path', 'FeatureIntermediates', 'describe_input']

from timm.models._features import feature_take_indices

from ..constants import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from ..layers import VirtualShortcut, create_norm2d

_ACTS = {'relu': nn.ReLU, 'leakyrelu': lambda: nn.LeakyReLU(0.01), 'sigmoid': nn.Sigmoid, 'gelu': nn.GELU}


def create_act(act: str) -> nn.Module:
    """Activation by name; never in-place, so models work under ``torch.func`` and double backward."""
    if act not in _ACTS:
        raise ValueError(f'act must be one of {tuple(_ACTS)}, got {act!r}')
    return _ACTS[act]()


def check_img_size(img_size: Union[int, Sequence[int]], min_size: int, multiple: int = 1) -> Tuple[int, int]:
    """Validate ``img_size`` (int or (H, W)) against the smallest size and the divisor a model needs."""
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) != 2 or any(s < min_size or s % multiple for s in img_size):
        raise ValueError(
            f'img_size must be at least {min_size} and a multiple of {multiple} on each side, got {img_size}')
    return img_size


def check_in_chans(in_chans: int) -> int:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f'in_chans must be a positive int, got {in_chans!r}')
    return in_chans


def reject_drop_path(drop_path_rate: Optional[float], model_name: str) -> None:
    """Plain single-branch networks have nothing to fall back on when a path is dropped."""
    if drop_path_rate:
        raise ValueError(
            f'{model_name} has no droppable units, so drop_path_rate must be 0 (got {drop_path_rate}); '
            f'use a *_dd model (residual DropPath or virtual shortcut) to train with DropPath')


def conv_norm_act(in_chs: int, out_chs: int, kernel_size: int, norm: str, act: str = 'relu',
                  dd: Optional[dict] = None) -> List[nn.Module]:
    """``[conv, norm, act]`` with 'same' padding; the norm is left out (not an Identity) for ``norm='none'`` so
    module indices match the reference code of networks without normalization."""
    dd = dd or {}
    layers = [nn.Conv2d(in_chs, out_chs, kernel_size, padding=(kernel_size - 1) // 2, **dd)]
    if norm != 'none':
        layers += [create_norm2d(norm, out_chs, **dd)]
    return layers + [create_act(act)]


def cifar_cfg(first_conv: str, classifier: str, pool_size: Tuple[int, int], url: str = '', **kwargs) -> dict:
    """A timm pretrained cfg for a 32 px, 10-class CIFAR model (override any field with ``kwargs``)."""
    return {
        'url': url, 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': pool_size,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': first_conv, 'classifier': classifier, 'license': 'apache-2.0',
        **kwargs,
    }


def factory_kwargs(device: Optional[torch.device], dtype: Optional[torch.dtype]) -> dict:
    return dict(device=device, dtype=dtype)


def conv_dp_block(
        in_chs: int,
        hidden_chs: int,
        out_chs: int,
        kernel_sizes: Tuple[int, int],
        norm: str,
        pool_between: bool = False,
        keep_rate: float = 1.0,
        keep_unused_norm: bool = True,
        dd: Optional[dict] = None,
) -> nn.Module:
    """Two convs grouped into one droppable block with a "virtual shortcut" (DP+KD ``ConvDP``).

    main: ``conv(k1) -> norm -> relu [-> maxpool 2x2] -> conv(k2) -> norm -> relu``;
    shortcut: identity when ``in_chs == out_chs``, else ``[maxpool 2x2 ->] conv1x1 (bias) -> norm``.
    The reference builds the shortcut norm even when the shortcut is the identity; with ``keep_unused_norm``
    that norm is kept (frozen, never called) so parameter counts and state dicts match the reference.
    """
    dd = dd or {}
    k1, k2 = kernel_sizes
    main = [nn.Conv2d(in_chs, hidden_chs, k1, padding=(k1 - 1) // 2, **dd), create_norm2d(norm, hidden_chs, **dd),
            nn.ReLU()]
    if pool_between:
        main += [nn.MaxPool2d(2, 2)]
    main += [nn.Conv2d(hidden_chs, out_chs, k2, padding=(k2 - 1) // 2, **dd), create_norm2d(norm, out_chs, **dd),
             nn.ReLU()]
    if in_chs == out_chs and not pool_between:
        shortcut = nn.Identity()
    else:
        shortcut = nn.Sequential(
            nn.MaxPool2d(2, 2) if pool_between else nn.Identity(),
            nn.Conv2d(in_chs, out_chs, 1, **dd),
            create_norm2d(norm, out_chs, **dd),
        )
    block = VirtualShortcut(nn.Sequential(*main), shortcut, keep_rate=keep_rate)
    if isinstance(shortcut, nn.Identity) and keep_unused_norm:
        block.unused_norm = create_norm2d(norm, out_chs, **dd).requires_grad_(False)
    return block


class FeatureIntermediates:
    """timm's ``forward_intermediates`` for a model with ``feature_info`` (``module`` = the submodule whose output is
    the feature map) and ``forward_features``: the final features and the chosen intermediate maps (NCHW)."""

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        names = [self.feature_info[i]['module'] for i in take]
        modules = dict(self.named_modules())
        outputs: Dict[str, torch.Tensor] = {}
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in names]
        try:
            final = self.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        intermediates = [outputs[n] for n in names]
        return intermediates if intermediates_only else (final, intermediates)


def describe_input(model: nn.Module) -> nn.Module:
    """Make ``model.pretrained_cfg`` describe the input the model was built for: ``input_size`` from its
    ``in_chans`` and ``img_size``, ``num_classes``; a mean/std of another channel count becomes its channel average
    (the data's own statistics replace it when a trained model is saved)."""
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    chans, size = getattr(model, 'in_chans', None), getattr(model, 'img_size', None)
    if chans is not None and size is not None:
        cfg['input_size'] = (chans, *tuple(size))
        for key in ('mean', 'std'):
            value = tuple(cfg.get(key) or ())
            if value and len(value) != chans:
                cfg[key] = (sum(value) / len(value),) * chans
    cfg['num_classes'] = getattr(model, 'num_classes', cfg.get('num_classes'))
    model.pretrained_cfg = cfg
    return model

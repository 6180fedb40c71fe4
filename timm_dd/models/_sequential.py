"""Base class for single-branch networks with a ``features`` Sequential and an early-pool (flatten) head."""
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..layers import check_global_pool, head_in_features, pool_features
from ._common import FeatureIntermediates

__all__ = ['SequentialNet']


class SequentialNet(FeatureIntermediates, nn.Module):
    """``features`` (an ``nn.Sequential``) -> flatten or average -> dropout -> linear classifier.

    Subclasses build ``self.features`` and ``self.feature_info`` and then call :meth:`_init_head`. The
    classifier attribute is named by ``classifier_name`` so that state dicts match the reference code.
    """
    classifier_name = 'classifier'
    features: nn.Sequential
    feature_info: List[Dict[str, Any]]

    def _init_head(
            self,
            num_features: int,
            feat_size: Tuple[int, int],
            img_size: Tuple[int, int],
            num_classes: int,
            global_pool: str,
            drop_rate: float,
            dd: dict,
    ) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.feat_size = tuple(feat_size)
        self.img_size = tuple(img_size)
        self.drop_rate = drop_rate
        self.global_pool = check_global_pool(global_pool)
        self.head_hidden_size = head_in_features(num_features, self.feat_size, self.global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self._set_classifier(num_classes, dd)

    def _set_classifier(self, num_classes: int, dd: dict) -> None:
        fc = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, fc)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^features\.0', blocks=r'^features\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        assert not enable, 'gradient checkpointing not supported'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head; ``global_pool`` ``''``/``'flatten'`` keeps the flatten head, ``'avg'`` switches to
        global average pooling (the head of an early-pool model is never 4-D)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
            self.head_hidden_size = head_in_features(self.num_features, self.feat_size, self.global_pool)
        ref = next(self.features.parameters())
        self._set_classifier(num_classes, dict(device=ref.device, dtype=ref.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = pool_features(x, self.global_pool, self.feat_size, self.img_size)
        x = self.head_drop(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

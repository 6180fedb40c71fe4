"""Losses of the cross-architecture recipes: label CE (hard or soft), temperature KD, and ELF's feature terms."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ['label_loss', 'kd_loss', 'soft_channel_ce', 'feature_loss', 'FEATURE_LOSSES']

FEATURE_LOSSES = ('ce', 'l2', 'l1', 'cos')


def label_loss(logits: torch.Tensor, targets: torch.Tensor, soft_label_temperature: Optional[float] = None) -> torch.Tensor:
    """Cross-entropy against hard labels (``[B]`` int) or soft labels (``[B, K]`` float).

    Soft labels are logits turned into probabilities with ``softmax(y / soft_label_temperature)`` (DP+KD's tau,
    0.3 for FRePo labels); with ``soft_label_temperature=None`` they are used as probabilities as they are.
    The target tensor is never modified in place.
    """
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    if targets.shape != logits.shape:
        raise ValueError(f'soft labels of shape {tuple(targets.shape)} do not match logits {tuple(logits.shape)}')
    probs = targets if soft_label_temperature is None else F.softmax(targets / soft_label_temperature, dim=1)
    return F.cross_entropy(logits, probs)


def kd_loss(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        alpha: float = 0.5,
        temperature: float = 1.5,
        soft_label_temperature: Optional[float] = None,
) -> Dict[str, torch.Tensor]:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` (DP+KD; batch-mean KL).

    In timm's ``LogitDistillationTask`` terms this is ``distill_loss_weight = alpha`` and
    ``task_loss_weight = 1 - alpha``. Returns timm's task dict keys ``loss``, ``task_loss``, ``kd_loss``.
    """
    task = label_loss(student_logits, targets, soft_label_temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction='batchmean', log_target=True)
    kd = kl * temperature ** 2
    return {'loss': alpha * kd + (1 - alpha) * task, 'task_loss': task, 'kd_loss': kd}


def soft_channel_ce(student_map: torch.Tensor, target_map: torch.Tensor) -> torch.Tensor:
    """ELF's default front loss: ``F.cross_entropy(s, t)`` with a float ``[N, C, H, W]`` target, i.e. a per-pixel
    softmax over channels with the raw non-negative feature values as (un-normalized) target weights."""
    return F.cross_entropy(student_map, target_map)


def feature_loss(student_map: torch.Tensor, target_map: torch.Tensor, mode: str = 'ce') -> torch.Tensor:
    """ELF front loss; ``mode``: ``ce`` (default), ``l2`` (MSE), ``l1``, ``cos`` (1 - cosine similarity of the
    whole batch flattened into one vector, as in ELF)."""
    if student_map.shape != target_map.shape:
        raise ValueError(f'front feature {tuple(student_map.shape)} does not match the feature model output '
                         f'{tuple(target_map.shape)}')
    if mode == 'ce':
        return soft_channel_ce(student_map, target_map)
    if mode == 'l2':
        return F.mse_loss(student_map, target_map)
    if mode == 'l1':
        return F.l1_loss(student_map, target_map)
    if mode == 'cos':
        return 1 - F.cosine_similarity(student_map.flatten(), target_map.flatten(), dim=0)
    raise ValueError(f'feature loss mode must be one of {FEATURE_LOSSES}, got {mode!r}')

"""Losses of the cross-architecture recipes: label CE (hard or soft), temperature KD, and ELF's feature terms."""
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ['label_loss', 'soft_target_loss', 'kd_loss', 'soft_channel_ce', 'feature_loss', 'FEATURE_LOSSES',
           'SOFT_LOSSES']

FEATURE_LOSSES = ('ce', 'l2', 'l1', 'cos')
#: how a target distribution trains the student: 'ce' (DP+KD, FRePo, MTT: the student's logits as they are),
#: 'kl' and 'sce' (DD-Ranking's KLDivergenceLoss and SoftCrossEntropyLoss: the student's logits divided by T too)
SOFT_LOSSES = ('ce', 'kl', 'sce')


def soft_target_loss(logits: torch.Tensor, probs: torch.Tensor, form: str = 'ce', temperature: float = 1.0,
                     t2: bool = False) -> torch.Tensor:
    """The student's loss against a target distribution ``probs`` (``[B, K]``, already ``softmax(y / T)``).

    * ``ce``: ``CE(s, p)``;
    * ``sce``: ``-sum(p * log_softmax(s / T)) / B`` (DD-Ranking's ``SoftCrossEntropyLoss``);
    * ``kl``: ``KL(p || softmax(s / T))``, batch mean (DD-Ranking's ``KLDivergenceLoss``; ``sce`` minus the
      targets' entropy: the same gradients).

    ``t2`` multiplies ``kl``/``sce`` by ``T^2`` (DD-Ranking's ``scale_loss``).
    """
    if form not in SOFT_LOSSES:
        raise ValueError(f'soft loss must be one of {SOFT_LOSSES}, got {form!r}')
    if form == 'ce':
        return F.cross_entropy(logits, probs)
    log_probs = F.log_softmax(logits / temperature, dim=1)
    if form == 'kl':
        loss = F.kl_div(log_probs, probs, reduction='batchmean')
    else:
        loss = -(probs * log_probs).sum() / logits.shape[0]
    return loss * temperature ** 2 if t2 else loss


def label_loss(logits: torch.Tensor, targets: torch.Tensor, soft_label_temperature: Optional[float] = None,
               form: str = 'ce', t2: bool = False, student_temperature: Optional[float] = None) -> torch.Tensor:
    """Cross-entropy against hard labels (``[B]`` int); against soft labels (``[B, K]`` float) the
    :func:`soft_target_loss` ``form`` (``ce`` by default).

    Soft labels are logits turned into probabilities with ``softmax(y / soft_label_temperature)`` (DP+KD's tau,
    0.3 for FRePo labels); with ``soft_label_temperature=None`` they are used as probabilities as they are.
    ``kl``/``sce`` divide the student's logits by ``student_temperature`` (default: ``soft_label_temperature``,
    else 1). The target tensor is never modified in place.
    """
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    if targets.shape != logits.shape:
        raise ValueError(f'soft labels of shape {tuple(targets.shape)} do not match logits {tuple(logits.shape)}')
    probs = targets if soft_label_temperature is None else F.softmax(targets / soft_label_temperature, dim=1)
    if student_temperature is None:
        student_temperature = soft_label_temperature or 1.0
    return soft_target_loss(logits, probs, form, student_temperature, t2)


def kd_loss(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        alpha: float = 0.5,
        temperature: float = 1.5,
        soft_label_temperature: Optional[float] = None,
        **label_kwargs: Any,
) -> Dict[str, torch.Tensor]:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)`` (DP+KD; batch-mean KL).

    In timm's ``LogitDistillationTask`` terms this is ``distill_loss_weight = alpha`` and
    ``task_loss_weight = 1 - alpha``. ``label_kwargs`` go to :func:`label_loss` (the label term's form).
    Returns timm's task dict keys ``loss``, ``task_loss``, ``kd_loss``.
    """
    task = label_loss(student_logits, targets, soft_label_temperature, **label_kwargs)
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

"""What one training step optimizes: the task module (the student, or ELF's front and rear), its loss (labels, KD,
ELF features), and the optimizer of a recipe."""
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from ..fields import check_ranges
from .config import TRAIN_RANGES, TrainConfig
from .elf import FeatureSplit, elf_split
from .losses import feature_loss, kd_loss, label_loss, soft_target_loss

__all__ = ['TrainTask', 'LogitsOnly', 'task_loss', 'create_optimizer', 'optimizer_for', 'resolve_lr']


class TrainTask(nn.Module):
    """Wraps the student so that everything that needs gradients runs inside one ``forward`` (what DDP
    synchronizes): the plain model, or ELF's front/rear with the rear also applied to the target features."""

    def __init__(self, model: nn.Module, elf: bool = False):
        super().__init__()
        self.model = model
        self.split: Optional[FeatureSplit] = elf_split(model) if elf else None

    def forward(self, x: torch.Tensor, features: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if self.split is None:
            return {'logits': self.model(x)}
        front = self.split.front(x)
        out = {'logits': self.split.rear(front), 'front': front}
        if features is not None:
            out['rear_on_features'] = self.split.rear(features)
        return out


def create_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer through timm's factory (``timm.optim.create_optimizer_v2``): SGD with momentum
    (``momentum``, coupled wd), timm's Lion (decoupled wd) or AdamW, weight decay on every parameter (no bias/norm
    exemption: MTT's and DP+KD's optimizers decay all parameters)."""
    return optimizer_for(model, cfg.opt, lr, cfg.momentum, cfg.weight_decay, cfg.betas)


def optimizer_for(model: nn.Module, opt: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                  betas: Optional[Tuple[float, float]] = None) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` over ``model``'s trainable parameters (what :func:`create_optimizer` and
    the expert trainer share); ``betas`` only for Lion (AdamW keeps torch's defaults, as the recipes always have)."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {'betas': tuple(betas)} if opt == 'lion' and betas is not None else {}
    return create_optimizer_v2(params, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               filter_bias_and_bn=False, **extra)


def resolve_lr(cfg: TrainConfig, learned_lr: Optional[float]) -> float:
    """The peak lr: the recipe's ``lr``, else the set's learned one, else ``lr_fallback``.

    A learned lr outside the range a recipe's ``lr`` may take (``TRAIN_RANGES``) is an error naming it and ``--lr``:
    a set claiming lr 1e30 would otherwise train at chance without a word.
    """
    if cfg.lr is not None:
        return cfg.lr
    if learned_lr is not None:
        interval = TRAIN_RANGES['lr']
        try:
            check_ranges(SimpleNamespace(lr=learned_lr), {'lr': interval}, 'timm_dd.train.config.TRAIN_RANGES')
        except ValueError:
            raise ValueError(f'the distilled set\'s learned lr {learned_lr:g} is outside {interval}, the range of a '
                             f'step size: the set is damaged or was saved with another unit; pass --lr (or '
                             f'--set lr=...) to train at a step size of your choice') from None
        return float(learned_lr)
    return cfg.lr_fallback


def fallback_lr_note(cfg: TrainConfig, learned_lr: Optional[float], distilled: bool) -> Optional[str]:
    """What a reader must know when a distilled set without a learned lr trains at ``lr_fallback``: MTT and ATT
    keep their learned step size only in their logs, so their imported sets have none, and a recipe whose protocol
    uses it (``baseline``) would otherwise train at 0.01 without a word."""
    if not distilled or cfg.lr is not None or learned_lr is not None:
        return None
    return (f'the distilled set has no learned lr (MTT and ATT do not save it to disk): trained at lr_fallback='
            f'{cfg.lr_fallback:g}, not at the published protocol\'s learned lr; pass --lr with the value the '
            f'distillation logged (or --set lr_fallback=...) to choose it')


class LogitsOnly(nn.Module):
    """The logits of a :class:`TrainTask` (what evaluation looks at)."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task(x)['logits']


def _label_form(cfg: TrainConfig) -> Dict[str, object]:
    return {'form': cfg.soft_loss, 't2': cfg.soft_loss_t2, 'student_temperature': cfg.soft_label_temperature or 1.0}


def task_loss(out: Dict[str, torch.Tensor], y: torch.Tensor, cfg: TrainConfig, teacher: Optional[nn.Module],
          xa: torch.Tensor, features: Optional[torch.Tensor]) -> torch.Tensor:
    logits = out['logits']
    if cfg.uses_teacher:
        with torch.no_grad():
            teacher_logits = teacher(xa)  # the same augmented batch as the student
    if cfg.relabel:
        temperature = cfg.soft_label_temperature or 1.0
        loss = soft_target_loss(logits, F.softmax(teacher_logits / temperature, dim=1), cfg.soft_loss, temperature,
                                cfg.soft_loss_t2)
    elif cfg.kd:
        loss = kd_loss(logits, teacher_logits, y, cfg.kd_alpha, cfg.kd_temperature, **_label_form(cfg))['loss']
    else:
        loss = label_loss(logits, y, **_label_form(cfg))  # a set's soft labels are probabilities already
    if cfg.elf:
        loss = loss + cfg.elf_lambda_rear * label_loss(out['rear_on_features'], y)
        loss = loss + cfg.elf_lambda_front * feature_loss(out['front'], features, cfg.elf_feature_loss)
    return loss

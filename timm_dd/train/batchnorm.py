"""Batch-norm statistics of short runs: recompute them on the training images, and measure how stale they are.

A batch-norm network trained for few updates evaluates with running statistics (momentum 0.1) that lag behind
weights that moved fast: on its own training images it can score 100 % with batch statistics and half that in eval
mode, which reads like an architecture gap. :func:`recompute_bn_stats` replaces the running statistics by the exact
average over the training images (the pattern of ``torch.optim.swa_utils.update_bn``); :func:`train_accuracies`
gives the two accuracies that reveal stale statistics.
"""
from typing import Tuple

import torch
import torch.nn as nn

__all__ = ['has_batchnorm', 'recompute_bn_stats', 'train_accuracies', 'STALE_BN_GAP']

#: eval-mode train accuracy this far (absolute) below the batch-statistics one means stale statistics
STALE_BN_GAP = 0.2


def _batchnorms(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(_batchnorms(model))


class _BatchStatistics:
    """The model in eval mode (no DropPath, no dropout) except its batch norms, which use batch statistics."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        for bn in _batchnorms(self.model):
            bn.train()
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """Running mean/var of every batch norm := their average over ``images`` (un-augmented, in order; DropPath and
    dropout off), one pass in batches of ``batch_size``."""
    bns = _batchnorms(model)
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches of this pass
    with _BatchStatistics(model):
        for x in images.split(batch_size):
            model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


@torch.no_grad()
def train_accuracies(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int = 256) -> Tuple[float, float]:
    """Top-1 accuracy on the (un-augmented) training images in eval mode and with batch statistics; soft labels
    count their argmax. The running statistics are left as they were."""
    target = labels.argmax(1) if labels.ndim == 2 else labels
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def accuracy(forward_mode) -> float:
        correct = 0
        with forward_mode:
            for x, y in zip(images.split(batch_size), target.split(batch_size)):
                correct += int((model(x).argmax(1) == y).sum())
        return correct / max(1, images.shape[0])

    eval_acc = accuracy(_Eval(model))
    batch_acc = accuracy(_BatchStatistics(model))
    model.load_state_dict(saved)  # batch-statistics forwards updated the running statistics
    return eval_acc, batch_acc


class _Eval:
    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)

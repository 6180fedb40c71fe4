"""Checkpoints of a distillation run and the divergence guard.

A checkpoint is one ``torch.save`` file (tensors, optimizer state dicts, plain Python values) written to a
temporary sibling and renamed into place, so the file on disk is always the last complete, good state.
"""
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..fields import field_changes
from ..io import atomic_write, read_torch_file

__all__ = ['DistillationDiverged', 'save_checkpoint', 'load_checkpoint', 'check_finite_state', 'CHECKPOINT_FILE',
           'to_cpu', 'to_device', 'check_resume_config', 'RESUME_SAFE_FIELDS', 'best_images']

_logger = logging.getLogger(__name__)

CHECKPOINT_FILE = 'checkpoint.pt'


class DistillationDiverged(RuntimeError):
    """The run produced NaN/Inf images or loss, or a non-positive / non-finite learned step size.

    ``iteration`` is the outer iteration that failed; ``checkpoint`` the last good checkpoint (if any), which is
    left untouched.
    """

    def __init__(self, message: str, iteration: int, checkpoint: Optional[Path] = None):
        hint = f'; last good checkpoint kept at {checkpoint}' if checkpoint is not None and checkpoint.exists() \
            else '; no checkpoint was written yet'
        super().__init__(f'iteration {iteration}: {message}{hint}. Lower lr_img / lr_lr (MTT issues #16, #20, #42).')
        self.iteration = iteration
        self.checkpoint = checkpoint


def check_finite_state(
        iteration: int,
        images: torch.Tensor,
        syn_lr: Optional[torch.Tensor] = None,
        loss: Optional[torch.Tensor] = None,
        checkpoint: Optional[Path] = None,
) -> None:
    """Raise :class:`DistillationDiverged` if ``loss``/``images`` are not finite or ``syn_lr`` is not > 0."""
    if loss is not None and not bool(torch.isfinite(loss).all()):
        raise DistillationDiverged(f'matching loss is {float(loss)}', iteration, checkpoint)
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise DistillationDiverged(f'synthetic images contain {bad} NaN/Inf values', iteration, checkpoint)
    if syn_lr is not None:
        lr = float(syn_lr.detach())
        if not math.isfinite(lr) or lr <= 0:
            raise DistillationDiverged(f'learned step size (syn_lr) is {lr}; it must stay positive', iteration,
                                       checkpoint)


#: settings that may change when a distillation is resumed: they do not change the images of the iterations run
RESUME_SAFE_FIELDS = ('iterations', 'eval_every', 'eval_seeds', 'eval_epochs', 'eval_recipe', 'eval_lr',
                      'checkpoint_every', 'source', 'matmul_precision', 'grad_mode', 'graph_budget', 'compile',
                      'num_experts',
                      'expert_train_epochs', 'expert_lr', 'expert_batch')


def check_resume_config(saved: Dict[str, Any], current: Dict[str, Any], checkpoint: Path,
                        force: bool = False) -> None:
    """Resuming with settings that change the run (ipc, lr_img, syn_steps, ...) is an error naming them, because
    the checkpoint's images and optimizer state belong to the old settings; ``force=True`` continues with the new
    settings on purpose (logged)."""
    diffs = [f'{k}: {a!r} -> {b!r}' for k, a, b in field_changes(saved, current, RESUME_SAFE_FIELDS)]
    if diffs and not force:
        raise ValueError(f'--resume: {checkpoint} was made with other settings ({"; ".join(diffs)}); use another '
                         f'--out, or --force-resume to continue with the new settings on purpose')
    if diffs:
        _logger.warning('resuming %s with changed settings: %s', checkpoint, '; '.join(diffs))


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(state, f)
    _logger.info(f'checkpoint at iteration {state.get("iteration")} saved to {path}')
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The state saved by :func:`save_checkpoint`, or ``None`` when ``path`` does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_torch_file(path)
    except ValueError as e:
        raise RuntimeError(f'{e}; delete it to start the distillation again') from e


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor read from disk onto ``device``: through pinned memory, asynchronously, for a GPU."""
    if device.type == 'cuda':
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_cpu(obj: Any) -> Any:
    """``obj`` (tensors, dicts, lists: a state dict) with every tensor detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def best_images(best: Optional[Dict[str, Any]], record: Dict[str, Any], images: torch.Tensor,
                lr: Optional[float], soft_labels: Optional[torch.Tensor] = None) -> Optional[Dict[str, Any]]:
    """The MTT/ATT selection rule: keep the images of the evaluation with the best mean test accuracy (ties: the
    earlier). Returns the new ``{'iteration', 'acc_mean', 'images', 'lr', 'soft_labels'}`` or ``best`` unchanged."""
    acc = record.get('acc_mean')
    if acc is None or (best is not None and acc <= best['acc_mean']):
        return best
    return {'iteration': record['iteration'], 'acc_mean': acc, 'images': images.detach().cpu().clone(), 'lr': lr,
            'soft_labels': soft_labels.detach().cpu().clone() if soft_labels is not None else None}

"""The outer loop every distillation method shares: learnable images, iterations, periodic evaluation, the
checkpoint (save/resume, one writer), logging and progress, the divergence guard.

A method is a small subclass that implements :meth:`Distiller.step` (one outer iteration: loss, gradient, update)
and, when it learns more than the images, :meth:`Distiller.extra_state` / :meth:`Distiller.load_extra_state`
and :attr:`Distiller.syn_lr`: :class:`~timm_dd.distill.tm.TrajectoryMatching` (MTT/ATT) and
:class:`~timm_dd.distill.dm.DistributionMatching` (DM).
"""
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from tqdm.auto import tqdm

from ..tracking import log_metrics
from .matching import Shards
from .presets import DistillConfig
from .state import (
    CHECKPOINT_FILE, best_images, check_finite_state, check_resume_config, load_checkpoint, save_checkpoint, to_cpu,
)

__all__ = ['Distiller', 'EvalFn']

_logger = logging.getLogger(__name__)

#: ``eval_fn(iteration, images, ema_images, lr) -> dict`` (see :func:`~timm_dd.distill.run.make_evaluator`); a run
#: with soft labels (``teacher_label``) also passes ``soft_labels=`` (probabilities ``[N, classes]``)
EvalFn = Callable[..., Dict[str, Any]]


class Distiller:
    """Learnable synthetic images and the outer loop around a method's :meth:`step`.

    Args:
        cfg: The run's settings (``lr_img``, ``img_momentum``, ``iterations``, ``eval_every``, ``checkpoint_every``).
        images: Initial synthetic images ``[C*ipc, ch, H, W]`` in the distillation space.
        out_dir: Where the checkpoint goes (``None``: no checkpoints).
        eval_fn: Called as ``eval_fn(iteration, images, ema_images, lr)`` every ``cfg.eval_every`` iterations and
            at the end; its dict is logged and recorded in ``history``.
        accelerator: The run's ``accelerate.Accelerator``: everything lives on ``accelerator.device``; under several
            processes the method splits its work (:class:`Shards`) and only the main process writes the checkpoint.
            ``None``: one process on the images' device.
    """

    #: a learned step size (MTT/ATT), ``None`` for methods without one
    syn_lr: Optional[torch.Tensor] = None
    #: an exponential moving average of the images (ATT), or ``None``
    ema: Optional[torch.Tensor] = None
    #: the images' soft labels (probabilities) when the method makes them (TESLA's ``teacher_label``), else ``None``
    soft_labels: Optional[torch.Tensor] = None

    def __init__(self, cfg: DistillConfig, images: torch.Tensor, out_dir: Optional[Union[str, Path]] = None,
                 eval_fn: Optional[EvalFn] = None, accelerator: Optional[Any] = None):
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device if accelerator is not None else images.device
        self.shards = Shards.from_accelerator(accelerator)
        self.images = images.detach().to(self.device, torch.float32, copy=True).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.img_momentum)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.iteration = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None  # images of the best evaluation (MTT/ATT's selection rule)

    # what a method provides

    def step(self) -> Dict[str, Any]:
        """One outer iteration; returns ``{'iteration', 'loss', 'seconds', ...}``."""
        raise NotImplementedError

    def extra_state(self) -> Dict[str, Any]:
        """What the method learns besides the images (for the checkpoint)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""

    def postfix(self, info: Dict[str, Any]) -> Dict[str, str]:
        """The progress bar's postfix after a step."""
        return {'loss': f'{info["loss"]:.4f}'}

    # shared

    @property
    def name(self) -> str:
        return self.cfg.method.upper()

    @property
    def learned_lr(self) -> Optional[float]:
        return float(self.syn_lr.detach()) if self.syn_lr is not None else None

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / CHECKPOINT_FILE if self.out_dir is not None else None

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def check_finite(self, iteration: int, loss: Optional[torch.Tensor] = None) -> None:
        """The divergence guard: images finite, the learned step size positive, the loss finite."""
        check_finite_state(iteration, self.images, self.syn_lr, loss, checkpoint=self.checkpoint_path)

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs, on the CPU (a checkpoint made on a GPU resumes anywhere)."""
        return to_cpu({'iteration': self.iteration, 'images': self.images.detach().clone(),
                       'opt_img': self.opt_img.state_dict(), **self.extra_state(), 'history': list(self.history),
                       'best': self.best, 'config': self.cfg.to_dict()})

    def load_state_dict(self, state: Dict[str, Any], force: bool = False) -> None:
        """Restore a :meth:`state_dict`; settings that differ from the checkpoint's are an error (``force``: kept)."""
        check_resume_config(state.get('config', {}), self.cfg.to_dict(), self.checkpoint_path, force)
        with torch.no_grad():
            self.images.copy_(state['images'])
        self.opt_img.load_state_dict(state['opt_img'])
        set_hyper(self.opt_img, lr=self.cfg.lr_img, momentum=self.cfg.img_momentum)  # the settings run == recorded
        self.load_extra_state(state)
        self.iteration = int(state['iteration'])
        self.history = list(state.get('history', []))
        self.best = state.get('best')

    def save(self) -> Optional[Path]:
        """Checkpoint (main process only; the others wait so that nobody reads a file being replaced)."""
        if self.checkpoint_path is None:
            return None
        if self.is_main_process:
            save_checkpoint(self.checkpoint_path, self.state_dict())
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return self.checkpoint_path

    def resume(self, force: bool = False) -> bool:
        """Load the checkpoint in ``out_dir`` if there is one; returns whether it did."""
        state = load_checkpoint(self.checkpoint_path) if self.checkpoint_path is not None else None
        if state is None:
            return False
        self.load_state_dict(state, force)
        _logger.info(f'resumed from {self.checkpoint_path} at iteration {self.iteration}')
        return True

    def evaluate(self) -> Dict[str, Any]:
        """Run ``eval_fn`` on the current images (and EMA), log and record it, keep the best images."""
        lr = self.learned_lr
        record: Dict[str, Any] = {'iteration': self.iteration}
        if lr is not None:
            record['syn_lr'] = lr
        if self.eval_fn is not None:
            ema = self.ema.clone() if self.ema is not None else None
            soft = {'soft_labels': self.soft_labels.detach().clone()} if self.soft_labels is not None else {}
            record.update(self.eval_fn(self.iteration, self.images.detach().clone(), ema, lr, **soft))
        _logger.info(f'eval at iteration {self.iteration}: {record}')
        log_metrics(self.accelerator, {f'eval/{k}': v for k, v in record.items() if k != 'iteration'}, self.iteration)
        self.history.append(record)
        self.best = best_images(self.best, record, self.images, lr, self.soft_labels)
        return record

    def run(self, iterations: Optional[int] = None) -> List[Dict[str, Any]]:
        """Iterate until ``iterations`` (default ``cfg.iterations``) have been done, evaluating at ``0,
        eval_every, ...`` and at the end, checkpointing every ``checkpoint_every`` iterations and at the end."""
        cfg = self.cfg
        total = cfg.iterations if iterations is None else iterations
        log_every = max(1, min(10, total // 10 or 1))
        pbar = tqdm(total=total, initial=self.iteration, desc=self.name, disable=not self.is_main_process)
        while self.iteration < total:
            if self.eval_fn is not None and cfg.eval_every and self.iteration % cfg.eval_every == 0 \
                    and self._not_evaluated(self.iteration):
                pbar.set_description(f'{self.name} (evaluating)')
                self.evaluate()
                pbar.set_description(self.name)
            info = self.step()
            log_metrics(self.accelerator, {f'{cfg.method}/{k}': v for k, v in info.items() if k != 'iteration'},
                        info['iteration'])
            pbar.update(1)
            pbar.set_postfix(self.postfix(info), refresh=False)
            if info['iteration'] % log_every == 0 or self.iteration == total:
                _logger.debug('iteration %d: %s', info['iteration'],
                              ', '.join(f'{k} {v:.5g}' for k, v in info.items() if k != 'iteration'))
            if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                self.save()
        pbar.close()
        if self.eval_fn is not None and self._not_evaluated(self.iteration) and total == cfg.iterations:
            self.evaluate()
        self.save()
        return self.history

    def _not_evaluated(self, iteration: int) -> bool:
        return not any(r['iteration'] == iteration for r in self.history)


def set_hyper(optimizer: torch.optim.Optimizer, **values: float) -> None:
    """Set hyper-parameters of every parameter group (the recorded settings after loading an optimizer state)."""
    for group in optimizer.param_groups:
        group.update(values)

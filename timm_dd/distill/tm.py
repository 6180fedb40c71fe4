"""The MTT / ATT outer loop (``trajectory-matching.md`` §4, §5, §11).

Every random draw of iteration ``it`` (expert, start epoch, batches, DSA) comes from a generator seeded by
``(seed, it)``, and the expert order from one seeded permutation per pass over the experts, so a run resumed from a
checkpoint (images, step size, both optimizers' momentum, EMA, iteration) continues exactly like an uninterrupted
one with the same seed.
"""
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..augment import DSA
from ..seeding import generator_for
from ..tracking import log_metrics
from .experts import ExpertPool
from .matching import FlatModel, MatchResult, Shards, plan_steps, trajectory_match
from .presets import DistillConfig
from .state import (
    CHECKPOINT_FILE, DistillationDiverged, best_images, check_finite_state, check_resume_config, load_checkpoint,
    save_checkpoint, to_cpu, to_device,
)

__all__ = ['TrajectoryMatching', 'init_synthetic']

_logger = logging.getLogger(__name__)

EvalFn = Callable[[int, torch.Tensor, Optional[torch.Tensor], Optional[float]], Dict[str, Any]]


def init_synthetic(
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        ipc: int,
        generator: torch.Generator,
        pix_init: str = 'real',
) -> tuple:
    """Class-major synthetic images and hard labels: ``ipc`` distinct random real images per class, or noise."""
    from ..data import select_ipc
    idx = select_ipc(labels, ipc, generator=generator, num_classes=num_classes)
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc)
    if pix_init == 'real':
        syn = images[idx].detach().clone()
    else:
        syn = torch.randn((num_classes * ipc,) + tuple(images.shape[1:]), generator=generator)
    return syn.float(), syn_labels


class TrajectoryMatching:
    """MTT (``method='mtt'``) or ATT (``method='att'``) distillation state and iteration.

    Args:
        cfg: The run's settings.
        images: Initial synthetic images ``[C*ipc, ch, H, W]`` in the distillation space (see
            :func:`init_synthetic`).
        labels: Their hard labels (fixed).
        model: A network of the distillation architecture (only its structure is used).
        experts: The expert pool.
        out_dir: Where checkpoints go (``None``: no checkpoints).
        eval_fn: Called as ``eval_fn(iteration, images, ema_images, lr)`` every ``cfg.eval_every`` iterations and at
            the end; its dict is logged and recorded in ``history``.
        accelerator: The run's ``accelerate.Accelerator``: everything lives on ``accelerator.device``; under several
            processes each inner step's minibatch is split over them (exact, see :class:`Shards`) and only the
            main process writes checkpoints. ``None``: one process on the images' device.
    """

    def __init__(
            self,
            cfg: DistillConfig,
            images: torch.Tensor,
            labels: torch.Tensor,
            model: nn.Module,
            experts: ExpertPool,
            out_dir: Optional[Union[str, Path]] = None,
            eval_fn: Optional[EvalFn] = None,
            accelerator: Optional[Any] = None,
    ):
        if cfg.method not in ('mtt', 'att'):
            raise ValueError(f"TrajectoryMatching needs method 'mtt' or 'att', got {cfg.method!r}")
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device if accelerator is not None else images.device
        self.shards = Shards.from_accelerator(accelerator)
        self.shards.check_model(model)
        self.images = images.detach().to(self.device, torch.float32, copy=True).requires_grad_(True)
        self.labels = labels.detach().to(self.device, copy=True)
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=self.device, requires_grad=True)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.img_momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.lr_momentum)
        self.ema = self.images.detach().clone() if cfg.ema_decay is not None else None
        self.fmodel = FlatModel(model.to(self.device))
        self.experts = experts
        if experts[0].num_params != self.fmodel.num_params:
            raise ValueError(f'experts have {experts[0].num_params} parameters, the model {self.fmodel.num_params}; '
                             f'were they trained with another architecture or width?')
        self.dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.iteration = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None  # images of the best evaluation (MTT/ATT's selection rule)

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / CHECKPOINT_FILE if self.out_dir is not None else None

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    # state

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs, on the CPU (a checkpoint made on a GPU resumes anywhere)."""
        return to_cpu({
            'iteration': self.iteration, 'images': self.images.detach().clone(), 'syn_lr': self.syn_lr.detach().clone(),
            'opt_img': self.opt_img.state_dict(), 'opt_lr': self.opt_lr.state_dict(),
            'ema': self.ema.clone() if self.ema is not None else None, 'history': list(self.history),
            'best': self.best,
            'config': self.cfg.to_dict(),
        })

    def load_state_dict(self, state: Dict[str, Any], force: bool = False) -> None:
        """Restore a :meth:`state_dict`; settings that differ from the checkpoint's are an error (``force``: kept)."""
        check_resume_config(state.get('config', {}), self.cfg.to_dict(), self.checkpoint_path, force)
        with torch.no_grad():
            self.images.copy_(state['images'])
            self.syn_lr.copy_(state['syn_lr'])
        self.opt_img.load_state_dict(state['opt_img'])
        self.opt_lr.load_state_dict(state['opt_lr'])
        _set_hyper(self.opt_img, lr=self.cfg.lr_img, momentum=self.cfg.img_momentum)  # the settings run == recorded
        _set_hyper(self.opt_lr, lr=self.cfg.lr_lr, momentum=self.cfg.lr_momentum)
        if self.ema is not None and state.get('ema') is not None:
            self.ema = state['ema'].to(self.device, copy=True)
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

    # iteration

    def expert_for(self, iteration: int) -> int:
        """The expert of ``iteration``: experts are consumed in a seeded random order, reshuffled every pass."""
        n = len(self.experts)
        perm = torch.randperm(n, generator=generator_for(self.cfg.seed, iteration // n, 101))
        return int(perm[iteration % n])

    def match(self, iteration: int, grad_mode: Optional[str] = None) -> MatchResult:
        """Loss and meta-gradients of ``iteration`` at the current images and step size (no update)."""
        cfg = self.cfg
        gen = generator_for(cfg.seed, iteration, 7)
        expert = self.experts[self.expert_for(iteration)]
        start = int(torch.randint(0, cfg.max_start_epoch, (1,), generator=gen))
        theta_start = to_device(expert.get(start), self.device)
        theta_target = to_device(expert.get(start + cfg.expert_epochs), self.device)
        plan = plan_steps(self.images.shape[0], cfg.syn_steps, cfg.batch_syn, self.images.shape[-1], self.dsa, gen,
                          self.device)
        return trajectory_match(
            grad_mode or cfg.grad_mode, self.fmodel, self.images, self.labels, self.syn_lr, theta_start,
            theta_target, plan, self.dsa, cfg.method, cfg.att_norm, self.shards)

    def step(self) -> Dict[str, Any]:
        """One outer iteration: match, update images and step size, update the EMA; guards against divergence."""
        it = self.iteration
        check_finite_state(it, self.images, self.syn_lr, checkpoint=self.checkpoint_path)
        t0 = time.perf_counter()
        res = self.match(it)
        check_finite_state(it, self.images, None, res.loss, checkpoint=self.checkpoint_path)
        if not (bool(torch.isfinite(res.grad_images).all()) and bool(torch.isfinite(res.grad_lr).all())):
            raise DistillationDiverged('the meta-gradient contains NaN/Inf', it, self.checkpoint_path)
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        self.images.grad = res.grad_images
        self.syn_lr.grad = res.grad_lr
        self.opt_img.step()
        self.opt_lr.step()
        check_finite_state(it, self.images, self.syn_lr, checkpoint=self.checkpoint_path)
        if self.ema is not None:
            self.ema.mul_(self.cfg.ema_decay).add_(self.images.detach(), alpha=1.0 - self.cfg.ema_decay)
        self.iteration = it + 1
        loss = float(res.loss)  # synchronizes with the device: the time below is the iteration's
        return {'iteration': it, 'loss': loss, 'syn_lr': float(self.syn_lr.detach()), 'n_opt': res.n_opt,
                'seconds': time.perf_counter() - t0}

    def evaluate(self) -> Dict[str, Any]:
        record: Dict[str, Any] = {'iteration': self.iteration, 'syn_lr': float(self.syn_lr.detach())}
        if self.eval_fn is not None:
            ema = self.ema.clone() if self.ema is not None else None
            record.update(self.eval_fn(self.iteration, self.images.detach().clone(), ema, float(self.syn_lr.detach())))
        _logger.info(f'eval at iteration {self.iteration}: {record}')
        log_metrics(self.accelerator, {f'eval/{k}': v for k, v in record.items() if k != 'iteration'}, self.iteration)
        self.history.append(record)
        self.best = best_images(self.best, record, self.images, float(self.syn_lr.detach()))
        return record

    def run(self, iterations: Optional[int] = None) -> List[Dict[str, Any]]:
        """Iterate until ``iterations`` (default ``cfg.iterations``) have been done, evaluating at ``0,
        eval_every, ...`` and at the end, checkpointing every ``checkpoint_every`` iterations and at the end."""
        cfg = self.cfg
        total = cfg.iterations if iterations is None else iterations
        log_every = max(1, min(10, total // 10 or 1))
        pbar = tqdm(total=total, initial=self.iteration, desc=cfg.method.upper(), disable=not self.is_main_process)
        while self.iteration < total:
            if self.eval_fn is not None and cfg.eval_every and self.iteration % cfg.eval_every == 0 \
                    and self._not_evaluated(self.iteration):
                pbar.set_description(f'{cfg.method.upper()} (evaluating)')
                self.evaluate()
                pbar.set_description(cfg.method.upper())
            info = self.step()
            log_metrics(self.accelerator, {f'{cfg.method}/{k}': v for k, v in info.items() if k != 'iteration'},
                        info['iteration'])
            pbar.update(1)
            postfix = {'loss': f'{info["loss"]:.4f}', 'syn_lr': f'{info["syn_lr"]:.3g}'}
            if cfg.method == 'att':
                postfix['step'] = f'{info["n_opt"]}/{cfg.syn_steps}'
            pbar.set_postfix(postfix, refresh=False)
            if info['iteration'] % log_every == 0 or self.iteration == total:
                _logger.debug(f'iteration {info["iteration"]}: loss {info["loss"]:.5f} syn_lr {info["syn_lr"]:.6g} '
                              f'n_opt {info["n_opt"]} ({info["seconds"]:.2f} s)')
            if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                self.save()
        pbar.close()
        if self.eval_fn is not None and self._not_evaluated(self.iteration) and total == cfg.iterations:
            self.evaluate()
        self.save()
        return self.history

    def _not_evaluated(self, iteration: int) -> bool:
        return not any(r['iteration'] == iteration for r in self.history)



def _set_hyper(optimizer: torch.optim.Optimizer, **values: float) -> None:
    for group in optimizer.param_groups:
        group.update(values)

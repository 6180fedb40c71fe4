"""MTT (Cazenavette et al., CVPR 2022) and ATT (Liu et al., ECCV 2024): trajectory matching on the shared outer loop.

Every random draw of iteration ``it`` (expert, start epoch, batches, DSA) comes from a generator seeded by
``(seed, it)``, and the expert order from one seeded permutation per pass over the experts, so a run resumed from a
checkpoint (images, step size, both optimizers' momentum, EMA, iteration) continues exactly like an uninterrupted
one with the same seed.
"""
import logging
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..augment import DSA
from ..data import ImageSet, as_image_set, select_ipc
from ..seeding import Stream, generator_for
from .distiller import Distiller, EvalFn, set_hyper
from .experts import ExpertPool
from .graph_budget import format_bytes, graph_step_bytes, graph_steps_for_budget
from .matching import FlatModel, MatchResult, StepGradient, StepPlan, match_budgeted, plan_steps, trajectory_match
from .presets import DistillConfig
from .state import DistillationDiverged, to_device

__all__ = ['TrajectoryMatching', 'init_synthetic']

_logger = logging.getLogger(__name__)

#: images per forward when computing teacher labels (bounds the activation memory of a 1,000-class set)
_TEACHER_LABEL_CHUNK = 256


def init_synthetic(
        images: Union[torch.Tensor, ImageSet],
        labels: torch.Tensor,
        num_classes: int,
        ipc: int,
        generator: torch.Generator,
        pix_init: str = 'real',
) -> tuple:
    """Class-major synthetic images and hard labels: ``ipc`` distinct random real images per class, or noise."""
    idx = select_ipc(labels, ipc, generator=generator, num_classes=num_classes)
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc)
    real = as_image_set(images, labels)
    if pix_init == 'real':
        syn = real.batch(idx).detach().clone()
    else:
        syn = torch.randn((num_classes * ipc,) + tuple(real.image_shape), generator=generator)
    return syn.float(), syn_labels


class TrajectoryMatching(Distiller):
    """MTT (``method='mtt'``) or ATT (``method='att'``): images and a learned step size matched to expert
    trajectories.

    Args:
        cfg: The run's settings.
        images: Initial synthetic images ``[C*ipc, ch, H, W]`` in the distillation space (see
            :func:`init_synthetic`).
        labels: Their hard labels (fixed).
        model: A network of the distillation architecture (only its structure is used).
        experts: The expert pool.
        out_dir, eval_fn, accelerator: As for :class:`~timm_dd.distill.distiller.Distiller`; under several
            processes each inner step's minibatch is split over them (exact, see
            :class:`~timm_dd.distill.matching.Shards`).
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
        super().__init__(cfg, images, out_dir, eval_fn, accelerator)
        self.shards.check_model(model)
        self.labels = labels.detach().to(self.device, copy=True)
        self.syn_lr = torch.tensor(float(cfg.lr_teacher), device=self.device, requires_grad=True)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.lr_momentum)
        self.ema = self.images.detach().clone() if cfg.ema_decay is not None else None
        self.fmodel = FlatModel(model.to(self.device))
        self.experts = experts
        if experts[0].num_params != self.fmodel.num_params:
            raise ValueError(f'experts have {experts[0].num_params} parameters, the model {self.fmodel.num_params}; '
                             f'were they trained with another architecture or width?')
        self.step_grad = StepGradient(self.fmodel, compile=cfg.compile)
        self.dsa = DSA.of(cfg)
        #: how many of the last inner steps keep their graph under ``cfg.graph_budget`` (set at the first match)
        self.graph_steps: Optional[int] = None

    def extra_state(self) -> Dict[str, Any]:
        return {'syn_lr': self.syn_lr.detach().clone(), 'opt_lr': self.opt_lr.state_dict(),
                'ema': self.ema.clone() if self.ema is not None else None,
                'soft_labels': self.soft_labels.clone() if self.soft_labels is not None else None}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state['syn_lr'])
        self.opt_lr.load_state_dict(state['opt_lr'])
        set_hyper(self.opt_lr, lr=self.cfg.lr_lr, momentum=self.cfg.lr_momentum)
        if self.ema is not None and state.get('ema') is not None:
            self.ema = state['ema'].to(self.device, copy=True)
        if self.cfg.teacher_label and state.get('soft_labels') is not None:
            self.soft_labels = state['soft_labels'].to(self.device, copy=True)

    def expert_for(self, iteration: int) -> int:
        """The expert of ``iteration``: experts are consumed in a seeded random order, reshuffled every pass."""
        n = len(self.experts)
        perm = torch.randperm(n, generator=generator_for(self.cfg.seed, iteration // n, Stream.EXPERT_PASS_ORDER))
        return int(perm[iteration % n])

    def match(self, iteration: int, grad_mode: Optional[str] = None) -> MatchResult:
        """Loss and meta-gradients of ``iteration`` at the current images and step size (no update of the images;
        with ``teacher_label``, :attr:`soft_labels` becomes the iteration's)."""
        cfg = self.cfg
        gen = generator_for(cfg.seed, iteration, Stream.MATCH_STEP)
        expert = self.experts[self.expert_for(iteration)]
        start = int(torch.randint(0, cfg.max_start_epoch, (1,), generator=gen))
        theta_start = to_device(expert.get(start), self.device)
        theta_target = to_device(expert.get(start + cfg.expert_epochs), self.device)
        labels = self.labels
        if cfg.teacher_label:
            labels = self.soft_labels = self.teacher_labels(theta_target)
        plan = plan_steps(self.images.shape[0], cfg.syn_steps, cfg.batch_syn, self.images.shape[-1], self.dsa, gen,
                          self.device)
        if grad_mode is None and cfg.graph_budget is not None:
            return match_budgeted(self.step_grad, self.images, labels, self.syn_lr, theta_start, theta_target,
                                  plan, self.dsa, cfg.method, cfg.att_norm, self.shards,
                                  graph_steps=self._graph_steps(plan, theta_start))
        return trajectory_match(
            grad_mode or cfg.grad_mode, self.step_grad, self.images, labels, self.syn_lr, theta_start,
            theta_target, plan, self.dsa, cfg.method, cfg.att_norm, self.shards)

    @torch.no_grad()
    def teacher_labels(self, theta: torch.Tensor) -> torch.Tensor:
        """TESLA's teacher labels (Cui et al., ICML 2023, ``--teacher_label``): the softmax of the network at
        ``theta`` on the current images, un-augmented, in chunks (one image's output does not depend on the others
        in an instance-norm ConvNet)."""
        images = self.images.detach()
        logits = torch.cat([self.fmodel(theta, chunk) for chunk in images.split(_TEACHER_LABEL_CHUNK)])
        return torch.softmax(logits.float(), dim=1)

    def _graph_steps(self, plan: StepPlan, theta_start: torch.Tensor) -> int:
        """The number of kept graphs for ``cfg.graph_budget``, from one step's graph measured at the first match."""
        if self.graph_steps is None:
            step = graph_step_bytes(self.step_grad, self.images, self.labels, theta_start, plan, self.dsa,
                                    self.syn_lr, self.shards)
            self.graph_steps = graph_steps_for_budget(self.cfg.graph_budget, step, self.cfg.syn_steps, self.device)
            _logger.info('graph_budget %s: one inner step\'s graph takes %s; the last %d of %d steps keep theirs, '
                         'the others are recomputed', self.cfg.graph_budget, format_bytes(step), self.graph_steps,
                         self.cfg.syn_steps)
        return self.graph_steps

    def step(self) -> Dict[str, Any]:
        """One outer iteration: match, update images and step size, update the EMA; guards against divergence."""
        it = self.iteration
        self.check_finite(it)
        t0 = time.perf_counter()
        res = self.match(it)
        self.check_finite(it, res.loss)
        if not (bool(torch.isfinite(res.grad_images).all()) and bool(torch.isfinite(res.grad_lr).all())):
            raise DistillationDiverged('the meta-gradient contains NaN/Inf', it, self.checkpoint_path)
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        self.images.grad = res.grad_images
        self.syn_lr.grad = res.grad_lr
        self.opt_img.step()
        self.opt_lr.step()
        self.check_finite(it)
        if self.ema is not None:
            self.ema.mul_(self.cfg.ema_decay).add_(self.images.detach(), alpha=1.0 - self.cfg.ema_decay)
        self.iteration = it + 1
        loss = float(res.loss)  # synchronizes with the device: the time below is the iteration's
        return {'iteration': it, 'loss': loss, 'syn_lr': float(self.syn_lr.detach()), 'n_opt': res.n_opt,
                'seconds': time.perf_counter() - t0}

    def postfix(self, info: Dict[str, Any]) -> Dict[str, str]:
        out = {'loss': f'{info["loss"]:.4f}', 'syn_lr': f'{info["syn_lr"]:.3g}'}
        if self.cfg.method == 'att':
            out['step'] = f'{info["n_opt"]}/{self.cfg.syn_steps}'
        return out

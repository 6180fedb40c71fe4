"""Distribution matching (DM; Zhao & Bilen, WACV 2023): a cheap distillation method that needs no experts.

Per iteration a freshly initialised network of the distillation architecture embeds (features before the classifier)
a random real batch and the synthetic images of every class, both augmented with the same siamese DSA draw; the loss
is ``Σ_c ‖mean emb(real_c) − mean emb(syn_c)‖²`` and the images take one SGD step (momentum 0.5). Randomness of
iteration ``it`` (network init, real batches, DSA) comes from generators seeded by ``(seed, it)``, so a resumed run
equals an uninterrupted one.
"""
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..augment import DSA
from .matching import Shards
from .presets import DistillConfig
from .state import (
    CHECKPOINT_FILE, best_images, check_finite_state, check_resume_config, load_checkpoint, save_checkpoint, to_cpu,
    to_device,
)
from ..seeding import derive_seed, generator_for
from ..tracking import log_metrics

__all__ = ['DistributionMatching']

_logger = logging.getLogger(__name__)


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, 'forward_head'):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


class DistributionMatching:
    """DM state and iteration.

    Args:
        cfg: Settings (``lr_img``, ``img_momentum``, ``batch_real``, ``dsa``, ``seed``, ``eval_every``, ...).
        images: Initial synthetic images, class-major ``[C*ipc, ch, H, W]``.
        labels: Their hard labels.
        real_images: Real training images in the same space.
        real_labels: Their labels.
        make_model: Builds a freshly initialised network (uses the global RNG, which is seeded per iteration here).
        out_dir: Checkpoint folder (``None``: no checkpoints).
        eval_fn: ``eval_fn(iteration, images, None, None) -> dict``, as for :class:`TrajectoryMatching`.
        accelerator: The run's ``accelerate.Accelerator``: images and networks live on its device (real batches are
            copied there per iteration); under several processes the classes are split between them and the image
            gradient is summed (the same draws on every process: exact). ``None``: one process, images' device.
    """

    def __init__(
            self,
            cfg: DistillConfig,
            images: torch.Tensor,
            labels: torch.Tensor,
            real_images: torch.Tensor,
            real_labels: torch.Tensor,
            make_model: Callable[[], nn.Module],
            out_dir: Optional[Union[str, Path]] = None,
            eval_fn: Optional[Callable] = None,
            accelerator: Optional[Any] = None,
    ):
        self.cfg = cfg
        self.accelerator = accelerator
        self.device = accelerator.device if accelerator is not None else images.device
        self.shards = Shards.from_accelerator(accelerator)
        self.images = images.detach().to(self.device, torch.float32, copy=True).requires_grad_(True)
        self.labels = labels.detach().cpu().clone()
        self.classes = sorted(int(c) for c in self.labels.unique())
        self.real_images = real_images
        self.real_by_class = {c: (real_labels == c).nonzero().flatten() for c in self.classes}
        self.syn_by_class = {c: (self.labels == c).nonzero().flatten() for c in self.classes}
        self.make_model = make_model
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.img_momentum)
        self.dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self.iteration = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None  # images of the best evaluation (MTT/ATT's selection rule)

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / CHECKPOINT_FILE if self.out_dir is not None else None

    def loss(self, images: torch.Tensor, iteration: int) -> torch.Tensor:
        """The DM loss of ``images`` with iteration ``iteration``'s network, real batches and DSA draws."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, iteration, 31))
            model = self.make_model()
        model.to(self.device).train().requires_grad_(False)
        gen = generator_for(self.cfg.seed, iteration, 37)
        size = images.shape[-1]
        total = images.new_zeros(())
        for position, c in enumerate(self.classes):
            pool = self.real_by_class[c]
            real_idx = pool[torch.randperm(pool.numel(), generator=gen)[:self.cfg.batch_real]]
            # every process draws every class's randomness (same streams), then works on its own classes
            draw = self.dsa.sample(1, size, self.device, gen, siamese=True) if self.dsa is not None else None
            if position % self.shards.world != self.shards.rank:
                continue
            real = to_device(self.real_images[real_idx], self.device)
            syn = images[self.syn_by_class[c].to(self.device)]
            if draw is not None:  # the same transform for both
                real, syn = self.dsa.apply(real, draw), self.dsa.apply(syn, draw)
            diff = _embed(model, real).mean(0) - _embed(model, syn).mean(0)
            total = total + diff.pow(2).sum()
        return total

    def step(self) -> Dict[str, Any]:
        it = self.iteration
        check_finite_state(it, self.images, checkpoint=self.checkpoint_path)
        t0 = time.perf_counter()
        loss = self.loss(self.images, it)
        check_finite_state(it, self.images, loss=loss.detach(), checkpoint=self.checkpoint_path)
        self.opt_img.zero_grad(set_to_none=True)
        loss.backward()
        if self.shards.world > 1:  # each process has its classes' terms: sum the image gradient and the loss
            self.shards.sum_(self.images.grad)
            loss = self.shards.sum_(loss.detach().clone())
        self.opt_img.step()
        check_finite_state(it, self.images, checkpoint=self.checkpoint_path)
        self.iteration = it + 1
        return {'iteration': it, 'loss': float(loss.detach()), 'seconds': time.perf_counter() - t0}

    def state_dict(self) -> Dict[str, Any]:
        return to_cpu({'iteration': self.iteration, 'images': self.images.detach().clone(),
                        'opt_img': self.opt_img.state_dict(), 'history': list(self.history), 'best': self.best,
                        'config': self.cfg.to_dict()})

    def load_state_dict(self, state: Dict[str, Any], force: bool = False) -> None:
        check_resume_config(state.get('config', {}), self.cfg.to_dict(), self.checkpoint_path, force)
        with torch.no_grad():
            self.images.copy_(state['images'])
        self.opt_img.load_state_dict(state['opt_img'])
        for group in self.opt_img.param_groups:  # the settings run are the settings recorded
            group.update(lr=self.cfg.lr_img, momentum=self.cfg.img_momentum)
        self.iteration = int(state['iteration'])
        self.history = list(state.get('history', []))
        self.best = state.get('best')

    def save(self) -> Optional[Path]:
        """Checkpoint (main process only; the others wait)."""
        if self.checkpoint_path is None:
            return None
        if self.accelerator is None or self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_path, self.state_dict())
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return self.checkpoint_path

    def resume(self, force: bool = False) -> bool:
        state = load_checkpoint(self.checkpoint_path) if self.checkpoint_path is not None else None
        if state is None:
            return False
        self.load_state_dict(state, force)
        return True

    def evaluate(self) -> Dict[str, Any]:
        record: Dict[str, Any] = {'iteration': self.iteration}
        if self.eval_fn is not None:
            record.update(self.eval_fn(self.iteration, self.images.detach().clone(), None, None))
        _logger.info(f'eval at iteration {self.iteration}: {record}')
        log_metrics(self.accelerator, {f'eval/{k}': v for k, v in record.items() if k != 'iteration'}, self.iteration)
        self.history.append(record)
        self.best = best_images(self.best, record, self.images, None)
        return record

    def run(self, iterations: Optional[int] = None) -> List[Dict[str, Any]]:
        """Iterate to ``iterations`` (default ``cfg.iterations``) with periodic evaluation and checkpoints."""
        cfg = self.cfg
        total = cfg.iterations if iterations is None else iterations
        done = {r['iteration'] for r in self.history}
        main = self.accelerator is None or self.accelerator.is_main_process
        pbar = tqdm(total=total, initial=self.iteration, desc='DM', disable=not main)
        while self.iteration < total:
            if self.eval_fn is not None and cfg.eval_every and self.iteration % cfg.eval_every == 0 \
                    and self.iteration not in done:
                pbar.set_description('DM (evaluating)')
                self.evaluate()
                pbar.set_description('DM')
            info = self.step()
            log_metrics(self.accelerator, {'dm/loss': info['loss'], 'dm/seconds': info['seconds']}, info['iteration'])
            pbar.update(1)
            pbar.set_postfix(loss=f'{info["loss"]:.4f}', refresh=False)
            if info['iteration'] % max(1, total // 10) == 0:
                _logger.debug(f'iteration {info["iteration"]}: DM loss {info["loss"]:.5f} ({info["seconds"]:.2f} s)')
            if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                self.save()
        pbar.close()
        if self.eval_fn is not None and total == cfg.iterations \
                and self.iteration not in {r['iteration'] for r in self.history}:
            self.evaluate()
        self.save()
        return self.history

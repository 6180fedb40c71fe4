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

from ..augment import DSA
from .presets import DistillConfig
from .state import CHECKPOINT_FILE, check_finite_state, load_checkpoint, save_checkpoint
from ..seeding import derive_seed, generator_for

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
    ):
        self.cfg = cfg
        self.images = images.detach().clone().float().requires_grad_(True)
        self.labels = labels.detach().clone()
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

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / CHECKPOINT_FILE if self.out_dir is not None else None

    def loss(self, images: torch.Tensor, iteration: int) -> torch.Tensor:
        """The DM loss of ``images`` with iteration ``iteration``'s network, real batches and DSA draws."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, iteration, 31))
            model = self.make_model()
        model.train().requires_grad_(False)
        gen = generator_for(self.cfg.seed, iteration, 37)
        size = images.shape[-1]
        total = images.new_zeros(())
        for c in self.classes:
            pool = self.real_by_class[c]
            real = self.real_images[pool[torch.randperm(pool.numel(), generator=gen)[:self.cfg.batch_real]]]
            syn = images[self.syn_by_class[c]]
            if self.dsa is not None:
                draw = self.dsa.sample(1, size, images.device, gen, siamese=True)  # same transform for both
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
        self.opt_img.step()
        check_finite_state(it, self.images, checkpoint=self.checkpoint_path)
        self.iteration = it + 1
        return {'iteration': it, 'loss': float(loss.detach()), 'seconds': time.perf_counter() - t0}

    def state_dict(self) -> Dict[str, Any]:
        return {'iteration': self.iteration, 'images': self.images.detach().clone(),
                'opt_img': self.opt_img.state_dict(), 'history': list(self.history), 'config': self.cfg.to_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state['images'])
        self.opt_img.load_state_dict(state['opt_img'])
        self.iteration = int(state['iteration'])
        self.history = list(state.get('history', []))

    def save(self) -> Optional[Path]:
        return save_checkpoint(self.checkpoint_path, self.state_dict()) if self.checkpoint_path else None

    def resume(self) -> bool:
        state = load_checkpoint(self.checkpoint_path) if self.checkpoint_path is not None else None
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def evaluate(self) -> Dict[str, Any]:
        record: Dict[str, Any] = {'iteration': self.iteration}
        if self.eval_fn is not None:
            record.update(self.eval_fn(self.iteration, self.images.detach().clone(), None, None))
        _logger.info(f'eval at iteration {self.iteration}: {record}')
        self.history.append(record)
        return record

    def run(self, iterations: Optional[int] = None) -> List[Dict[str, Any]]:
        """Iterate to ``iterations`` (default ``cfg.iterations``) with periodic evaluation and checkpoints."""
        cfg = self.cfg
        total = cfg.iterations if iterations is None else iterations
        done = {r['iteration'] for r in self.history}
        while self.iteration < total:
            if self.eval_fn is not None and cfg.eval_every and self.iteration % cfg.eval_every == 0 \
                    and self.iteration not in done:
                self.evaluate()
            info = self.step()
            if info['iteration'] % max(1, total // 10) == 0:
                _logger.info(f'iteration {info["iteration"]}: DM loss {info["loss"]:.5f} ({info["seconds"]:.2f} s)')
            if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                self.save()
        if self.eval_fn is not None and total == cfg.iterations \
                and self.iteration not in {r['iteration'] for r in self.history}:
            self.evaluate()
        self.save()
        return self.history

"""Distribution matching (DM; Zhao & Bilen, WACV 2023): a cheap distillation method that needs no experts.

Per iteration a freshly initialised network of the distillation architecture embeds (features before the classifier)
a random real batch and the synthetic images of every class, both augmented with the same siamese DSA draw; the loss
is ``Σ_c ‖mean emb(real_c) − mean emb(syn_c)‖²`` and the images take one SGD step (momentum 0.5). Randomness of
iteration ``it`` (network init, real batches, DSA) comes from generators seeded by ``(seed, it)``, so a resumed run
equals an uninterrupted one.
"""
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn

from ..augment import DSA
from ..data import ImageSet, as_image_set
from ..seeding import Stream, generator_for, seeded
from .distiller import Distiller, EvalFn
from .presets import DistillConfig

__all__ = ['DistributionMatching']

def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, 'forward_head'):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


class DistributionMatching(Distiller):
    """DM: images whose class-mean embeddings match the real ones under random networks.

    Args:
        cfg: Settings (``lr_img``, ``img_momentum``, ``batch_real``, ``dsa``, ``seed``, ``eval_every``, ...).
        images: Initial synthetic images, class-major ``[C*ipc, ch, H, W]``.
        labels: Their hard labels.
        real_images: Real training images in the same space.
        real_labels: Their labels.
        make_model: Builds a freshly initialised network (uses the global RNG, which is seeded per iteration here).
        out_dir, eval_fn, accelerator: As for :class:`~timm_dd.distill.distiller.Distiller`; real batches are
            copied to the device per iteration; under several processes the classes are split between them and the
            image gradient is summed (the same draws on every process: exact).
    """

    def __init__(
            self,
            cfg: DistillConfig,
            images: torch.Tensor,
            labels: torch.Tensor,
            real_images: Union[torch.Tensor, ImageSet],
            real_labels: torch.Tensor,
            make_model: Callable[[], nn.Module],
            out_dir: Optional[Union[str, Path]] = None,
            eval_fn: Optional[EvalFn] = None,
            accelerator: Optional[Any] = None,
    ):
        super().__init__(cfg, images, out_dir, eval_fn, accelerator)
        self.labels = labels.detach().cpu().clone()
        self.classes = sorted(int(c) for c in self.labels.unique())
        self.real = as_image_set(real_images, real_labels)  # stored pixels: each class batch converted on the device
        self.real_by_class = {c: (real_labels == c).nonzero().flatten() for c in self.classes}
        self.syn_by_class = {c: (self.labels == c).nonzero().flatten() for c in self.classes}
        self.make_model = make_model
        self.dsa = DSA.of(cfg)

    def loss(self, images: torch.Tensor, iteration: int) -> torch.Tensor:
        """The DM loss of ``images`` with iteration ``iteration``'s network, real batches and DSA draws."""
        with seeded(self.cfg.seed, iteration, Stream.DM_NETWORK):
            model = self.make_model()
        model.to(self.device).train().requires_grad_(False)
        gen = generator_for(self.cfg.seed, iteration, Stream.DM_STEP)
        size = images.shape[-1]
        total = images.new_zeros(())
        for position, c in enumerate(self.classes):
            pool = self.real_by_class[c]
            real_idx = pool[torch.randperm(pool.numel(), generator=gen)[:self.cfg.batch_real]]
            # every process draws every class's randomness (same streams), then works on its own classes
            draw = self.dsa.sample(1, size, self.device, gen, siamese=True) if self.dsa is not None else None
            if position % self.shards.world != self.shards.rank:
                continue
            real = self.real.batch(real_idx, self.device)
            syn = images[self.syn_by_class[c].to(self.device)]
            if draw is not None:  # the same transform for both
                real, syn = self.dsa.apply(real, draw), self.dsa.apply(syn, draw)
            diff = _embed(model, real).mean(0) - _embed(model, syn).mean(0)
            total = total + diff.pow(2).sum()
        return total

    def step(self) -> Dict[str, Any]:
        it = self.iteration
        self.check_finite(it)
        t0 = time.perf_counter()
        loss = self.loss(self.images, it)
        self.check_finite(it, loss.detach())
        self.opt_img.zero_grad(set_to_none=True)
        loss.backward()
        if self.shards.world > 1:  # each process has its classes' terms: sum the image gradient and the loss
            self.shards.sum_(self.images.grad)
            loss = self.shards.sum_(loss.detach().clone())
        self.opt_img.step()
        self.check_finite(it)
        self.iteration = it + 1
        return {'iteration': it, 'loss': float(loss.detach()), 'seconds': time.perf_counter() - t0}

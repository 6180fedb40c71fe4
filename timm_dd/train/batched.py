"""Several seeds of one network trained at once on one device: the seeds' parameters are stacked
(``torch.func.stack_module_state``) and one ``torch.func.vmap``-ed forward/backward serves them all.

On a GPU a ConvNet-3 on 100 images uses a sliver of the device; stacking S seeds turns S small launches into one
larger one. Every seed keeps its own randomness (initialization, batch order, DSA draws: the same derived generators
as :func:`~timm_dd.train.trainer.train_model`), the summed loss gives every seed exactly its own gradient, and the
optimizers of the recipes (SGD, Lion, AdamW) act element-wise, so one optimizer over the stacked tensors equals S
separate ones. The result equals S sequential runs up to floating-point summation order.

Supported: networks whose normalization has no running statistics (instance, group or layer norm, or none: the
ConvNet family) and recipes without DropPath, knowledge distillation or ELF. Batch norm (per-seed running
statistics updated in place) and the other recipe parts are refused with an error saying what to use instead.
"""
import copy
import math
import time
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import DataLoader

from ..augment import DSA
from ..data import ImageSet
from ..seeding import Stream, generator_for
from .config import TrainConfig
from .losses import label_loss
from .loop import CallbackHook, IterationLr, accuracy, check_finite, count_correct, epoch_batches, fit, run_batches
from .task import create_optimizer, resolve_lr
from .trainer import RunResult, eval_epochs

__all__ = ['train_seeds_batched', 'check_batchable']


def check_batchable(model: nn.Module, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` if ``model`` or ``cfg`` cannot be trained with stacked seeds."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError('stacked seeds (parallel: vmap) need a network without batch norm (instance, group or layer '
                         'norm: the ConvNet family); train batch-norm networks with parallel: runs')
    parts = (('drop_path', cfg.drop_path), ('kd', cfg.kd), ('relabel', cfg.relabel), ('elf', cfg.elf),
             ('cutmix_beta', cfg.cutmix_beta is not None), (f'soft_loss {cfg.soft_loss}', cfg.soft_loss != 'ce'))
    unsupported = [name for name, on in parts if on]
    if unsupported:
        raise ValueError(f'stacked seeds (parallel: vmap) do not support {unsupported}; use parallel: runs')


def train_seeds_batched(
        models: Sequence[nn.Module],
        seeds: Sequence[int],
        train_set: ImageSet,
        test_loader: DataLoader,
        cfg: TrainConfig,
        accelerator: Accelerator,
        desc: str = '',
) -> List[RunResult]:
    """Train ``models[i]`` with seed ``seeds[i]``'s random streams, all at once on ``accelerator.device`` (this
    process alone); the trained weights are written back into ``models``.

    Args:
        models: One freshly initialized network per seed, all of the same architecture.
        seeds: The seeds; run ``i`` uses ``cfg.replace(seed=seeds[i])``'s random streams.
        train_set: Training images and labels in the model's input space.
        test_loader: A plain (unprepared) loader over the whole test set.
        cfg: The recipe (no DropPath, KD or ELF).
        accelerator: Gives the device and mixed precision (autocast).
        desc: Progress-bar label.

    Returns:
        One :class:`RunResult` per seed, in order.
    """
    if len(models) != len(seeds):
        raise ValueError(f'{len(models)} models for {len(seeds)} seeds')
    check_batchable(models[0], cfg)
    run = _StackedRun(models, seeds, train_set, test_loader, cfg, accelerator, desc)
    fit(range(cfg.epochs), run.train_epoch, [CallbackHook(run.evaluate)], desc or f'{len(seeds)} seeds (vmap)', True,
        lambda record: {'acc': f"{record['acc']:.3f}"} if 'acc' in record else {})
    for model, state in zip(models, _unstack(run.stacked, run.buffers, len(seeds))):
        model.load_state_dict(state)
    return run.results()


class _StackedRun:
    """The stacked parameters of every seed, one optimizer over them, one epoch of vmapped updates."""

    def __init__(self, models: Sequence[nn.Module], seeds: Sequence[int], train_set: ImageSet,
                 test_loader: DataLoader, cfg: TrainConfig, accelerator: Accelerator, desc: str):
        self.cfg, self.seeds, self.accelerator, self.test_loader, self.desc = cfg, list(seeds), accelerator, \
            test_loader, desc
        self.device = device = accelerator.device
        params, self.buffers = stack_module_state([m.to(device) for m in models])
        self.base = copy.deepcopy(models[0])  # the structure functional_call runs; its own tensors are never used
        self.base_lr = resolve_lr(cfg, train_set.learned_lr)
        self.dsa = DSA.of(cfg)
        holder = nn.Module()  # create_optimizer takes a module: hold the stacked leaves as parameters
        for i, p in enumerate(params.values()):
            holder.register_parameter(f'p{i}', nn.Parameter(p, requires_grad=True))
        self.stacked = dict(zip(params.keys(), holder.parameters()))
        self.optimizer = create_optimizer(holder, cfg, self.base_lr)
        self.images, self.labels = train_set.float_images().images.to(device), train_set.labels.to(device)
        self.n = len(train_set)
        self.iters_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.lr = IterationLr(self.optimizer, self.base_lr, cfg.lr_schedule_fn(), self.iters_per_epoch,
                              cfg.reset_momentum_at_decay)
        base = self.base

        def seed_loss(p: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            return label_loss(functional_call(base, (p, b), (x,)), y)  # soft labels are probabilities already

        self.batched_loss = vmap(seed_loss, in_dims=(0, 0, 0, 0))
        self.evaluated = eval_epochs(cfg)
        self.histories: List[List[Dict[str, Any]]] = [[] for _ in seeds]
        self.best = [(-1.0, -1)] * len(seeds)
        self.train_seconds = 0.0
        self.base.train()

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch for every seed, each with its own derived permutation and DSA stream."""
        t0, cfg = time.perf_counter(), self.cfg
        self._aug_gens = [generator_for(s, epoch, 0, Stream.TRAIN_AUGMENT) for s in self.seeds]
        self.lr.start_epoch(epoch)
        # batch i of every seed, each from its own permutation
        batches = list(zip(*[epoch_batches(self.n, cfg.batch_size, generator_for(s, epoch, Stream.TRAIN_ORDER),
                                           self.device) for s in self.seeds]))
        # the summed loss gives seed i's parameters only seed i's loss
        losses = run_batches(batches, self._loss_of, self.optimizer, lambda l: l.sum().backward(), None, self.lr)
        loss = torch.stack(losses).sum(0) / self.iters_per_epoch
        check_finite(loss, self.desc or 'stacked seeds', epoch)
        self.train_seconds += time.perf_counter() - t0
        return {'epoch': epoch, 'lr': self.lr.lr, 'loss': loss}

    def _loss_of(self, idx: Sequence[torch.Tensor]) -> torch.Tensor:
        xs = [self.images[i] for i in idx]
        if self.dsa is not None:
            xs = [self.dsa(x, generator=g) for x, g in zip(xs, self._aug_gens)]
        x, y = torch.stack(xs), torch.stack([self.labels[i] for i in idx])
        with self.accelerator.autocast():
            return self.batched_loss(self.stacked, self.buffers, x, y)

    def evaluate(self, epoch: int, record: Dict[str, Any]) -> None:
        """Every seed's test accuracy at the evaluation epochs, into its history."""
        if epoch not in self.evaluated:
            return
        correct, count = count_correct(_StackedForward(self.base, self.stacked, self.buffers), self.test_loader,
                                       self.device, self.accelerator)
        accs = accuracy(correct, count)
        record['acc'] = sum(accs) / len(accs)
        for i, acc in enumerate(accs):
            self.histories[i].append({'epoch': epoch, 'lr': record['lr'], 'loss': float(record['loss'][i]),
                                      'test_acc': acc, 'test_count': count})
            if acc > self.best[i][0]:
                self.best[i] = (acc, epoch)

    def results(self) -> List[RunResult]:
        t = self.train_seconds
        ips = self.n * self.cfg.epochs * len(self.seeds) / t if t > 0 else float('nan')
        return [RunResult(final_acc=h[-1]['test_acc'], best_acc=self.best[i][0], best_epoch=self.best[i][1],
                          history=h, num_test_evaluated=h[-1]['test_count'], train_seconds=t, images_per_second=ips)
                for i, h in enumerate(self.histories)]


class _StackedForward(nn.Module):
    """Every seed's logits ``[S, B, K]`` of one batch: the stacked parameters through one vmapped forward."""

    def __init__(self, base: nn.Module, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor]):
        super().__init__()
        self.base, self.params, self.buffers = base, params, buffers
        self.forward_all = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(self.params, self.buffers, x)


def _unstack(params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor],
             num_seeds: int) -> List[Dict[str, torch.Tensor]]:
    """Per-seed state dicts of the stacked parameters and buffers."""
    return [{**{k: v[i].detach() for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}}
            for i in range(num_seeds)]

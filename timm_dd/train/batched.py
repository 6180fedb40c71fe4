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
from ..seeding import generator_for
from .config import TrainConfig
from .losses import label_loss
from .loop import CallbackHook, fit, run_batches
from .trainer import RunResult, create_optimizer, eval_epochs, resolve_lr

__all__ = ['train_seeds_batched', 'check_batchable']


def check_batchable(model: nn.Module, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` if ``model`` or ``cfg`` cannot be trained with stacked seeds."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError('stacked seeds (parallel: vmap) need a network without batch norm (instance, group or layer '
                         'norm: the ConvNet family); train batch-norm networks with parallel: runs')
    unsupported = [name for name, on in (('drop_path', cfg.drop_path), ('kd', cfg.kd), ('elf', cfg.elf)) if on]
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
    device = accelerator.device
    if len(models) != len(seeds):
        raise ValueError(f'{len(models)} models for {len(seeds)} seeds')
    check_batchable(models[0], cfg)
    params, buffers = stack_module_state([m.to(device) for m in models])
    base = copy.deepcopy(models[0])  # the structure functional_call runs; its own tensors are never used
    base_lr = resolve_lr(cfg, train_set.learned_lr)
    lr_schedule = cfg.lr_schedule_fn()
    dsa = DSA(cfg.dsa_strategy, k=cfg.dsa_k) if cfg.dsa else None
    holder = nn.Module()  # create_optimizer takes a module: hold the stacked leaves as parameters
    for i, p in enumerate(params.values()):
        holder.register_parameter(f'p{i}', nn.Parameter(p, requires_grad=True))
    stacked = dict(zip(params.keys(), holder.parameters()))
    optimizer = create_optimizer(holder, cfg, base_lr)
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    n, num_seeds = len(train_set), len(seeds)
    iters_per_epoch = math.ceil(n / cfg.batch_size)

    def seed_loss(p: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        return label_loss(functional_call(base, (p, b), (x,)), y)  # soft labels are probabilities already

    batched_loss = vmap(seed_loss, in_dims=(0, 0, 0, 0))
    evaluated = eval_epochs(cfg)
    histories: List[List[Dict[str, Any]]] = [[] for _ in seeds]
    best = [(-1.0, -1)] * num_seeds
    clock = {'train_seconds': 0.0, 'lr': base_lr}
    base.train()

    def train_epoch(epoch: int) -> Dict[str, Any]:
        t0 = time.perf_counter()
        perms = [torch.randperm(n, generator=generator_for(s, epoch, 0)).to(device) for s in seeds]
        aug_gens = [generator_for(s, epoch, 0, 2) for s in seeds]
        if cfg.reset_momentum_at_decay and epoch in lr_schedule.milestones:
            optimizer.state.clear()  # as train_model: MTT re-creates its optimizer at the decay

        def set_lr(it: int) -> None:
            clock['lr'] = base_lr * lr_schedule.factor(epoch, it, iters_per_epoch)
            for group in optimizer.param_groups:
                group['lr'] = clock['lr']

        def loss_of(it: int) -> torch.Tensor:
            idx = [perm[it * cfg.batch_size:(it + 1) * cfg.batch_size] for perm in perms]
            xs = [images[i] for i in idx]
            if dsa is not None:
                xs = [dsa(x, generator=g) for x, g in zip(xs, aug_gens)]
            x, y = torch.stack(xs), torch.stack([labels[i] for i in idx])
            with accelerator.autocast():
                losses = batched_loss(stacked, buffers, x, y)
            if not torch.isfinite(losses).all():
                raise FloatingPointError(f'{desc}: loss became {losses.tolist()} at epoch {epoch}')
            return losses

        # the summed loss gives seed i's parameters only seed i's loss
        losses = run_batches(range(iters_per_epoch), loss_of, optimizer, lambda l: l.sum().backward(), None, set_lr)
        clock['train_seconds'] += time.perf_counter() - t0
        return {'epoch': epoch, 'lr': clock['lr'], 'loss': torch.stack(losses).sum(0) / iters_per_epoch}

    def evaluate_seeds(epoch: int, record: Dict[str, Any]) -> None:
        if epoch not in evaluated:
            return
        accs, count = _evaluate(base, stacked, buffers, test_loader, accelerator)
        record['acc'] = sum(accs) / num_seeds
        for i in range(num_seeds):
            histories[i].append({'epoch': epoch, 'lr': record['lr'], 'loss': float(record['loss'][i]),
                                 'test_acc': accs[i], 'test_count': count})
            if accs[i] > best[i][0]:
                best[i] = (accs[i], epoch)

    fit(range(cfg.epochs), train_epoch, [CallbackHook(evaluate_seeds)], desc or f'{num_seeds} seeds (vmap)', True,
        lambda record: {'acc': f"{record['acc']:.3f}"} if 'acc' in record else {})
    train_time = clock['train_seconds']
    for model, state in zip(models, _unstack(stacked, buffers, num_seeds)):
        model.load_state_dict(state)
    ips = n * cfg.epochs * num_seeds / train_time if train_time > 0 else float('nan')
    return [RunResult(final_acc=h[-1]['test_acc'], best_acc=best[i][0], best_epoch=best[i][1], history=h,
                      num_test_evaluated=h[-1]['test_count'], train_seconds=train_time, images_per_second=ips)
            for i, h in enumerate(histories)]


@torch.no_grad()
def _evaluate(base: nn.Module, params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor],
              loader: DataLoader, accelerator: Accelerator):
    base.eval()
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    device = accelerator.device
    num_seeds = next(iter(params.values())).shape[0]
    correct = torch.zeros(num_seeds, device=device)
    total = torch.zeros((), device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with accelerator.autocast():
            logits = forward(params, buffers, x)  # [S, B, K]
        correct += (logits.argmax(-1) == y).sum(1)
        total += y.numel()
    base.train()
    # the same arithmetic as loop.evaluate, so equal predictions give equal accuracies
    return [(c / total.clamp(min=1)).item() for c in correct], int(total.item())


def _unstack(params: Dict[str, torch.Tensor], buffers: Dict[str, torch.Tensor], num_seeds: int) -> List[Dict[str, torch.Tensor]]:
    """Per-seed state dicts of the stacked parameters and buffers."""
    return [{**{k: v[i].detach() for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}}
            for i in range(num_seeds)]

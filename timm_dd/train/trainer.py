"""Train one network on a small (distilled or real-subset) training set with Accelerate.

The training set is tiny (tens to thousands of images), so it lives on the device as one tensor and every
process draws the same seeded permutation each epoch and takes its own slice of every batch; DDP averages the
gradients. All randomness (permutation, DSA draws, DropPath masks) comes from generators derived from
``(seed, epoch, rank)``, so a run resumed from an epoch-boundary checkpoint ends with the same weights as an
uninterrupted one.
"""
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..augment import DSA
from ..io import atomic_write
from ..layers import set_drop_generator, set_keep_rate
from ..seeding import derive_seed, generator_for
from ..tracking import log_metrics
from .config import TrainConfig
from .elf import FeatureSplit, elf_split
from .losses import feature_loss, kd_loss, label_loss

__all__ = ['TrainSet', 'RunResult', 'TrainTask', 'train_model', 'evaluate', 'create_optimizer']

_logger = logging.getLogger(__name__)

CHECKPOINT_FILE = 'checkpoint.pt'
METRICS_FILE = 'metrics.jsonl'


@dataclass
class TrainSet:
    """Images already in the model's input space, hard labels ``[N]`` or soft labels ``[N, K]``.

    Soft labels are probabilities, each row summing to 1 (checked): :func:`~timm_dd.train.experiment.prepare_data`
    turns a set's logit labels into probabilities with its temperature, once.
    """
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: List[str] = field(default_factory=list)
    learned_lr: Optional[float] = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f'images must be [N, C, H, W], got shape {tuple(self.images.shape)}')
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f'{self.labels.shape[0]} labels for {self.images.shape[0]} images')
        if not torch.isfinite(self.images).all():
            raise ValueError('training images contain NaN or Inf')
        if self.labels.dim() == 2:
            sums = self.labels.float().sum(1)
            if (self.labels < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise ValueError('soft labels must be probabilities (rows summing to 1); for logits use '
                                 'softmax(y / t) first (prepare_data does it with soft_label_temperature)')

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class RunResult:
    final_acc: float
    best_acc: float
    best_epoch: int
    history: List[Dict[str, Any]]
    num_test_evaluated: int
    train_seconds: float
    images_per_second: float


class TrainTask(nn.Module):
    """Wraps the student so that everything that needs gradients runs inside one ``forward`` (what DDP
    synchronizes): the plain model, or ELF's front/rear with the rear also applied to the target features."""

    def __init__(self, model: nn.Module, elf: bool = False):
        super().__init__()
        self.model = model
        self.split: Optional[FeatureSplit] = elf_split(model) if elf else None

    def forward(self, x: torch.Tensor, features: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        if self.split is None:
            return {'logits': self.model(x)}
        front = self.split.front(x)
        out = {'logits': self.split.rear(front), 'front': front}
        if features is not None:
            out['rear_on_features'] = self.split.rear(features)
        return out


def create_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (timm's ``momentum``; coupled wd), Lion (timm's, decoupled wd on all parameters) or AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.opt == 'momentum':
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.opt == 'lion':
        from timm.optim import Lion
        return Lion(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def resolve_lr(cfg: TrainConfig, learned_lr: Optional[float]) -> float:
    if cfg.lr is not None:
        return cfg.lr
    if learned_lr is not None:
        if not (learned_lr > 0 and math.isfinite(learned_lr)):
            raise ValueError(f'the distilled set\'s learned lr must be positive and finite, got {learned_lr}')
        return float(learned_lr)
    return cfg.lr_fallback


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator,
             distributed: bool = True) -> Dict[str, float]:
    """Top-1 accuracy over the whole test set.

    ``distributed=True``: ``loader`` comes from ``accelerator.prepare`` (each process sees a shard) and every sample
    is counted exactly once across processes. ``False``: this process evaluates the whole (unprepared) loader
    on ``accelerator.device`` alone.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device
    correct = torch.zeros((), device=device)
    total = torch.zeros((), device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with accelerator.autocast():
            logits = model(x)
        preds, refs = logits.argmax(1), y
        if distributed:
            preds, refs = accelerator.gather_for_metrics((preds, refs))
        correct += (preds == refs).sum()
        total += refs.numel()
    model.train(was_training)
    return {'acc': (correct / total.clamp(min=1)).item(), 'count': int(total.item())}


def _save_checkpoint(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """One file, written atomically by one process: weights, optimizer state and the run state.

    No RNG state is needed: every random draw comes from generators derived from ``(seed, epoch, rank)``.
    """
    payload = {'model': task.state_dict(), 'optimizer': optimizer.state_dict(), 'state': state}
    with atomic_write(path) as f:
        torch.save(payload, f)


def _load_checkpoint(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        task.load_state_dict(payload['model'])
        optimizer.load_state_dict(payload['optimizer'])
    except Exception as e:
        raise RuntimeError(f'{path}: cannot resume from this checkpoint (truncated, corrupt or made by another '
                           f'model or recipe): {e}; delete it to start the run again') from e
    return payload['state']


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the metric lines of epochs before ``epoch`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)['epoch'] < epoch]
    with atomic_write(path, 'w') as f:
        f.writelines(lines)


def train_model(
        model: nn.Module,
        train_set: TrainSet,
        test_loader: DataLoader,
        cfg: TrainConfig,
        accelerator: Accelerator,
        model_name: str = '',
        teacher: Optional[nn.Module] = None,
        elf_features: Optional[torch.Tensor] = None,
        out_dir: Optional[Path] = None,
        resume: bool = False,
        stop_after_epoch: Optional[int] = None,
        desc: str = '',
        distributed: bool = True,
        snapshot: Optional[Callable[[int], None]] = None,
) -> RunResult:
    """Train ``model`` on ``train_set`` with recipe ``cfg`` on ``accelerator.device``.

    ``distributed=True``: every process of ``accelerator`` calls this together; the model is wrapped in DDP and each
    process takes its slice of every batch (``test_loader`` must come from ``accelerator.prepare``).
    ``distributed=False``: this process trains the run alone (several runs in parallel, one per process;
    ``test_loader`` is a plain loader). With ``out_dir`` the run checkpoints every ``cfg.checkpoint_every`` epochs
    (``checkpoint.pt``, written by one process) and appends metrics to ``metrics.jsonl``; ``resume=True``
    continues from the checkpoint. ``stop_after_epoch`` ends the run early after that epoch, checkpointed (used to
    test resuming). ``snapshot(epochs_done)`` is called by the writing process after each epoch listed in
    ``cfg.snapshot_epochs``.
    """
    device = accelerator.device
    distributed = distributed and accelerator.num_processes > 1
    rank, world = (accelerator.process_index, accelerator.num_processes) if distributed else (0, 1)
    writer = accelerator.is_main_process or not distributed  # the one process that writes this run's files
    if cfg.kd and teacher is None:
        raise ValueError('the recipe uses knowledge distillation (kd: true) but no teacher was given')
    if cfg.elf and elf_features is None:
        raise ValueError('the recipe uses ELF (elf: true) but no feature targets were given')
    if cfg.checkpoint_every < 1:
        raise ValueError(f'checkpoint_every must be at least 1 epoch, got {cfg.checkpoint_every}')
    images = train_set.images.to(device)
    labels = train_set.labels.to(device)
    features = elf_features.to(device) if elf_features is not None else None

    base_lr = resolve_lr(cfg, train_set.learned_lr)
    keep_schedule = cfg.keep_rate_schedule(model_name)
    lr_schedule = cfg.lr_schedule_fn()
    dsa = DSA(cfg.dsa_strategy, k=cfg.dsa_k) if cfg.dsa else None

    task = TrainTask(model, elf=cfg.elf).to(device)
    optimizer = create_optimizer(task, cfg, base_lr)
    scaler = None
    if distributed:
        task, optimizer = accelerator.prepare(task, optimizer)
    elif accelerator.mixed_precision == 'fp16':
        scaler = torch.amp.GradScaler(device.type)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)  # never wrapped in DDP
    inner = accelerator.unwrap_model(task) if distributed else task

    start_epoch, history, best = 0, [], (-1.0, -1)
    metrics_path = out_dir / METRICS_FILE if out_dir is not None else None
    ckpt_path = out_dir / CHECKPOINT_FILE if out_dir is not None else None
    if out_dir is not None and writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    if resume and ckpt_path is not None:
        state = _load_checkpoint(ckpt_path, inner, optimizer, device)
        if state is not None:
            start_epoch, history = state['epoch'], state['history']
            best = tuple(state['best'])
            _logger.info('resumed %s from epoch %d', desc or model_name, start_epoch)
        if metrics_path is not None and writer:
            _truncate_metrics(metrics_path, start_epoch)
    elif metrics_path is not None and writer and metrics_path.exists():
        metrics_path.unlink()

    n = len(train_set)
    iters_per_epoch = math.ceil(n / cfg.batch_size)
    drop_gen = torch.Generator(device=device)
    set_drop_generator(inner.model, drop_gen)
    eval_epochs = _eval_epochs(cfg)
    last_epoch = cfg.epochs - 1 if stop_after_epoch is None else min(stop_after_epoch, cfg.epochs - 1)
    train_time, images_seen = 0.0, 0
    pbar = tqdm(range(start_epoch, last_epoch + 1), desc=desc or model_name, leave=False,
                disable=not (accelerator.is_local_main_process or not distributed))
    task.train()
    for epoch in pbar:
        t0 = time.perf_counter()
        keep_rate = keep_schedule(epoch)
        set_keep_rate(inner.model, keep_rate)
        drop_gen.manual_seed(derive_seed(cfg.seed, epoch, rank, 1))
        aug_gen = generator_for(cfg.seed, epoch, rank, 2)
        perm = torch.randperm(n, generator=generator_for(cfg.seed, epoch, 0)).to(device)
        epoch_loss = torch.zeros((), device=device)
        if cfg.reset_momentum_at_decay and epoch in lr_schedule.milestones:
            getattr(optimizer, 'optimizer', optimizer).state.clear()  # MTT re-creates its optimizer here
        for it in range(iters_per_epoch):
            lr = base_lr * lr_schedule.factor(epoch, it, iters_per_epoch)
            for group in optimizer.param_groups:
                group['lr'] = lr
            idx = perm[it * cfg.batch_size:(it + 1) * cfg.batch_size][rank::world]
            x, y = images[idx], labels[idx]
            xa = dsa(x, generator=aug_gen) if dsa is not None else x
            t = features[idx] if features is not None else None
            with accelerator.autocast():
                out = task(xa, t)
                loss = _loss(out, y, cfg, teacher, xa, t)
            if not torch.isfinite(loss):
                raise FloatingPointError(f'{desc or model_name}: loss became {loss.item()} at epoch {epoch}')
            optimizer.zero_grad(set_to_none=True)
            if distributed:
                accelerator.backward(loss)
                optimizer.step()
            elif scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            epoch_loss += loss.detach()
            images_seen += x.shape[0]
        train_time += time.perf_counter() - t0
        record = {'epoch': epoch, 'keep_rate': keep_rate, 'lr': lr, 'loss': epoch_loss.item() / iters_per_epoch}
        postfix = {'loss': f"{record['loss']:.3f}", 'p': f'{keep_rate:.2f}'}
        if epoch in eval_epochs or epoch == cfg.epochs - 1:
            result = evaluate(_LogitsOnly(task), test_loader, accelerator, distributed)
            record.update(test_acc=result['acc'], test_count=result['count'])
            if result['acc'] > best[0]:
                best = (result['acc'], epoch)
            history.append(record)
        if history:
            postfix['acc'] = f"{history[-1]['test_acc']:.3f}"
        pbar.set_postfix(postfix, refresh=False)
        if metrics_path is not None and writer:
            with open(metrics_path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        log_metrics(accelerator, {f'{desc or model_name}/{k}': v for k, v in record.items() if k != 'epoch'}, epoch)
        done = epoch + 1
        if snapshot is not None and writer and done in cfg.snapshot_epochs:
            snapshot(done)
        if ckpt_path is not None and (done % cfg.checkpoint_every == 0 or epoch == last_epoch):
            if writer:
                _save_checkpoint(ckpt_path, inner, optimizer, {'epoch': done, 'history': history, 'best': list(best)})
            if distributed:
                accelerator.wait_for_everyone()  # nobody reads or rewrites the file while it is written
    pbar.close()

    if history and history[-1]['epoch'] == last_epoch:
        final = {'acc': history[-1]['test_acc'], 'count': history[-1]['test_count']}
    else:
        final = evaluate(_LogitsOnly(task), test_loader, accelerator, distributed)
    images_seen_total = images_seen * world
    return RunResult(
        final_acc=final['acc'], best_acc=max(best[0], final['acc']), best_epoch=best[1], history=history,
        num_test_evaluated=final['count'], train_seconds=train_time,
        images_per_second=images_seen_total / train_time if train_time > 0 else float('nan'))


class _LogitsOnly(nn.Module):
    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task(x)['logits']


def _eval_epochs(cfg: TrainConfig) -> set:
    if cfg.eval_every <= 0:
        return {cfg.epochs - 1}
    # as in the DP+KD code: after the first epoch, every `eval_every` epochs, and the last
    return {0} | set(range(cfg.eval_every - 1, cfg.epochs, cfg.eval_every)) | {cfg.epochs - 1}


def _loss(out: Dict[str, torch.Tensor], y: torch.Tensor, cfg: TrainConfig, teacher: Optional[nn.Module],
          xa: torch.Tensor, features: Optional[torch.Tensor]) -> torch.Tensor:
    logits = out['logits']
    if cfg.kd:
        with torch.no_grad():
            teacher_logits = teacher(xa)  # the same augmented batch as the student
        loss = kd_loss(logits, teacher_logits, y, cfg.kd_alpha, cfg.kd_temperature)['loss']
    else:
        loss = label_loss(logits, y)
    if cfg.elf:
        loss = loss + cfg.elf_lambda_rear * label_loss(out['rear_on_features'], y)
        loss = loss + cfg.elf_lambda_front * feature_loss(out['front'], features, cfg.elf_feature_loss)
    return loss

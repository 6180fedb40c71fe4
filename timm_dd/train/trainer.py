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
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..augment import DSA, cutmix_images
from ..data import ImageSet
from ..io import append_line, atomic_write, make_folder, read_torch_file, remove_file
from ..layers import keep_rate_units, set_drop_generator, set_keep_rate
from ..seeding import Stream, derive_seed, device_generator, generator_for, seeded
from ..tracking import log_metrics
from .batchnorm import STALE_BN_GAP, has_batchnorm, recompute_bn_stats, train_accuracies
from .config import TrainConfig
from .loop import Hook, IterationLr, check_finite, epoch_batches, evaluate, fit, run_batches
from .task import LogitsOnly, TrainTask, create_optimizer, resolve_lr, task_loss

__all__ = ['RunResult', 'train_model', 'eval_epochs']

_logger = logging.getLogger(__name__)

CHECKPOINT_FILE = 'checkpoint.pt'
METRICS_FILE = 'metrics.jsonl'


@dataclass
class RunResult:
    final_acc: float
    best_acc: float
    best_epoch: int
    history: List[Dict[str, Any]]
    num_test_evaluated: int
    train_seconds: float
    images_per_second: float
    train_acc: Optional[float] = None  # on the un-augmented training images, eval mode, after the last epoch


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
        payload = read_torch_file(path, map_location=device)
        task.load_state_dict(payload['model'])
        optimizer.load_state_dict(payload['optimizer'])
    except Exception as e:
        raise RuntimeError(f'{path}: cannot resume from this checkpoint (truncated, corrupt or made by another '
                           f'model or recipe): {str(e).splitlines()[0]}; delete it to start the run again') from e
    return payload['state']


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Keep the metric lines of epochs before ``epoch`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)['epoch'] < epoch]
    with atomic_write(path, 'w') as f:
        f.writelines(lines)


@dataclass
class _Progress:
    """What a checkpoint restores besides the weights: epochs done, evaluated epochs, best accuracy."""
    epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Tuple[float, int] = (-1.0, -1)

    def to_dict(self) -> Dict[str, Any]:
        return {'epoch': self.epoch, 'history': self.history, 'best': list(self.best)}


class _Run:
    """One network's training run: the data on the device, the task, its optimizer, and one epoch of updates."""

    def __init__(self, model: nn.Module, train_set: ImageSet, cfg: TrainConfig, accelerator: Accelerator,
                 model_name: str, teacher: Optional[nn.Module], elf_features: Optional[torch.Tensor],
                 distributed: bool, name: str):
        self.cfg, self.accelerator, self.name = cfg, accelerator, name
        self.device = device = accelerator.device
        self.distributed = distributed and accelerator.num_processes > 1
        self.rank, self.world = (accelerator.process_index, accelerator.num_processes) if self.distributed else (0, 1)
        self.writer = accelerator.is_main_process or not self.distributed  # the one process writing this run's files
        self.images, self.labels = train_set.float_images().images.to(device), train_set.labels.to(device)
        self.features = elf_features.to(device) if elf_features is not None else None
        self.base_lr = resolve_lr(cfg, train_set.learned_lr)
        self.keep_schedule = cfg.keep_rate_schedule(model_name)
        self.droppable = cfg.drop_path and bool(keep_rate_units(model))  # whether the keep rate acts at all
        self.dsa = DSA.of(cfg)
        self.task = TrainTask(model, elf=cfg.elf).to(device)
        self.optimizer = create_optimizer(self.task, cfg, self.base_lr)
        self.scaler = None
        if self.distributed:
            self.task, self.optimizer = accelerator.prepare(self.task, self.optimizer)
        elif accelerator.mixed_precision == 'fp16':
            self.scaler = torch.amp.GradScaler(device.type)
        self.teacher = teacher.to(device).eval().requires_grad_(False) if teacher is not None else None  # never DDP
        self.inner = accelerator.unwrap_model(self.task) if self.distributed else self.task
        self.n = len(train_set)
        self.iters_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.lr = IterationLr(self.optimizer, self.base_lr, cfg.lr_schedule_fn(), self.iters_per_epoch,
                              cfg.reset_momentum_at_decay)
        self.drop_gen = device_generator(device)
        set_drop_generator(self.inner.model, self.drop_gen)
        self.train_seconds, self.images_seen = 0.0, 0
        self.show_progress = accelerator.is_local_main_process or not self.distributed

    def train_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch; every draw comes from generators of ``(seed, epoch, rank)`` (resumable exactly)."""
        cfg, t0 = self.cfg, time.perf_counter()
        keep_rate = self.keep_schedule(epoch)
        set_keep_rate(self.inner.model, keep_rate)
        self.drop_gen.manual_seed(derive_seed(cfg.seed, epoch, self.rank, Stream.TRAIN_DROP_PATH))
        self._aug_gen = generator_for(cfg.seed, epoch, self.rank, Stream.TRAIN_AUGMENT)
        self.lr.start_epoch(epoch)
        batches = epoch_batches(self.n, cfg.batch_size, generator_for(cfg.seed, epoch, Stream.TRAIN_ORDER),
                                self.device, self.rank, self.world)
        self.task.train()
        # dropout and other draws from the global RNG
        with seeded(cfg.seed, epoch, self.rank, Stream.TRAIN_GLOBAL, device=self.device):
            losses = run_batches(batches, self._loss_of, self.optimizer, self._backward, self._step, self.lr,
                                 self.show_progress, f'epoch {epoch}')
        # the epoch's one read-back from the device; a non-finite step loss stops the run here, before any hook
        # (so before a checkpoint) sees the epoch
        loss = torch.stack(losses).sum().item() / self.iters_per_epoch
        check_finite(loss, self.name, epoch, f'learning rate {self.lr.lr:.3g}; images in '
                     f'[{self.images.min().item():.3g}, {self.images.max().item():.3g}]')
        self.train_seconds += time.perf_counter() - t0
        self.images_seen += self.n  # over all processes
        return {'epoch': epoch, 'keep_rate': keep_rate, 'lr': self.lr.lr, 'loss': loss}

    def _loss_of(self, idx: torch.Tensor) -> torch.Tensor:
        x, y = self.images[idx], self.labels[idx]
        xa = self.dsa(x, generator=self._aug_gen) if self.dsa is not None else x
        if self.cfg.cutmix_beta is not None:
            xa = cutmix_images(xa, self.cfg.cutmix_beta, self._aug_gen)
        t = self.features[idx] if self.features is not None else None
        with self.accelerator.autocast():
            return task_loss(self.task(xa, t), y, self.cfg, self.teacher, xa, t)  # checked once per epoch

    def _backward(self, loss: torch.Tensor) -> None:
        if self.distributed:
            self.accelerator.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def evaluate(self, test_loader: DataLoader) -> Dict[str, float]:
        return evaluate(LogitsOnly(self.task), test_loader, self.device, self.accelerator, self.distributed,
                        self.show_progress)


class _EvaluationHook(Hook):
    """Test accuracy at the evaluation epochs (after recomputing batch-norm statistics with ``recompute_bn``):
    recorded in the epoch's record, the history and the best. The last evaluation also records the accuracy on the
    training images in eval mode and with batch statistics, and warns when they differ (stale statistics)."""

    def __init__(self, run: _Run, test_loader: DataLoader, progress: _Progress):
        self.run, self.test_loader, self.progress = run, test_loader, progress
        self.epochs = eval_epochs(run.cfg)
        k = run.cfg.eval_subset_per_class
        self.periodic_loader = class_balanced_loader(test_loader, k, run.accelerator, run.distributed) if k else None

    def after_epoch(self, epoch: int, record: Dict[str, Any]) -> None:
        if epoch not in self.epochs:
            return
        run, model = self.run, self.run.inner.model
        if run.cfg.recompute_bn:
            recompute_bn_stats(model, run.images, run.cfg.batch_size)
        last = epoch == run.cfg.epochs - 1  # the final number is always on the whole test set
        result = run.evaluate(self.test_loader if last or self.periodic_loader is None else self.periodic_loader)
        record.update(test_acc=result['acc'], test_count=result['count'])
        if epoch == run.cfg.epochs - 1:
            record.update(_train_set_accuracies(run, model))
        if result['acc'] > self.progress.best[0]:
            self.progress.best = (result['acc'], epoch)
        self.progress.history.append(record)


class _MetricsHook(Hook):
    """One JSON line per epoch in ``metrics.jsonl`` (the writing process) and the experiment trackers."""

    def __init__(self, run: _Run, path: Optional[Path]):
        self.run, self.path = run, path if run.writer else None

    def after_epoch(self, epoch: int, record: Dict[str, Any]) -> None:
        if self.path is not None:
            append_line(self.path, json.dumps(record))
        log_metrics(self.run.accelerator, {f'{self.run.name}/{k}': v for k, v in record.items() if k != 'epoch'},
                    epoch)


class _CheckpointHook(Hook):
    """Snapshots after ``cfg.snapshot_epochs`` and the checkpoint every ``checkpoint_every`` epochs and at the end."""

    def __init__(self, run: _Run, path: Optional[Path], progress: _Progress, last_epoch: int,
                 snapshot: Optional[Callable[[int], None]]):
        self.run, self.path, self.progress, self.last_epoch, self.snapshot = run, path, progress, last_epoch, snapshot

    def after_epoch(self, epoch: int, record: Dict[str, Any]) -> None:
        run, done = self.run, epoch + 1
        self.progress.epoch = done
        if self.snapshot is not None and run.writer and done in run.cfg.snapshot_epochs:
            self.snapshot(done)
        if self.path is None or not (done % run.cfg.checkpoint_every == 0 or epoch == self.last_epoch):
            return
        if run.writer:
            _save_checkpoint(self.path, run.inner, run.optimizer, self.progress.to_dict())
        if run.distributed:
            run.accelerator.wait_for_everyone()  # nobody reads or rewrites the file while it is written


def _train_set_accuracies(run: _Run, model: nn.Module) -> Dict[str, float]:
    """``train_acc`` (eval mode) and ``train_acc_batch_stats``; a warning naming ``--recompute-bn`` when the
    running statistics are stale."""
    eval_acc, batch_acc = train_accuracies(model, run.images, run.labels, run.cfg.batch_size)
    if run.writer and has_batchnorm(model) and batch_acc - eval_acc > STALE_BN_GAP:
        _logger.warning('%s: on its own training images the network scores %.1f%% in eval mode but %.1f%% with batch '
                        'statistics: its batch-norm running statistics are stale (a schedule this short leaves them '
                        'behind the weights); the test accuracy is not the architecture\'s. Train longer or pass '
                        '--recompute-bn (recipe field recompute_bn).', run.name, 100 * eval_acc, 100 * batch_acc)
    return {'train_acc': eval_acc, 'train_acc_batch_stats': batch_acc}


def _restore(run: _Run, out_dir: Optional[Path], resume: bool) -> _Progress:
    """The progress to continue from (a fresh one without ``resume`` or checkpoint); resets the metrics file."""
    progress = _Progress()
    if out_dir is None:
        return progress
    metrics_path, ckpt_path = out_dir / METRICS_FILE, out_dir / CHECKPOINT_FILE
    if run.writer:
        make_folder(out_dir)
    if not resume:
        if run.writer:
            remove_file(metrics_path)
        return progress
    state = _load_checkpoint(ckpt_path, run.inner, run.optimizer, run.device)
    if state is not None:
        progress = _Progress(state['epoch'], state['history'], tuple(state['best']))
        _logger.info('resumed %s from epoch %d', run.name, progress.epoch)
    if run.writer:
        _truncate_metrics(metrics_path, progress.epoch)
    return progress


def train_model(
        model: nn.Module,
        train_set: ImageSet,
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
    """Train ``model`` on ``train_set`` (images in the model's input space) with recipe ``cfg`` on
    ``accelerator.device``.

    ``distributed=True``: every process of ``accelerator`` calls this together; the model is wrapped in DDP and each
    process takes its slice of every batch (``test_loader`` must come from ``accelerator.prepare``).
    ``distributed=False``: this process trains the run alone (several runs in parallel, one per process;
    ``test_loader`` is a plain loader). With ``out_dir`` the run checkpoints every ``cfg.checkpoint_every`` epochs
    (``checkpoint.pt``, written by one process) and appends metrics to ``metrics.jsonl``; ``resume=True``
    continues from the checkpoint. ``stop_after_epoch`` ends the run early after that epoch, checkpointed (used to
    test resuming). ``snapshot(epochs_done)`` is called by the writing process after each epoch listed in
    ``cfg.snapshot_epochs``.
    """
    if cfg.uses_teacher and teacher is None:
        raise ValueError('the recipe uses a teacher (kd or relabel: true) but no teacher was given')
    if cfg.elf and elf_features is None:
        raise ValueError('the recipe uses ELF (elf: true) but no feature targets were given')
    name = desc or model_name
    run = _Run(model, train_set, cfg, accelerator, model_name, teacher, elf_features, distributed, name)
    progress = _restore(run, out_dir, resume)
    last_epoch = cfg.epochs - 1 if stop_after_epoch is None else min(stop_after_epoch, cfg.epochs - 1)
    ckpt_path = out_dir / CHECKPOINT_FILE if out_dir is not None else None
    hooks = [_EvaluationHook(run, test_loader, progress),
             _MetricsHook(run, out_dir / METRICS_FILE if out_dir else None),
             _CheckpointHook(run, ckpt_path, progress, last_epoch, snapshot)]

    def postfix(record: Dict[str, Any]) -> Dict[str, str]:
        out = {'loss': f"{record['loss']:.3f}"}
        if run.droppable:  # a keep rate only where DropPath acts
            out['p'] = f"{record['keep_rate']:.2f}"
        out['lr'] = f"{record['lr']:.3g}"
        if progress.history:  # the accuracy with the epoch it was measured after, never a stale number alone
            last = progress.history[-1]
            out['acc'] = f"{last['test_acc']:.3f}@{last['epoch'] + 1}"
        return out

    fit(range(progress.epoch, last_epoch + 1), run.train_epoch, hooks, name, run.show_progress, postfix)
    return _result(run, progress, test_loader, last_epoch)


def _result(run: _Run, progress: _Progress, test_loader: DataLoader, last_epoch: int) -> RunResult:
    history = progress.history
    if history and history[-1]['epoch'] == last_epoch:
        final = {'acc': history[-1]['test_acc'], 'count': history[-1]['test_count']}
    else:
        final = run.evaluate(test_loader)
    return RunResult(
        final_acc=final['acc'], best_acc=max(progress.best[0], final['acc']), best_epoch=progress.best[1],
        history=history, num_test_evaluated=final['count'], train_seconds=run.train_seconds,
        train_acc=history[-1].get('train_acc') if history else None,
        images_per_second=run.images_seen / run.train_seconds if run.train_seconds > 0 else float('nan'))


def class_balanced_loader(test_loader: DataLoader, per_class: int, accelerator: Accelerator,
                          distributed: bool) -> DataLoader:
    """A loader over a fixed subset of ``test_loader``'s data: the first ``per_class`` images of every class in
    the test set's order (the same images in every run and on every machine), for cheap periodic evaluations."""
    dataset = test_loader.dataset
    labels = dataset.labels if hasattr(dataset, 'labels') else (
        dataset.tensors[1] if hasattr(dataset, 'tensors') else torch.as_tensor([y for _, y in dataset]))
    keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in labels.unique()]).sort().values
    loader = DataLoader(torch.utils.data.Subset(dataset, keep.tolist()), batch_size=test_loader.batch_size,
                        shuffle=False, pin_memory=accelerator.device.type == 'cuda', collate_fn=test_loader.collate_fn)
    return accelerator.prepare(loader) if distributed else loader


def eval_epochs(cfg: TrainConfig) -> set:
    """Every ``eval_every`` epochs and after the last. The DP+KD code also evaluates after the first epoch (a
    number near chance that costs a whole test pass): only with ``eval_after_first_epoch``."""
    first = {0} if cfg.eval_after_first_epoch else set()
    if cfg.eval_every <= 0:
        return first | {cfg.epochs - 1}
    return first | set(range(cfg.eval_every - 1, cfg.epochs, cfg.eval_every)) | {cfg.epochs - 1}

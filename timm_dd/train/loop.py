"""The one training loop: epochs of minibatch updates, with hooks after each epoch.

:func:`fit` runs ``train_epoch(epoch) -> record`` for each epoch and hands the record to its hooks in order
(evaluation, metric files, trackers, snapshots, checkpoints, an expert's trajectory ...). The parts of an epoch's
body: :func:`epoch_batches` (the seeded permutation cut into batches, a process's slice of each),
:class:`IterationLr` (the per-iteration learning rate and the momentum reset at a decay), :func:`run_batches` (the
updates), :func:`check_finite` (the one divergence check); :func:`count_correct` / :func:`evaluate` the one top-1
accuracy. The trainer (:mod:`timm_dd.train.trainer`), stacked seeds (:mod:`timm_dd.train.batched`), the expert
trainer (:mod:`timm_dd.distill.experts`) and distillation's periodic evaluation (through the trainer) all run on it.
"""
import logging
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

__all__ = ['Hook', 'fit', 'epoch_batches', 'IterationLr', 'run_batches', 'check_finite', 'count_correct', 'accuracy',
           'evaluate', 'evaluate_tensors', 'eval_batch_size', 'on_terminal']

_logger = logging.getLogger(__name__)

Record = Dict[str, Any]


class Hook:
    """Something done after an epoch; ``record`` is the epoch's metrics, which a hook may extend (test accuracy)."""

    def after_epoch(self, epoch: int, record: Record) -> None:
        raise NotImplementedError


class CallbackHook(Hook):
    """A hook from a function ``fn(epoch, record)``."""

    def __init__(self, fn: Callable[[int, Record], None]):
        self.fn = fn

    def after_epoch(self, epoch: int, record: Record) -> None:
        self.fn(epoch, record)


def fit(
        epochs: Iterable[int],
        train_epoch: Callable[[int], Record],
        hooks: Sequence[Hook] = (),
        desc: str = '',
        progress: bool = False,
        postfix: Optional[Callable[[Record], Dict[str, str]]] = None,
) -> None:
    """Run ``train_epoch`` for each of ``epochs`` and then every hook, with a progress bar (``progress``) whose
    postfix shows ``postfix(record)``. When the output is not a terminal (a log file, a batch job) the bar would
    fill it with cursor codes, so ``progress`` logs plain lines instead, about every 5 % of the epochs."""
    epochs = list(epochs)
    bar = progress and on_terminal()
    pbar = tqdm(epochs, desc=desc, leave=False, disable=not bar)
    every = max(1, len(epochs) // 20)
    for n, epoch in enumerate(pbar, 1):
        record = train_epoch(epoch)
        for hook in hooks:
            hook.after_epoch(epoch, record)
        shown = postfix(record) if postfix is not None else {}
        if bar and shown:
            pbar.set_postfix(shown, refresh=False)
        elif progress and not bar and (n % every == 0 or n == len(epochs)):
            _logger.info('%s: epoch %d/%d %s', desc, epoch + 1, epochs[-1] + 1,
                         ' '.join(f'{k}={v}' for k, v in shown.items()))
    pbar.close()


def on_terminal() -> bool:
    """Whether progress bars can redraw in place (stderr is a terminal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device, rank: int = 0,
                  world: int = 1) -> List[torch.Tensor]:
    """One epoch's batches of indices into ``n`` samples: a permutation drawn from ``generator`` (on the CPU, so
    every device draws the same) cut into ``batch_size`` chunks; with ``world`` processes, process ``rank``'s slice
    of every chunk (every process draws the same permutation)."""
    perm = torch.randperm(n, generator=generator).to(device)
    return [perm[i:i + batch_size][rank::world] for i in range(0, n, batch_size)]


class IterationLr:
    """A recipe's learning rate, set on every parameter group before each update: ``base_lr x
    schedule.factor(epoch, iteration, iters_per_epoch)``. ``start_epoch`` also clears the optimizer's state
    (momentum) at the schedule's decay milestones when ``reset_momentum`` (MTT re-creates its optimizer there)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, schedule: Any, iters_per_epoch: int,
                 reset_momentum: bool = False):
        self.optimizer, self.base_lr, self.schedule = optimizer, base_lr, schedule
        self.iters_per_epoch, self.reset_momentum = iters_per_epoch, reset_momentum
        self.epoch, self.lr = 0, base_lr

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.reset_momentum and epoch in self.schedule.milestones:
            getattr(self.optimizer, 'optimizer', self.optimizer).state.clear()  # under Accelerate's wrapper too

    def __call__(self, iteration: int) -> None:
        self.lr = self.base_lr * self.schedule.factor(self.epoch, iteration, self.iters_per_epoch)
        for group in self.optimizer.param_groups:
            group['lr'] = self.lr


def check_finite(loss: Union[float, torch.Tensor], who: str, epoch: int, hint: str = '') -> None:
    """Raise ``FloatingPointError`` naming ``who``, the epoch and ``hint`` (what to change) when ``loss`` (a number
    or a tensor of them, e.g. one per stacked seed) is not finite: a diverged run stops before any hook sees it."""
    value = torch.as_tensor(loss)
    if not bool(torch.isfinite(value).all()):
        shown = value.tolist() if value.dim() else value.item()
        raise FloatingPointError(f'{who}: loss became {shown} at epoch {epoch}' + (f' ({hint})' if hint else ''))


def run_batches(
        batches: Iterable[torch.Tensor],
        loss_of: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        backward: Optional[Callable[[torch.Tensor], None]] = None,
        step: Optional[Callable[[], None]] = None,
        before_batch: Optional[Callable[[int], None]] = None,
        progress: bool = False,
        desc: str = '',
) -> List[torch.Tensor]:
    """One epoch of updates: for each index batch, ``loss_of(idx)``, zero the gradients, backward, step.

    ``backward``/``step`` replace ``loss.backward()``/``optimizer.step()`` (DDP through Accelerate, a grad
    scaler); ``before_batch(i)`` runs first (per-iteration learning rates). ``progress``: a bar over the batches
    of a long epoch (say, an expert's pass over CIFAR-10), so that something moves within seconds. Returns the
    detached losses, left on their device so that the loop never waits for it.
    """
    losses = []
    for i, idx in enumerate(_batch_bar(batches, progress, desc)):
        if before_batch is not None:
            before_batch(i)
        loss = loss_of(idx)
        optimizer.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(loss)
        (step or optimizer.step)()
        losses.append(loss.detach())
    return losses


#: epochs (or test sets) with at least this many batches get their own progress bar
LONG_PASS_BATCHES = 20


def _batch_bar(batches: Iterable, progress: bool, desc: str) -> Iterable:
    try:
        long_pass = len(batches) >= LONG_PASS_BATCHES
    except TypeError:  # an iterator of unknown length
        long_pass = True
    return tqdm(batches, desc=desc, leave=False, disable=not (progress and long_pass and on_terminal()))


@torch.inference_mode()  # no autograd bookkeeping at all (cheaper than no_grad); only floats leave
def count_correct(
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        accelerator: Optional[Any] = None,
        distributed: bool = False,
        progress: bool = False,
) -> Tuple[torch.Tensor, int]:
    """Correct top-1 predictions of ``model`` (in eval mode) over ``loader``'s ``(x, y)`` batches on ``device``,
    and how many samples were counted. The logits may carry leading dimensions (``[S, B, K]`` from stacked seeds):
    the count then has them (``[S]``).

    With an ``accelerator`` the forward runs under its autocast; ``distributed=True``: ``loader`` comes from
    ``accelerator.prepare`` (each process sees a shard) and every sample is counted exactly once across processes.
    ``progress``: a bar over the batches of a long test set.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    total = torch.zeros((), device=device)
    for x, y in _batch_bar(loader, progress, 'evaluating'):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if accelerator is not None:
            with accelerator.autocast():
                logits = model(x)
        else:
            logits = model(x)
        preds, refs = logits.argmax(-1), y
        if distributed:
            preds, refs = accelerator.gather_for_metrics((preds, refs))
        correct = correct + (preds == refs).sum(-1)
        total += refs.numel()
    model.train(was_training)
    return correct, int(total.item())


def evaluate(
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        accelerator: Optional[Any] = None,
        distributed: bool = False,
        progress: bool = False,
) -> Dict[str, float]:
    """Top-1 accuracy of ``model`` over ``loader`` (:func:`count_correct`): ``{'acc': fraction, 'count': n}``."""
    correct, count = count_correct(model, loader, device, accelerator, distributed, progress)
    return {'acc': accuracy(correct, count), 'count': count}


def accuracy(correct: torch.Tensor, count: int) -> Any:
    """``correct / count`` as a float (a list of floats for a count per stacked seed)."""
    value = correct / max(count, 1)
    return value.tolist() if value.dim() else value.item()


def eval_batch_size(device: torch.device) -> int:
    """The test batch size for ``device``: 100 on a CPU, where larger batches fall out of the caches (0.98 x the best
    bare loop at 100, 0.79 x at 500: ``benchmarks/bench_eval.py``), 500 on a GPU."""
    return 100 if torch.device(device).type == 'cpu' else 500


def evaluate_tensors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                     batch_size: Optional[int] = None) -> float:
    """Top-1 accuracy on in-memory tensors (:func:`evaluate` over their batches; default :func:`eval_batch_size`)."""
    batch_size = batch_size or eval_batch_size(device)
    batches = zip(images.split(batch_size), labels.split(batch_size))
    return evaluate(model, batches, device)['acc']

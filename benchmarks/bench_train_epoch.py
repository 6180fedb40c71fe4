"""One `dpkd` training epoch: timm_dd's trainer against a bare PyTorch loop doing the same work, in one run.

The work of one epoch of the DP+KD Full recipe on a distilled set: 100 images (IPC 10, 10 classes), batch 100,
2-fold DSA, the student with its keep-rate DropPath active (1.0, 0.9, 0.8, ... per epoch), a ConvNet-3 teacher's
forward on the same augmented batch, the KD loss ``alpha T^2 KL + (1 - alpha) CE``, Lion. ``timm_dd`` runs it through
``timm_dd.train.train_model`` (recipe ``dpkd``, no evaluation inside the timed epochs); the bare loop is written
below with the same model, teacher, data, DSA and optimizer, and nothing else (no hooks, no metric lines, no
checkpoint, no finite-loss check, no per-epoch loss read-back). Both run alternately, ``--repeats`` times, on the
device Accelerate gives (``--cpu`` forces the CPU); the figure is the ratio of the best epoch times. Variants of the
bare loop measure what PyTorch offers on top (channels_last, the teacher in inference mode), each as a ratio to
the plain bare loop.

Target (issue "the DP+KD table"): timm_dd / bare <= 1.05.

Usage::

    python benchmarks/bench_train_epoch.py [--net resnet18_dd] [--epochs 3] [--repeats 3] [--cpu] \\
        [--out benchmarks/results/train_epoch.json]
"""
import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

def _data(device: torch.device, ipc: int = 10, classes: int = 10, size: int = 32):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(ipc * classes, 3, size, size, generator=g) * 0.5
    labels = torch.arange(classes).repeat_interleave(ipc)
    return images.to(device), labels.to(device)


def _models(net: str, device: torch.device, seed: int = 0):
    import timm
    import timm_dd  # noqa: F401  registers the models
    torch.manual_seed(seed)
    student = timm.create_model(net, num_classes=10, norm='instance').to(device)
    teacher = timm.create_model('convnet3', num_classes=10).to(device).eval().requires_grad_(False)
    return student, teacher


def _recipe(epochs: int):
    """``dpkd`` with its keep rate stepping down from the second epoch (period 1: 1.0, 0.9, 0.8, ...)."""
    from timm_dd.train.config import load_config
    return load_config('dpkd', dict(epochs=epochs + 2, period=1, final_epochs=1, eval_every=0, seed=0))


def bare_epoch_fn(net: str, device: torch.device, epochs: int, channels_last: bool = False,
                  inference_teacher: bool = False) -> Callable[[], float]:
    """A plain loop over ``epochs + 1`` epochs at the recipe's keep rates; returns seconds per epoch."""
    from timm.optim import Lion
    from timm_dd.augment import DSA
    from timm_dd.layers import set_drop_generator, set_keep_rate
    images, labels = _data(device)
    student, teacher = _models(net, device)
    if channels_last:
        student, teacher = student.to(memory_format=torch.channels_last), teacher.to(memory_format=torch.channels_last)
    keep_rate = _recipe(epochs).keep_rate_schedule(net)
    set_drop_generator(student, torch.Generator(device=device).manual_seed(1))
    dsa = DSA('color_crop_cutout_flip_scale_rotate', k=2)
    opt = Lion(student.parameters(), lr=5e-5, betas=(0.95, 0.98), weight_decay=5e-3)
    aug_gen = torch.Generator(device=device).manual_seed(2)
    perm_gen = torch.Generator().manual_seed(3)
    n, batch, alpha, temp = len(images), 100, 0.5, 1.5
    teacher_ctx = torch.inference_mode if inference_teacher else torch.no_grad

    def run() -> float:
        student.train()
        _sync(device)
        t0 = time.perf_counter()
        for epoch in range(epochs + 1):
            set_keep_rate(student, keep_rate(epoch))
            perm = torch.randperm(n, generator=perm_gen).to(device)
            for i in range(0, n, batch):
                idx = perm[i:i + batch]
                xa = dsa(images[idx], generator=aug_gen)
                if channels_last:
                    xa = xa.contiguous(memory_format=torch.channels_last)
                logits = student(xa)
                with teacher_ctx():
                    t_logits = teacher(xa)
                kl = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                              reduction='batchmean', log_target=True)
                loss = alpha * temp ** 2 * kl + (1 - alpha) * F.cross_entropy(logits, labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync(device)
        return (time.perf_counter() - t0) / (epochs + 1)
    return run


def timm_dd_epoch_fn(net: str, device: torch.device, epochs: int, accelerator) -> Callable[[], float]:
    """``train_model`` with the ``dpkd`` recipe for ``epochs + 1`` epochs; returns wall seconds per epoch (its
    hooks and set-up included, the final evaluation on 10 images too)."""
    from torch.utils.data import DataLoader, TensorDataset
    from timm_dd.data.sets import ImageSet
    from timm_dd.train.trainer import train_model
    images, labels = _data(device)
    train_set = ImageSet(images.cpu(), labels.cpu(), num_classes=10)
    test = DataLoader(TensorDataset(images[:10].cpu(), labels[:10].cpu()), batch_size=10)
    cfg = _recipe(epochs)

    def run() -> float:
        student, teacher = _models(net, device)
        _sync(device)
        t0 = time.perf_counter()
        train_model(student, train_set, test, cfg, accelerator, net, teacher=teacher, stop_after_epoch=epochs,
                    distributed=False)
        _sync(device)
        return (time.perf_counter() - t0) / (epochs + 1)
    return run


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--net', default='resnet18_dd')
    p.add_argument('--epochs', type=int, default=3, help='epochs per timed measurement')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--cpu', action='store_true')
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'train_epoch.json'))
    args = p.parse_args(argv)
    from accelerate import Accelerator
    accelerator = Accelerator(cpu=args.cpu)
    device = accelerator.device
    fns: Dict[str, Callable[[], float]] = {
        'timm_dd': timm_dd_epoch_fn(args.net, device, args.epochs, accelerator),
        'bare': bare_epoch_fn(args.net, device, args.epochs),
        'bare+teacher_inference_mode': bare_epoch_fn(args.net, device, args.epochs, inference_teacher=True),
        'bare+channels_last': bare_epoch_fn(args.net, device, args.epochs, channels_last=True),
    }
    for fn in fns.values():  # warm-up (allocator, cuDNN, lazy init)
        fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():  # alternating, so that load on the machine hits every variant alike
            times[name].append(fn())
    best = {k: min(v) for k, v in times.items()}
    ratios = {k: best[k] / best['bare'] for k in best}
    report = dict(
        settings=dict(net=args.net, images=100, batch=100, dsa_k=2, keep_rate='1.0, 0.9, ... per epoch',
                      kd='convnet3 teacher',
                      optimizer='timm Lion', epochs_per_measurement=args.epochs, repeats=args.repeats),
        device=str(device), torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
        seconds_per_epoch=times, best=best, ratio_to_bare=ratios, target='timm_dd / bare <= 1.05',
        met=ratios['timm_dd'] <= 1.05)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + '\n')
    print(f"{args.net}, one dpkd epoch (100 images, batch 100) on {device}: best of {args.repeats} x {args.epochs} "
          'epochs')
    for name in fns:
        print(f'  {name:30s} {best[name] * 1000:9.1f} ms/epoch   x{ratios[name]:.3f} of bare')
    print(f"timm_dd / bare = {ratios['timm_dd']:.3f} (target <= 1.05: {'met' if report['met'] else 'NOT met'})")
    return 0 if math.isfinite(ratios['timm_dd']) else 1


if __name__ == '__main__':
    sys.exit(main())

"""One expert-training epoch (MTT's ``buffer.py`` recipe): timm_dd's ``train_expert`` against a bare PyTorch loop, in one
run.

The work: ConvNet-3 (width 128, instance norm) on ``--images`` real-sized 32x32 images (random tensors at the
normalized data's scale: the time does not depend on the pixels), batch 256, one DSA op family per batch, cross
entropy, plain SGD lr 0.01. ``timm_dd`` runs ``timm_dd.distill.experts.train_expert`` for one epoch (its trajectory
copy included); the bare loop below does the same with the same model, data, DSA and optimizer and nothing else.
They run alternately ``--repeats`` times on the device Accelerate gives (``--cpu`` forces the CPU); figures are
images per second of the best repeat, the ratio of epoch times, and the projected time of one CIFAR-10 expert epoch
(50,000 images). A ``channels_last`` variant of the bare loop says whether that memory format pays on the device.

Target (issue "the first hour on a CPU"): timm_dd / bare <= 1.1.

Usage::

    python benchmarks/bench_expert_epoch.py [--images 5120] [--repeats 3] [--cpu] \\
        [--out benchmarks/results/expert_epoch.json]
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _timm_dd_epoch(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Callable[[], None]:
    from timm_dd.distill.experts import ExpertConfig, train_expert
    cfg = ExpertConfig(epochs=1, dataset='benchmark')

    def epoch() -> None:
        train_expert(images, labels, cfg, index=0, device=device)
    return epoch


def _bare_epoch(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                channels_last: bool = False) -> Callable[[], None]:
    import timm

    import timm_dd  # noqa: F401  (registers the models)
    from timm_dd.augment import DSA

    def epoch() -> None:
        torch.manual_seed(0)
        model = timm.create_model('convnet3', num_classes=10).to(device)
        x_all = images.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x_all = x_all.contiguous(memory_format=torch.channels_last)
        y_all = labels.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        dsa, gen = DSA('color_crop_cutout_flip_scale_rotate'), torch.Generator().manual_seed(1)
        perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(2)).to(device)
        model.train()
        for i in range(0, len(x_all), 256):
            idx = perm[i:i + 256]
            loss = F.cross_entropy(model(dsa(x_all[idx], generator=gen)), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    return epoch


def _best_seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--images', type=int, default=5120)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--cpu', action='store_true')
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'expert_epoch.json'))
    args = p.parse_args()
    from accelerate import Accelerator
    device = Accelerator(cpu=args.cpu).device
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    loops: Dict[str, Callable[[], None]] = {
        'timm_dd train_expert': _timm_dd_epoch(images, labels, device),
        'bare': _bare_epoch(images, labels, device),
        'bare, channels_last': _bare_epoch(images, labels, device, channels_last=True),
    }
    for fn in loops.values():  # warm-up: allocator, kernels
        fn()
    seconds = {name: float('inf') for name in loops}
    for _ in range(args.repeats):
        for name, fn in loops.items():
            seconds[name] = min(seconds[name], _best_seconds(fn))
    result = dict(images=args.images, repeats=args.repeats, device=str(device), threads=torch.get_num_threads(),
                  torch=torch.__version__, machine=platform.machine(),
                  images_per_second={k: args.images / v for k, v in seconds.items()},
                  ratio_timm_dd_to_bare=seconds['timm_dd train_expert'] / seconds['bare'],
                  ratio_channels_last_to_bare=seconds['bare, channels_last'] / seconds['bare'],
                  projected_cifar10_epoch_seconds={k: 50000 * v / args.images for k, v in seconds.items()},
                  target=1.1)
    print(json.dumps(result, indent=2))
    from timm_dd.io import atomic_write_json
    atomic_write_json(Path(args.out), result, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())

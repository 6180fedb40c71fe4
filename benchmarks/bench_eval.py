"""Test-set evaluation: timm_dd's path against a bare PyTorch loop over the same model and images, in one run.

timm_dd evaluates a student through ``timm_dd.train.loop.evaluate`` (``torch.inference_mode``, the model's logits
wrapper ``LogitsOnly(TrainTask)``, the recipe's ``test_batch_size`` from a ``DataLoader`` over the test tensors, as a
training run does). The bare loop is a plain ``model(x).argmax(1)`` under ``torch.inference_mode`` over tensor slices;
its variants try other batch sizes and ``channels_last``, and the best of them is the reference. Both run alternately
``--repeats`` times on the device Accelerate gives (``--cpu`` forces the CPU); figures are images per second of the
best repeat and the ratio timm_dd / best bare.

Target (issue "the first hour on a CPU"): timm_dd >= 0.95 x the bare loop's best setting.

Usage::

    python benchmarks/bench_eval.py [--net resnet18_dd] [--images 2000] [--repeats 3] [--cpu] \\
        [--out benchmarks/results/eval.json]
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


def _model(net: str, device: torch.device) -> torch.nn.Module:
    import timm
    import timm_dd  # noqa: F401  registers the models
    torch.manual_seed(0)
    return timm.create_model(net, num_classes=10, norm='instance').to(device).eval()


def _data(n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), (torch.arange(n) % 10)


def timm_dd_eval(net: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                 batch_size: int) -> Callable[[], float]:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    from timm_dd.train.loop import evaluate
    from timm_dd.train.task import LogitsOnly, TrainTask
    model = LogitsOnly(TrainTask(_model(net, device)).to(device))
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False,
                        pin_memory=device.type == 'cuda')
    accelerator = Accelerator(cpu=device.type == 'cpu')

    def run() -> float:
        start = time.perf_counter()
        evaluate(model, loader, device, accelerator)
        _sync(device)
        return time.perf_counter() - start
    return run


def bare_eval(net: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch_size: int,
              channels_last: bool = False) -> Callable[[], float]:
    model = _model(net, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run() -> float:
        start = time.perf_counter()
        correct = 0
        with torch.inference_mode():
            for x, y in zip(images.split(batch_size), labels.split(batch_size)):
                x = x.to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                correct += int((model(x).argmax(1) == y.to(device)).sum())
        _sync(device)
        return time.perf_counter() - start
    return run


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--net', default='resnet18_dd')
    p.add_argument('--images', type=int, default=2000)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--test-batch-size', type=int, default=None,
                   help="timm_dd's (default: the recipe's: 100 on a CPU, 500 on a GPU)")
    p.add_argument('--cpu', action='store_true')
    p.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'eval.json'))
    args = p.parse_args(argv)
    from accelerate import Accelerator

    from timm_dd.train.config import load_config
    device = Accelerator(cpu=args.cpu).device
    batch = args.test_batch_size or load_config('dpkd').test_batch_size or (100 if device.type == 'cpu' else 500)
    images, labels = _data(args.images, device)
    contenders = {f'timm_dd (batch {batch})': timm_dd_eval(args.net, images, labels, device, batch)}
    for b in (100, 256, 500, 1000):
        contenders[f'bare, batch {b}'] = bare_eval(args.net, images, labels, device, b)
    contenders['bare, batch 500, channels_last'] = bare_eval(args.net, images, labels, device, 500, True)
    for run in contenders.values():  # warm-up
        run()
    best = {name: float('inf') for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            best[name] = min(best[name], run())
    ips = {name: args.images / seconds for name, seconds in best.items()}
    ours = next(iter(ips))
    bare_best = max((name for name in ips if name != ours), key=ips.get)
    ratio = ips[ours] / ips[bare_best]
    result = dict(net=args.net, images=args.images, repeats=args.repeats, device=str(device),
                  threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
                  images_per_second=ips, best_bare=bare_best, ratio_timm_dd_to_best_bare=ratio, target=0.95)
    for name, value in ips.items():
        print(f'{name:34s} {value:8.0f} img/s')
    print(f'timm_dd / best bare ({bare_best}): {ratio:.3f} (target >= 0.95); {args.net}, {args.images} images, '
          f'{device}, {torch.get_num_threads()} threads, best of {args.repeats}')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    return result


if __name__ == '__main__':
    main()

"""DP+KD on 100 real CIFAR-10 images: ConvNet-3 vs ResNet18 baseline vs ResNet18 dpkd, on the 10,000 test images.

The seed paper reports that with DropPath and KD, ResNet18 trained on 100 real CIFAR-10 images (10 per class)
beats the 3-layer ConvNet. The full recipe is 4000 epochs; on a 2-core CPU we run a shortened schedule
(``--epochs``, default 80) with the same shape (keep rate 1 for E/8 epochs, steps of 0.1 down to 0.5, 0.8 for
the last E/4; lr restarted with each period), which is stated in the output. Runs are resumable: rerunning with
the same ``--workdir`` skips finished runs.

Usage: python benchmarks/bench_train_cifar.py [--epochs 80] [--seeds 0 1 2] [--out benchmarks/results/...json]
"""
import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--epochs', type=int, default=80)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--real-ipc', type=int, default=10)
    parser.add_argument('--workdir', type=Path, default=REPO / 'output' / 'bench_train_cifar')
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'train_cifar10_ipc10.json')
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / 'train.zip').is_file():
        print(f'error: CIFAR-10 JPEG copy not found at {args.data} (expects train.zip and test.zip)', file=sys.stderr)
        return 2

    import torch
    from accelerate import Accelerator

    import timm_dd  # noqa: F401
    from timm_dd.train.config import load_config
    from timm_dd.train import format_table, prepare_data, run_experiment

    accelerator = Accelerator(cpu=True)
    data = prepare_data(dataset=str(args.data), real_ipc=args.real_ipc, seed=0)
    E = args.epochs
    schedule = dict(epochs=E, final_epochs=max(1, E // 4), period=max(1, E // 8), eval_every=0,
                    checkpoint_every=max(1, E // 5), teacher_epochs=E)
    experiments = [
        ('baseline', ['convnet3', 'resnet18_dd'], load_config('baseline', dict(schedule, lr_milestones=[E // 2]))),
        ('dpkd', ['resnet18_dd'], load_config('dpkd', schedule)),
    ]
    t0 = time.perf_counter()
    # seed by seed, so that an interrupted benchmark still has complete baseline/dpkd pairs (runs are resumable)
    for seed in args.seeds:
        for name, models, cfg in experiments:
            run_experiment(cfg, models, [seed], data, args.workdir / name, accelerator, resume=True)
    results = {}
    for name, models, cfg in experiments:  # every run is done: this only collects them
        results[name] = run_experiment(cfg, models, args.seeds, data, args.workdir / name, accelerator, resume=True)
        print(format_table(results[name]))
    rows = []
    for name, res in results.items():
        for row in res.table:
            rows.append(dict(recipe=name, **row))
        if res.teacher_runs:
            accs = [r['final_acc'] for r in res.teacher_runs]
            rows.append(dict(recipe=name, model='teacher ' + res.teacher_runs[0]['model'], runs=len(accs),
                             final_mean=sum(accs) / len(accs)))
    convnet = next(r for r in rows if r['recipe'] == 'baseline' and r['model'] == 'convnet3')['final_mean']
    dp = next(r for r in rows if r['recipe'] == 'dpkd' and r['model'] == 'resnet18_dd')['final_mean']
    base = next(r for r in rows if r['recipe'] == 'baseline' and r['model'] == 'resnet18_dd')['final_mean']
    summary = (f'ResNet18 dpkd {100 * dp:.2f}% vs ConvNet-3 {100 * convnet:.2f}% ({100 * (dp - convnet):+.2f} pts); '
               f'vs ResNet18 baseline {100 * base:.2f}% ({100 * (dp - base):+.2f} pts)')
    print(summary)
    payload = dict(
        benchmark='train_cifar10_real_ipc10', setting=(
            f'{args.real_ipc} real CIFAR-10 images per class (JPEG copy, seed-0 subset), {len(args.seeds)} seeds, '
            f'{E} epochs instead of 4000 (dpkd) / 1000 (baseline); dpkd periods of {schedule["period"]} epochs, '
            f'final phase {schedule["final_epochs"]} epochs; ConvNet teacher trained {E} epochs with the baseline '
            f'recipe on the same 100 images; test on the 10,000 test images; final-epoch accuracy'),
        rows=rows, summary=summary, runs={k: v.runs for k, v in results.items()},
        wall_seconds=time.perf_counter() - t0, torch=torch.__version__, python=platform.python_version(),
        cpu_threads=torch.get_num_threads(), platform=platform.platform())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix('.tmp')
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

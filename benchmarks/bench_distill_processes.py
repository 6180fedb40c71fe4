"""Seconds per exact MTT iteration with the synthetic minibatch split over K processes, against one process.

ConvNet-3 (width 128) at 32x32, CIFAR-10 IPC 10 (100 synthetic images, all of them in every inner step), DSA on,
fp32, ``--steps`` inner steps, both gradient modes. Each process uses one thread. Three settings run in the same
invocation: one process with one thread (the baseline), one process with K threads (the same cores, intra-op
parallelism), and K processes with one thread each (``accelerate launch --num_processes K``, gloo on the CPU;
NCCL on GPUs). Every setting also records the relative difference of its image gradient to the one-process
gradient, so the speed is that of the exact computation.

Usage: python benchmarks/bench_distill_processes.py [--processes 2] [--steps 10] [--repeats 2] [--out FILE]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _child(args) -> None:
    import timm
    from accelerate import Accelerator

    import timm_dd  # noqa: F401
    from timm_dd.augment import DSA
    from timm_dd.distill import FlatModel, Shards, plan_steps, trajectory_match

    torch.set_num_threads(args.threads)
    acc = Accelerator(cpu=True)
    shards = Shards.from_accelerator(acc)
    torch.manual_seed(0)
    model = timm.create_model('convnet3', num_classes=10, in_chans=3, img_size=32, width=128)
    fm = FlatModel(model)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(100, 3, 32, 32, generator=g)
    labels = torch.arange(10).repeat_interleave(10)
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    target = th0 + 1e-3 * torch.randn(th0.shape, generator=g)
    dsa, lr = DSA(), torch.tensor(0.01)
    result = {}
    for mode in args.modes:
        def iteration(steps, seed):
            plan = plan_steps(100, steps, None, 32, dsa, torch.Generator().manual_seed(seed))
            return trajectory_match(mode, fm, images, labels, lr, th0, target, plan, dsa, 'mtt', 'l1', shards)
        iteration(1, 0)  # warm-up
        times = []
        for r in range(args.repeats):
            acc.wait_for_everyone()
            t0 = time.perf_counter()
            res = iteration(args.steps, 1)
            times.append(time.perf_counter() - t0)
        result[mode] = {'seconds': min(times), 'all_seconds': times, 'grad': res.grad_images}
    if acc.is_main_process:
        torch.save(result, args.result)
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group before exit


def _run(cmd, env) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--processes', type=int, default=2)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--modes', nargs='+', default=['unrolled', 'recompute'])
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'distill_processes.json')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--threads', type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument('--result', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0
    k = args.processes
    base = [__file__, '--child', '--steps', str(args.steps), '--repeats', str(args.repeats), '--modes', *args.modes]
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU='1')
    launch = [str(Path(sys.executable).with_name('accelerate')), 'launch', '--multi_gpu', '--num_processes', str(k),
              '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no']
    settings = {'1 process, 1 thread': ([sys.executable] + base + ['--threads', '1'], dict(env, OMP_NUM_THREADS='1')),
                f'1 process, {k} threads': ([sys.executable] + base + ['--threads', str(k)],
                                            dict(env, OMP_NUM_THREADS=str(k))),
                f'{k} processes, 1 thread each': (launch + base + ['--threads', '1'], dict(env, OMP_NUM_THREADS='1'))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cmd, e) in settings.items():
            path = os.path.join(tmp, 'r.pt')
            _run(cmd + ['--result', path], e)
            results[name] = torch.load(path, weights_only=False)
    ref = results['1 process, 1 thread']
    rows = []
    print(f'exact MTT iteration, ConvNet-3 w128 32x32, IPC 10 (100 images per step), N={args.steps}, DSA, fp32, CPU')
    print(f'{"setting":32s} {"mode":10s} {"s/it":>8s} {"speed-up":>9s} {"grad rel. diff":>15s}')
    for name, res in results.items():
        for mode in args.modes:
            r, b = res[mode], ref[mode]
            diff = float((r['grad'] - b['grad']).norm() / b['grad'].norm())
            rows.append(dict(setting=name, mode=mode, seconds=r['seconds'], all_seconds=r['all_seconds'],
                             speedup=b['seconds'] / r['seconds'], grad_rel_diff=diff))
            print(f'{name:32s} {mode:10s} {r["seconds"]:8.2f} {b["seconds"] / r["seconds"]:8.2f}x {diff:15.2e}')
    out = {'benchmark': 'distill_processes', 'processes': k, 'syn_steps': args.steps, 'ipc': 10,
           'model': 'convnet3 width 128, 32x32, 10 classes', 'data': 'random images (cost does not depend on them)',
           'time_method': f'best of {args.repeats} after a 1-step warm-up',
           'machine': f'{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}', 'rows': rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + '\n')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

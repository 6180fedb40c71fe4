"""Seconds per MTT distillation iteration and peak memory growth: ``unrolled`` vs ``recompute`` meta-gradients.

ConvNet-3 (width 128) on 32x32 CIFAR-10 images (real-image init from the shared JPEG copy when present, else random
data), whole synthetic set per inner step (``batch_syn`` = 10 x IPC), DSA on. Experts are not needed for the cost:
the start point is a fresh initialization and the target a small perturbation of it.

Method: every setting runs in a fresh subprocess. It first does a warm-up iteration with one inner step (allocator
and oneDNN set-up), then resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5, Linux >= 4.0) and
reads the current RSS, times ``--repeats`` full iterations and reads the peak RSS (``VmHWM``);
``peak_rss_growth_mb`` is peak minus baseline: the memory one N-step iteration needs (activations kept by the
graph, stored parameter vectors, allocator caching). Where the reset is unavailable it falls back to the
``ru_maxrss`` delta, which under-reports when the warm-up peak was higher.

Usage: python benchmarks/bench_distill.py [--ipc 1 10] [--steps 10 20 50] [--skip 10:50:unrolled] [--threads N]
       [--out FILE]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'benchmarks'))
from _mtt import measure_iteration, save_images, timm_dd_iteration  # noqa: E402
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'


def _child(args) -> None:
    torch.set_num_threads(args.threads)
    iteration = timm_dd_iteration(args.mode, torch.load(args.images))
    print(json.dumps(measure_iteration(iteration, args.steps, args.repeats)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ipc', type=int, nargs='+', default=[1, 10])
    parser.add_argument('--steps', type=int, nargs='+', default=[10, 20, 50])
    parser.add_argument('--modes', nargs='+', default=['unrolled', 'recompute'])
    parser.add_argument('--skip', nargs='*', default=[], help='settings to skip, as IPC:STEPS or IPC:STEPS:MODE')
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (1: on a shared, loaded 2-core box 2 threads were ~7x slower)')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'distill.json')
    # child mode
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--images', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='unrolled', help=argparse.SUPPRESS)
    parser.add_argument('--steps1', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.steps = args.steps1
        _child(args)
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix='bench_distill_') as tmp:
        for ipc in args.ipc:
            path, source = save_images(ipc, Path(tmp), args.data)
            for steps in args.steps:
                if f'{ipc}:{steps}' in args.skip:
                    continue
                for mode in args.modes:
                    if f'{ipc}:{steps}:{mode}' in args.skip:
                        continue
                    cmd = [sys.executable, __file__, '--child', '--images', str(path), '--mode', mode, '--steps1',
                           str(steps), '--repeats', str(args.repeats), '--threads', str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                    if out.returncode != 0:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    row = dict(ipc=ipc, batch_syn=10 * ipc, syn_steps=steps, mode=mode, **res)
                    rows.append(row)
                    print(f'IPC {ipc:3d}  N {steps:3d}  {mode:9s}  {res["seconds"]:8.2f} s/it  '
                          f'peak RSS growth {res["peak_rss_growth_mb"]:8.1f} MB', flush=True)
    result = {
        'benchmark': 'distill_iteration',
        'model': 'convnet3 width 128, 32x32, 10 classes (320,010 parameters)',
        'method': 'MTT, whole synthetic set per inner step, DSA on; fp32',
        'data': source,
        'memory_method': 'fresh subprocess per setting; after a 1-step warm-up iteration the peak RSS (VmHWM) is '
                         'reset via /proc/self/clear_refs; growth = VmHWM after the timed iterations - RSS at reset',
        'time_method': f'best of {args.repeats} iteration(s) after the warm-up',
        'threads': args.threads,
        'machine': f'{platform.machine()} {os.cpu_count()} cores (shared, loaded), torch {torch.__version__}',
        'skipped': args.skip,
        'rows': rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'\n{"IPC":>4} {"N":>4} {"unrolled s":>11} {"recompute s":>12} {"unrolled MB":>12} {"recompute MB":>13}')
    for ipc in args.ipc:
        for steps in args.steps:
            r = {x['mode']: x for x in rows if x['ipc'] == ipc and x['syn_steps'] == steps}
            if len(r) == 2:
                u, c = r['unrolled'], r['recompute']
                print(f'{ipc:4d} {steps:4d} {u["seconds"]:11.2f} {c["seconds"]:12.2f} '
                      f'{u["peak_rss_growth_mb"]:12.1f} {c["peak_rss_growth_mb"]:13.1f}')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

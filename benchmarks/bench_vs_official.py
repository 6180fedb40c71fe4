"""timm_dd's MTT iteration (``unrolled`` / ``recompute``) against the official MTT inner loop, CPU, side by side.

The official loop is GeorgeCazenavette/mtt-distillation's (its ``ReparamModule``, ``ConvNet``, ``DiffAugment``),
driven by ``benchmarks/official_mtt.py`` from a local checkout (``--official``, default the git-ignored
``carry/mtt-distillation``; its code is imported at run time, never copied into this repository).

Setting: ConvNet-3 (width 128) on 32x32 CIFAR-10 images (real ones from the shared JPEG copy when present, else random
data), MTT, whole synthetic set per inner step, DSA on (each implementation its own DSA), fp32, same start
parameters (a fresh initialization) and target (start + 1e-3 noise) for all three. Settings: IPC 1 with N = 20 inner
steps and IPC 10 with N = 10 for all three; and ``recompute`` vs ``official`` at N = 50 (IPC ``--mem-ipc``, default
1) for peak memory.

Method (as ``bench_distill.py``): every (setting, implementation) runs in a fresh subprocess with ``--threads``
torch threads; a warm-up iteration with one inner step, then the peak RSS is reset (``/proc/self/clear_refs`` = 5)
and the RSS read, ``--repeats`` timed iterations run, and ``peak_rss_growth_mb`` = VmHWM - RSS at the reset. The
reported time is the best of the repeats.

``--compile`` (on by default) adds both modes with the inner step's gradient compiled (``unrolled+compile``,
``recompute+compile``: ``StepGradient(compile=True)``, what ``--set compile=true`` runs); their compilation happens
in the warm-up iteration, outside the timing.

Targets (reported, not asserted): unrolled <= 0.7x official time, recompute <= 1.0x official time, recompute at
N = 50 <= 0.25x official peak memory growth.

Usage: python benchmarks/bench_vs_official.py [--official carry/mtt-distillation] [--settings 1:20 10:10]
       [--mem-setting 1:50] [--repeats 1] [--threads 1] [--skip 10:10:official] [--out FILE]
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
sys.path.insert(0, str(REPO / 'benchmarks'))
from _memory import allocator_env  # noqa: E402
from _mtt import measure_iteration, mtt_problem, save_images, timm_dd_iteration  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'
DEFAULT_OFFICIAL = REPO / 'carry' / 'mtt-distillation'
OURS = ('unrolled', 'recompute', 'unrolled+compile', 'recompute+compile')
MODES = OURS + ('official',)
TARGETS = {'unrolled_time': 0.7, 'recompute_time': 1.0, 'recompute_mem': 0.25}


def _child(args) -> None:
    import warnings
    warnings.filterwarnings('ignore', message='torch.meshgrid')
    torch.set_num_threads(args.threads)
    images = torch.load(args.images)
    if args.mode == 'official':
        from official_mtt import OfficialMTT
        _, labels, th0, target, lr = mtt_problem(images, args.width)
        off = OfficialMTT(args.official, channel=3, num_classes=10, im_size=32, net_width=args.width)
        assert off.num_params == th0.numel()

        def iteration(steps: int, seed: int) -> None:
            torch.manual_seed(seed)
            off.iteration(images, labels, lr, th0, target, steps)
    else:
        iteration = timm_dd_iteration(args.mode, images, args.width)

    print(json.dumps(measure_iteration(iteration, args.steps1, args.repeats)))


def _pairs(specs) -> list:
    out = []
    for s in specs:
        ipc, steps = s.split(':')
        out.append((int(ipc), int(steps)))
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official', type=Path, default=DEFAULT_OFFICIAL, help='mtt-distillation checkout')
    parser.add_argument('--settings', nargs='+', default=['1:20', '10:10'], help='IPC:STEPS, all three modes')
    parser.add_argument('--mem-setting', nargs='*', default=['1:50'],
                        help='IPC:STEPS for the recompute vs official peak-memory comparison (none: skip)')
    parser.add_argument('--skip', nargs='*', default=[], help='IPC:STEPS:MODE to leave out')
    parser.add_argument('--repeats', type=int, default=1, help='timed iterations per setting (best is reported)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (1: on a shared, loaded 2-core box 2 threads were ~7x slower)')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True,
                        help="also time both modes with the inner step's gradient compiled (--set compile=true)")
    parser.add_argument('--width', type=int, default=128, help='ConvNet width (128: the published ConvNetD3)')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'vs_official.json')
    # child mode
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--images', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='unrolled', help=argparse.SUPPRESS)
    parser.add_argument('--steps1', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    if not (args.official / 'reparam_module.py').is_file():
        print(f'error: no mtt-distillation checkout at {args.official} (git clone '
              f'https://github.com/GeorgeCazenavette/mtt-distillation {DEFAULT_OFFICIAL}); pass --official',
              file=sys.stderr)
        return 2

    modes = MODES if args.compile else tuple(m for m in MODES if '+compile' not in m)
    jobs = [(ipc, steps, mode, 'speed') for ipc, steps in _pairs(args.settings) for mode in modes]
    jobs += [(ipc, steps, mode, 'memory') for ipc, steps in _pairs(args.mem_setting or [])
             for mode in ('recompute', 'official')]
    jobs = [j for j in jobs if f'{j[0]}:{j[1]}:{j[2]}' not in args.skip and f'{j[0]}:{j[1]}' not in args.skip]
    rows, sources = [], {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='bench_vs_official_') as tmp:
        paths = {}
        for ipc, steps, mode, kind in jobs:
            if ipc not in paths:
                paths[ipc], sources[ipc] = save_images(ipc, Path(tmp), args.data)
            if any(r['ipc'] == ipc and r['syn_steps'] == steps and r['mode'] == mode for r in rows):
                continue  # a memory setting equal to a speed setting
            cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--images', str(paths[ipc]), '--mode',
                   mode, '--steps1', str(steps), '--repeats', str(args.repeats), '--threads', str(args.threads),
                   '--width', str(args.width), '--official', str(args.official)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(dict(ipc=ipc, batch_syn=10 * ipc, syn_steps=steps, mode=mode, **res))
            print(f'IPC {ipc:3d}  N {steps:3d}  {mode:9s}  {res["seconds"]:8.2f} s/it  '
                  f'peak RSS growth {res["peak_rss_growth_mb"]:8.1f} MB', flush=True)

    def get(ipc, steps, mode):
        return next((r for r in rows if r['ipc'] == ipc and r['syn_steps'] == steps and r['mode'] == mode), None)

    comparisons = []
    for ipc, steps in _pairs(args.settings) + _pairs(args.mem_setting or []):
        off = get(ipc, steps, 'official')
        if off is None or any(c['ipc'] == ipc and c['syn_steps'] == steps for c in comparisons):
            continue
        c = dict(ipc=ipc, syn_steps=steps, official_seconds=off['seconds'],
                 official_growth_mb=off['peak_rss_growth_mb'])
        for mode in OURS:
            r = get(ipc, steps, mode)
            if r is not None:
                c[f'{mode}_time_ratio'] = _ratio(r['seconds'], off['seconds'])
                c[f'{mode}_mem_ratio'] = _ratio(r['peak_rss_growth_mb'], off['peak_rss_growth_mb'])
        comparisons.append(c)
    targets = []
    for c in comparisons:
        if (c['ipc'], c['syn_steps']) in _pairs(args.settings):
            for mode in OURS:
                key = mode.split('+')[0] + '_time'
                if c.get(f'{mode}_time_ratio') is not None:
                    targets.append(dict(target=f'{mode} time <= {TARGETS[key]}x official', ipc=c['ipc'],
                                        syn_steps=c['syn_steps'], ratio=c[f'{mode}_time_ratio'],
                                        met=c[f'{mode}_time_ratio'] <= TARGETS[key]))
        if (c['ipc'], c['syn_steps']) in _pairs(args.mem_setting or []) and c.get('recompute_mem_ratio') is not None:
            targets.append(dict(target=f'recompute peak memory <= {TARGETS["recompute_mem"]}x official',
                                ipc=c['ipc'], syn_steps=c['syn_steps'], ratio=c['recompute_mem_ratio'],
                                met=c['recompute_mem_ratio'] <= TARGETS['recompute_mem']))
    from official_mtt import official_commit
    result = {
        'benchmark': 'distill_iteration_vs_official',
        'model': f'convnet3 width {args.width}, 32x32, 10 classes',
        'method': 'MTT, whole synthetic set per inner step, DSA on (each its own), fp32, same start/target',
        'official': {'path': str(args.official.resolve()), 'commit': official_commit(args.official),
                     'loop': 'benchmarks/official_mtt.py (official ReparamModule, ConvNet, DiffAugment; network '
                             'built once, outside the timed iteration)'},
        'data': {str(k): v for k, v in sources.items()},
        'memory_method': 'fresh subprocess per row; after a 1-step warm-up iteration the peak RSS (VmHWM) is reset '
                         'via /proc/self/clear_refs; growth = VmHWM after the timed iterations - RSS at reset',
        'time_method': f'best of {args.repeats} iteration(s) after the warm-up',
        'threads': args.threads,
        'allocator_env': allocator_env(),
        'machine': f'{platform.machine()} {os.cpu_count()} cores (shared, loaded), torch {torch.__version__}',
        'skipped': args.skip, 'rows': rows, 'comparisons': comparisons, 'targets': targets,
        'wall_seconds': time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    ours = [m for m in OURS if any(f'{m}_time_ratio' in c for c in comparisons)]
    print('\n| IPC | N | official s | official MB | ' + ' | '.join(f'{m} / official time' for m in ours) + ' | '
          + ' | '.join(f'{m} / official mem' for m in ours) + ' |')
    print('|' + ' --- |' * (4 + 2 * len(ours)))

    def f(x, spec='.2f'):
        return format(x, spec) if x is not None else '-'

    for c in comparisons:
        print(f"| {c['ipc']} | {c['syn_steps']} | {c['official_seconds']:.2f} | {c['official_growth_mb']:.0f} | "
              + ' | '.join(f(c.get(f'{m}_time_ratio')) for m in ours) + ' | '
              + ' | '.join(f(c.get(f'{m}_mem_ratio')) for m in ours) + ' |')
    print()
    for t in targets:
        print(f"target {t['target']} (IPC {t['ipc']}, N {t['syn_steps']}): {t['ratio']:.2f} "
              f"{'met' if t['met'] else 'NOT met'}")
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""The exact meta-gradient under a memory budget: time and peak memory against the budget, and against the official
MTT loop, in one run, on this CPU.

``graph_budget`` (``--set graph_budget=...``) keeps the graphs of as many final inner steps as fit the budget and
recomputes the earlier ones (``match_budgeted``); ``unrolled`` keeps every step's graph, ``recompute`` none. Each
row is one MTT iteration: ConvNet-3 (width 128) on 32x32 CIFAR-10 images (the shared JPEG copy when present, else
random data), the whole synthetic set per inner step, DSA on, fp32, a fresh initialization as the start and start +
1e-3 noise as the target (the cost does not depend on the expert).

Rows per setting (IPC:N): ``official`` (GeorgeCazenavette/mtt-distillation's loop through ``official_mtt.py``, from
a local checkout given by ``--official``; skipped without one), ``unrolled``, ``recompute``, and ``budget F`` for
each fraction ``F`` of the N steps' graphs (the budget is ``ceil(F N)`` times one step's graph as the library
measures it, so that those many steps fit; ``F = 1``: every step fits). ``budget auto`` is not timed (it depends on
the machine's free memory); its measured step size and chosen step count are reported.

Method (as ``bench_vs_official.py``): every row runs in a fresh subprocess with ``--threads`` torch threads; a
warm-up iteration of one inner step, then the peak RSS is reset (``/proc/self/clear_refs`` = 5) and the RSS read,
``--repeats`` timed iterations run; ``peak_rss_growth_mb`` = VmHWM - RSS at the reset; the time is the best of the
repeats.

``paired``: ``unrolled`` and the budget that fits every step alternating in one process, ``--repeats`` times each
(separate processes differ by a few percent in page faults alone).

Targets (reported, not asserted): with a budget that fits every step, time <= 1.02x ``unrolled`` (the ``paired``
row); every budget's peak growth <= the budget plus one step's graph (plus the stored parameters and images, listed
as ``fixed_mb``).

Usage: python benchmarks/bench_graph_budget.py [--settings 1:20 1:50 10:10 10:30] [--fractions 0.25 0.5 0.75 1]
       [--official carry/mtt-distillation] [--repeats 1] [--threads 1] [--out FILE]
"""
import argparse
import json
import math
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
from _mtt import measure_iteration, mtt_problem, save_images  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'cifar10-jpeg'
DEFAULT_OFFICIAL = REPO / 'carry' / 'mtt-distillation'
MB = 2 ** 20


def _problem(images: torch.Tensor, width: int):
    from timm_dd.augment import DSA
    from timm_dd.distill import FlatModel, StepGradient, plan_steps
    model, labels, start, target, lr = mtt_problem(images, width)
    step_grad, dsa = StepGradient(FlatModel(model)), DSA()

    def plan(steps: int, seed: int):
        return plan_steps(images.shape[0], steps, None, 32, dsa, torch.Generator().manual_seed(seed))
    return step_grad, dsa, labels, start, target, lr, plan


def _child(args) -> dict:
    import warnings
    warnings.filterwarnings('ignore', message='torch.meshgrid')
    torch.set_num_threads(args.threads)
    images = torch.load(args.images)
    extra = {}
    if args.mode == 'official':
        from official_mtt import OfficialMTT
        _, labels, th0, target, lr = mtt_problem(images, args.width)
        off = OfficialMTT(args.official, channel=3, num_classes=10, im_size=32, net_width=args.width)

        def iteration(steps: int, seed: int) -> None:
            torch.manual_seed(seed)
            off.iteration(images, labels, lr, th0, target, steps)
    else:
        from timm_dd.distill import graph_step_bytes, graph_steps_for_budget, match_budgeted, trajectory_match
        step_grad, dsa, labels, start, target, lr, plan = _problem(images, args.width)
        step_bytes = graph_step_bytes(step_grad, images, labels, start, plan(1, 0), dsa)
        extra['step_graph_mb'] = step_bytes / MB
        if args.mode == 'paired':
            return dict(extra, **_paired(args, step_grad, dsa, labels, start, target, lr, plan, images, step_bytes))
        if args.mode.startswith('budget'):
            fraction = args.mode.split()[1]
            if fraction == 'auto':
                steps = graph_steps_for_budget('auto', step_bytes, args.steps1, images.device)
                return dict(extra, auto_graph_steps=steps)
            budget = math.ceil(float(fraction) * args.steps1) * step_bytes
            extra.update(budget_mb=budget / MB, graph_steps=graph_steps_for_budget(budget, step_bytes, args.steps1,
                                                                                   images.device))

            def iteration(steps: int, seed: int) -> None:
                keep = graph_steps_for_budget(budget, step_bytes, steps, images.device)
                match_budgeted(step_grad, images, labels, lr, start, target, plan(steps, seed), dsa, 'mtt',
                               graph_steps=keep)
        else:
            def iteration(steps: int, seed: int) -> None:
                trajectory_match(args.mode, step_grad, images, labels, lr, start, target, plan(steps, seed), dsa,
                                 'mtt')
    return dict(measure_iteration(iteration, args.steps1, args.repeats), **extra)


def _paired(args, step_grad, dsa, labels, start, target, lr, plan, images, step_bytes) -> dict:
    """``unrolled`` and a budget that fits every step, alternating in this one process (the same heap and page
    state for both): the best time of each and their ratio."""
    import time
    from timm_dd.distill import graph_steps_for_budget, match_budgeted, trajectory_match
    keep = graph_steps_for_budget(args.steps1 * step_bytes, step_bytes, args.steps1, images.device)
    runs = {'unrolled': lambda r: trajectory_match('unrolled', step_grad, images, labels, lr, start, target,
                                                   plan(args.steps1, r), dsa, 'mtt'),
            'budget 1': lambda r: match_budgeted(step_grad, images, labels, lr, start, target, plan(args.steps1, r),
                                                 dsa, 'mtt', graph_steps=keep)}
    runs['unrolled'](0)  # warm-up
    times = {name: [] for name in runs}
    for r in range(1, args.repeats + 1):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(r)
            times[name].append(time.perf_counter() - t0)
    best = {name: min(v) for name, v in times.items()}
    return dict(paired_seconds=times, paired_best=best, graph_steps=keep,
                paired_ratio=best['budget 1'] / best['unrolled'])


def _pairs(specs) -> list:
    return [tuple(int(v) for v in s.split(':')) for s in specs]


def _run_row(args, images: Path, ipc: int, steps: int, mode: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--images', str(images), '--mode', mode,
           '--steps1', str(steps), '--repeats', str(args.repeats), '--threads', str(args.threads),
           '--width', str(args.width), '--official', str(args.official)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f'{mode} at IPC {ipc}, N {steps} failed:\n{out.stderr[-3000:]}')
    return dict(ipc=ipc, syn_steps=steps, mode=mode, **json.loads(out.stdout.strip().splitlines()[-1]))


def _summaries(rows: list, settings: list) -> list:
    out = []
    for ipc, steps in settings:
        mine = {r['mode']: r for r in rows if r['ipc'] == ipc and r['syn_steps'] == steps and 'paired_ratio' not in r}
        unrolled, official = mine.get('unrolled'), mine.get('official')
        for mode, r in mine.items():
            if 'seconds' not in r:
                continue
            s = dict(ipc=ipc, syn_steps=steps, mode=mode, seconds=r['seconds'], growth_mb=r['peak_rss_growth_mb'],
                     graph_steps=r.get('graph_steps'), budget_mb=r.get('budget_mb'))
            if unrolled:
                s['time_vs_unrolled'] = r['seconds'] / unrolled['seconds']
            if official:
                s['time_vs_official'] = r['seconds'] / official['seconds']
                s['memory_vs_official'] = r['peak_rss_growth_mb'] / max(official['peak_rss_growth_mb'], 1e-9)
            if r.get('budget_mb') is not None:
                # what the iteration holds besides the kept graphs: the recompute row's growth is one step's graph
                # plus the stored parameters and images
                fixed = mine['recompute']['peak_rss_growth_mb'] if 'recompute' in mine else r['step_graph_mb']
                s['fixed_mb'] = fixed
                s['within_budget'] = r['peak_rss_growth_mb'] <= r['budget_mb'] + fixed * 1.1
            out.append(s)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', default=['1:20', '1:50', '10:10', '10:30'], help='IPC:STEPS')
    parser.add_argument('--fractions', nargs='+', default=['0.25', '0.5', '0.75', '1'],
                        help="budgets as fractions of the N steps' graphs")
    parser.add_argument('--modes', nargs='+', default=None,
                        help="rows to run (default all): official unrolled recompute 'budget F' 'budget auto' paired")
    parser.add_argument('--official', type=Path, default=DEFAULT_OFFICIAL, help='mtt-distillation checkout')
    parser.add_argument('--repeats', type=int, default=1, help='timed iterations per row (best is reported)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'graph_budget.json')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--images', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='unrolled', help=argparse.SUPPRESS)
    parser.add_argument('--steps1', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    has_official = (args.official / 'reparam_module.py').is_file()
    if not has_official:
        print(f'note: no mtt-distillation checkout at {args.official}: the official rows are skipped', flush=True)
    settings = _pairs(args.settings)
    modes = (['official'] if has_official else []) + ['unrolled', 'recompute'] + \
        [f'budget {f}' for f in args.fractions] + ['budget auto', 'paired']
    modes = [m for m in modes if args.modes is None or m in args.modes]
    rows, sources, t0 = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='bench_graph_budget_') as tmp:
        paths = {}
        for ipc, steps in settings:
            if ipc not in paths:
                paths[ipc], sources[ipc] = save_images(ipc, Path(tmp), args.data)
            for mode in modes:
                row = _run_row(args, paths[ipc], ipc, steps, mode)
                rows.append(row)
                if 'paired_ratio' in row:
                    print(f"IPC {ipc:3d}  N {steps:3d}  {mode:12s}  budget 1 / unrolled, alternating in one process: "
                          f"{row['paired_best']['budget 1']:.2f} / {row['paired_best']['unrolled']:.2f} s = "
                          f"{row['paired_ratio']:.3f}", flush=True)
                elif 'seconds' in row:
                    print(f"IPC {ipc:3d}  N {steps:3d}  {mode:12s}  {row['seconds']:8.2f} s/it  peak RSS growth "
                          f"{row['peak_rss_growth_mb']:8.1f} MB  graph steps {row.get('graph_steps', '-')}", flush=True)
                else:
                    print(f"IPC {ipc:3d}  N {steps:3d}  {mode:12s}  step graph {row['step_graph_mb']:.1f} MB, "
                          f"auto keeps {row['auto_graph_steps']} of {steps} steps", flush=True)
    summaries = _summaries(rows, settings)
    paired = [r for r in rows if 'paired_ratio' in r]
    targets = [dict(target='a budget that fits every step: time <= 1.02x unrolled (alternating in one process)',
                    ipc=r['ipc'], syn_steps=r['syn_steps'], ratio=r['paired_ratio'], met=r['paired_ratio'] <= 1.02)
               for r in paired]
    targets += [dict(target='peak growth <= budget + one step (+ stored parameters/images)', ipc=s['ipc'],
                     syn_steps=s['syn_steps'], mode=s['mode'], met=s['within_budget'])
                for s in summaries if 'within_budget' in s]
    from official_mtt import official_commit
    result = {
        'benchmark': 'graph_budget',
        'model': f'convnet3 width {args.width}, 32x32, 10 classes',
        'method': 'MTT, whole synthetic set per inner step, DSA on, fp32, same start/target for every row',
        'official': {'path': str(args.official.resolve()), 'commit': official_commit(args.official)}
        if has_official else None,
        'data': {str(k): v for k, v in sources.items()},
        'memory_method': 'fresh subprocess per row; peak RSS (VmHWM) reset after a 1-step warm-up; growth = VmHWM '
                         'after the timed iterations - RSS at reset',
        'time_method': f'best of {args.repeats} iteration(s) after the warm-up',
        'threads': args.threads, 'allocator_env': allocator_env(),
        'machine': f'{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}',
        'rows': rows, 'summary': summaries, 'targets': targets, 'wall_seconds': time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')

    def f(x, spec='.2f'):
        return format(x, spec) if x is not None else '-'

    print('\n| IPC | N | mode | graph steps kept | budget MB | s/it | x unrolled | x official | peak MB '
          '| x official mem |')
    print('|' + ' --- |' * 10)
    for s in summaries:
        print(f"| {s['ipc']} | {s['syn_steps']} | {s['mode']} | {f(s.get('graph_steps'), 'd')} | "
              f"{f(s.get('budget_mb'), '.0f')} | {s['seconds']:.2f} | {f(s.get('time_vs_unrolled'))} | "
              f"{f(s.get('time_vs_official'))} | {s['growth_mb']:.0f} | {f(s.get('memory_vs_official'))} |")
    for t in targets:
        print(f"{'met ' if t['met'] else 'MISSED'}  {t['target']}  (IPC {t['ipc']}, N {t['syn_steps']}"
              f"{', ' + t['mode'] if 'mode' in t else ''}{', ratio %.3f' % t['ratio'] if t.get('ratio') else ''})")
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""Dataset distillation from the command line: train expert trajectories, then distill with MTT, ATT or DM.

Examples::

    python distill.py experts --preset digits-ipc10-att --out buffers/digits
    python distill.py distill --preset digits-ipc10-att --experts buffers/digits --out runs/digits-att
    python distill.py distill --preset cifar10-ipc10-mtt --data ../shared/data/cifar10-jpeg \\
        --experts buffers/cifar10 --set grad_mode=recompute --set iterations=1000 --out runs/c10 --resume

Any preset field can be overridden with ``--set key=value`` (YAML values) or the explicit flags below.
Everything runs on the device of the Accelerate set-up (a GPU when there is one; ``--cpu`` forces the CPU).
Under ``accelerate launch --num_processes K``: experts are split between the processes, every trajectory-matching
step's synthetic minibatch is split (the same gradient as one process), and evaluation seeds are split.
"""
import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('command', choices=('experts', 'distill', 'presets'), help='what to do')
    p.add_argument('--preset', default=None, help='named setting, e.g. cifar10-ipc10-mtt (see `presets`)')
    p.add_argument('--method', choices=('mtt', 'att', 'dm'), default=None, help='override the preset method')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override any config field (repeatable)')
    p.add_argument('--data', default=None, help='dataset folder/zip (default: the preset dataset by name)')
    p.add_argument('--experts', default=None, help='expert buffer folder (distill: read; default --out for experts)')
    p.add_argument('--out', required=False, default=None, help='output folder')
    p.add_argument('--resume', action='store_true', help='continue from the checkpoint in --out')
    p.add_argument('--force-resume', action='store_true',
                   help='with --resume: continue even though settings that change the run differ')
    p.add_argument('--iterations', type=int, default=None, help='override the number of iterations')
    p.add_argument('--ipc', type=int, default=None)
    p.add_argument('--grad-mode', choices=('unrolled', 'recompute'), default=None)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--no-eval', action='store_true', help='skip periodic evaluation and grids')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (1 is much faster for tiny networks on a shared machine)')
    p.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is present')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic CUDA kernels where torch has them (slower); DSA scale/rotate backward '
                        '(grid_sample) has none and stays nondeterministic on a GPU')
    p.add_argument('--push-to-hub', default=None, metavar='REPO', help='push the result (set or buffers) to the Hub')
    p.add_argument('-v', '--verbose', action='store_true')
    return p


def _deterministic() -> None:
    import os
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # before the first cuBLAS call
    import torch
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn (not fail) where no deterministic kernel exists


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from timm_dd.distill import (
        DistillationDiverged, ExpertFileError, get_preset, list_presets, parse_override, prepare_data, run_distill,
        run_experts,
    )
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.command == 'presets':
        for name in list_presets():
            print(name)
        return 0
    try:
        overrides = dict(parse_override(s) for s in args.overrides)
        for key, value in (('method', args.method), ('iterations', args.iterations), ('ipc', args.ipc),
                           ('grad_mode', args.grad_mode), ('seed', args.seed)):
            if value is not None:
                overrides[key] = value
        cfg = get_preset(args.preset, overrides)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if args.out is None:
        print('error: --out is required', file=sys.stderr)
        return 2
    if args.deterministic:
        _deterministic()
    import accelerate
    from timm_dd.hub import HubError
    from timm_dd.io import FolderInUseError, FolderLock
    from timm_dd.launch import exit_with_launcher
    exit_with_launcher()
    acc = accelerate.Accelerator(cpu=args.cpu)
    if not acc.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    out = Path(args.experts or args.out) if args.command == 'experts' else Path(args.out)
    try:
        with FolderLock(out) if acc.is_main_process else contextlib.nullcontext():
            with acc.main_process_first():  # one process fills the decoded-data cache, the others read it
                data = prepare_data(cfg, args.data)
            if args.command == 'experts':
                run_experts(cfg, data, out, acc)
                if args.push_to_hub and acc.is_main_process:
                    from timm_dd.hub import push_expert_buffers
                    push_expert_buffers(out, args.push_to_hub)
                return 0
            dset = run_distill(cfg, data, args.experts, out, acc, resume=args.resume, evaluate=not args.no_eval,
                               push_to_hub=args.push_to_hub, force_resume=args.force_resume)
        if acc.is_main_process:
            print(json.dumps({'out': str(out / 'distilled'), 'images': list(dset.images.shape),
                              'lr': float(dset.lr) if dset.lr is not None else None,
                              'processes': acc.num_processes, 'device': str(acc.device)}))
    except (DistillationDiverged, ExpertFileError, HubError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FolderInUseError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())

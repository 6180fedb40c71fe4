"""Dataset distillation from the command line: train expert trajectories, then distill with MTT, ATT or DM.

Examples::

    timm-dd-distill presets --show digits-ipc10-att
    timm-dd-distill experts -c digits-ipc10-att --output buffers/digits
    timm-dd-distill distill -c digits-ipc10-att --experts buffers/digits --output runs/digits-att
    timm-dd-distill distill -c cifar10-ipc10-mtt --dataset ../shared/data/cifar10-jpeg --experts buffers/c10 \\
        --set grad_mode=recompute --set iterations=1000 --output runs/c10 --resume

``-c`` (or ``--preset``) names a shipped preset, a YAML file, or a run's ``args.yaml``; any preset field can be
overridden with ``--set key=value`` or the explicit flags. Everything runs on the device of the Accelerate set-up
(a GPU when there is one; ``--cpu`` forces the CPU). Under ``accelerate launch --num_processes K``: experts are split
between the processes, every trajectory-matching step's synthetic minibatch is split (the same gradient as one
process), and evaluation seeds are split.
"""
import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..distill import (
    PRESETS, DistillConfig, ExpertPool, get_preset, load_distillation_data, run_distill, run_experts,
)
from ..hub import import_distilled, push_expert_buffers
from ..train.report import format_accuracies
from .common import (
    add_common_args, apply_deprecations, command_run, parse_set, read_cli_config, report_user_error, run_command,
    setup_logging,
)

COMMANDS = ('experts', 'distill', 'presets', 'convert')
#: distill.py spellings of earlier releases (``--data`` was the real dataset; it now names a distilled set)
DEPRECATED = {'--data': ('--dataset', '--data names a distilled set in both commands now')}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p, seeds=False)
    p.add_argument('--preset', dest='config', default=None, metavar='NAME', help='the same as -c: a preset name')
    p.add_argument('--data-root', default=None, metavar='DIR',
                   help="the named dataset's folder: torchvision's cifar-10-batches-py or an image-folder/zip "
                        "copy (CIFAR), the npz batches (imagenet64), ImageNet's train/ and val/ (imagewoof, ...), "
                        "or a parquet copy (a folder or hf://datasets/<owner>/<name>)")
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (1 is much faster for tiny networks on a shared machine)')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic CUDA kernels where torch has them (slower); DSA scale/rotate backward '
                        '(grid_sample) has none and stays nondeterministic on a GPU')
    p.add_argument('--push-to-hub', default=None, metavar='REPO', help='push the result (set or buffers) to the Hub')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-dd-distill', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True, metavar='{experts,distill,presets,convert}')
    e = sub.add_parser('experts', help='train expert trajectories (resumable: finished experts are kept)',
                       description='Train expert trajectories into --output (finished experts are kept).')
    _add_run_args(e)
    d = sub.add_parser('distill', help='distill with MTT, ATT or DM',
                       description='Distill a dataset with MTT, ATT (experts needed) or DM.')
    _add_run_args(d)
    d.add_argument('--experts', default=None, help='expert buffer folder (MTT/ATT)')
    d.add_argument('--method', choices=('mtt', 'att', 'dm'), default=None, help='override the preset method')
    d.add_argument('--iterations', type=int, default=None, help='override the number of iterations')
    d.add_argument('--ipc', type=int, default=None, help='images per class')
    d.add_argument('--grad-mode', choices=('unrolled', 'recompute'), default=None)
    d.add_argument('--resume', action='store_true', help='continue from the checkpoint in --output')
    d.add_argument('--force-resume', action='store_true',
                   help='with --resume: continue even though settings that change the run differ')
    d.add_argument('--no-eval', action='store_true', help='skip periodic evaluation and grids')
    s = sub.add_parser('presets', help='list the shipped presets (and where their numbers come from)',
                       description='List the presets with their sources, or show the settings of one.')
    s.add_argument('--show', metavar='NAME', default=None, help="print one preset's settings")
    c = sub.add_parser('convert', help='import a set made by another tool (MTT, ATT, DATM, FRePo, DD-Ranking, images)',
                       description='Read a distilled set in another layout and save it as a timm_dd set '
                                   '(usable with train.py --data).')
    c.add_argument('source', help='folder or Hub dataset repo of the set')
    c.add_argument('--layout', required=True, choices=('mtt', 'frepo', 'ddranking', 'folder'))
    c.add_argument('--dataset', default=None, help='the real dataset it was distilled from (name, folder or zip)')
    c.add_argument('--image-space', choices=('zca', 'normalized', 'pixel'), default=None)
    c.add_argument('--zca-eps', type=float, default=None,
                   help='eps of the ZCA the set was made with (default 0.1: MTT, ATT, DATM, DD-Ranking)')
    c.add_argument('--normalization-stats', choices=['dataset', 'cifar10'], default=None,
                   help="normalized sets: whose mean/std (default: the tool's; MTT/ATT/DD-Ranking use CIFAR-10's for "
                        'CIFAR-100)')
    c.add_argument('--iteration', type=int, default=None,
                   help='mtt layout: the numbered snapshot images_<N>.pt instead of images_best.pt')
    c.add_argument('--ema', action='store_true', help="mtt layout: ATT/FTD's EMA images (ema_images_*.pt)")
    c.add_argument('--soft-label-kind', choices=['logits', 'probs'], default=None,
                   help='what [N, K] float labels hold (default logits: FRePo, DATM)')
    c.add_argument('--lr', type=float, default=None, help='learned step size, when the files lack it')
    c.add_argument('--soft-label-temperature', type=float, default=None, help='softmax(y / t) for logit labels')
    c.add_argument('--output', required=True, help='where to write the timm_dd set')
    c.add_argument('--log-level', default='INFO')
    return p


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def resolve_config(argv: List[str]):
    """Parse ``argv`` (two passes: ``-c`` first) into ``(args, DistillConfig or None)``."""
    parser = build_parser()
    command = argv[0] if argv and argv[0] in COMMANDS else None
    values: Dict[str, Any] = {}
    if command in ('experts', 'distill'):
        flags, values = read_cli_config(_subparser(parser, command), argv[1:], 'distill',
                                        [f.name for f in fields(DistillConfig)])
        _subparser(parser, command).set_defaults(**flags)
    args = parser.parse_args(argv)
    if args.command in ('presets', 'convert'):
        return args, None
    overrides = parse_set(args.overrides)
    for key in ('method', 'iterations', 'ipc', 'grad_mode', 'seed'):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    return args, get_preset(values if values else None, overrides)


def main(argv: Optional[List[str]] = None) -> int:
    argv = apply_deprecations(sys.argv[1:] if argv is None else list(argv), DEPRECATED)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    hint = 'run the same command again' if command == 'experts' else 'run the same command with --resume'
    return run_command(lambda: _main(argv), resume_hint=hint)  # finished experts are kept and skipped


def _main(argv: List[str]) -> int:
    args, cfg = resolve_config(argv)
    if args.command == 'presets':
        return _presets(args.show)
    if args.command == 'convert':
        setup_logging(args.log_level)  # no accelerator: experts and distill set logging up in command_run
        return _convert(args)
    if args.output is None:
        return report_user_error('--output is required')
    if args.command == 'distill' and args.experts and Path(args.experts).resolve() == Path(args.output).resolve():
        return report_user_error(f'--output {args.output} is the experts folder: a distillation writes its checkpoint, '
                                 f'images and sets there; choose another --output (the experts stay as they are)')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        _deterministic()
    out = Path(args.output)
    record = {k: v for k, v in vars(args).items() if k != 'config'}
    with command_run(args, out, record, cfg.to_dict(), f'timm_dd-{args.command}',
                     args_file=f'args-{args.command}.yaml') as acc:
        if args.command == 'distill' and _page_faults_likely(acc.device, cfg.method):
            logging.getLogger('timm_dd.cli').info(
                'trajectory matching on a Linux CPU: an allocator that keeps freed memory (jemalloc, decay off) made '
                'iterations up to 1.8x faster on our machine; see the README, "On a Linux CPU"')
        if args.config is None:
            logging.getLogger('timm_dd.cli').warning(
                'no -c/--preset given: using the default settings (%s, %s, ipc %d, %s); `timm-dd-distill presets` '
                'lists the presets', cfg.dataset, cfg.method, cfg.ipc, cfg.arch)
        dset = _run(args, cfg, out, acc)
        if dset is not None and acc.is_main_process:
            line = _start_vs_end(dset, cfg)
            if line:
                print(line)
            print(json.dumps({'out': str(out / 'distilled'), 'images': list(dset.images.shape),
                              'lr': float(dset.lr) if dset.lr is not None else None,
                              'processes': acc.num_processes, 'device': str(acc.device)}))
    return 0


def _page_faults_likely(device: Any, method: str) -> bool:
    # glibc malloc unmaps every freed block over 32 MB, so each inner step faults its activations in again
    return (device.type == 'cpu' and method in ('mtt', 'att') and sys.platform.startswith('linux')
            and 'jemalloc' not in os.environ.get('LD_PRELOAD', ''))


def _run(args: argparse.Namespace, cfg: Any, out: Path, acc: Any) -> Optional[Any]:
    """Train experts (returns ``None``) or distil (returns the set)."""
    if args.command == 'distill' and cfg.method in ('mtt', 'att'):
        ExpertPool.check_folder(args.experts, cfg.max_experts)  # before a minute of loading the data
    with acc.main_process_first():  # one process fills the decoded-data cache, the others read it
        data = load_distillation_data(cfg, args.dataset, args.data_root)
    if args.command == 'experts':
        run_experts(cfg, data, out, acc)
        if args.push_to_hub and acc.is_main_process:
            push_expert_buffers(out, args.push_to_hub)
        return None
    return run_distill(cfg, data, args.experts, out, acc, resume=args.resume, evaluate=not args.no_eval,
                       push_to_hub=args.push_to_hub, force_resume=args.force_resume)


def _start_vs_end(dset, cfg) -> Optional[str]:
    """The core claim, measured: the distillation network trained on the real images the run started from (when it
    started from real images) against the distilled images, same networks and seeds."""
    history = [h for h in dset.extra.get('history', []) if 'accs' in h]
    if cfg.pix_init != 'real' or len(history) < 2 or history[0]['iteration'] != 0:
        return None
    first, last = history[0], history[-1]
    seeds = len(first['accs'])
    line = (f'{cfg.arch} ({cfg.eval_epochs} epochs, {seeds} seed{"s" if seeds != 1 else ""}) trained on {cfg.ipc} '
            f'random real images per class: {format_accuracies(first["accs"], 1)} %; on the {cfg.method.upper()} set '
            f'distilled from them (iteration {last["iteration"]}): {format_accuracies(last["accs"], 1)} %')
    if seeds < 2 or len(last['accs']) != seeds:
        return line
    # the same networks and seeds on both sets: the per-seed difference has a spread of its own, much smaller than
    # either set's spread over seeds (which is mostly the initialization's)
    diffs = [b - a for a, b in zip(first['accs'], last['accs'])]
    higher = sum(d > 0 for d in diffs)
    return (f'{line}; paired by seed, distilled - real: {format_accuracies(diffs, 1)} points, higher on {higher} of '
            f'{seeds} seeds')


def _convert(args: argparse.Namespace) -> int:
    dset = import_distilled(args.source, args.layout, dataset=args.dataset, image_space=args.image_space,
                            zca_eps=args.zca_eps, lr=args.lr, soft_label_temperature=args.soft_label_temperature,
                            soft_label_kind=args.soft_label_kind, iteration=args.iteration, ema=args.ema,
                            normalization_stats=args.normalization_stats)
    path = dset.save(args.output)
    print(json.dumps({'out': str(path), 'images': list(dset.images.shape), 'image_space': dset.image_space,
                      'lr': float(dset.lr) if dset.lr is not None else None}))
    return 0


def _presets(show: Optional[str]) -> int:
    if show is None:
        for name in sorted(PRESETS):
            print(f'{name:24s} {PRESETS[name].get("source", "")}')
        return 0
    try:
        cfg = get_preset(show)
    except ValueError as e:
        return report_user_error(e)
    explicit = set(PRESETS[show])
    print(f'# {show}: {PRESETS[show].get("source", "")}')
    print('# fields the preset sets are marked *; the others are the defaults')
    for key, value in cfg.to_dict().items():
        if key != 'source':
            print(f'{"*" if key in explicit else " "} {key}: {json.dumps(value)}')
    return 0


def _deterministic() -> None:
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # before the first cuBLAS call
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn (not fail) where no deterministic kernel exists


if __name__ == '__main__':
    sys.exit(main())

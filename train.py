#!/usr/bin/env python3
"""Train test networks on a distilled (or real-subset) training set and report a cross-architecture table.

Examples:
    accelerate launch train.py --config configs/dpkd.yaml --data ./my-distilled-set --model resnet18_dd
    accelerate launch train.py -c baseline --data org/cifar10-mtt-ipc10 --models convnet3 resnet18_dd vgg11_dd \\
        alexnet_dd resnet50_dd --seeds 0 1 2 3 4
    python train.py -c dpkd --dataset digits --real-ipc 10 --models resnet18_dd --epochs 200 --cpu
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py ...   # two CPU processes

Like timm's train.py, a first parser reads ``--config`` (a recipe name from configs/ or a YAML path), whose values
become the defaults; any flag given on the command line wins; ``--set key=value`` overrides any recipe field.
"""
import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

# recipe fields that have their own flag: flag dest -> TrainConfig field
_FLAG_FIELDS = {
    'epochs': 'epochs', 'batch_size': 'batch_size', 'opt': 'opt', 'lr': 'lr', 'weight_decay': 'weight_decay',
    'lr_schedule': 'lr_schedule', 'drop_path': 'drop_path', 'p_min': 'p_min', 'p_final': 'p_final',
    'period': 'period', 'final_epochs': 'final_epochs', 'dsa': 'dsa', 'dsa_k': 'dsa_k', 'kd': 'kd',
    'teacher': 'teacher', 'teacher_model': 'teacher_model', 'teacher_epochs': 'teacher_epochs',
    'kd_temperature': 'kd_temperature', 'distill_loss_weight': 'kd_alpha',
    'soft_label_temperature': 'soft_label_temperature', 'elf': 'elf', 'elf_feature_model': 'elf_feature_model',
    'eval_every': 'eval_every', 'checkpoint_every': 'checkpoint_every', 'mixed_precision': 'mixed_precision',
    'parallel': 'parallel',
}


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def _key_values(items: Optional[List[str]], what: str) -> Dict[str, Any]:
    out = {}
    for item in items or []:
        if '=' not in item:
            raise SystemExit(f'error: {what} expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        out[key.strip().replace('-', '_')] = _parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-c', '--config', default='baseline',
                   help='recipe: a name in configs/ (baseline, dpkd, dpkd-no-dp, dpkd-no-kd, dpkd-no-dp-no-kd, elf) '
                        'or a YAML path')
    g = p.add_argument_group('data')
    g.add_argument('--data', help='distilled set: a folder or a Hugging Face Hub dataset id')
    g.add_argument('--real-ipc', type=int, help='train on K real images per class of --dataset instead (-1: all)')
    g.add_argument('--dataset', help='digits, cifar10, cifar100, or an ImageFolder folder/zip; also the test set')
    g.add_argument('--data-root', help='where torchvision datasets live')
    g.add_argument('--img-size', type=int, help='resize the real dataset (with --real-ipc) to this size')
    g.add_argument('--cache-dir', help='decoded-dataset cache (default $TIMM_DD_CACHE or ~/.cache/timm_dd)')
    g = p.add_argument_group('model')
    g.add_argument('--model', help='one network (timm_dd or stock timm model name)')
    g.add_argument('--models', nargs='+', help='several networks for a cross-architecture table')
    g.add_argument('--model-kwargs', nargs='*', metavar='K=V', help='extra create_model kwargs, e.g. width=512')
    g.add_argument('--seeds', nargs='+', type=int, default=[0])
    g = p.add_argument_group('recipe overrides')
    g.add_argument('--epochs', type=int)
    g.add_argument('-b', '--batch-size', type=int)
    g.add_argument('--opt', choices=['sgd', 'lion', 'adamw'])
    g.add_argument('--lr', type=float, help='peak lr (default: the set\'s learned lr, or the recipe\'s)')
    g.add_argument('--weight-decay', type=float)
    g.add_argument('--lr-schedule', choices=['periodic', 'periodic_decay', 'cosine', 'multistep', 'constant'])
    g.add_argument('--drop-path', action=argparse.BooleanOptionalAction, default=None,
                   help='the three-phase keep-rate schedule')
    g.add_argument('--p-min', type=float)
    g.add_argument('--p-final', type=float)
    g.add_argument('--period', type=int, help='keep-rate period T in epochs')
    g.add_argument('--final-epochs', type=int, help='length of the final high-keep-rate phase')
    g.add_argument('--dsa', action=argparse.BooleanOptionalAction, default=None)
    g.add_argument('--dsa-k', type=int, help='DSA op families per batch (k-fold DSA)')
    g.add_argument('--kd', action=argparse.BooleanOptionalAction, default=None, help='knowledge distillation')
    g.add_argument('--teacher', help='teacher: timm local-dir folder or hf-hub:org/name (default: train one)')
    g.add_argument('--teacher-model', help='architecture of the teacher trained in the run (default convnet3)')
    g.add_argument('--teacher-epochs', type=int)
    g.add_argument('--kd-temperature', type=float)
    g.add_argument('--distill-loss-weight', type=float, help='KD weight alpha (task weight is 1 - alpha)')
    g.add_argument('--soft-label-temperature', type=float, help='tau for soft labels: softmax(y / tau)')
    g.add_argument('--elf', action=argparse.BooleanOptionalAction, default=None, help='ELF feature supervision')
    g.add_argument('--elf-feature-model', help='ELF feature model: timm local-dir folder or hf-hub:org/name')
    g.add_argument('--eval-every', type=int)
    g.add_argument('--checkpoint-every', type=int)
    g.add_argument('--set', nargs='+', action='extend', metavar='KEY=VALUE',
                   help='override any recipe field (typed: 1e-5 is a float; repeatable)')
    g = p.add_argument_group('run')
    g.add_argument('--output', default=None, help='output folder (default output/train/<recipe>)')
    g.add_argument('--resume', action='store_true', help='continue an interrupted run in --output')
    g.add_argument('--force-resume', action='store_true',
                   help='with --resume: continue even though the recipe, data or model kwargs changed')
    g.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is present')
    g.add_argument('--mixed-precision', choices=['no', 'fp16', 'bf16'],
                   help='default: what `accelerate config` / `accelerate launch --mixed_precision` set')
    g.add_argument('--parallel', choices=['runs', 'ddp', 'vmap'],
                   help='runs (default): one (network, seed) run per process, for small training sets; ddp: every '
                        'run with DDP over all processes, for large ones; vmap: all seeds of a network at once on '
                        'one device (no batch norm, DropPath, KD or ELF)')
    g.add_argument('--save-models', action='store_true', help='save every trained network (timm local-dir layout)')
    g.add_argument('--push-teacher', metavar='REPO', help='push the first trained teacher to this Hub model repo')
    g.add_argument('--no-plots', action='store_true')
    g.add_argument('--log-level', default='INFO')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from accelerate import Accelerator

    import timm_dd  # noqa: F401  (registers the models)
    from timm_dd.hub import HubError
    from timm_dd.io import FolderInUseError, FolderLock
    from timm_dd.launch import exit_with_launcher
    from timm_dd.train.config import load_config

    overrides = {field: getattr(args, dest) for dest, field in _FLAG_FIELDS.items() if getattr(args, dest) is not None}
    overrides.update(_key_values(args.set, '--set'))
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    models = args.models or ([args.model] if args.model else None)
    if not models:
        raise SystemExit('error: give --model or --models')
    out_dir = Path(args.output or f'output/train/{cfg.recipe}')

    exit_with_launcher()
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=cfg.mixed_precision)
    logging.basicConfig(level=args.log_level if accelerator.is_main_process else 'WARNING',
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    for noisy in ('accelerate', 'matplotlib'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    lock = FolderLock(out_dir) if accelerator.is_main_process else contextlib.nullcontext()
    try:
        with lock:
            return _run(args, cfg, models, out_dir, accelerator)
    except (ValueError, FileNotFoundError, FolderInUseError, HubError) as e:  # user errors: one clear line
        print(f'error: {e}', file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, cfg: Any, models: List[str], out_dir: Path, accelerator: Any) -> int:
    from timm_dd.io import atomic_write
    from timm_dd.train.experiment import format_table, prepare_data, run_experiment
    if accelerator.is_main_process:
        with atomic_write(out_dir / 'args.yaml', 'w') as f:
            yaml.safe_dump(dict(vars(args), config_resolved=cfg.to_dict(), models=models), f, sort_keys=False)

    with accelerator.main_process_first():  # one process fills the decoded-data cache, the others read it
        bundle = prepare_data(args.data, args.real_ipc, args.dataset, args.data_root, seed=args.seeds[0],
                              cache_dir=args.cache_dir, image_size=args.img_size)
    accelerator.print(f'training set: {bundle.description}: {len(bundle.train)} images, '
                      f'test set: {len(bundle.test_labels)} images; {accelerator.num_processes} process(es) on '
                      f'{accelerator.device}')
    result = run_experiment(cfg, models, args.seeds, bundle, out_dir, accelerator,
                            model_kwargs=_key_values(args.model_kwargs, '--model-kwargs'), resume=args.resume,
                            save_models=args.save_models, force_resume=args.force_resume)
    if accelerator.is_main_process:
        print(format_table(result))
        if not args.no_plots:
            from timm_dd.train.plots import plot_results, plot_schedules
            iters = -(-len(bundle.train) // cfg.batch_size)
            print('plots:', plot_results(result, out_dir / 'results.png'),
                  plot_schedules(cfg, models, out_dir / 'schedules.png', iters))
        print(f'results: {out_dir / "results.md"}, {out_dir / "results.json"}')
        if args.push_teacher:
            if not result.teacher_runs or result.teacher_runs[0].get('loaded'):
                raise SystemExit('error: --push-teacher needs a teacher trained in this run (kd on, no --teacher)')
            from timm_dd.hub import load_teacher, push_teacher
            teacher_dir = out_dir / 'teachers' / f'seed{args.seeds[0]}' / 'model'
            print('pushed teacher:', push_teacher(load_teacher(str(teacher_dir)), args.push_teacher,
                                                  class_names=bundle.class_names))
    accelerator.end_training()
    return 0


if __name__ == '__main__':
    sys.exit(main())

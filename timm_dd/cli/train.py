"""Train test networks on a distilled (or real-subset) training set and report a cross-architecture table.

Examples (``timm-dd-train`` is the installed command; in a checkout, ``python train.py`` is the same):
    timm-dd-train -c dpkd --dataset digits --real-ipc 10 --models resnet18_dd --epochs 200 --cpu
    timm-dd-train -c output/train/dpkd/args.yaml              # repeat an earlier run
    accelerate launch -m timm_dd.cli.train -c dpkd --data ./my-distilled-set --model resnet18_dd
    accelerate launch -m timm_dd.cli.train -c baseline --data org/cifar10-mtt-ipc10 \\
        --models convnet3 resnet18_dd vgg11_dd alexnet_dd resnet50_dd --seeds 0 1 2 3 4
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m timm_dd.cli.train ...   # 2 CPU processes
(``accelerate launch train.py ...`` in a checkout.)

Like timm's train.py, a first pass reads ``-c`` (a shipped recipe name, a YAML file, or a run's args.yaml), whose
values become the defaults; any flag given on the command line wins; ``--set key=value`` overrides any recipe field.
"""
import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..hub import load_teacher, push_teacher
from ..train import format_table, prepare_data, run_experiment
from ..train.config import TrainConfig, load_config
from ..train.networks import teacher_folder
from ..train.plots import plot_results, plot_schedules
from ..train.schedules import LR_SCHEDULES
from .common import (
    add_common_args, apply_deprecations, command_run, parse_set, read_cli_config, report_user_error, run_command,
)

#: flags whose dest is a recipe field but which are not recipe overrides: --seed picks the runs' seeds (with --seeds)
NOT_RECIPE_FLAGS = ('seed',)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-dd-train', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    for add_group in (_data_args, _model_args, _recipe_args, _run_args):
        add_group(p)
    return p


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('data')
    g.add_argument('--data', help='distilled set: a folder or a Hugging Face Hub dataset id (timm_dd sets, and the '
                                  'MTT/ATT/DATM, FRePo and DD-Ranking layouts)')
    g.add_argument('--data-layout', choices=['timm_dd', 'mtt', 'frepo', 'ddranking', 'folder'], default=None,
                   help="--data's layout (default: detected from its files)")
    g.add_argument('--image-space', choices=['zca', 'normalized', 'pixel'], default=None,
                   help='image space of a --data set made by another tool (ZCA refitted on --dataset), or of real '
                        'data with --real-ipc (default normalized; zca: as MTT --zca)')
    g.add_argument('--zca-eps', type=float, default=0.1,
                   help='eps of the ZCA of a zca-space --data set made by another tool, or of --real-ipc data with '
                        '--image-space zca (MTT, ATT, DATM, DD-Ranking: 0.1)')
    g.add_argument('--real-ipc', type=int, help='train on K real images per class of --dataset instead (-1: all)')
    g.add_argument('--data-root', metavar='DIR', help="the named dataset's folder: torchvision's cifar-10-batches-py "
                                                    'or an image-folder/zip copy (CIFAR), the npz batches '
                                                    "(imagenet64), ImageNet's train/ and val/ (imagewoof, ...), or "
                                                    'a parquet copy (a folder or hf://datasets/<owner>/<name>)')
    g.add_argument('--img-size', type=int, help='resize the real dataset (with --real-ipc) to this size')
    g.add_argument('--cache-dir', help='decoded-dataset cache (default $TIMM_DD_CACHE or ~/.cache/timm_dd)')
    g.add_argument('--strict', action='store_true',
                   help='refuse a --data set whose files have no recorded checksum (default: a warning, also in '
                        'the results)')


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('model')
    g.add_argument('--model', help='one network (timm_dd or stock timm model name)')
    g.add_argument('--models', nargs='+', help='several networks for a cross-architecture table')
    g.add_argument('--model-kwargs', nargs='*', metavar='K=V', help='extra create_model kwargs, e.g. width=512')


def _recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('recipe overrides')
    g.add_argument('--epochs', type=int)
    g.add_argument('-b', '--batch-size', type=int)
    g.add_argument('--opt', choices=['momentum', 'lion', 'adamw', 'sgd'],
                   help="momentum: SGD with momentum (timm's name; 'sgd' is accepted, deprecated)")
    g.add_argument('--lr', type=float, help='peak lr (default: the set\'s learned lr, or the recipe\'s)')
    g.add_argument('--weight-decay', type=float)
    g.add_argument('--lr-schedule', choices=list(LR_SCHEDULES))
    g.add_argument('--keep-rate-schedule', dest='drop_path', action=argparse.BooleanOptionalAction, default=None,
                   help='the three-phase keep-rate (DropPath) schedule of DP+KD')
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
    g.add_argument('--distill-loss-weight', dest='kd_alpha', type=float,
                   help='KD weight alpha (task weight is 1 - alpha)')
    g.add_argument('--soft-label-temperature', type=float, help='tau for soft labels: softmax(y / tau)')
    g.add_argument('--elf', action=argparse.BooleanOptionalAction, default=None, help='ELF feature supervision')
    g.add_argument('--elf-feature-model', help='ELF feature model: timm local-dir folder or hf-hub:org/name')
    g.add_argument('--recompute-bn', action=argparse.BooleanOptionalAction, default=None,
                   help='recompute batch-norm statistics on the (un-augmented) training images before each '
                        'evaluation: for schedules much shorter than the recipe\'s (off in published recipes)')
    g.add_argument('--eval-every', type=int)
    g.add_argument('--checkpoint-every', type=int)
    g.add_argument('--mixed-precision', choices=['no', 'fp16', 'bf16'],
                   help='default: what `accelerate config` / `accelerate launch --mixed_precision` set')
    g.add_argument('--parallel', choices=['runs', 'ddp', 'vmap'],
                   help='runs (default): one (network, seed) run per process, for small training sets; ddp: every '
                        'run with DDP over all processes, for large ones; vmap: all seeds of a network at once on '
                        'one device (no batch norm, DropPath, KD or ELF)')


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('run')
    g.add_argument('--resume', action='store_true', help='continue an interrupted run in --output')
    g.add_argument('--force-resume', action='store_true',
                   help='with --resume: continue even though the recipe, data or model kwargs changed')
    g.add_argument('--save-models', action='store_true', help='save every trained network (timm local-dir layout)')
    g.add_argument('--keep-checkpoints', action='store_true', default=None,
                   help="keep each finished run's resume checkpoint (default: removed when the run is done)")
    g.add_argument('--push-teacher', metavar='REPO', help='push the first trained teacher to this Hub model repo')
    g.add_argument('--no-plots', action='store_true')


def _key_values(items: Optional[List[str]]) -> Dict[str, Any]:
    try:
        return parse_set(items)
    except ValueError as e:
        raise ValueError(str(e).replace('--set', '--model-kwargs')) from None


def resolve_config(argv: List[str]):
    """Parse ``argv`` (two passes) into ``(args, TrainConfig)``."""
    parser = build_parser()
    recipe_fields = [f.name for f in fields(TrainConfig)]
    flag_defaults, config_values = read_cli_config(parser, argv, 'train', recipe_fields)
    parser.set_defaults(**flag_defaults)
    args = parser.parse_args(argv)
    # a flag overrides the recipe field its dest names (every flag of the recipe groups is named after its field)
    overrides = {name: getattr(args, name) for name in recipe_fields
                 if name not in NOT_RECIPE_FLAGS and getattr(args, name, None) is not None}
    overrides.update(parse_set(args.overrides))
    recipe = config_values if config_values else (args.config or 'baseline')
    if isinstance(recipe, dict) and args.config and 'recipe' not in recipe:
        recipe = dict(recipe, recipe=Path(args.config).stem)
    return args, load_config(recipe, overrides)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(lambda: _main(apply_deprecations(argv, timm_flags=True)))


def _main(argv: List[str]) -> int:
    args, cfg = resolve_config(argv)
    models = args.models or ([args.model] if args.model else None)
    if not models:
        return report_user_error('give --model or --models')
    seeds = args.seeds or ([args.seed] if args.seed is not None else [0])
    out_dir = Path(args.output or f'output/train/{cfg.recipe}')
    record = dict({k: v for k, v in vars(args).items() if k != 'config'}, models=models, seeds=seeds)
    with command_run(args, out_dir, record, cfg.to_dict(), f'timm_dd-{cfg.recipe}',
                     mixed_precision=cfg.mixed_precision) as accelerator:
        return _run(args, cfg, models, seeds, out_dir, accelerator)


def _run(args: argparse.Namespace, cfg: Any, models: List[str], seeds: List[int], out_dir: Path,
         accelerator: Any) -> int:
    with accelerator.main_process_first():  # one process fills the decoded-data cache, the others read it
        data = prepare_data(args.data, args.real_ipc, args.dataset, args.data_root, seed=seeds[0],
                            cache_dir=args.cache_dir, image_size=args.img_size,
                            soft_label_temperature=cfg.soft_label_temperature, layout=args.data_layout,
                            image_space=args.image_space, zca_eps=args.zca_eps, strict=args.strict)
    accelerator.print(f'training set: {data.description}: {len(data.train)} images, '
                      f'test set: {len(data.test)} images; {accelerator.num_processes} process(es) on '
                      f'{accelerator.device}')
    result = run_experiment(cfg, models, seeds, data, out_dir, accelerator,
                            model_kwargs=_key_values(args.model_kwargs), resume=args.resume,
                            save_models=args.save_models, force_resume=args.force_resume)
    if accelerator.is_main_process:
        print(format_table(result))
        if not args.no_plots:
            iters = -(-len(data.train) // cfg.batch_size)
            try:
                print('plots:', plot_results(result, out_dir / 'results.png'),
                      plot_schedules(cfg, models, out_dir / 'schedules.png', iters))
            except ImportError as e:  # the results are written; only the pictures are missing
                print(f'warning: no plots: {e}', file=sys.stderr)
        print(f'results: {out_dir / "results.md"}, {out_dir / "results.json"}')
        if args.push_teacher:
            if not result.teacher_runs or result.teacher_runs[0].get('loaded'):
                return report_user_error('--push-teacher needs a teacher trained in this run (kd on, no --teacher)')
            teacher_dir = teacher_folder(out_dir, seeds[0]) / 'model'
            print('pushed teacher:', push_teacher(load_teacher(str(teacher_dir)), args.push_teacher,
                                                  class_names=data.class_names))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""The networks of an experiment besides the students' training: creating students for the data, teachers (trained
or loaded), ELF's feature targets, and saving trained networks in timm's layout with their recorded input."""
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataSplits
from ..hub import load_teacher, model_image_space, record_input, save_teacher
from ..io import atomic_write_json, remove_file
from ..layers import keep_rate_units
from ..models import create_network, is_timm_dd_model
from ..seeding import seeded
from .config import TrainConfig, load_config
from .elf import elf_split
from .loop import evaluate
from .trainer import CHECKPOINT_FILE, RunResult, train_model

__all__ = ['run_folder', 'teacher_folder', 'create_student', 'train_or_load_teacher', 'elf_targets', 'save_model',
           'load_done', 'save_done', 'result_record']

_logger = logging.getLogger(__name__)


def run_folder(out_dir: Path, model: str, seed: int) -> Path:
    """Where an experiment keeps the run of ``model`` with ``seed``: ``runs/<model>/seed<k>``."""
    return Path(out_dir) / 'runs' / model / f'seed{seed}'


def teacher_folder(out_dir: Path, seed: int) -> Path:
    """Where an experiment keeps the teacher of ``seed`` (its saved network is in ``model/``)."""
    return Path(out_dir) / 'teachers' / f'seed{seed}'


def create_student(name: str, data: DataSplits, cfg: TrainConfig, **model_kwargs: Any) -> nn.Module:
    """Create a timm_dd or stock timm model for the data's classes, channels and image size."""
    kwargs = dict(num_classes=data.num_classes, in_chans=data.in_chans, **model_kwargs)
    if is_timm_dd_model(name):
        kwargs.setdefault('img_size', data.img_size)
        if cfg.student_norm is not None:
            kwargs.setdefault('norm', cfg.student_norm)
    elif cfg.student_norm is not None:
        _logger.warning('student_norm=%s applies to timm_dd models; %s keeps its own norm', cfg.student_norm, name)
    elif cfg.drop_path:
        # stock timm models only hold DropPath modules when built with a rate > 0; the schedule then drives them
        kwargs.setdefault('drop_path_rate', 0.1)
    try:
        model = create_network(name, **kwargs)
    except ValueError as e:
        if isinstance(e.__cause__, TypeError):  # a keyword the architecture does not take (--model-kwargs)
            raise ValueError(f'cannot create {name} with --model-kwargs {model_kwargs or {}}: {e.__cause__}; drop the '
                             f'keywords {name} does not take (each of --models gets the same --model-kwargs)') from e
        if 'unknown model' in str(e):
            raise
        raise ValueError(f'cannot create {name} for {data.in_chans}x{data.img_size}x{data.img_size} images '
                         f'and {data.num_classes} classes: {e}') from e
    if cfg.drop_path and not keep_rate_units(model):
        _logger.warning('%s has no droppable units; the keep-rate schedule does nothing for it', name)
    return model


def train_or_load_teacher(cfg: TrainConfig, data: DataSplits, seed: int, accelerator: Accelerator,
                           test_loader: DataLoader, out_dir: Path, resume: bool,
                           distributed: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher)
        if teacher.num_classes != data.num_classes:
            raise ValueError(f'the teacher {cfg.teacher} has {teacher.num_classes} classes but the training set has '
                             f'{data.num_classes}')
        _check_teacher_input(teacher, cfg.teacher, data)
        _check_same_space(cfg.teacher, 'teacher', data)
        acc = evaluate(teacher.to(accelerator.device), test_loader, accelerator.device, accelerator, distributed)
        return teacher, dict(model=cfg.teacher, seed=seed, final_acc=acc['acc'], best_acc=acc['acc'], loaded=True)
    overrides = {'seed': seed, 'eval_every': 0, 'recompute_bn': cfg.recompute_bn}
    if cfg.teacher_epochs is not None:
        overrides['epochs'] = cfg.teacher_epochs
    teacher_cfg = load_config(cfg.teacher_recipe, overrides)
    with seeded(seed):
        teacher = create_student(cfg.teacher_model, data, teacher_cfg.replace(student_norm=cfg.teacher_norm))
    run_dir = teacher_folder(out_dir, seed)
    record = load_done(run_dir)
    if record is not None and resume:
        teacher.load_state_dict(_load_weights(run_dir / 'model'))
        return teacher, record
    result = train_model(teacher, data.train, test_loader, teacher_cfg, accelerator, cfg.teacher_model,
                         out_dir=run_dir, resume=resume, desc=f'teacher {cfg.teacher_model} seed {seed}',
                         distributed=distributed)
    record = result_record(cfg.teacher_model, seed, result)
    if accelerator.is_main_process or not distributed:
        save_model(teacher, run_dir / 'model', data, None)
        save_done(run_dir, record, cfg.keep_checkpoints)
    if distributed:
        accelerator.wait_for_everyone()
    return teacher, record


def _check_teacher_input(teacher: nn.Module, name: str, data: DataSplits) -> None:
    """A loaded teacher must take the training images; say which teacher and which images when it does not."""
    x = data.train.batch(slice(0, 1))
    try:
        with torch.no_grad():
            teacher.eval()(x)
    except RuntimeError as e:
        shape = 'x'.join(str(d) for d in x.shape[1:])
        raise ValueError(f'the teacher {name} cannot take the training images ({shape}, channels x height x width): '
                         f'{str(e).splitlines()[0]}; use a teacher made for this data') from None


def save_model(model: nn.Module, folder: Path, data: DataSplits, model_kwargs: Optional[Dict[str, Any]]) -> None:
    # pretrained_cfg's mean/std: the space's normalization, else (ZCA of pixels) the data's pixel statistics
    stats = data.space if data.space.mean is not None else data.train.normalization or data.space
    facts = {k: data.source[k] for k in ('dataset', 'source_dataset') if k in data.source}
    record_input(model, stats.mean, stats.std, {**data.space.to_dict(), **facts})
    args = dict(num_classes=data.num_classes, in_chans=data.in_chans, **(model_kwargs or {}))
    if is_timm_dd_model(model.pretrained_cfg.get('architecture', '')):
        args.setdefault('img_size', data.img_size)
    save_teacher(model, folder, class_names=data.class_names, model_args=args)


def _load_weights(folder: Path) -> Dict[str, torch.Tensor]:
    return load_file(str(folder / 'model.safetensors'))


def load_done(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = run_dir / 'result.json'
    return json.loads(path.read_text()) if path.is_file() else None


def save_done(run_dir: Path, record: Dict[str, Any], keep_checkpoint: bool = False) -> None:
    """Mark a run finished (``result.json``) and remove its resume checkpoint unless ``keep_checkpoint``."""
    atomic_write_json(run_dir / 'result.json', record, indent=2)
    if not keep_checkpoint:
        remove_file(run_dir / CHECKPOINT_FILE)


def elf_targets(cfg: TrainConfig, student: nn.Module, data: DataSplits, device: torch.device) -> torch.Tensor:
    if not cfg.elf_feature_model:
        raise ValueError('ELF needs a feature model trained on real data (elf_feature_model); make one with '
                         '`timm-dd-train -c baseline --dataset <data> --real-ipc -1 --model convnet3 --model-kwargs '
                         'width=512 --lr 0.01 --epochs 200 --set snapshot_epochs=[100] --output <dir>` and pass '
                         '--elf-feature-model <dir>/runs/convnet3/seed0 (README, "ELF")')
    source = cfg.elf_feature_model
    snapshot = Path(source) / f'model-epoch{cfg.elf_feature_epoch}'
    if Path(source).is_dir() and not (Path(source) / 'config.json').is_file() and snapshot.is_dir():
        source = str(snapshot)  # a run folder: the ELF code's feature model is the one after epoch 100
    _check_same_space(source, 'ELF feature model', data)
    phi = load_teacher(source).to(device).eval()
    split = elf_split(student)
    with torch.no_grad():
        feats = torch.cat([phi.forward_features(data.train.batch(slice(i, i + 256), device))
                           for i in range(0, len(data.train), 256)])
    if tuple(feats.shape[1:]) != tuple(split.feature_shape):
        raise ValueError(f'the ELF feature model outputs {tuple(feats.shape[1:])} but the student\'s split expects '
                         f'{split.feature_shape}; use a ConvNet of width {split.feature_shape[0]}')
    return feats.cpu()


def _check_same_space(source: str, what: str, data: DataSplits) -> None:
    """A model that reads the training images (ELF's feature model, a loaded teacher) must have been trained in their
    image space: its recorded space (config.json ``image_space``, see ``record_input``) is compared when there is
    one."""
    recorded = model_image_space(source)
    if not recorded or 'image_space' not in recorded:
        return
    difference = data.space.disagreement(recorded)
    if difference is not None:
        ours = data.space.name
        dataset = data.source.get('dataset') or data.source.get('source_dataset') or '<data>'
        flag = f' --image-space {ours}' if ours in ('zca', 'normalized') else ''
        raise ValueError(f'the {what} {source} was trained in another image space than the training set: '
                         f'{difference}; train one in that space (`timm-dd-train --dataset {dataset} --real-ipc -1'
                         f'{flag} ...`)')


def result_record(model: str, seed: int, result: RunResult) -> Dict[str, Any]:
    """The ``result.json`` record of a finished run."""
    return dict(model=model, seed=seed, final_acc=result.final_acc, best_acc=result.best_acc,
                best_epoch=result.best_epoch, test_count=result.num_test_evaluated,
                train_seconds=result.train_seconds, images_per_second=result.images_per_second,
                train_acc=result.train_acc)

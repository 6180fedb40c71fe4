"""Cross-architecture experiments: data preparation, teachers, several networks x seeds, one results table.

``train.py`` is a thin command line over :func:`prepare_data` and :func:`run_experiment`.
"""
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import load_dataset, select_ipc
from ..distilled import DistilledSet
from ..io import atomic_write, atomic_write_json
from ..layers import keep_rate_units
from ..models import is_timm_dd_model
from .config import TrainConfig, load_config
from .elf import elf_split
from .report import format_table  # the one table renderer (also for merged results)
from .trainer import RunResult, TrainSet, train_model

__all__ = ['DataBundle', 'prepare_data', 'create_student', 'run_experiment', 'ExperimentResult', 'format_table']

_logger = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """A training set and the test set, both in the space the networks see (normalized or ZCA)."""
    train: TrainSet
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    description: str
    source: Dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return self.train.images.shape[1]

    @property
    def img_size(self) -> int:
        return self.train.images.shape[-1]


def _to_space(pixels: torch.Tensor, dset: DistilledSet) -> torch.Tensor:
    """Map [0, 1] test pixels into the distilled set's image space."""
    x = pixels
    if dset.normalization:
        mean = torch.tensor(dset.normalization['mean']).view(1, -1, 1, 1)
        std = torch.tensor(dset.normalization['std']).view(1, -1, 1, 1)
        x = (x - mean) / std
    if dset.image_space == 'zca':
        x = dset.zca.transform(x)
    return x


def prepare_data(
        data: Optional[str] = None,
        real_ipc: Optional[int] = None,
        dataset: Optional[str] = None,
        data_root: Optional[str] = None,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        image_size: Optional[int] = None,
        soft_label_temperature: Optional[float] = None,
        layout: Optional[str] = None,
        image_space: Optional[str] = None,
        zca_eps: float = 0.1,
) -> DataBundle:
    """Load a distilled set (folder or Hub id) or draw ``real_ipc`` real images per class from ``dataset``
    (``real_ipc=-1``: all of them).

    The test set is ``dataset`` (or the distilled set's ``source_dataset``), mapped into the training set's
    image space and size. Class names of the two must agree. ``image_size`` resizes a real dataset.

    A set made by another tool (a folder of ``images_best.pt`` / ``images.pt`` ... files, see
    :func:`timm_dd.import_distilled`) is imported on the fly: ``layout`` (detected from the files when not given),
    ``image_space`` and ``dataset`` state what the files cannot. Soft labels become probabilities here, once:
    logits through ``softmax(y / t)`` with ``soft_label_temperature`` (or the set's own temperature; neither is an
    error), probabilities as they are (checked to sum to 1). Real data is used in ``image_space`` 'normalized'
    (default) or 'zca' (ZCA of [0, 1] pixels with ``zca_eps``, fitted on the train split: the space of MTT's --zca
    sets, e.g. for an ELF feature model that must live in the set's space).
    """
    if (data is None) == (real_ipc is None):
        raise ValueError('give either a distilled set (data) or real_ipc, not both and not neither')
    if data is not None:
        dset = _load_set(data, layout, dataset, image_space, soft_label_temperature)
        source, test = _test_split(dset, data, dataset, data_root, cache_dir)
        _check_classes(dset.class_names, test.class_names, dset.num_classes, test.num_classes, data, source)
        labels = _soft_label_probs(dset, soft_label_temperature) if dset.soft_labels is not None else dset.labels
        learned_lr = float(dset.lr) if dset.lr is not None else None
        train = TrainSet(dset.images.float(), labels, dset.num_classes, list(dset.class_names or []), learned_lr)
        return DataBundle(train, _to_space(test.images, dset), test.labels, list(test.class_names),
                          f'{dset.method} {dset.source_dataset} ipc {dset.ipc} ({data})',
                          dict(kind='distilled', path=str(data), method=dset.method, ipc=dset.ipc,
                               image_space=dset.image_space, source_dataset=dset.source_dataset,
                               **_normalization(dset.normalization)))
    if dataset is None:
        raise ValueError('real_ipc needs a dataset (e.g. digits, cifar10, or a folder/zip)')
    train_full = load_dataset(dataset, 'train', root=data_root, cache_dir=cache_dir, image_size=image_size)
    test = load_dataset(dataset, 'test', root=data_root, cache_dir=cache_dir, image_size=image_size)
    _check_classes(train_full.class_names, test.class_names, train_full.num_classes, test.num_classes, dataset, dataset)
    if real_ipc < 0:  # the whole training set (e.g. for the ELF feature model)
        sub = train_full
    else:
        idx = select_ipc(train_full.labels, real_ipc, generator=torch.Generator().manual_seed(seed),
                         num_classes=train_full.num_classes)
        sub = train_full.subset(idx)
    space = image_space or 'normalized'
    if space == 'zca':  # MTT's --zca space: ZCA (eps zca_eps) of [0, 1] pixels, fitted on the whole train split
        from ..data.zca import ZCA
        zca = ZCA.fit(train_full.images, eps=zca_eps)
        train_x, test_x = zca.transform(sub.images), zca.transform(test.images)
    elif space == 'normalized':
        train_x, test_x = sub.normalized(), test.normalized()
    else:
        raise ValueError(f"real data can be used in 'normalized' or 'zca' space, got image_space={space!r}")
    train = TrainSet(train_x, sub.labels, sub.num_classes, list(sub.class_names))
    return DataBundle(train, test_x, test.labels, list(test.class_names),
                      f'{real_ipc} real images per class of {dataset} (seed {seed}, {space} space)',
                      dict(kind='real', dataset=dataset, ipc=real_ipc, seed=seed, image_space=space,
                           mean=list(train_full.mean), std=list(train_full.std),
                           **({'zca_eps': zca_eps} if space == 'zca' else {})))


def _test_split(dset: DistilledSet, data: str, dataset: Optional[str], data_root: Optional[str],
                cache_dir: Optional[str]) -> Tuple[str, Any]:
    """``(source, test split)`` of the set's real dataset: ``dataset`` / ``data_root`` when given, else where the
    distillation read it (``extra['real_data']``), else ``source_dataset``; a miss names the flags to pass."""
    size = dset.image_size[-1]
    recorded = dset.extra.get('real_data') if isinstance(dset.extra, dict) else None
    gone = ''
    if dataset is None and data_root is None and isinstance(recorded, dict) and recorded.get('dataset'):
        try:
            return recorded['dataset'], load_dataset(recorded['dataset'], 'test', root=recorded.get('root'),
                                                     cache_dir=cache_dir, image_size=size)
        except FileNotFoundError:
            gone = f" (it was distilled from {recorded.get('root') or recorded['dataset']}, which no longer holds it)"
            _logger.warning('the real data of %s is gone%s; trying %r', data, gone, dset.source_dataset)
    source = dataset or dset.source_dataset
    try:
        return source, load_dataset(source, 'test', root=data_root, cache_dir=cache_dir, image_size=size)
    except FileNotFoundError as e:
        if dataset is not None:
            raise
        raise FileNotFoundError(
            f'the test split of {source!r}, the dataset the set {data} was distilled from, was not found{gone}: '
            f'pass --dataset NAME|DIR|ZIP (the real dataset it came from) or --data-root DIR. {e}') from None


def _load_set(data: str, layout: Optional[str], dataset: Optional[str], image_space: Optional[str],
              soft_label_temperature: Optional[float]) -> DistilledSet:
    from ..distilled.interchange import detect_layout
    from ..hub import import_distilled, load_distilled
    layout = layout or detect_layout(data)
    if layout == 'timm_dd':
        return load_distilled(data)
    return import_distilled(data, layout, dataset=dataset, image_space=image_space,
                            soft_label_temperature=soft_label_temperature)


def _soft_label_probs(dset: DistilledSet, temperature: Optional[float]) -> torch.Tensor:
    """The set's soft labels as probabilities: ``softmax(y / t)`` for logits, checked as they are for probs."""
    y = dset.soft_labels.float()
    if dset.soft_label_kind == 'probs':
        sums = y.sum(1)
        if (y < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError(f'the soft labels are declared probabilities but their rows sum to '
                             f'[{sums.min():.4f}, {sums.max():.4f}] (or are negative); are they logits?')
        return y
    t = temperature if temperature is not None else dset.soft_label_temperature
    if t is None:
        raise ValueError('the distilled set has soft labels as logits and no temperature: pass '
                         '--soft-label-temperature (the recipe field soft_label_temperature; FRePo/DP+KD use 0.3)')
    if not t > 0:
        raise ValueError(f'soft_label_temperature must be positive, got {t}')
    return torch.softmax(y / t, dim=1)


def _normalization(norm: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {'mean': list(norm['mean']), 'std': list(norm['std'])} if norm else {}


def _check_classes(train_names, test_names, train_k: int, test_k: int, train_src: str, test_src: str) -> None:
    if train_k != test_k:
        raise ValueError(f'the training set ({train_src}) has {train_k} classes but the test set ({test_src}) has '
                         f'{test_k}; evaluate on the dataset the set was distilled from')
    if train_names and test_names and list(train_names) != list(test_names):
        raise ValueError(f'the classes of the training set ({train_src}) {list(train_names)} differ from the test '
                         f'set ({test_src}) classes {list(test_names)}')


def create_student(name: str, bundle: DataBundle, cfg: TrainConfig, **model_kwargs: Any) -> nn.Module:
    """Create a timm_dd or stock timm model for the bundle's classes, channels and image size."""
    kwargs = dict(num_classes=bundle.train.num_classes, in_chans=bundle.in_chans, **model_kwargs)
    if is_timm_dd_model(name):
        kwargs.setdefault('img_size', bundle.img_size)
        if cfg.student_norm is not None:
            kwargs.setdefault('norm', cfg.student_norm)
    elif cfg.student_norm is not None:
        _logger.warning('student_norm=%s applies to timm_dd models; %s keeps its own norm', cfg.student_norm, name)
    elif cfg.drop_path:
        # stock timm models only hold DropPath modules when built with a rate > 0; the schedule then drives them
        kwargs.setdefault('drop_path_rate', 0.1)
    try:
        model = timm.create_model(name, **kwargs)
    except ValueError as e:
        raise ValueError(f'cannot create {name} for {bundle.in_chans}x{bundle.img_size}x{bundle.img_size} images '
                         f'and {bundle.train.num_classes} classes: {e}') from e
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f'unknown model {name!r}; see timm.list_models() (timm_dd adds *_dd, *_mtt, convnet*)') from e
        raise
    if cfg.drop_path and not keep_rate_units(model):
        _logger.warning('%s has no droppable units; the keep-rate schedule does nothing for it', name)
    return model


@dataclass
class ExperimentResult:
    runs: List[Dict[str, Any]]
    teacher_runs: List[Dict[str, Any]]
    table: List[Dict[str, Any]]
    config: Dict[str, Any]
    data: Dict[str, Any]


def _test_loader(bundle: DataBundle, cfg: TrainConfig, accelerator: Accelerator, distributed: bool) -> DataLoader:
    """Sharded over the processes for DDP runs; whole (and unprepared) when each process trains runs alone."""
    ds = TensorDataset(bundle.test_images, bundle.test_labels)
    loader = DataLoader(ds, batch_size=cfg.test_batch_size, shuffle=False,
                        pin_memory=accelerator.device.type == 'cuda')
    return accelerator.prepare(loader) if distributed else loader


def _result_record(model: str, seed: int, result: RunResult) -> Dict[str, Any]:
    return dict(model=model, seed=seed, final_acc=result.final_acc, best_acc=result.best_acc,
                best_epoch=result.best_epoch, test_count=result.num_test_evaluated,
                train_seconds=result.train_seconds, images_per_second=result.images_per_second)


def _train_or_load_teacher(cfg: TrainConfig, bundle: DataBundle, seed: int, accelerator: Accelerator,
                           test_loader: DataLoader, out_dir: Path, resume: bool,
                           distributed: bool) -> Tuple[nn.Module, Dict[str, Any]]:
    from ..hub import load_teacher
    from .trainer import evaluate
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher)
        if teacher.num_classes != bundle.train.num_classes:
            raise ValueError(f'the teacher {cfg.teacher} has {teacher.num_classes} classes but the training set has '
                             f'{bundle.train.num_classes}')
        _check_teacher_input(teacher, cfg.teacher, bundle)
        _check_same_space(cfg.teacher, 'teacher', bundle)
        acc = evaluate(teacher.to(accelerator.device), test_loader, accelerator, distributed)
        return teacher, dict(model=cfg.teacher, seed=seed, final_acc=acc['acc'], best_acc=acc['acc'], loaded=True)
    overrides = {'seed': seed, 'eval_every': 0}
    if cfg.teacher_epochs is not None:
        overrides['epochs'] = cfg.teacher_epochs
    teacher_cfg = load_config(cfg.teacher_recipe, overrides)
    set_seed(seed)
    teacher = create_student(cfg.teacher_model, bundle, teacher_cfg.replace(student_norm=cfg.teacher_norm))
    run_dir = out_dir / 'teachers' / f'seed{seed}'
    record = _load_done(run_dir)
    if record is not None and resume:
        teacher.load_state_dict(_load_weights(run_dir / 'model'))
        return teacher, record
    result = train_model(teacher, bundle.train, test_loader, teacher_cfg, accelerator, cfg.teacher_model,
                         out_dir=run_dir, resume=resume, desc=f'teacher {cfg.teacher_model} seed {seed}',
                         distributed=distributed)
    record = _result_record(cfg.teacher_model, seed, result)
    if accelerator.is_main_process or not distributed:
        _save_model(teacher, run_dir / 'model', bundle, None)
        _save_done(run_dir, record)
    if distributed:
        accelerator.wait_for_everyone()
    return teacher, record


def _check_teacher_input(teacher: nn.Module, name: str, bundle: DataBundle) -> None:
    """A loaded teacher must take the training images; say which teacher and which images when it does not."""
    x = bundle.train.images[:1]
    try:
        with torch.no_grad():
            teacher.eval()(x)
    except RuntimeError as e:
        shape = 'x'.join(str(d) for d in x.shape[1:])
        raise ValueError(f'the teacher {name} cannot take the training images ({shape}, channels x height x width): '
                         f'{str(e).splitlines()[0]}; use a teacher made for this data') from None


def _save_model(model: nn.Module, folder: Path, bundle: DataBundle, model_kwargs: Optional[Dict[str, Any]]) -> None:
    from ..hub import record_input, save_teacher
    src = bundle.source
    record_input(model, src.get('mean'), src.get('std'),
                 {k: src[k] for k in ('image_space', 'dataset', 'source_dataset', 'zca_eps') if k in src})
    args = dict(num_classes=bundle.train.num_classes, in_chans=bundle.in_chans, **(model_kwargs or {}))
    if is_timm_dd_model(model.pretrained_cfg.get('architecture', '')):
        args.setdefault('img_size', bundle.img_size)
    save_teacher(model, folder, class_names=bundle.class_names, model_args=args)


def _load_weights(folder: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / 'model.safetensors'))


def _load_done(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = run_dir / 'result.json'
    return json.loads(path.read_text()) if path.is_file() else None


def _save_done(run_dir: Path, record: Dict[str, Any]) -> None:
    atomic_write_json(run_dir / 'result.json', record, indent=2)


def _elf_targets(cfg: TrainConfig, student: nn.Module, bundle: DataBundle, device: torch.device) -> torch.Tensor:
    from ..hub import load_teacher
    if not cfg.elf_feature_model:
        raise ValueError('ELF needs a feature model trained on real data (elf_feature_model); make one with '
                         '`python train.py --dataset <data> --real-ipc -1 --model convnet3 --model-kwargs width=512 '
                         '--config baseline --save-model <dir>` and pass --elf-feature-model <dir>')
    source = cfg.elf_feature_model
    snapshot = Path(source) / f'model-epoch{cfg.elf_feature_epoch}'
    if Path(source).is_dir() and not (Path(source) / 'config.json').is_file() and snapshot.is_dir():
        source = str(snapshot)  # a run folder: the ELF code's feature model is the one after epoch 100
    _check_same_space(source, 'ELF feature model', bundle)
    phi = load_teacher(source).to(device).eval()
    split = elf_split(student)
    with torch.no_grad():
        feats = torch.cat([phi.forward_features(chunk.to(device)) for chunk in bundle.train.images.split(256)])
    if tuple(feats.shape[1:]) != tuple(split.feature_shape):
        raise ValueError(f'the ELF feature model outputs {tuple(feats.shape[1:])} but the student\'s split expects '
                         f'{split.feature_shape}; use a ConvNet of width {split.feature_shape[0]}')
    return feats.cpu()


def _check_same_space(source: str, what: str, bundle: DataBundle) -> None:
    """A model that reads the training images (ELF's feature model, a loaded teacher) must have been trained in their
    image space: its recorded space (config.json ``image_space``, see ``record_input``) is compared when there is
    one."""
    from ..hub import model_image_space
    recorded = model_image_space(source)
    if not recorded or 'image_space' not in recorded:
        return
    ours = bundle.source.get('image_space')
    if recorded['image_space'] != ours:
        data = bundle.source.get('dataset') or bundle.source.get('source_dataset') or '<data>'
        flag = f' --image-space {ours}' if ours in ('zca', 'normalized') else ''
        raise ValueError(f'the {what} {source} was trained in {recorded["image_space"]} space, the training set is in '
                         f'{ours} space: train one in that space (`train.py --dataset {data} --real-ipc -1{flag} ...`)')


RUN_CONFIG_FILE = 'run_config.json'
#: recipe fields that may change when a run is resumed (bookkeeping only: they do not change the trained networks)
RESUME_SAFE_FIELDS = ('checkpoint_every', 'test_batch_size', 'parallel')


def _config_differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = '') -> List[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_SAFE_FIELDS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f'{prefix}{key}.')
        elif a != b:
            out.append(f'{prefix}{key}: {a!r} -> {b!r}')
    return out


def check_resume(out_dir: Path, record: Dict[str, Any], resume: bool, force: bool = False) -> None:
    """``--resume`` into a folder made with another recipe, data or model kwargs is an error naming the fields
    (``force=True`` continues on purpose, with a warning)."""
    path = Path(out_dir) / RUN_CONFIG_FILE
    if not (resume and path.is_file()):
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'{path}: unreadable run record ({e}); resume into a new --output') from e
    diffs = _config_differences(saved, json.loads(json.dumps(record)))
    if diffs and not force:
        raise ValueError(f'--resume: {out_dir} holds a run made with other settings ({"; ".join(diffs)}); use another '
                         f'--output, or --force-resume to continue it with the new settings on purpose')
    if diffs:
        _logger.warning('resuming %s with changed settings: %s', out_dir, '; '.join(diffs))


def run_experiment(
        cfg: TrainConfig,
        models: Sequence[str],
        seeds: Sequence[int],
        bundle: DataBundle,
        out_dir: Path,
        accelerator: Accelerator,
        model_kwargs: Optional[Dict[str, Any]] = None,
        resume: bool = False,
        save_models: bool = False,
        force_resume: bool = False,
) -> ExperimentResult:
    """Train every model with every seed; write ``results.json``, ``results.md`` and per-run logs to ``out_dir``.

    ``save_models`` also writes each trained network to ``runs/<model>/seed<k>/model`` in timm's local-dir layout
    (loadable with ``timm.create_model('local-dir:<folder>', pretrained=True)`` or ``timm_dd.hub.load_teacher``).
    """
    out_dir = Path(out_dir)
    run_record = {'config': cfg.to_dict(), 'data': dict(bundle.source), 'model_kwargs': dict(model_kwargs or {})}
    check_resume(out_dir, run_record, resume, force_resume)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / RUN_CONFIG_FILE, run_record, indent=2)
    distributed = cfg.parallel == 'ddp' and accelerator.num_processes > 1
    rank, world = accelerator.process_index, accelerator.num_processes

    def owned(job: int) -> bool:  # 'runs': job j goes to process j % K; 'ddp': every process takes part in every run
        return distributed or job % world == rank

    test_loader = _test_loader(bundle, cfg, accelerator, distributed)
    teacher_runs: List[Tuple[int, Dict[str, Any]]] = []
    teachers: Dict[int, nn.Module] = {}
    if cfg.kd:
        teacher_seeds = seeds[:1] if cfg.teacher else seeds  # one loaded teacher serves every seed
        for job, seed in enumerate(teacher_seeds):
            if owned(job) or cfg.teacher:
                teacher, record = _train_or_load_teacher(cfg, bundle, seed, accelerator, test_loader, out_dir, resume,
                                                         distributed)
                teachers[seed] = teacher
                if owned(job):
                    teacher_runs.append((job, record))
        if not distributed and world > 1 and not cfg.teacher:
            accelerator.wait_for_everyone()  # every teacher is on disk: load the ones other processes trained
            for seed in teacher_seeds:
                if seed not in teachers:
                    teachers[seed] = _train_or_load_teacher(cfg, bundle, seed, accelerator, test_loader, out_dir,
                                                            True, distributed)[0]
        if cfg.teacher:
            teachers = {s: teachers[teacher_seeds[0]] for s in seeds}
    runs: List[Tuple[int, Dict[str, Any]]] = []
    if cfg.parallel == 'vmap':
        for job, name in enumerate(models):
            if job % world == rank:
                runs += _train_seeds_batched(cfg, name, seeds, bundle, out_dir, accelerator, test_loader, model_kwargs,
                                             resume, save_models, first_job=job * len(seeds))
    for job, (name, seed) in enumerate((name, seed) for name in models for seed in seeds):
        if cfg.parallel == 'vmap':
            break
        if not owned(job):
            continue
        run_dir = out_dir / 'runs' / name / f'seed{seed}'
        done = _load_done(run_dir) if resume else None
        if done is not None:
            runs.append((job, done))
            continue
        set_seed(seed)
        student = create_student(name, bundle, cfg, **(model_kwargs or {}))
        feats = _elf_targets(cfg, student, bundle, accelerator.device) if cfg.elf else None
        snapshot = (lambda done, m=student, d=run_dir: _save_model(m, d / f'model-epoch{done}', bundle, model_kwargs))
        result = train_model(student, bundle.train, test_loader, cfg.replace(seed=seed), accelerator, name,
                             teacher=teachers.get(seed), elf_features=feats, out_dir=run_dir, resume=resume,
                             desc=f'{name} seed {seed}', distributed=distributed, snapshot=snapshot)
        record = dict(_result_record(name, seed, result), process=rank)
        runs.append((job, record))
        if accelerator.is_main_process or not distributed:
            if save_models:
                _save_model(student, run_dir / 'model', bundle, model_kwargs)
            _save_done(run_dir, record)
    runs, teacher_runs = _merge_jobs(runs, accelerator, distributed), _merge_jobs(teacher_runs, accelerator, distributed)
    table = summarize(runs, teacher_runs)
    result = ExperimentResult(runs, teacher_runs, table, cfg.to_dict(), dict(bundle.source, description=bundle.description))
    if accelerator.is_main_process:
        write_results(result, out_dir)
    accelerator.wait_for_everyone()
    return result


def _train_seeds_batched(cfg: TrainConfig, name: str, seeds: Sequence[int], bundle: DataBundle, out_dir: Path,
                         accelerator: Accelerator, test_loader: DataLoader, model_kwargs: Optional[Dict[str, Any]],
                         resume: bool, save_models: bool, first_job: int) -> List[Tuple[int, Dict[str, Any]]]:
    """Every seed of ``name`` at once (``parallel: vmap``); finished runs are kept on ``resume``."""
    from .batched import train_seeds_batched
    run_dirs = [out_dir / 'runs' / name / f'seed{seed}' for seed in seeds]
    done = [_load_done(d) if resume else None for d in run_dirs]
    if all(d is not None for d in done):
        return [(first_job + i, d) for i, d in enumerate(done)]
    students = []
    for seed in seeds:
        set_seed(seed)
        students.append(create_student(name, bundle, cfg, **(model_kwargs or {})))
    results = train_seeds_batched(students, seeds, bundle.train, test_loader, cfg, accelerator,
                                  desc=f'{name} seeds {list(seeds)} (vmap)')
    records = []
    for i, (seed, student, result, run_dir) in enumerate(zip(seeds, students, results, run_dirs)):
        record = dict(_result_record(name, seed, result), process=accelerator.process_index)
        if save_models:
            _save_model(student, run_dir / 'model', bundle, model_kwargs)
        _save_done(run_dir, record)
        records.append((first_job + i, record))
    return records


def _merge_jobs(jobs: List[Tuple[int, Dict[str, Any]]], accelerator: Accelerator,
                distributed: bool) -> List[Dict[str, Any]]:
    """Every process's records, in job order: the same list on every process as in a one-process run."""
    if not distributed and accelerator.num_processes > 1:
        jobs = gather_object(jobs)
    return [record for _, record in sorted(jobs, key=lambda job: job[0])]


def _mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: List[Dict[str, Any]], teacher_runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per network: mean +- std of the final accuracy, the mean best-over-evaluations, gap to the teacher."""
    teacher_mean = _mean_std([r['final_acc'] for r in teacher_runs])[0] if teacher_runs else None
    table = []
    for name in dict.fromkeys(r['model'] for r in runs):
        rs = [r for r in runs if r['model'] == name]
        final_mean, final_std = _mean_std([r['final_acc'] for r in rs])
        best_mean, best_std = _mean_std([r['best_acc'] for r in rs])
        ips = [r['images_per_second'] for r in rs if r.get('images_per_second') and math.isfinite(r['images_per_second'])]
        table.append(dict(
            model=name, runs=len(rs), final_mean=final_mean, final_std=final_std, best_mean=best_mean,
            best_std=best_std, gap_to_teacher=(final_mean - teacher_mean) if teacher_mean is not None else None,
            images_per_second=statistics.fmean(ips) if ips else None))
    return table


def write_results(result: ExperimentResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (('results.json', json.dumps(asdict(result), indent=2)), ('results.md', format_table(result))):
        with atomic_write(out_dir / name, 'w') as f:
            f.write(text)

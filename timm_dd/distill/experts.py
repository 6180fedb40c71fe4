"""Expert trajectories for trajectory matching (MTT/ATT ``buffer.py``).

One safetensors file per expert, ``expert_00000.safetensors``: tensor ``epoch_0000`` is the flat parameter vector at
initialization and ``epoch_{k:04d}`` the one after ``k`` epochs (flat order = ``named_parameters()`` order). The header
metadata key ``timm_dd_expert`` holds JSON with the architecture and its creation kwargs, the parameter names and
shapes, dataset, zca flag, seed, epochs and training recipe. :class:`ExpertTrajectory` reads one epoch at a time
with ``safe_open(...).get_tensor`` so a distillation iteration touches only the two epochs it needs.

Files are written to a temporary sibling and renamed into place, so a file that exists is complete; a rerun of
:func:`train_experts` skips finished experts. With several processes expert ``i`` is trained by process
``i % num_processes``.
"""
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..augment import DEFAULT_STRATEGY, DSA
from ..data import ImageSet, as_image_set
from ..fields import field_changes
from ..io import atomic_write_with, folder_lock_holder, make_folder, tensor_checksum
from ..models import create_network
from ..seeding import Stream, generator_for, seeded
from ..train.loop import CallbackHook, check_finite, epoch_batches, eval_batch_size, evaluate, fit, run_batches
from ..train.task import optimizer_for

__all__ = [
    'ExpertConfig', 'ExpertFileError', 'ExpertTrajectory', 'ExpertPool', 'train_experts', 'train_expert',
    'save_trajectory', 'flat_params', 'param_spec', 'create_arch', 'expert_filename', 'EXPERT_META_KEY',
    'MATCH_FIELDS',
]

_logger = logging.getLogger(__name__)

EXPERT_META_KEY = 'timm_dd_expert'
EXPERT_FORMAT = 'timm_dd.expert'
EXPERT_FORMAT_VERSION = 1


class ExpertFileError(ValueError):
    """A missing, truncated, corrupt or inconsistent expert trajectory file."""


def expert_filename(index: int) -> str:
    return f'expert_{index:05d}.safetensors'


_EXPERT_NAME = re.compile(r'expert_(\d+)\.safetensors')


def _epoch_key(epoch: int) -> str:
    return f'epoch_{epoch:04d}'


def create_arch(arch: str, model_kwargs: Dict[str, Any]) -> nn.Module:
    """The network of an expert recipe (:func:`timm_dd.models.create_network`, the one model factory)."""
    return create_network(arch, **model_kwargs)


def param_spec(model: nn.Module) -> List[Tuple[str, List[int]]]:
    """``(name, shape)`` of every parameter in ``named_parameters()`` order (the flat order)."""
    return [(n, list(p.shape)) for n, p in model.named_parameters()]


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters concatenated in ``named_parameters()`` order (a detached fp32 CPU copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float().cpu()


@dataclass
class ExpertConfig:
    """Expert training recipe; defaults are MTT's ``buffer.py`` (ATT uses ``batch_size=512``)."""
    arch: str = 'convnet3'
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    seed: int = 0
    dataset: str = 'unknown'
    zca: bool = False
    dataset_checksum: str = ''  # tensor_checksum of the training images in the distillation space

    def differences(self, other: Dict[str, Any], ignore: Sequence[str] = ()) -> List[str]:
        """``'field: ours vs theirs'`` for every recipe field that differs from ``other`` (an expert's metadata);
        fields the file does not record are not compared."""
        ours = json.loads(json.dumps(asdict(self)))  # as recorded in the file's JSON metadata (tuples -> lists)
        theirs = {k: v for k, v in other.items() if k in ours}
        return [f'{name}: {a!r} (experts) vs {b!r} (asked for)' for name, a, b in field_changes(theirs, ours, ignore)]


#: recipe fields that differ between the experts of one buffer (each expert has its own index and seed stream)
PER_EXPERT_FIELDS = ('num_experts',)
#: recipe fields a distillation needs to match: they define the parameter vector and the image space
MATCH_FIELDS = ('arch', 'model_kwargs', 'zca', 'dataset', 'dataset_checksum')


def save_trajectory(path: Union[str, os.PathLike], trajectory: Sequence[torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write one expert (flat vectors, epoch 0 first) atomically to ``path``."""
    path = Path(path)
    tensors = {_epoch_key(k): t.detach().float().cpu().contiguous() for k, t in enumerate(trajectory)}
    meta = dict(meta, format=EXPERT_FORMAT, format_version=EXPERT_FORMAT_VERSION, num_checkpoints=len(trajectory),
                checksums=[tensor_checksum(t) for t in tensors.values()])
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata={EXPERT_META_KEY: json.dumps(meta)}))


class ExpertTrajectory:
    """Read access to one expert file; epochs are read on demand (``get(epoch)``).

    Raises:
        ExpertFileError: the file is missing, not a readable safetensors file (truncated or corrupt), lacks the
            metadata or an epoch tensor, or an epoch tensor has the wrong size.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        if not self.path.is_file():
            raise ExpertFileError(f'{self.path}: expert file not found')
        try:
            with safe_open(str(self.path), framework='pt') as f:
                header = f.metadata() or {}
                keys = set(f.keys())
        except Exception as e:  # SafetensorError, OSError, ... for damaged files
            raise ExpertFileError(f'{self.path}: cannot read expert file (truncated or corrupt?): {e}') from e
        try:
            self.meta: Dict[str, Any] = json.loads(header[EXPERT_META_KEY])
        except (KeyError, json.JSONDecodeError) as e:
            raise ExpertFileError(f'{self.path}: missing or unreadable {EXPERT_META_KEY!r} metadata') from e
        if self.meta.get('format') != EXPERT_FORMAT:
            raise ExpertFileError(f'{self.path}: format {self.meta.get("format")!r}, expected {EXPERT_FORMAT!r}')
        self.num_checkpoints = int(self.meta['num_checkpoints'])
        missing = [_epoch_key(k) for k in range(self.num_checkpoints) if _epoch_key(k) not in keys]
        if missing:
            raise ExpertFileError(f'{self.path}: missing epoch tensors {missing[:5]}')
        self.num_params = sum(math.prod(s) for _, s in self.meta['params'])

    @property
    def num_epochs(self) -> int:
        """Training epochs recorded (``num_checkpoints - 1``)."""
        return self.num_checkpoints - 1

    def get(self, epoch: int) -> torch.Tensor:
        """Flat parameters after ``epoch`` epochs (0 = initialization), read from disk by key."""
        if not 0 <= epoch < self.num_checkpoints:
            raise ExpertFileError(f'{self.path}: epoch {epoch} out of range [0, {self.num_epochs}]')
        try:
            with safe_open(str(self.path), framework='pt') as f:
                t = f.get_tensor(_epoch_key(epoch))
        except Exception as e:
            raise ExpertFileError(f'{self.path}: cannot read {_epoch_key(epoch)} (truncated or corrupt?): {e}') from e
        if t.dim() != 1 or t.numel() != self.num_params:
            raise ExpertFileError(f'{self.path}: {_epoch_key(epoch)} has shape {tuple(t.shape)}, '
                                  f'expected [{self.num_params}]')
        checksums = self.meta.get('checksums')
        if checksums is not None and tensor_checksum(t) != checksums[epoch]:
            raise ExpertFileError(f'{self.path}: {_epoch_key(epoch)} does not match its checksum (the file was '
                                  f'modified or damaged); delete it and train or pull the expert again')
        if not bool(torch.isfinite(t).all()):
            raise ExpertFileError(f'{self.path}: {_epoch_key(epoch)} contains NaN/Inf (the expert diverged while it '
                                  f'was trained); delete it and train it again with a lower expert_lr')
        return t

    def __repr__(self) -> str:
        return f'ExpertTrajectory({str(self.path)!r}, arch={self.meta.get("arch")!r}, epochs={self.num_epochs})'


class ExpertPool:
    """The expert files of a buffer folder, validated against what a distillation run needs.

    Args:
        folder: Buffer folder holding ``expert_*.safetensors``.
        min_epochs: Epochs every expert must have (``max_start_epoch - 1 + expert_epochs``).
        arch: Expected architecture (checked when given).
        zca: Expected ZCA flag (checked when given; ZCA and non-ZCA buffers are not interchangeable).
        max_experts: Use only the first ``max_experts`` files.
        expected: The recipe the run asks for: its :data:`MATCH_FIELDS` (architecture and its kwargs, ZCA, dataset
            and its checksum) must equal every expert's (an error lists the differences); other differing fields
            (lr, epochs, ...) are logged as warnings. Fields an expert file does not record are not compared.
    """

    def __init__(self, folder: Union[str, os.PathLike], min_epochs: int = 0, arch: Optional[str] = None,
                 zca: Optional[bool] = None, max_experts: Optional[int] = None,
                 expected: Optional[ExpertConfig] = None):
        self.folder = Path(folder)
        paths = self.check_folder(self.folder, max_experts)
        if max_experts:
            paths = paths[:max_experts]
        self.experts = [ExpertTrajectory(p) for p in paths]
        #: how many experts the buffer's recipe asked for, when fewer are there (a buffer whose training was stopped)
        self.planned: Optional[int] = None
        planned = self.experts[0].meta.get('num_experts')
        if not max_experts and isinstance(planned, int) and planned > len(self.experts):
            self.planned = planned
            _logger.warning('%s holds %d of the %d experts its recipe asked for (its training was stopped): the run '
                            'uses the %d there are (the set records it); `timm-dd-distill experts` into the same '
                            'folder trains the rest', self.folder, len(self.experts), planned, len(self.experts))
        for e in self.experts:
            if e.num_epochs < min_epochs:
                raise ExpertFileError(f'{e.path}: has {e.num_epochs} epochs, the run needs at least {min_epochs} '
                                      f'(max_start_epoch - 1 + expert_epochs)')
            if arch is not None and e.meta.get('arch') != arch:
                raise ExpertFileError(f'{e.path}: architecture {e.meta.get("arch")!r}, expected {arch!r}')
            if zca is not None and bool(e.meta.get('zca')) != bool(zca):
                raise ExpertFileError(f'{e.path}: zca={e.meta.get("zca")}, the run uses zca={zca}')
        if expected is not None:
            self._check_recipe(expected)

    @classmethod
    def check_folder(cls, folder: Union[str, os.PathLike, None], max_experts: Optional[int] = None) -> List[Path]:
        """The expert files of ``folder``, after the checks that need no data (so a command fails before it
        spends a minute loading CIFAR-10): the folder exists and holds finished experts, numbered without gaps,
        that no running job is still writing."""
        if folder is None:
            raise ExpertFileError('trajectory matching needs an expert buffer: pass --experts FOLDER (train one with '
                                  '`timm-dd-distill experts`)')
        folder = Path(folder)
        if not folder.is_dir():
            raise ExpertFileError(f'{folder}: no such expert folder (train experts into it with `timm-dd-distill '
                                  f'experts --output {folder}` or pull them from the Hub)')
        paths = sorted(folder.glob('expert_*.safetensors'))
        if not paths:
            raise ExpertFileError(f'{folder}: no expert_*.safetensors files (train them with `timm-dd-distill '
                                  f'experts` (`distill.py experts` in a checkout) or pull them from the Hub)')
        cls._check_finished(folder, paths, max_experts)
        return paths

    @staticmethod
    def _check_finished(folder: Path, paths: List[Path], max_experts: Optional[int]) -> None:
        """Refuse a buffer another run is still writing, or one with a gap in its numbering (an expert deleted
        and not trained again), unless the ``max_experts`` first experts are all there."""
        present = {int(m.group(1)) for p in paths if (m := _EXPERT_NAME.fullmatch(p.name))}
        if max_experts and present >= set(range(max_experts)):
            return
        holder = folder_lock_holder(folder)
        if holder is not None:
            raise ExpertFileError(f'{folder} is being written by a running job ({holder}): the buffer is not '
                                  f'finished ({len(present)} experts so far); wait for it, or set max_experts to at '
                                  f'most the number of finished experts numbered from 0')
        missing = sorted(set(range(max(present) + 1)) - present) if present else []
        if missing:
            names = ', '.join(expert_filename(i) for i in missing[:3]) + (' ...' if len(missing) > 3 else '')
            before = f', or --set max_experts={missing[0]} to use the experts before the gap' if missing[0] else ''
            raise ExpertFileError(f'{folder}: {len(missing)} expert file(s) missing from the numbering '
                                  f'({names}): run `timm-dd-distill experts` into the same folder with the same '
                                  f'settings to train them (finished experts are kept){before}')

    def _check_recipe(self, expected: ExpertConfig) -> None:
        meta = self.experts[0].meta
        ignore = PER_EXPERT_FIELDS + ('seed',)
        if not (meta.get('dataset_checksum') and expected.dataset_checksum):
            ignore += ('dataset_checksum',)
        diffs = expected.differences(meta, ignore)
        hard = [d for d in diffs if d.split(':')[0] in MATCH_FIELDS]
        if hard:
            raise ExpertFileError(f'{self.folder}: the experts were made for another network or data than this run '
                                  f'asks for: {"; ".join(hard)}. Train experts for this setting '
                                  f'(`timm-dd-distill experts`) or use the matching preset/--set values')
        soft = [d for d in diffs if d not in hard]
        if soft:
            _logger.warning('%s: the experts were trained with other settings than this preset\'s: %s', self.folder,
                            '; '.join(soft))

    def __len__(self) -> int:
        return len(self.experts)

    def provenance(self) -> Dict[str, Any]:
        """What a distilled set records about the buffer it used: where, how many experts of how many epochs,
        their recipe, and a sha256 over every expert's per-epoch checksums (identifies the exact trajectories)."""
        h = hashlib.sha256()
        for e in self.experts:
            h.update(json.dumps([e.path.name, e.meta.get('checksums')]).encode())
        identified = all(e.meta.get('checksums') for e in self.experts)  # files of older versions have none
        meta = self.experts[0].meta
        return {'path': str(self.folder.resolve()), 'experts': len(self.experts),
                'epochs': min(e.num_epochs for e in self.experts), 'arch': meta.get('arch'), 'lr': meta.get('lr'),
                'batch_size': meta.get('batch_size'), 'dataset': meta.get('dataset'),
                'sha256': h.hexdigest() if identified else None,
                **({'planned': self.planned} if self.planned else {})}

    def __getitem__(self, i: int) -> ExpertTrajectory:
        return self.experts[i]


#: a test split: a set read batch by batch, or ``(images, labels)`` tensors
TestSet = Union[ImageSet, Tuple[torch.Tensor, torch.Tensor]]


def split_accuracy(model: nn.Module, test: TestSet, device: torch.device) -> float:
    """Top-1 accuracy on ``test``, batch by batch (stored pixels converted per batch, no float copy of the split)."""
    test = test if isinstance(test, ImageSet) else as_image_set(*test)
    return evaluate(model, test.loader(eval_batch_size(device)), device)['acc']


def train_expert(
        images: Union[torch.Tensor, ImageSet],
        labels: torch.Tensor,
        cfg: ExpertConfig,
        index: int,
        test: Optional[TestSet] = None,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = False,
        log: Optional[Callable[[Dict[str, float], int], None]] = None,
) -> List[torch.Tensor]:
    """Train expert ``index`` with plain SGD on (already normalized / ZCA'd) ``images`` on ``device`` and return its
    trajectory (CPU vectors). ``images`` may be an :class:`~timm_dd.data.ImageSet` (then ``labels`` are its own):
    a set of stored pixels moves to the device as uint8 and each batch is converted there.

    The init, batch order and DSA draws come from generators seeded by ``(cfg.seed, index)`` (CPU generators: the same
    draws on any device). ``progress`` shows a bar over the epochs with the running loss; ``log(values, epoch)``
    receives the epoch's loss (for experiment trackers). Runs on :func:`timm_dd.train.loop.fit`.
    """
    with seeded(cfg.seed, index, Stream.EXPERT_INIT):  # timm initializes from the global RNG
        model = create_arch(cfg.arch, cfg.model_kwargs).to(device)
    opt = optimizer_for(model, 'momentum', cfg.lr, cfg.momentum, cfg.weight_decay)  # MTT's plain SGD at momentum 0
    dsa = DSA.of(cfg)
    perm_gen = generator_for(cfg.seed, index, Stream.EXPERT_ORDER)
    aug_gen = generator_for(cfg.seed, index, Stream.EXPERT_AUGMENT)
    train = as_image_set(images, labels).to(device)
    n = len(train)
    trajectory = [flat_params(model)]
    model.train()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x = train.batch(idx)
        x = dsa(x, generator=aug_gen) if dsa is not None else x
        return F.cross_entropy(model(x), train.labels[idx])

    def train_epoch(epoch: int) -> Dict[str, Any]:
        batches = epoch_batches(n, cfg.batch_size, perm_gen, device)  # one generator over all epochs, as MTT
        losses = run_batches(batches, loss_of, opt, progress=progress, desc=f'expert {index} epoch {epoch + 1}')
        # weighted by batch size, summed on the device: no synchronization per batch
        loss = float(sum(l * b.numel() for l, b in zip(losses, batches))) / n
        check_finite(loss, f'expert {index}', epoch, f'lower the expert lr: expert_lr={cfg.lr}')
        return {'epoch': epoch, 'loss': loss}

    def after_epoch(epoch: int, record: Dict[str, Any]) -> None:
        trajectory.append(flat_params(model))
        if log is not None:
            log({f'expert_{index:05d}/loss': record['loss']}, epoch)
        msg = f'expert {index} epoch {epoch + 1}/{cfg.epochs} train loss {record["loss"]:.4f}'
        if test is not None and epoch + 1 == cfg.epochs:
            _logger.info(msg + f' test acc {split_accuracy(model, test, device):.4f}')
        else:
            _logger.debug(msg)

    fit(range(cfg.epochs), train_epoch, [CallbackHook(after_epoch)], f'expert {index}', progress,
        lambda record: {'loss': f'{record["loss"]:.4f}'})
    return trajectory


def _refuse_other_experts(folder: Path, cfg: ExpertConfig) -> None:
    """An expert folder holds the experts of one recipe: adding to it with another recipe is an error."""
    for path in sorted(folder.glob('expert_*.safetensors')):
        try:
            meta = ExpertTrajectory(path).meta
        except ExpertFileError:
            continue  # unusable files are retrained
        diffs = cfg.differences(meta, ignore=PER_EXPERT_FIELDS)
        if diffs:
            raise ExpertFileError(f'{folder} holds experts of another recipe ({path.name}: {"; ".join(diffs)}); '
                                  f'choose another output folder, or delete the old experts to replace them')
        return


def train_experts(
        images: Union[torch.Tensor, ImageSet],
        labels: torch.Tensor,
        out_dir: Union[str, os.PathLike],
        cfg: ExpertConfig,
        test: Optional[TestSet] = None,
        process_index: int = 0,
        num_processes: int = 1,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = False,
        log: Optional[Callable[[Dict[str, float], int], None]] = None,
) -> List[Path]:
    """Train the experts this process owns (``i % num_processes == process_index``), skipping finished files.

    Args:
        images: Training images in the distillation space (normalized or ZCA), ``[N, C, H, W]``.
        labels: ``[N]`` int64.
        out_dir: Buffer folder.
        cfg: Recipe, architecture and provenance.
        test: Optional test split (an :class:`ImageSet`, read batch by batch, or ``(images, labels)``) for a final
            accuracy log line per expert.
        process_index: This process's rank (``accelerator.process_index``).
        num_processes: World size (``accelerator.num_processes``).
        device: Device to train on.
        progress: Show progress bars (experts, and epochs of the current one).
        log: Receives each expert's per-epoch loss (experiment trackers).

    Returns:
        Paths of the experts owned by this process (trained now or found finished).
    """
    out_dir = Path(out_dir)
    make_folder(out_dir)
    _refuse_other_experts(out_dir, cfg)
    spec = param_spec(create_arch(cfg.arch, cfg.model_kwargs))
    paths = []
    mine = [i for i in range(cfg.num_experts) if i % num_processes == process_index]
    for i in tqdm(mine, desc='experts', disable=not progress):
        path = out_dir / expert_filename(i)
        paths.append(path)
        if path.is_file():
            try:
                ExpertTrajectory(path)
                _logger.info(f'expert {i}: {path} exists, skipped')
                continue
            except ExpertFileError as e:
                _logger.warning(f'expert {i}: retraining, existing file is unusable: {e}')
        traj = train_expert(images, labels, cfg, i, test=test, device=device, progress=progress, log=log)
        meta = dict(asdict(cfg), index=i, params=spec, num_params=int(traj[0].numel()))
        save_trajectory(path, traj, meta)
        _logger.info(f'expert {i}: saved {path}')
    return paths

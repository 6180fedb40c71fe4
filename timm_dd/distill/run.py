"""End-to-end runs: data in the distillation space, expert training, distillation, evaluation and the output set.

Used by the ``distill.py`` script; usable from Python::

    accelerator = accelerate.Accelerator()          # the caller's: device, processes, mixed precision
    cfg = get_preset('digits-ipc10-att', {'iterations': 20})
    data = load_distillation_data(cfg)
    run_experts(cfg, data, 'buffers/digits', accelerator)
    dset = run_distill(cfg, data, 'buffers/digits', 'runs/digits-att', accelerator)

Every function here runs on ``accelerator.device`` and never builds an accelerator of its own. Under several
processes experts are split between them (expert ``i`` on process ``i % K``), each trajectory-matching step's
minibatch is split (exact), and the periodic evaluation's seeds are split (seed ``s`` on process ``s % K``).
"""
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..constants import CIFAR10_MEAN, CIFAR10_STD
from ..data import BUILTIN_DATASETS, HUB_DATASET_PREFIX, DataSplits, ImageSet, ImageSpace, load_dataset
from ..distilled import DistilledSet, make_class_grid, save_grid
from ..hub import push_distilled
from ..io import make_folder
from ..seeding import Stream, generator_for, seeded
from ..tracking import log_image, log_metrics, takes_images
from ..train.config import load_config
from ..train.loop import eval_batch_size
from ..train.trainer import train_model
from .distiller import Distiller
from .dm import DistributionMatching
from .experts import ExpertConfig, ExpertPool, create_arch, train_experts
from .presets import DistillConfig
from .tm import TrajectoryMatching, init_synthetic

__all__ = ['apply_precision', 'load_distillation_data', 'prepare_data', 'model_kwargs', 'make_evaluator',
           'run_experts', 'run_distill', 'expert_config']

_logger = logging.getLogger(__name__)

_DATASET_ALIASES = {'tiny-imagenet': None, 'tiny': None}  # needs a folder (--data)


def load_distillation_data(cfg: DistillConfig, data: Optional[Union[str, os.PathLike]] = None,
                 root: Optional[Union[str, os.PathLike]] = None) -> DataSplits:
    """Load ``cfg.dataset`` (or the folder/zip ``data``; CIFAR from the data folder ``root``) and move both splits
    to the distillation space. Where local data was read is recorded (``source['real_data']``), so that training on
    the distilled set finds its test split again.

    With ``cfg.zca`` the space is a ZCA (``eps=cfg.zca_eps``) of [0, 1] pixels fitted on the whole train split (MTT
    ``--zca``); otherwise mean/std normalization (the dataset's statistics, or CIFAR-10's with
    ``normalization: cifar10``).
    """
    source = str(data) if data is not None else cfg.dataset
    if data is None and cfg.dataset.lower() in _DATASET_ALIASES:
        raise ValueError(f'dataset {cfg.dataset!r} has no built-in loader; pass its ImageFolder folder or zip as data')
    kwargs = {'image_size': cfg.image_size} if cfg.image_size else {}
    train = load_dataset(source, 'train', root=root, **kwargs)
    test = load_dataset(source, 'test', root=root, **kwargs)
    space = ImageSpace.fit('zca', train.stored_pixels(), cfg.zca_eps) if cfg.zca else normalization_space(cfg, train)
    provenance: Dict[str, Any] = dict(kind='real', dataset=cfg.dataset)
    real_data = _real_data(source, data, root)
    if real_data is not None:
        provenance['real_data'] = real_data
    return DataSplits(train.in_space(space), test.in_space(space), cfg.dataset, f'{cfg.dataset} ({space.name} space)',
                      provenance)


def prepare_data(*args: Any, **kwargs: Any) -> DataSplits:
    """Deprecated name of :func:`load_distillation_data` (``timm_dd.train.prepare_data`` is another function: the
    training set of an experiment)."""
    warnings.warn('timm_dd.distill.prepare_data is renamed load_distillation_data (timm_dd.train.prepare_data is the '
                  'training-side function)', FutureWarning, stacklevel=2)
    return load_distillation_data(*args, **kwargs)


def _real_data(source: str, data: Optional[Union[str, os.PathLike]],
               root: Optional[Union[str, os.PathLike]]) -> Optional[Dict[str, Any]]:
    """``load_dataset``'s dataset and root when the data was read locally (a folder, a zip or a ``root``) or from a
    Hub dataset repo (``hf://datasets/...``, kept as written)."""
    local = data is not None and str(data).lower() not in BUILTIN_DATASETS and Path(data).expanduser().exists()
    hub = str(data).startswith(HUB_DATASET_PREFIX)
    if not (local or hub) and root is None:
        return None
    where = lambda p: str(p) if str(p).startswith(HUB_DATASET_PREFIX) else str(Path(p).expanduser().resolve())
    return {'dataset': where(data) if local or hub else source, 'root': where(root) if root is not None else None}


def normalization_space(cfg: DistillConfig, train: ImageSet) -> ImageSpace:
    """The normalization of a non-ZCA run: the dataset's statistics, or CIFAR-10's (``normalization: cifar10``, what
    the MTT code uses for CIFAR-100 too)."""
    if cfg.normalization == 'cifar10':
        return ImageSpace.normalized(CIFAR10_MEAN, CIFAR10_STD)
    return train.normalization


def apply_precision(cfg: DistillConfig) -> None:
    """Set torch's fp32 matmul and cuDNN convolution precision from ``cfg.matmul_precision`` ('high': TF32)."""
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    torch.backends.cudnn.allow_tf32 = cfg.matmul_precision != 'highest'


def model_kwargs(cfg: DistillConfig, data: DataSplits) -> Dict[str, Any]:
    """``timm.create_model`` kwargs of the distillation architecture for ``data``."""
    return dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size, **cfg.model_kwargs)


def expert_config(cfg: DistillConfig, data: DataSplits) -> ExpertConfig:
    return ExpertConfig(
        arch=cfg.arch, model_kwargs=model_kwargs(cfg, data), num_experts=cfg.num_experts,
        epochs=cfg.expert_train_epochs, lr=cfg.expert_lr, batch_size=cfg.expert_batch, dsa=cfg.dsa,
        dsa_strategy=cfg.dsa_strategy, seed=cfg.seed, dataset=data.name, zca=cfg.zca,
        dataset_checksum=data.checksum)


def run_experts(
        cfg: DistillConfig,
        data: DataSplits,
        out_dir: Union[str, os.PathLike],
        accelerator: Accelerator,
) -> List[Path]:
    """Train (or skip when finished) this process's share of ``cfg.num_experts`` experts into ``out_dir``, on
    ``accelerator.device``; returns when every process is done."""
    apply_precision(cfg)
    paths = train_experts(data.train, data.train.labels, out_dir, expert_config(cfg, data),
                          test=data.test, process_index=accelerator.process_index,
                          num_processes=accelerator.num_processes, device=accelerator.device,
                          progress=accelerator.is_local_main_process,
                          log=lambda values, step: log_metrics(accelerator, values, step))
    accelerator.wait_for_everyone()
    return paths


def make_evaluator(cfg: DistillConfig, data: DataSplits, accelerator: Accelerator, out_dir: Optional[Path] = None,
                   grid: bool = True, initial: Optional[torch.Tensor] = None):
    """``eval_fn(iteration, images, ema_images, lr)``: trains ``cfg.eval_seeds`` fresh networks for
    ``cfg.eval_epochs`` epochs (baseline recipe, learned lr) on the current set and reports test accuracy; EMA images
    are evaluated on fresh networks too. Also writes ``grid_{iteration:06d}.png`` into ``out_dir`` (main process),
    beside the real images the set started from when ``initial`` is given.

    Runs on ``accelerator.device`` with its mixed precision; with several processes seed ``s`` is trained by
    process ``s % K`` alone and the accuracies are gathered, so every process gets the one-process record.
    """
    test_loader = data.test.loader(eval_batch_size(accelerator.device), pin_memory=accelerator.device.type == 'cuda')
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
    rank, world = accelerator.process_index, accelerator.num_processes
    recipe = load_config(cfg.eval_recipe, dict(epochs=cfg.eval_epochs, eval_every=0))  # read once

    def _accs(images: torch.Tensor, lr: float, soft_labels: Optional[torch.Tensor]) -> List[float]:
        mine = []
        targets = soft_labels if soft_labels is not None else labels
        train_set = ImageSet(images.detach(), targets.to(images.device), data.class_names, space=data.space,
                             learned_lr=lr, num_classes=data.num_classes)  # stays on the device
        for s in range(rank, cfg.eval_seeds, world):
            with seeded(cfg.seed, s, Stream.EVAL_NETWORK):
                model = create_arch(cfg.arch, model_kwargs(cfg, data))
            res = train_model(model, train_set, test_loader, recipe.replace(lr=lr, seed=s), accelerator,
                              model_name=cfg.arch, desc=f'eval seed {s}', distributed=False)
            mine.append((s, res.final_acc))
        if world > 1:
            mine = gather_object(mine)
        return [acc for _, acc in sorted(mine)]

    def eval_fn(iteration: int, images: torch.Tensor, ema: Optional[torch.Tensor], lr: Optional[float],
                soft_labels: Optional[torch.Tensor] = None):
        lr = lr if lr is not None else cfg.eval_lr
        record: Dict[str, Any] = {}
        if cfg.eval_seeds > 0 and cfg.eval_epochs > 0:
            accs = _accs(images, lr, soft_labels)
            record.update(acc_mean=sum(accs) / len(accs), accs=accs)
            if ema is not None:
                accs = _accs(ema, lr, soft_labels)
                record.update(ema_acc_mean=sum(accs) / len(accs), ema_accs=accs)
        if grid and out_dir is not None and accelerator.is_main_process:
            dset = build_set(cfg, data, images, lr if cfg.method != 'dm' else None)
            save_grid(dset, out_dir / f'grid_{iteration:06d}.png', real=initial)
            if takes_images(accelerator):  # rendered only for a tracker that takes it
                log_image(accelerator, 'distilled images', make_class_grid(dset), iteration)
        return record

    return eval_fn


def build_set(cfg: DistillConfig, data: DataSplits, images: torch.Tensor, lr: Optional[float],
              history: Optional[List[Dict[str, Any]]] = None, ema: Optional[torch.Tensor] = None,
              experts: Optional[Dict[str, Any]] = None, soft_labels: Optional[torch.Tensor] = None) -> DistilledSet:
    """The :class:`DistilledSet` of the current images with every effective setting in ``extra['config']`` and
    the expert buffer used in ``extra['experts']`` (see :meth:`ExpertPool.provenance`); ``soft_labels``: the images'
    probabilities (``teacher_label``), stored beside the hard labels."""
    extra = {'config': cfg.to_dict()}
    if experts is not None:
        extra['experts'] = experts
    if data.source.get('real_data'):
        extra['real_data'] = data.source['real_data']
    if history:
        extra['history'] = history
    if ema is not None:
        extra['has_ema'] = True
    return DistilledSet(
        images=images.detach().cpu().float(), labels=torch.arange(data.num_classes).repeat_interleave(cfg.ipc),
        method=cfg.method.upper(), source_dataset=data.name, class_names=data.class_names, ipc=cfg.ipc,
        space=data.space, lr=lr, distill_arch=cfg.arch, seed=cfg.seed, extra=extra,
        soft_labels=soft_labels.detach().cpu().float() if soft_labels is not None else None,
        soft_label_kind='probs' if soft_labels is not None else None)


def run_distill(
        cfg: DistillConfig,
        data: DataSplits,
        expert_dir: Optional[Union[str, os.PathLike]],
        out_dir: Union[str, os.PathLike],
        accelerator: Accelerator,
        resume: bool = False,
        evaluate: bool = True,
        push_to_hub: Optional[str] = None,
        iterations: Optional[int] = None,
        force_resume: bool = False,
) -> DistilledSet:
    """Distill with ``cfg.method`` and save the set to ``out_dir/distilled`` (the final images: the primary result),
    ``distilled_ema`` for ATT, and ``distilled_best`` (the images of the best periodic evaluation: the published
    MTT/ATT selection rule, labelled as selected on the test set).

    Args:
        cfg: Settings.
        data: Output of :func:`load_distillation_data`.
        expert_dir: Expert buffer folder (MTT/ATT).
        out_dir: Run folder: checkpoint, grids, output set(s).
        accelerator: The caller's ``accelerate.Accelerator`` (device, processes, mixed precision of the evaluation).
        resume: Continue from ``out_dir/checkpoint.pt`` when present.
        evaluate: Periodic evaluation (``cfg.eval_every``) and image grids.
        push_to_hub: Hub dataset repo to push the final set to.
        iterations: Stop after this many iterations (default ``cfg.iterations``; the checkpoint stays resumable).
        force_resume: Resume even though settings that change the run differ from the checkpoint's.
    """
    apply_precision(cfg)
    out_dir = Path(out_dir)
    if accelerator.is_main_process:
        make_folder(out_dir)
    accelerator.wait_for_everyone()
    images, labels = init_synthetic(data.train, data.train.labels, data.num_classes, cfg.ipc,
                                    generator_for(cfg.seed, 0, Stream.SYNTHETIC_INIT), cfg.pix_init)
    distiller = _make_distiller(cfg, data, images, labels, expert_dir, out_dir, accelerator, evaluate)
    if resume and distiller.resume(force_resume):
        _logger.info(f'resumed at iteration {distiller.iteration}')
    history = distiller.run(iterations)
    experts = distiller.experts.provenance() if isinstance(distiller, TrajectoryMatching) else None
    dset = build_set(cfg, data, distiller.images, distiller.learned_lr, history, experts=experts,
                     soft_labels=distiller.soft_labels)
    if accelerator.is_main_process:  # the images are identical on every process; one writes
        _save_outputs(cfg, data, distiller, dset, out_dir, images if cfg.pix_init == 'real' else None)
        if push_to_hub:
            push_distilled(dset, push_to_hub)
    accelerator.wait_for_everyone()
    return dset


def _make_distiller(cfg: DistillConfig, data: DataSplits, images: torch.Tensor, labels: torch.Tensor,
                    expert_dir: Optional[Union[str, os.PathLike]], out_dir: Path, accelerator: Accelerator,
                    evaluate: bool) -> Distiller:
    """The method's :class:`Distiller` starting from ``images`` (see :func:`init_synthetic`)."""
    initial = images if cfg.pix_init == 'real' else None
    eval_fn = make_evaluator(cfg, data, accelerator, out_dir, initial=initial) if evaluate else None
    if cfg.method == 'dm':
        return DistributionMatching(
            cfg, images, labels, data.train, data.train.labels,
            lambda: create_arch(cfg.arch, model_kwargs(cfg, data)), out_dir, eval_fn, accelerator)
    if expert_dir is None:
        raise ValueError(f'{cfg.method} needs an expert buffer folder')
    pool = ExpertPool(expert_dir, min_epochs=cfg.min_expert_epochs, arch=cfg.arch, zca=cfg.zca,
                      max_experts=cfg.max_experts, expected=expert_config(cfg, data))
    return TrajectoryMatching(cfg, images, labels, create_arch(cfg.arch, model_kwargs(cfg, data)), pool, out_dir,
                              eval_fn, accelerator)


def _save_outputs(cfg: DistillConfig, data: DataSplits, distiller: Distiller, dset: DistilledSet, out_dir: Path,
                  initial: Optional[torch.Tensor]) -> None:
    """``distilled`` (+ its grid beside the real images it started from), ``distilled_ema`` (ATT) and
    ``distilled_best`` (the published selection rule)."""
    dset.save(out_dir / 'distilled')
    save_grid(dset, out_dir / 'distilled.png', real=initial)
    lr, history, experts = distiller.learned_lr, distiller.history, dset.extra.get('experts')
    if distiller.ema is not None:
        build_set(cfg, data, distiller.ema, lr, history, ema=distiller.ema, experts=experts,
                  soft_labels=distiller.soft_labels).save(out_dir / 'distilled_ema')
    if distiller.best is not None:  # the published selection rule, labelled: it selects on the test set
        best = build_set(cfg, data, distiller.best['images'], distiller.best['lr'], history, experts=experts,
                         soft_labels=distiller.best.get('soft_labels'))
        best.extra.update(selection=f'images of iteration {distiller.best["iteration"]}, the evaluation with '
                                    f'the best mean test accuracy ({distiller.best["acc_mean"]:.4f}): the MTT/ATT '
                                    f'rule, which selects on the test set',
                          selected_iteration=distiller.best['iteration'])
        best.save(out_dir / 'distilled_best')

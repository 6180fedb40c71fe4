"""End-to-end runs: data in the distillation space, expert training, distillation, evaluation and the output set.

Used by the ``distill.py`` script; usable from Python::

    accelerator = accelerate.Accelerator()          # the caller's: device, processes, mixed precision
    cfg = get_preset('digits-ipc10-att', {'iterations': 20})
    data = prepare_data(cfg)
    run_experts(cfg, data, 'buffers/digits', accelerator)
    dset = run_distill(cfg, data, 'buffers/digits', 'runs/digits-att', accelerator)

Every function here runs on ``accelerator.device`` and never builds an accelerator of its own. Under several
processes experts are split between them (expert ``i`` on process ``i % K``), each trajectory-matching step's
minibatch is split (exact), and the periodic evaluation's seeds are split (seed ``s`` on process ``s % K``).
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ..data import BUILTIN_DATASETS, load_dataset
from ..data.zca import ZCA
from ..distilled import DistilledSet, make_class_grid, save_grid
from .dm import DistributionMatching
from .experts import ExpertConfig, ExpertPool, create_arch, train_experts
from .presets import DistillConfig
from .tm import TrajectoryMatching, init_synthetic
from ..seeding import derive_seed, generator_for
from ..tracking import log_image, log_metrics

__all__ = ['DistillData', 'apply_precision', 'prepare_data', 'model_kwargs', 'make_evaluator', 'run_experts', 'run_distill',
           'expert_config']

_logger = logging.getLogger(__name__)

_DATASET_ALIASES = {'tiny-imagenet': None, 'tiny': None}  # needs a folder (--data)


@dataclass
class DistillData:
    """Train/test images already in the distillation space (normalized, or ZCA of [0, 1] pixels)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    mean: List[float]
    std: List[float]
    zca: Optional[ZCA]
    name: str
    real_data: Optional[Dict[str, Any]] = None  # load_dataset's dataset/root when local: train.py finds the test split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    @property
    def checksum(self) -> str:
        """Identifies the training images in the distillation space (recorded by experts, checked when used)."""
        if getattr(self, '_checksum', None) is None:
            from .experts import tensor_checksum
            self._checksum = tensor_checksum(self.train_images)
        return self._checksum


def prepare_data(cfg: DistillConfig, data: Optional[Union[str, os.PathLike]] = None,
                 root: Optional[Union[str, os.PathLike]] = None) -> DistillData:
    """Load ``cfg.dataset`` (or the folder/zip ``data``; CIFAR from the data folder ``root``) and move it to the
    distillation space.

    With ``cfg.zca`` the images stay [0, 1] pixels and a ZCA (``eps=cfg.zca_eps``) is fitted on the whole train
    split and applied to both splits (MTT ``--zca``); otherwise they are mean/std normalized.
    """
    source = str(data) if data is not None else cfg.dataset
    if data is None and cfg.dataset.lower() in _DATASET_ALIASES:
        raise ValueError(f'dataset {cfg.dataset!r} has no built-in loader; pass its ImageFolder folder or zip as data')
    kwargs = {'image_size': cfg.image_size} if cfg.image_size else {}
    train = load_dataset(source, 'train', root=root, **kwargs)
    test = load_dataset(source, 'test', root=root, **kwargs)
    local = (data is not None and str(data).lower() not in BUILTIN_DATASETS
             and Path(data).expanduser().exists())
    real = {'dataset': str(Path(data).expanduser().resolve()) if local else source,
            'root': str(Path(root).expanduser().resolve()) if root is not None else None}
    mean, std = _normalization(cfg, train)
    if cfg.zca:
        zca = ZCA.fit(train.images, eps=cfg.zca_eps)
        train_x, test_x = zca.transform(train.images), zca.transform(test.images)
    else:
        zca = None
        train_x, test_x = _normalize(train.images, mean, std), _normalize(test.images, mean, std)
    return DistillData(train_x, train.labels, test_x, test.labels, list(train.class_names), list(mean), list(std),
                       zca, cfg.dataset, real if local or root is not None else None)


def _normalization(cfg: DistillConfig, train) -> tuple:
    if cfg.normalization == 'cifar10':
        from ..constants import CIFAR10_MEAN, CIFAR10_STD
        return tuple(CIFAR10_MEAN), tuple(CIFAR10_STD)
    return tuple(train.mean), tuple(train.std)


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def apply_precision(cfg: DistillConfig) -> None:
    """Set torch's fp32 matmul and cuDNN convolution precision from ``cfg.matmul_precision`` ('high': TF32)."""
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    torch.backends.cudnn.allow_tf32 = cfg.matmul_precision != 'highest'


def model_kwargs(cfg: DistillConfig, data: DistillData) -> Dict[str, Any]:
    """``timm.create_model`` kwargs of the distillation architecture for ``data``."""
    return dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.image_size, **cfg.model_kwargs)


def expert_config(cfg: DistillConfig, data: DistillData) -> ExpertConfig:
    return ExpertConfig(
        arch=cfg.arch, model_kwargs=model_kwargs(cfg, data), num_experts=cfg.num_experts,
        epochs=cfg.expert_train_epochs, lr=cfg.expert_lr, batch_size=cfg.expert_batch, dsa=cfg.dsa,
        dsa_strategy=cfg.dsa_strategy, seed=cfg.seed, dataset=data.name, zca=cfg.zca,
        dataset_checksum=data.checksum)


def run_experts(
        cfg: DistillConfig,
        data: DistillData,
        out_dir: Union[str, os.PathLike],
        accelerator: Accelerator,
) -> List[Path]:
    """Train (or skip when finished) this process's share of ``cfg.num_experts`` experts into ``out_dir``, on
    ``accelerator.device``; returns when every process is done."""
    apply_precision(cfg)
    paths = train_experts(data.train_images, data.train_labels, out_dir, expert_config(cfg, data),
                          test=(data.test_images, data.test_labels), process_index=accelerator.process_index,
                          num_processes=accelerator.num_processes, device=accelerator.device,
                          progress=accelerator.is_local_main_process,
                          log=lambda values, step: log_metrics(accelerator, values, step))
    accelerator.wait_for_everyone()
    return paths


def make_evaluator(cfg: DistillConfig, data: DistillData, accelerator: Accelerator, out_dir: Optional[Path] = None,
                   grid: bool = True):
    """``eval_fn(iteration, images, ema_images, lr)``: trains ``cfg.eval_seeds`` fresh networks for
    ``cfg.eval_epochs`` epochs (baseline recipe, learned lr) on the current set and reports test accuracy; EMA images
    are evaluated on fresh networks too. Also writes ``grid_{iteration:06d}.png`` into ``out_dir`` (main process).

    Runs on ``accelerator.device`` with its mixed precision; with several processes seed ``s`` is trained by
    process ``s % K`` alone and the accuracies are gathered, so every process gets the one-process record.
    """
    from torch.utils.data import DataLoader, TensorDataset
    from ..train.config import load_config
    from ..train.trainer import TrainSet, train_model

    test_loader = DataLoader(TensorDataset(data.test_images, data.test_labels), batch_size=500,
                             pin_memory=accelerator.device.type == 'cuda')
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
    rank, world = accelerator.process_index, accelerator.num_processes

    def _accs(images: torch.Tensor, lr: float) -> List[float]:
        mine = []
        for s in range(rank, cfg.eval_seeds, world):
            tcfg = load_config(cfg.eval_recipe, dict(epochs=cfg.eval_epochs, eval_every=0, lr=lr, seed=s))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(cfg.seed, s, 53))
                model = create_arch(cfg.arch, model_kwargs(cfg, data))
            res = train_model(model, TrainSet(images.cpu(), labels, data.num_classes, learned_lr=lr), test_loader,
                              tcfg, accelerator, model_name=cfg.arch, desc=f'eval seed {s}', distributed=False)
            mine.append((s, res.final_acc))
        if world > 1:
            mine = gather_object(mine)
        return [acc for _, acc in sorted(mine)]

    def eval_fn(iteration: int, images: torch.Tensor, ema: Optional[torch.Tensor], lr: Optional[float]):
        lr = lr if lr is not None else cfg.eval_lr
        record: Dict[str, Any] = {}
        if cfg.eval_seeds > 0 and cfg.eval_epochs > 0:
            accs = _accs(images, lr)
            record.update(acc_mean=sum(accs) / len(accs), accs=accs)
            if ema is not None:
                accs = _accs(ema, lr)
                record.update(ema_acc_mean=sum(accs) / len(accs), ema_accs=accs)
        if grid and out_dir is not None and accelerator.is_main_process:
            dset = build_set(cfg, data, images, lr if cfg.method != 'dm' else None)
            save_grid(dset, out_dir / f'grid_{iteration:06d}.png')
            log_image(accelerator, 'distilled images', make_class_grid(dset), iteration)
        return record

    return eval_fn


def build_set(cfg: DistillConfig, data: DistillData, images: torch.Tensor, lr: Optional[float],
              history: Optional[List[Dict[str, Any]]] = None, ema: Optional[torch.Tensor] = None) -> DistilledSet:
    """The :class:`DistilledSet` of the current images with every hyper-parameter in ``extra``."""
    extra = {'config': cfg.to_dict()}
    if data.real_data:
        extra['real_data'] = data.real_data
    if history:
        extra['history'] = history
    if ema is not None:
        extra['has_ema'] = True
    return DistilledSet(
        images=images.detach().cpu().float(), labels=torch.arange(data.num_classes).repeat_interleave(cfg.ipc),
        method=cfg.method.upper(), source_dataset=data.name, class_names=data.class_names, ipc=cfg.ipc,
        image_space='zca' if cfg.zca else 'normalized',
        normalization=None if cfg.zca else {'mean': data.mean, 'std': data.std},
        lr=lr, zca=data.zca, distill_arch=cfg.arch, seed=cfg.seed, extra=extra)


def run_distill(
        cfg: DistillConfig,
        data: DistillData,
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
        data: Output of :func:`prepare_data`.
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
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    images, labels = init_synthetic(data.train_images, data.train_labels, data.num_classes, cfg.ipc,
                                    generator_for(cfg.seed, 0, 3), cfg.pix_init)
    eval_fn = make_evaluator(cfg, data, accelerator, out_dir) if evaluate else None
    if cfg.method == 'dm':
        distiller = DistributionMatching(
            cfg, images, labels, data.train_images, data.train_labels,
            lambda: create_arch(cfg.arch, model_kwargs(cfg, data)), out_dir, eval_fn, accelerator)
    else:
        if expert_dir is None:
            raise ValueError(f'{cfg.method} needs an expert buffer folder')
        pool = ExpertPool(expert_dir, min_epochs=cfg.min_expert_epochs, arch=cfg.arch, zca=cfg.zca,
                          max_experts=cfg.max_experts, expected=expert_config(cfg, data))
        distiller = TrajectoryMatching(cfg, images, labels, create_arch(cfg.arch, model_kwargs(cfg, data)), pool,
                                       out_dir, eval_fn, accelerator)
    if resume and distiller.resume(force_resume):
        _logger.info(f'resumed at iteration {distiller.iteration}')
    history = distiller.run(iterations)
    lr = float(distiller.syn_lr.detach()) if cfg.method != 'dm' else None
    dset = build_set(cfg, data, distiller.images, lr, history)
    if main:  # the images are identical on every process; one writes
        dset.save(out_dir / 'distilled')
        save_grid(dset, out_dir / 'distilled.png', real=images if cfg.pix_init == 'real' else None)  # beside its start
        if getattr(distiller, 'ema', None) is not None:
            ema_set = build_set(cfg, data, distiller.ema, lr, history, ema=distiller.ema)
            ema_set.save(out_dir / 'distilled_ema')
        if distiller.best is not None:  # the published selection rule, labelled: it selects on the test set
            best = build_set(cfg, data, distiller.best['images'], distiller.best['lr'], history)
            best.extra.update(selection=f'images of iteration {distiller.best["iteration"]}, the evaluation with '
                                        f'the best mean test accuracy ({distiller.best["acc_mean"]:.4f}): the MTT/ATT '
                                        f'rule, which selects on the test set', selected_iteration=
                              distiller.best['iteration'])
            best.save(out_dir / 'distilled_best')
        if push_to_hub:
            from ..hub import push_distilled
            push_distilled(dset, push_to_hub)
    accelerator.wait_for_everyone()
    return dset

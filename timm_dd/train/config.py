"""Training recipes as dataclasses, loadable from YAML (the shipped `timm_dd/configs/train/<recipe>.yaml` or a file)
and overridable field by field."""
import dataclasses
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..augment import DEFAULT_STRATEGY
from ..configs import config_names, read_config
from ..fields import check_ranges, typed_values
from .losses import SOFT_LOSSES
from .schedules import LR_SCHEDULES, KeepRateSchedule, LRSchedule

__all__ = ['TrainConfig', 'load_config', 'short_run_note', 'OPTIMIZERS', 'TRAIN_RANGES']

OPTIMIZERS = ('momentum', 'lion', 'adamw')  # timm's names; 'sgd' (ours before) is a deprecated alias of 'momentum'
PARALLEL_MODES = ('runs', 'ddp', 'vmap')
_MAX_EPOCHS = '1e6'  # 250x the longest published protocol (DP+KD: 4000 epochs); per-epoch lists stay a few MB
_SEED = '[0, 4294967295]'  # numpy's seed range (torch's is wider)

#: the range of every numeric field (docs/config-ranges.md lists them; a value outside is an error naming it)
TRAIN_RANGES = {
    'epochs': f'[1, {_MAX_EPOCHS}]', 'batch_size': '[1, 1e7]', 'lr': '(0, 10]', 'lr_fallback': '(0, 10]',
    'momentum': '[0, 1)', 'weight_decay': '[0, 10]', 'betas': '[0, 1)', 'lr_milestones': f'[0, {_MAX_EPOCHS}]',
    'lr_gamma': '(0, 10]', 'lr_period_decay': '(0, 1]', 'period': f'[1, {_MAX_EPOCHS}]',
    'final_epochs': f'[0, {_MAX_EPOCHS}]', 'p_min': '(0, 1]', 'p_final': '(0, 1]', 'dsa_k': '[1, 6]',
    'soft_label_temperature': '(0, 1000]', 'kd_alpha': '[0, 1]', 'kd_temperature': '(0, 1000]',
    'teacher_epochs': f'[1, {_MAX_EPOCHS}]', 'elf_lambda_front': '[0, 1e6]', 'elf_lambda_rear': '[0, 1e6]',
    'elf_feature_epoch': f'[0, {_MAX_EPOCHS}]', 'eval_every': f'[0, {_MAX_EPOCHS}]',
    'snapshot_epochs': f'[1, {_MAX_EPOCHS}]', 'checkpoint_every': f'[1, {_MAX_EPOCHS}]',
    'test_batch_size': '[1, 1e7]', 'cutmix_beta': '(0, 1000]', 'eval_subset_per_class': '[0, 1e7]', 'seed': _SEED,
}


@dataclass
class TrainConfig:
    """Everything that defines how one network is trained on a (distilled or real) training set.

    Defaults are the trajectory-matching evaluation protocol (``configs/baseline.yaml``).
    """
    recipe: str = 'baseline'
    epochs: int = 1000
    batch_size: int = 256
    # optimizer
    opt: str = 'momentum'
    lr: Optional[float] = None  # None: the distilled set's learned lr when it has one, else `lr_fallback`
    lr_fallback: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: Tuple[float, float] = (0.95, 0.98)
    # learning-rate schedule (see timm_dd.train.schedules.LRSchedule)
    lr_schedule: str = 'multistep'
    lr_milestones: Optional[List[int]] = None  # None: MTT's [(epochs - 1) // 2 + 2] (x0.1 from epoch 502 of 1001)
    lr_gamma: float = 0.1
    # MTT's evaluation re-creates its SGD optimizer at the x0.1 decay: momentum buffers start again from zero
    reset_momentum_at_decay: bool = False
    lr_period_decay: float = 0.8
    # `cosine` as the released DP+KD scheduler runs it: at its 1999th step the warmup length doubles (an lr jump
    # when a run has more than 1999 steps: IPC 50, CIFAR-100 IPC 10); on in the recipes that claim that protocol
    lr_step_1999_quirk: bool = False
    # keep-rate (DropPath) schedule; `period` and `final_epochs` also drive the periodic lr restarts
    drop_path: bool = False
    period: int = 500
    final_epochs: int = 1000
    p_min: Optional[float] = None  # None: 0.35 for ResNet50 networks, else 0.5
    p_final: float = 0.8
    # augmentation
    dsa: bool = True
    dsa_k: int = 1
    dsa_strategy: str = DEFAULT_STRATEGY
    # CutMix of the images only (DD-Ranking's soft-label evaluation), after DSA: Beta(beta, beta); None: off
    cutmix_beta: Optional[float] = None
    # labels
    # tau for a set's logit soft labels (softmax(y / tau), applied once when the set is loaded); None: the set's own
    soft_label_temperature: Optional[float] = None
    # how soft targets (a set's soft labels, a relabelling teacher's outputs) train the student: 'ce' (DP+KD, FRePo),
    # 'kl' or 'sce' (DD-Ranking's losses: the student's logits are divided by soft_label_temperature too)
    soft_loss: str = 'ce'
    soft_loss_t2: bool = False  # 'kl'/'sce' times T^2 (DD-Ranking's scale_loss)
    # a teacher's logits on every augmented batch replace the labels (DD-Ranking's soft-label mode 'M', how SRe2L and
    # RDED sets are evaluated): the loss is soft_loss against softmax(teacher / T) alone; the teacher as for kd
    relabel: bool = False
    # knowledge distillation from a teacher
    kd: bool = False
    kd_alpha: float = 0.5
    kd_temperature: float = 1.5
    teacher: Optional[str] = None  # None: train `teacher_model` on the same data in the run; else path / hf-hub:
    teacher_model: str = 'convnet3'
    # norms that follow the data source (DP+KD): 'instance' students/teacher on MTT data, 'batch' on FRePo data;
    # None: each model's own default
    student_norm: Optional[str] = None
    teacher_norm: Optional[str] = None
    teacher_recipe: str = 'baseline'
    teacher_epochs: Optional[int] = None  # None: the teacher recipe's own epochs
    # ELF feature supervision
    elf: bool = False
    elf_lambda_front: float = 1.0
    elf_lambda_rear: float = 1.0
    elf_feature_loss: str = 'ce'
    elf_feature_model: Optional[str] = None  # path / hf-hub: of a ConvNet trained on real data (or its run folder)
    # a run folder as elf_feature_model: use its snapshot after this epoch (ELF: epoch 100, before the lr decay)
    elf_feature_epoch: int = 100
    # short runs of batch-norm networks: recompute the running statistics on the (un-augmented) training images before
    # every evaluation; off in the published recipes (their 1000+ epochs leave the statistics current)
    recompute_bn: bool = False
    # bookkeeping
    eval_every: int = 100  # 0: evaluate only after the last epoch
    eval_after_first_epoch: bool = False  # the DP+KD code's extra evaluation after epoch 1 (near chance, a full pass)
    # periodic evaluations (curves, best) on the first N test images of each class; 0: the whole test set. The
    # final accuracy is always on the whole test set
    eval_subset_per_class: int = 0
    # epochs after which the network is also saved (model-epoch<N>, timm local-dir layout; e.g. [100] for ELF's
    # feature model, which the ELF code takes after epoch 100, before its lr decay)
    snapshot_epochs: List[int] = field(default_factory=list)
    checkpoint_every: int = 100
    # keep each finished run's resume checkpoint (checkpoint.pt, ~90 MB for a ResNet18); by default it is removed
    # once the run's result.json is written, since a finished run is never resumed
    keep_checkpoints: bool = False
    test_batch_size: Optional[int] = None  # None: chosen for the device (100 on a CPU, 500 on a GPU: bench_eval.py)
    seed: int = 0
    # None: what `accelerate config` / `accelerate launch --mixed_precision` chose; else 'no', 'fp16' or 'bf16'
    mixed_precision: Optional[str] = None
    # 'runs': each (network, seed) run goes to one process (tiny training sets: no gradient traffic, K runs at once);
    # 'ddp': every run is trained by all processes (large training sets); 'vmap': all seeds of a network at once on
    # one device (stacked parameters; networks without batch norm, no DropPath/KD/ELF), networks split by process
    parallel: str = 'runs'

    def __post_init__(self) -> None:
        if self.opt == 'sgd':  # timm's 'sgd' is Nesterov; ours was plain momentum SGD
            warnings.warn("opt 'sgd' is deprecated: it means Nesterov SGD in timm; use 'momentum' (SGD with momentum, "
                          "what this recipe ran)", FutureWarning, stacklevel=3)
            self.opt = 'momentum'
        if self.opt not in OPTIMIZERS:
            raise ValueError(f'opt must be one of {OPTIMIZERS}, got {self.opt!r}')
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f'lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}')
        if self.checkpoint_every < 1:
            raise ValueError(f'checkpoint_every must be at least 1 epoch, got {self.checkpoint_every}')
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f'epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}')
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f'lr must be positive, got {self.lr}')
        if self.dsa and not 1 <= self.dsa_k <= 6:
            raise ValueError(f'dsa_k must be in 1..6, got {self.dsa_k}')
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f'parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}')
        if self.mixed_precision not in (None, 'no', 'fp16', 'bf16'):
            raise ValueError(f"mixed_precision must be 'no', 'fp16', 'bf16' or unset, got {self.mixed_precision!r}")
        if self.soft_loss not in SOFT_LOSSES:
            raise ValueError(f'soft_loss must be one of {SOFT_LOSSES}, got {self.soft_loss!r}')
        if self.soft_loss != 'ce' and self.soft_label_temperature is None:
            raise ValueError(f"soft_loss {self.soft_loss!r} divides the student's logits by the labels' temperature: "
                             f"set soft_label_temperature (DD-Ranking's configurations use 1.0)")
        if self.relabel and self.kd:
            raise ValueError('relabel (a teacher\'s outputs replace the labels) and kd (a teacher term beside the '
                             'labels) exclude each other: set one of them to false')
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f'kd_alpha must be in [0, 1], got {self.kd_alpha}')
        self.betas = tuple(self.betas)
        check_ranges(self, TRAIN_RANGES, 'timm_dd.train.config.TRAIN_RANGES')
        self.final_epochs = min(self.final_epochs, self.epochs)

    @property
    def uses_teacher(self) -> bool:
        """Whether runs of this recipe need a teacher network (``kd`` or ``relabel``)."""
        return self.kd or self.relabel

    def keep_rate_schedule(self, model_name: str = '') -> KeepRateSchedule:
        p_min = self.p_min if self.p_min is not None else (0.35 if 'resnet50' in model_name else 0.5)
        return KeepRateSchedule(epochs=self.epochs, final_epochs=self.final_epochs, period=self.period,
                                p_min=p_min, p_final=self.p_final, enabled=self.drop_path)

    def lr_schedule_fn(self) -> LRSchedule:
        # MTT/ELF evaluate_synset: `for ep in range(Epoch + 1)`, decay after training epoch `Epoch // 2 + 1`, so the
        # first x0.1 epoch (0-based) is Epoch // 2 + 2 with Epoch = epochs - 1 (502 of 1001)
        milestones = (tuple(self.lr_milestones) if self.lr_milestones is not None
                      else ((self.epochs - 1) // 2 + 2,))
        return LRSchedule(name=self.lr_schedule, epochs=self.epochs, final_epochs=self.final_epochs,
                          period=self.period, decay=self.lr_period_decay, milestones=milestones,
                          gamma=self.lr_gamma, step_1999_quirk=self.lr_step_1999_quirk)

    def replace(self, **changes: Any) -> 'TrainConfig':
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['betas'] = list(self.betas)
        return d


def load_config(recipe: Union[str, Path, Dict[str, Any]], overrides: Optional[Dict[str, Any]] = None,
                config_dir: Optional[Union[str, Path]] = None) -> TrainConfig:
    """Load a recipe by YAML path or by name (shipped in ``timm_dd/configs/train``) and apply ``overrides``.

    A recipe may name a ``base`` recipe whose values it updates (the ablations switch parts of ``dpkd``).
    Unknown keys are an error, so a typo never silently falls back to a default.
    """
    if isinstance(recipe, dict):  # values read already (a YAML given to the command line, an args.yaml)
        values = dict(recipe)
        base = values.pop('base', None)
        if base is not None:
            values = {**_read_recipe(base, config_dir), **values}
    else:
        values = _read_recipe(recipe, config_dir)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if 'extra' in values:  # a free-form field of older versions that nothing read
        warnings.warn(f"the recipe field 'extra' is no longer used and is ignored: {values.pop('extra')!r}",
                      FutureWarning, stacklevel=2)
    return TrainConfig(**typed_values(TrainConfig, values, 'training config'))


def _read_recipe(recipe: Union[str, Path], config_dir: Optional[Union[str, Path]], depth: int = 0) -> Dict[str, Any]:
    if depth > 8:
        raise ValueError(f'recipe base chain too deep at {recipe!r}')
    path = Path(recipe)
    beside = Path(config_dir) / f'{recipe}.yaml' if config_dir is not None else None
    if path.suffix not in ('.yaml', '.yml') and beside is not None and beside.is_file():
        path = beside  # a base next to a recipe file given by path
    values = read_config('train', path if path.suffix in ('.yaml', '.yml') else str(recipe))
    base = values.pop('base', None)
    if base is not None:
        merged = _read_recipe(base, path.parent if path.suffix in ('.yaml', '.yml') else None, depth + 1)
        merged.update(values)
        values = merged
    values.setdefault('recipe', path.stem)
    return values


def short_run_note(cfg: TrainConfig, fraction: float = 0.5) -> Optional[str]:
    """A note when ``cfg`` trains fewer than ``fraction`` of its shipped recipe's epochs (the published protocol),
    saying by how much and that its numbers are not comparable to published ones; ``None`` otherwise."""
    if cfg.recipe not in config_names('train'):
        return None
    protocol = load_config(cfg.recipe).epochs
    if cfg.epochs >= fraction * protocol:
        return None
    share = cfg.epochs / protocol
    bn = '' if cfg.recompute_bn else (', and a schedule this short can leave batch-norm statistics stale '
                                      '(--recompute-bn)')
    percent = f'{share:.0%}' if share >= 0.01 else f'{share:.1%}' if share >= 0.001 else 'under 0.1%'
    return (f'this run trains {cfg.epochs} epoch{"" if cfg.epochs == 1 else "s"} of the {protocol} of recipe '
            f'{cfg.recipe}\'s published protocol ({percent}): its accuracies are not comparable to published '
            f'ones{bn}')

"""Distillation settings (:class:`DistillConfig`) and named presets for the published MTT / ATT / DM settings.

Preset names are ``<dataset>-ipc<N>-<method>``, e.g. ``cifar10-ipc10-mtt``; :func:`get_preset` returns a
:class:`DistillConfig` with any field overridden. The presets are YAML files shipped in the package
(``timm_dd/configs/distill/<name>.yaml``, see :mod:`timm_dd.configs`); every preset records where its numbers come
from in ``source``:

* MTT: the MTT authors' commands as listed in DC-Bench's MTT readme. The ImageNet subsets (``imagenette-ipc1-mtt``
  ..., ConvNet-5 at 128 px, IPC 1 and 10): the settings the MTT author gives for every ImageNet experiment of the
  paper in ``GeorgeCazenavette/mtt-distillation#1`` (lr_img 1e5; batch_syn 20 at IPC 10; 5,000 iterations with 5
  networks evaluated every 1,000); the README's one ImageNet example command uses lr_img 1000.
* ATT: the ATT repository's (``NiaLiu/ATT``) results table and README commands; iterations / eval_it / ema_decay
  from the README commands. Where the table and a command disagree (Tiny IPC 10, CIFAR-10 IPC 50 ``syn_steps``) the
  table is used. ATT has no Tiny ImageNet IPC 50 setting. Its ImageNet-subset rows (ImageNette, ImageWoof, ImageFruit,
  ImageMeow) come from the same table and the README's commented-out commands.
* ``imagenet64-ipc1-tesla``: TESLA (``justincui03/tesla``): its README's ImageNet-1K IPC 1 command (ConvNet-4,
  ``--teacher_label``: soft labels from the target expert) and buffer command (50 experts of 50 epochs), the rest
  ``distill.py``'s defaults. TESLA's code drops the meta-gradient's terms through earlier inner steps (its memory
  saving); here the gradient is the exact one (``grad_mode``, ``graph_budget`` for the memory).
* DM: ``VICO-UoE/DatasetCondensation`` ``main_DM.py`` defaults (lr_img 1.0, SGD momentum 0.5, batch_real 256,
  20,000 iterations, real init, DSA) -- recalled, not transcribed in the specs: check before relying on them.
* ``digits-ipc10-att``: a tiny CPU demo / test setting, not a published one.
"""
import dataclasses
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Union

from ..augment import DEFAULT_STRATEGY
from ..configs import config_names, read_config
from ..fields import check_ranges, field_changes, typed_values
from .graph_budget import parse_budget

__all__ = ['DistillConfig', 'PRESETS', 'get_preset', 'list_presets', 'METHODS', 'DISTILL_RANGES']

METHODS = ('mtt', 'att', 'dm')

#: the range of every numeric field (docs/config-ranges.md lists them; a value outside is an error naming it)
DISTILL_RANGES = {
    'image_size': '[1, 4096]', 'ipc': '[1, 1e5]', 'zca_eps': '(0, 1e3]', 'iterations': '[0, 1e7]',
    'syn_steps': '[1, 1e5]', 'expert_epochs': '[1, 1e5]', 'max_start_epoch': '[1, 1e5]', 'lr_img': '(0, 1e9]',
    'lr_lr': '[0, 10]', 'lr_teacher': '(0, 10]', 'batch_syn': '[1, 1e7]', 'img_momentum': '[0, 1)',
    'lr_momentum': '[0, 1)', 'ema_decay': '[0, 1)', 'max_experts': '[1, 1e6]', 'num_experts': '[1, 1e6]',
    'expert_train_epochs': '[1, 1e6]', 'expert_lr': '(0, 10]', 'expert_batch': '[1, 1e7]', 'batch_real': '[1, 1e7]',
    'eval_every': '[0, 1e7]', 'eval_seeds': '[0, 1000]', 'eval_epochs': '[1, 1e6]', 'eval_lr': '(0, 10]',
    'checkpoint_every': '[0, 1e7]', 'seed': '[0, 4294967295]',
}


@dataclass
class DistillConfig:
    """Everything that defines a distillation run (experts, MTT/ATT/DM, evaluation, bookkeeping)."""
    method: str = 'mtt'
    dataset: str = 'cifar10'
    arch: str = 'convnet3'
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs, e.g. width
    image_size: Optional[int] = None  # None: the dataset's
    ipc: int = 10
    zca: bool = False
    zca_eps: float = 0.1
    # mean/std of the normalized space (without ZCA): 'dataset' (its own) or 'cifar10' (MTT/ATT's get_dataset
    # normalizes CIFAR-100 with CIFAR-10's statistics; their CIFAR-100 presets say so)
    normalization: str = 'dataset'
    iterations: int = 5000
    # trajectory matching (MTT / ATT)
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 20
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    batch_syn: Optional[int] = None  # None: all synthetic images every inner step
    img_momentum: float = 0.5
    lr_momentum: float = 0.5
    ema_decay: Optional[float] = None  # ATT: EMA of the images; None: off
    att_norm: str = 'l1'
    # TESLA's --teacher_label: every iteration the synthetic images' labels are the softmax of the target expert
    # (the parameters the inner steps are matched to) on them; the inner steps, the evaluation and the saved set use
    # those soft labels (the set keeps the last iteration's)
    teacher_label: bool = False
    grad_mode: str = 'recompute'  # 'unrolled' (one graph) or 'recompute' (exact, one step of activations)
    # between the two: keep the graphs of the last inner steps that fit this much memory ('2GB', '512MiB', 'auto':
    # 80 % of the free memory), recompute the others; exact either way (None: grad_mode alone decides)
    graph_budget: Optional[str] = None
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    pix_init: str = 'real'  # 'real' or 'noise'
    max_experts: Optional[int] = None
    # experts
    num_experts: int = 100
    expert_train_epochs: int = 50
    expert_lr: float = 0.01
    expert_batch: int = 256
    # DM
    batch_real: int = 256
    # evaluation of the current set (ConvNet of the distillation architecture, short schedule)
    eval_every: int = 0  # iterations; 0: only at the end
    eval_seeds: int = 2
    eval_epochs: int = 300
    eval_recipe: str = 'baseline'
    eval_lr: float = 0.01  # used when the set has no learned lr (DM)
    # fp32 matmul/conv precision of distillation and experts: 'highest' (exact fp32, the default) or 'high'
    # (TF32 on Ampere+ GPUs: faster, meta-gradient within ~1e-3); see torch.set_float32_matmul_precision
    matmul_precision: str = 'highest'
    # MTT/ATT: torch.compile the inner step's gradient (fused kernels for its forward, backward and double backward;
    # the same meta-gradient up to summation order). Compiles in the first iterations (tens of seconds; a CPU needs
    # a C++ compiler; not for batch-norm networks); meant for GPUs (on a CPU it is no faster, see the README)
    compile: bool = False
    # bookkeeping
    checkpoint_every: int = 100  # iterations; 0: only at the end
    seed: int = 0
    source: str = ''

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
        if self.grad_mode not in ('unrolled', 'recompute'):
            raise ValueError(f"grad_mode must be 'unrolled' or 'recompute', got {self.grad_mode!r}")
        if self.graph_budget is not None:
            parse_budget(self.graph_budget)
            if self.grad_mode == 'unrolled':
                raise ValueError("graph_budget keeps the graphs that fit and recomputes the rest; grad_mode=unrolled "
                                 "keeps every graph: give one of the two")
        if self.att_norm not in ('l1', 'l2'):
            raise ValueError(f"att_norm must be 'l1' or 'l2', got {self.att_norm!r}")
        if self.pix_init not in ('real', 'noise'):
            raise ValueError(f"pix_init must be 'real' or 'noise', got {self.pix_init!r}")
        if self.ipc < 1 or self.iterations < 0 or self.syn_steps < 1 or self.expert_epochs < 1:
            raise ValueError('ipc, syn_steps and expert_epochs must be positive and iterations >= 0')
        if self.max_start_epoch < 1:
            raise ValueError(f'max_start_epoch must be >= 1 (start epochs are drawn from [0, max_start_epoch)), '
                             f'got {self.max_start_epoch}')
        if not self.lr_teacher > 0:
            raise ValueError(f'lr_teacher must be positive, got {self.lr_teacher}')
        if self.normalization not in ('dataset', 'cifar10'):
            raise ValueError(f"normalization must be 'dataset' or 'cifar10', got {self.normalization!r}")
        if self.matmul_precision not in ('highest', 'high', 'medium'):
            raise ValueError(f"matmul_precision must be 'highest', 'high' or 'medium', got {self.matmul_precision!r}")
        if self.compile and self.method == 'dm':
            raise ValueError("compile applies to trajectory matching (method 'mtt' or 'att'); DM has no inner "
                             "steps to compile: leave compile off")
        if self.teacher_label and self.method == 'dm':
            raise ValueError("teacher_label takes the soft labels from the target expert of trajectory matching "
                             "(method 'mtt' or 'att'); DM has no experts: leave it off")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f'ema_decay must be in [0, 1) or None, got {self.ema_decay}')
        check_ranges(self, DISTILL_RANGES, 'timm_dd.distill.presets.DISTILL_RANGES')

    @property
    def min_expert_epochs(self) -> int:
        """Epochs every expert needs: the largest start epoch plus ``expert_epochs``."""
        return self.max_start_epoch - 1 + self.expert_epochs

    def replace(self, **changes: Any) -> 'DistillConfig':
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _load_presets() -> Dict[str, Dict[str, Any]]:
    return {name: read_config('distill', name) for name in config_names('distill')}


PRESETS: Dict[str, Dict[str, Any]] = _load_presets()


def list_presets() -> List[str]:
    return sorted(PRESETS)


def get_preset(name: Optional[Union[str, Mapping[str, Any]]] = None,
               overrides: Optional[Mapping[str, Any]] = None) -> DistillConfig:
    """The :class:`DistillConfig` of preset ``name`` (``None``: the defaults; a mapping: those values, e.g. read
    from a YAML file) with ``overrides`` applied.

    Unknown preset names or field names are an error, so a typo never silently falls back to a default.
    """
    if isinstance(name, Mapping):
        base = _typed(dict(name))
    else:
        if name is not None and name not in PRESETS:
            raise ValueError(f'unknown preset {name!r}; known presets: {", ".join(list_presets())}')
        base = dict(PRESETS[name]) if name is not None else {}
    cfg = DistillConfig(**{**base, **_typed(dict(overrides or {}))})
    # a named preset (or one read from a YAML file with its source) run with other values says so
    return _note_changes(cfg, DistillConfig(**base)) if base.get('source') else cfg


def _typed(values: Dict[str, Any]) -> Dict[str, Any]:
    return typed_values(DistillConfig, values, 'distillation config')


def _note_changes(cfg: DistillConfig, preset: DistillConfig) -> DistillConfig:
    """A preset run with changed settings says so in its ``source``: a set made with them is not the authors'."""
    changed = [f'{name}={new!r}' for name, _, new in field_changes(asdict(preset), asdict(cfg), ('source',))]
    if not changed or cfg.source != preset.source:
        return cfg
    return replace(cfg, source=f'{preset.source}; changed here (not the published settings): {", ".join(changed)}')

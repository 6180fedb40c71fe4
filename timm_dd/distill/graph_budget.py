"""A memory budget for the exact meta-gradient: how many of the last inner steps keep their graph.

``graph_budget`` (a distillation setting, ``--set graph_budget=...``) is an amount of memory with its unit
(``'2GB'``, ``'512MiB'``) or ``'auto'`` (80 % of the memory free on the device when distillation starts, shared
among the processes of one host on a CPU). One inner step's footprint is measured once, on any device: the peak
bytes of the tensors made while the step and its graph are built (followed through a ``TorchDispatchMode``; what
the graph keeps plus the temporaries of building it), without the parameters and images that are stored anyway.
:func:`~timm_dd.distill.matching.match_budgeted` then keeps the graphs of the last ``budget // step`` steps and
recomputes the others, exact either way.
"""
import math
import os
import re
import weakref
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..augment import DSA
from ..io import available_memory
from .matching import Shards, StepGradient, StepPlan, _step_grad

__all__ = ['AUTO_SHARE', 'parse_budget', 'format_bytes', 'available_bytes', 'graph_step_bytes',
           'graph_steps_for_budget']

#: the share of the free memory an ``'auto'`` budget takes
AUTO_SHARE = 0.8
_UNITS = {'b': 1, 'kb': 10 ** 3, 'mb': 10 ** 6, 'gb': 10 ** 9, 'tb': 10 ** 12,
          'kib': 2 ** 10, 'mib': 2 ** 20, 'gib': 2 ** 30, 'tib': 2 ** 40}
_SIZE = re.compile(r'^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$', re.I)

Budget = Union[str, int, float]


def parse_budget(value: Budget) -> Optional[int]:
    """Bytes of a budget (``'2GB'``, ``'512 MiB'``, a number of bytes), or ``None`` for ``'auto'``; anything else
    is an error that shows the accepted forms."""
    if isinstance(value, str) and value.strip().lower() == 'auto':
        return None
    match = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    unit = match.group(2).lower() if match else ''
    if match is None or (unit and unit not in _UNITS) or not float(match.group(1)) > 0:
        raise ValueError(f"graph_budget={value!r} is not a memory size: give a positive amount with its unit "
                         f"({', '.join(k.upper().replace('I', 'i') for k in _UNITS)}), e.g. '2GB' or '512MiB', "
                         f"or 'auto'")
    return int(float(match.group(1)) * _UNITS.get(unit, 1))


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``'1.5 GiB'``)."""
    for unit in ('TiB', 'GiB', 'MiB', 'KiB'):
        scale = _UNITS[unit.lower()]
        if n >= scale:
            return f'{n / scale:.3g} {unit}'
    return f'{int(n)} B'


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for this process on ``device``: the GPU's free memory, or on a CPU the host's available memory
    (``MemAvailable``) divided among the host's processes (``LOCAL_WORLD_SIZE``); ``None`` where unknown."""
    if device.type == 'cuda':
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != 'cpu':
        return None
    host = available_memory()
    return None if host is None else host // max(int(os.environ.get('LOCAL_WORLD_SIZE', 1)), 1)


class _LiveBytes(TorchDispatchMode):
    """The bytes of the tensors made under it that are still alive, and their peak (storages are followed by weak
    reference: an entry ends when autograd or the caller lets its storage go)."""

    def __init__(self, exclude: Sequence[torch.Tensor]):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.live: Dict[int, Tuple[Any, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.exclude:
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live:
                    self.live[storage.data_ptr()] = (weakref.ref(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key, (ref, nbytes) in list(self.live.items()):
            if ref() is None:
                del self.live[key]
                self.current -= nbytes
        return out


def graph_step_bytes(step_grad: StepGradient, images: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor,
                     plan: StepPlan, dsa: Optional[DSA], syn_lr: Optional[torch.Tensor] = None,
                     shards: Shards = Shards()) -> int:
    """The memory one inner step of ``plan`` takes when it keeps its graph: the peak bytes of the tensors made
    while its forward, its backward with ``create_graph`` and the update ``θ - α g`` run (what the graph keeps,
    plus the temporaries of building it), not counting ``θ`` and the images (stored anyway). A compiled step is
    measured uncompiled (the compiled one keeps at most as much)."""
    theta_leaf = theta.detach().requires_grad_(True)
    x_leaf = images.detach().requires_grad_(True)
    lr = (syn_lr if syn_lr is not None else torch.tensor(0.01, device=theta.device)).detach().requires_grad_(True)
    with _LiveBytes([theta_leaf, x_leaf, lr]) as measure:
        g = _step_grad(StepGradient(step_grad.fmodel), theta_leaf, x_leaf, labels, plan, dsa, 0, shards,
                       create_graph=True)
        theta_next = theta_leaf - lr * g
    del theta_next, g
    return max(measure.peak, 1)


def graph_steps_for_budget(budget: Budget, step_bytes: int, num_steps: int, device: torch.device) -> int:
    """How many of the last ``num_steps`` inner steps keep their graph within ``budget`` (see :func:`parse_budget`)
    when one step's graph takes ``step_bytes``. A given budget smaller than one step is an error (it could only
    mean recomputing every step, which ``grad_mode=recompute`` says); ``'auto'`` then keeps none."""
    limit = parse_budget(budget)
    if limit is None:
        free = available_bytes(device)
        if free is None:
            raise ValueError(f"graph_budget='auto' cannot read the free memory of a {device.type} device; give the "
                             f"budget as an amount (e.g. '2GB')")
        return min(num_steps, int(AUTO_SHARE * free) // step_bytes)
    if limit < step_bytes:
        raise ValueError(f'graph_budget={budget!r} ({format_bytes(limit)}) is smaller than one inner step\'s graph '
                         f'({format_bytes(step_bytes)}): give at least {format_bytes(math.ceil(step_bytes))} '
                         f'(all {num_steps} steps: {format_bytes(step_bytes * num_steps)}), or leave graph_budget '
                         f'out to recompute every step')
    return min(num_steps, limit // step_bytes)

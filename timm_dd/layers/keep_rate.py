"""Reach every droppable unit of a model: set, read and seed keep rates.

Works on timm_dd models and on stock timm models, whose residual blocks hold timm ``DropPath`` modules
(a keep rate ``p`` there means ``drop_prob = 1 - p``). Note that stock timm models only contain ``DropPath``
modules when they are created with ``drop_path_rate > 0``; timm_dd models always contain them.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from timm.layers import DropPath as TimmDropPath

from .drop import VirtualShortcut, check_keep_rate

__all__ = [
    'DROP_PATH_RULES', 'keep_rate_units', 'set_keep_rate', 'get_keep_rate', 'get_keep_rates',
    'set_drop_generator', 'keep_rates_from_drop_path_rate',
]

DROP_PATH_RULES = ('uniform', 'linear')


def keep_rate_units(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """All droppable units of ``model`` (timm ``DropPath`` incl. subclasses, and ``VirtualShortcut``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (TimmDropPath, VirtualShortcut))]


def _unit_keep_rate(m: nn.Module) -> float:
    return m.keep_rate if isinstance(m, VirtualShortcut) else 1.0 - float(m.drop_prob)


def set_keep_rate(model: nn.Module, p: float) -> int:
    """Set keep rate ``p`` in (0, 1] on every droppable unit; returns how many units were set."""
    p = check_keep_rate(p)
    units = keep_rate_units(model)
    for _, m in units:
        if isinstance(m, VirtualShortcut):
            m.keep_rate = p
        else:
            m.drop_prob = 1.0 - p
    return len(units)


def get_keep_rates(model: nn.Module) -> Dict[str, float]:
    """Keep rate of each droppable unit, by module name."""
    return {n: _unit_keep_rate(m) for n, m in keep_rate_units(model)}


def get_keep_rate(model: nn.Module) -> Optional[float]:
    """The keep rate shared by all droppable units, or ``None`` if the model has none.

    Raises ``ValueError`` when units disagree (e.g. after timm's linear-by-depth rule); use
    :func:`get_keep_rates` for those.
    """
    rates = get_keep_rates(model)
    if not rates:
        return None
    values = set(round(v, 12) for v in rates.values())
    if len(values) > 1:
        raise ValueError(f'droppable units have different keep rates {sorted(values)}; use get_keep_rates()')
    return next(iter(rates.values()))


def set_drop_generator(model: nn.Module, generator: Optional[torch.Generator]) -> int:
    """Make the masks of timm_dd units come from ``generator`` (``None`` = global RNG); returns the count."""
    count = 0
    for _, m in keep_rate_units(model):
        if hasattr(m, 'generator'):
            m.generator = generator
            count += 1
    return count


def keep_rates_from_drop_path_rate(drop_path_rate: float, num_units: int, rule: str = 'uniform') -> List[float]:
    """Per-unit keep rates from a creation-time ``drop_path_rate``.

    ``uniform`` (default, the DP+KD paper's rule): every unit keeps with ``1 - drop_path_rate``.
    ``linear`` (timm's convention): unit ``i`` of ``n`` drops with ``drop_path_rate * i / (n - 1)``.
    """
    if rule not in DROP_PATH_RULES:
        raise ValueError(f'drop_path_rule must be one of {DROP_PATH_RULES}, got {rule!r}')
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
    if rule == 'uniform' or num_units <= 1:
        return [1.0 - drop_path_rate] * num_units
    return [1.0 - drop_path_rate * i / (num_units - 1) for i in range(num_units)]

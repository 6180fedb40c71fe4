"""Named configurations shipped inside the package: training recipes (``train/<name>.yaml``) and distillation
presets (``distill/<name>.yaml``), read with ``importlib.resources`` so an installed wheel has them too.

One YAML file per name; a training recipe may name a ``base`` recipe whose values it updates. Each file's header
comment (and a ``source`` field for presets) says where its numbers come from.
"""
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Union

import yaml

__all__ = ['KINDS', 'config_names', 'read_config']

KINDS = ('train', 'distill')


def _folder(kind: str):
    if kind not in KINDS:
        raise ValueError(f'config kind must be one of {KINDS}, got {kind!r}')
    return resources.files(__name__).joinpath(kind)


def config_names(kind: str) -> List[str]:
    """The names of the shipped configurations of ``kind`` (``'train'`` recipes or ``'distill'`` presets)."""
    return sorted(p.name[:-5] for p in _folder(kind).iterdir() if p.name.endswith('.yaml'))


def parse_yaml(text: str, where: str, hint: str = '') -> Any:
    """``text`` as YAML; text that is not YAML is a ``ValueError`` naming ``where`` and where the parser stopped."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where} is not valid YAML: {' '.join(str(e).split())}{hint}") from None


def read_config(kind: str, name_or_path: Union[str, Path]) -> Dict[str, Any]:
    """The mapping in a shipped configuration (by name) or in a YAML file (by path ending in .yaml/.yml)."""
    path = Path(name_or_path)
    if path.suffix in ('.yaml', '.yml'):
        if not path.is_file():
            raise FileNotFoundError(f'{kind} config file {str(path)!r} not found')
        text, where = path.read_text(), str(path)
    else:
        entry = _folder(kind).joinpath(f'{name_or_path}.yaml')
        if not entry.is_file():
            what = 'training recipe' if kind == 'train' else 'distillation preset'
            raise FileNotFoundError(f'{what} {str(name_or_path)!r} not found; known: {", ".join(config_names(kind))}')
        text, where = entry.read_text(), f'{kind}/{name_or_path}.yaml'
    values = parse_yaml(text, where) or {}
    if not isinstance(values, dict):
        raise ValueError(f'{where} must hold a mapping of config keys')
    return values

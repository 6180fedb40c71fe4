"""The one typed-configuration mechanism of the training recipes, the distillation presets and the expert recipes:

* :func:`typed_values`: values given as text (``--set key=value``, YAML) become each dataclass field's declared type
  (:func:`coerce_field`), an unknown key is an error listing the known ones;
* :func:`check_ranges`: a number outside its field's documented range is an error naming the range;
* :func:`field_changes`: what differs between two records of a config, with the fields that may change named by the
  caller (resume checks, expert buffers, presets run with other values).
"""
import dataclasses
import math
import re
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ['coerce_field', 'typed_values', 'check_ranges', 'parse_interval', 'field_changes']

_INTERVAL = re.compile(r'^([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])$')


def coerce_field(name: str, value: Any, declared: Any) -> Any:
    """``value`` as the field's declared type: ``'1e-5'`` or ``1`` for a float field is a float, ``'true'`` for a
    bool field is ``True``; a value that is not of the type is an error naming the field and the type."""
    if isinstance(declared, str):  # `from __future__ import annotations` style
        raise TypeError(f'{name}: string annotations are not supported')
    optional = getattr(declared, '__origin__', None) is Union and type(None) in declared.__args__
    if value is None:
        if optional:
            return None
        raise ValueError(f'{name} cannot be null (expected {_type_name(declared)})')
    base = next(a for a in declared.__args__ if a is not type(None)) if optional else declared
    origin = getattr(base, '__origin__', None)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ('true', 'false', 'yes', 'no', '1', '0'):
                return value.lower() in ('true', 'yes', '1')
            raise ValueError
        if base is int:
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and
                                                                          value.strip().lstrip('-').isdigit())):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin in (list, tuple) and not isinstance(value, (list, tuple)):
            raise ValueError
        if origin is dict and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError):
        hint = {list: ' (a list: --set key=[1, 2], or in YAML key: [1, 2])', tuple: ' (a list: --set key=[1, 2])',
                dict: " (a mapping: --set 'key={a: 1}')"}.get(origin, '')
        raise ValueError(f'{name}={value!r} is not a valid {_type_name(declared)}{hint}') from None
    return value


def typed_values(config_class: type, values: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """``values`` coerced to ``config_class``'s field types (YAML 1.1 reads '1e-5' as a string; a bad value is an
    error naming the field and its type). Unknown keys are an error naming ``what`` (say, 'training config') and the
    known keys, so a typo never silently falls back to a default."""
    declared = {f.name: f.type for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ValueError(f'unknown {what} keys {unknown}; known keys: {sorted(declared)}')
    return {k: coerce_field(k, v, declared[k]) for k, v in values.items()}


Change = Tuple[str, Any, Any]


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any], safe: Collection[str] = (),
                  since: Optional[Mapping[str, Any]] = None, nested: bool = False, prefix: str = '') -> List[Change]:
    """``(name, old value, new value)`` for every field whose value differs between two records of a config, in name
    order.

    Args:
        old: The record written earlier (a checkpoint's settings, an expert file's recipe, a preset).
        new: The one asked for now.
        safe: Field names whose change does not matter to the caller (bookkeeping: how often to checkpoint ...).
        since: Fields added or removed after ``old`` may have been written. ``None``: a field ``old`` lacks is not
            compared (any record of an older version stays usable). A mapping ``{dotted name: value}``: only the
            fields it names may be missing on one side, and only at that value (or empty): stricter, for records
            whose every field matters.
        nested: Compare mappings field by field with dotted names (``config.lr``; a record of records), not as
            one value (a field holding keyword arguments).
        prefix: Prepended to the names (used when recursing).
    """
    out: List[Change] = []
    for key in sorted(set(old) | set(new)):
        name = f'{prefix}{key}'
        if key in safe:
            continue
        if key not in old and since is None:
            continue
        a, b = old.get(key), new.get(key)
        if since is not None and name in since:
            if key not in old and b == since[name]:
                continue  # recorded before the field existed
            if key not in new and (a in ({}, None) or a == since[name]):
                continue  # a field that no longer exists, at its empty value
        if nested and isinstance(a, Mapping) and isinstance(b, Mapping):
            out += field_changes(a, b, safe, since, nested, f'{name}.')
        elif a != b:
            out.append((name, a, b))
    return out


def _type_name(declared: Any) -> str:
    args = getattr(declared, '__args__', ())
    if getattr(declared, '__origin__', None) is Union and type(None) in args:
        return ' or '.join(_type_name(a) for a in args if a is not type(None)) + ' (or null)'
    if getattr(declared, '__origin__', None) is not None:
        return str(declared).replace('typing.', '')
    return getattr(declared, '__name__', str(declared))



def parse_interval(interval: str) -> tuple:
    """``'(0, 10]'`` -> ``(0.0, 10.0, False, True)``: the bounds and whether each is included."""
    m = _INTERVAL.match(interval)
    if m is None:
        raise ValueError(f'not an interval: {interval!r} (expected e.g. "[1, 1e6]" or "(0, 10]")')
    return float(m.group(2)), float(m.group(3)), m.group(1) == '[', m.group(4) == ']'


def check_ranges(config: Any, ranges: Mapping[str, str], table: str) -> None:
    """Every numeric field of ``config`` named in ``ranges`` lies in its interval (``'[1, 1e6]'``, ``'(0, 10]'``);
    ``None`` (a field's "not set") passes, a list or tuple is checked element by element. ``table`` names where
    the ranges are defined, for the error message.

    Why: a value far outside what any protocol uses (``epochs=1e23``, ``lr=-1``, ``momentum=1.5``) is a typo or a
    unit slip; it must stop the run at once with the range, not allocate for hours or train at chance.
    """
    for name, interval in ranges.items():
        value = getattr(config, name)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is None or isinstance(item, bool):
                continue
            if not _inside(float(item), interval):
                shown = f'{value!r}' if not isinstance(value, (list, tuple)) else f'{list(value)!r} (item {item!r})'
                raise ValueError(f'{name}={shown} is outside its range {interval}: give a value in that range '
                                 f'(every field\'s range: docs/config-ranges.md, or {table})')


def _inside(x: float, interval: str) -> bool:
    low, high, low_in, high_in = parse_interval(interval)
    if math.isnan(x):
        return False
    return (x >= low if low_in else x > low) and (x <= high if high_in else x < high)

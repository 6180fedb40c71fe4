"""Typed configuration fields: a value given as text (``--set key=value``, YAML) becomes the field's declared type,
or a clear error naming the field and the type. Shared by the training recipes and the distillation presets."""
from typing import Any, Union

__all__ = ['coerce_field']


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


def _type_name(declared: Any) -> str:
    args = getattr(declared, '__args__', ())
    if getattr(declared, '__origin__', None) is Union and type(None) in args:
        return ' or '.join(_type_name(a) for a in args if a is not type(None)) + ' (or null)'
    if getattr(declared, '__origin__', None) is not None:
        return str(declared).replace('typing.', '')
    return getattr(declared, '__name__', str(declared))


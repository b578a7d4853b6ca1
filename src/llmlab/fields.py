"""YAML mappings onto frozen dataclasses, for every recipe: fields coerced to their annotated types, unknown ones named.

Kept free of torch so that the data pipeline's worker processes start fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from llmlab.errors import ConfigError


def _as_float(value: Any) -> float | None:
    """value as a float (YAML reads 1e-3 as a string), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def coerce(value: Any, hint: Any, where: str) -> Any:
    """value as the annotated type (nested dataclasses, tuples from lists, mappings, ints as floats) or a ConfigError."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = typing.get_args(hint) if union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        arguments = typing.get_args(option)
        if option is Any:
            return value
        if origin is dict and isinstance(value, dict):
            key_hint, value_hint = arguments or (Any, Any)
            return {coerce(key, key_hint, where): coerce(item, value_hint, f"{where}.{key}") for key, item in value.items()}
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return from_mapping(option, value, where)
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and _as_float(value) is not None:
            return _as_float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is tuple and arguments[-1:] == (Ellipsis,):
            if isinstance(value, (list, tuple)):
                return tuple(coerce(item, arguments[0], f"{where}[{i}]") for i, item in enumerate(value))
            if isinstance(value, str) and arguments[0] is str:
                return (value,)
        if origin is tuple and isinstance(value, (list, tuple)) and len(value) == len(arguments):
            return tuple(coerce(item, kind, f"{where}[{i}]") for i, (item, kind) in enumerate(zip(value, arguments)))
    expected = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    raise ConfigError(f"{where} must be {expected}, not {value!r}.")


def from_mapping(cls: type, values: Any, where: str) -> Any:
    """A cls dataclass from a mapping of its fields; an unknown or missing field is a ConfigError naming it."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of fields.")
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.init]
    known = [field.name for field in fields]
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise ConfigError(f"{where} has no field {unknown[0]!r} (known: {', '.join(known) or 'none'}).")
    missing = [field.name for field in fields if field.name not in values
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} needs the field {missing[0]!r}.")
    return cls(**{name: coerce(value, hints[name], f"{where}.{name}") for name, value in values.items()})

"""Config values checked against their dataclass field annotations, so a wrong type is named on load.

`mm1lab.config.build` passes every config dict through `convert_fields`: a string where a number belongs
(`steps: "100"`, `norm_eps: "1e-5"` in a saved config.json) is refused with the field's full name instead of
failing later as "'>' not supported between 'str' and 'int'". The rules, one per annotation:

    int           an int (a bool is not an int)             float      an int or a float (stored as float)
    bool, str     exactly that                              X | None   None, or an X
    tuple[X, ...] a list or tuple of X (stored as a tuple)  tuple[X, Y] the same, of exactly that length
    list[X]       a list or tuple of X                      dict[K, V] a mapping, keys K and values V
    a config dataclass: a mapping, built through `build` (renamed and unknown fields handled there), or an instance
    Any           anything
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, get_args, get_origin


class FieldTypeError(ValueError):
    """A config value does not have its field's type; the message names the field, the type and the value."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def convert_fields(cls: type, data: dict[str, Any], where: str, build: Callable[[type, dict, str], Any]) -> dict:
    """`data` with every known field checked (and ints stored as floats, lists as tuples, dicts as configs)."""
    types_ = field_types(cls)
    return {name: convert(value, types_[name], f"{where}.{name}", build) if name in types_ else value
            for name, value in data.items()}


def convert(value: Any, hint: Any, where: str, build: Callable[[type, dict, str], Any]) -> Any:
    """`value` checked against `hint` (see the module docstring); `FieldTypeError` names `where` if it does not fit."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:   # a mapping for a config: its own fields' errors are the useful ones
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return build(arg, value, where)
        for arg in args:
            try:
                return convert(value, arg, where, build)
            except FieldTypeError:
                continue
        raise _mismatch(value, hint, where)
    if hint is type(None) or hint is None:
        if value is not None:
            raise _mismatch(value, hint, where)
        return None
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise _mismatch(value, hint, where)
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _mismatch(value, hint, where)
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _mismatch(value, hint, where)
        return float(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(value, hint, where)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise FieldTypeError(f"{where} must hold exactly {len(args)} values, got {list(value)!r}")
            return tuple(convert(v, a, f"{where}[{i}]", build) for i, (v, a) in enumerate(zip(value, args)))
        items = [convert(v, args[0] if args else Any, f"{where}[{i}]", build) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(value, hint, where)
        key, val = args or (Any, Any)
        return {convert(k, key, f"{where} key {k!r}", build): convert(v, val, f"{where}.{k}", build)
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise _mismatch(value, hint, where)
        return build(hint, value, where)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _mismatch(value, hint, where)
    return value   # an annotation these rules do not cover (Literal, Callable, ...): the config checks it


def describe(hint: Any) -> str:
    """The type as a config file's reader knows it: 'an integer', 'a list of numbers', 'a mapping'."""
    origin, args = get_origin(hint), get_args(hint)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values"
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _mismatch(value: Any, hint: Any, where: str) -> FieldTypeError:
    return FieldTypeError(f"{where} must be {describe(hint)}, got {value!r} ({type(value).__name__})")

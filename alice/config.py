"""Config mechanics shared by every stage (SAM, pretraining, fine-tuning): ``--set section.key=value`` overrides,
dataclasses built from plain data with every value checked, plain data back, deep merges and differences."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml

from alice.errors import InputError


def apply_overrides(data: dict, assignments: Sequence[str]) -> dict:
    """Apply ``section.key=value`` assignments (values in YAML syntax) to a nested config dict, in place.

    Unknown leaf keys are left for the config's ``from_dict`` to refuse, which names every one of them.

    Raises:
        InputError: an assignment without ``=``, or a dotted path through something that is not a section.
    """
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(None, f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                raise InputError(None, f"override {key}: {'.'.join(parts[:depth + 1])!r} is not a config section")
            node = child
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return data


def differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two plain-data configs, as ``key: old -> new``."""
    flat_old, flat_new = flatten(old), flatten(new)
    return [f"{key}: {flat_old.get(key, '<absent>')!r} -> {flat_new.get(key, '<absent>')!r}"
            for key in sorted(set(flat_old) | set(flat_new)) if flat_old.get(key) != flat_new.get(key)]


def flatten(data: dict, prefix: str = "") -> dict:
    """A nested plain-data config as ``{dotted key: value}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge(base: dict, update: dict) -> None:
    """Deep-merge ``update`` into ``base``; unknown keys survive so that ``from_dict`` names them."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def plain_data(value):
    """Dicts, lists, numbers and strings only (tuples become lists, paths strings): what YAML and
    ``torch.load(weights_only=True)`` accept."""
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_dataclass(cls, data, where: str):
    """A dataclass from a mapping, recursively, with every value coerced to its field's type."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise InputError(None, f"config {where or 'root'} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(None, f"unknown config key(s) {[where + k for k in unknown]}; "
                               f"{where.rstrip('.') or 'the config'} knows {names}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{name: _coerce(data[name], hints[name], where + name) for name in names if name in data})
    except InputError:
        raise
    except ValueError as exc:  # a dataclass that checks itself (ModelConfig)
        raise InputError(None, f"config {where.rstrip('.') or 'root'}: {exc}") from exc


def _coerce(value, hint, key: str):
    """``value`` as the type ``hint`` says (YAML gives lists for tuples and may give strings for numbers)."""
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(value, hint, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(None, f"config {key}={value!r} must be a list")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise InputError(None, f"config {key}={list(value)!r} must have {len(item_types)} items")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(None, f"config {key}={value!r} must be true or false")
        return value
    if hint in (int, float):
        number = value
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InputError(None, f"config {key}={value!r} must be a number")
        if hint is int:
            if not float(number).is_integer():
                raise InputError(None, f"config {key}={value!r} must be a whole number")
            return int(number)
        return float(number)
    if hint is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise InputError(None, f"config {key}={value!r} must be a string")
        return value
    return value

"""``--set section.key=value`` overrides, shared by every stage's config (SAM, pretraining)."""

from __future__ import annotations

from collections.abc import Sequence

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

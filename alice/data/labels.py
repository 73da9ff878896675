"""Label names and landmarks: the centroid of each labelled structure, in world RAS+ mm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from alice.atomic import atomic_write
from alice.data.io import Volume
from alice.errors import InputError

LANDMARK_COLUMNS = ["name", "label", "x", "y", "z"]


def read_label_names(path: str | Path) -> dict[int, str]:
    """A CSV with columns ``value,name`` (extra columns are kept out) -> {value: name}."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read label names: {exc}") from exc
    if not {"value", "name"} <= set(frame.columns):
        raise InputError(path, f"label names need columns 'value' and 'name', found {list(frame.columns)}")
    return {int(v): str(n) for v, n in zip(frame["value"], frame["name"])}


def write_label_names(names: dict[int, str], path: str | Path) -> Path:
    """Write ``{value: name}`` as a ``value,name`` CSV, atomically."""
    frame = pd.DataFrame({"value": list(names), "name": list(names.values())})
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def structure_landmarks(label: Volume, names: dict[int, str]) -> pd.DataFrame:
    """The centroid (world mm) of every label value present, named from ``names`` (else ``label_<v>``)."""
    values = np.unique(label.array)
    values = values[values != 0]
    centroids_ijk = ndimage.center_of_mass(np.ones_like(label.array, dtype=np.uint8), label.array, values)
    xyz = label.ijk_to_xyz(np.asarray(centroids_ijk, dtype=np.float64).reshape(-1, 3))
    return pd.DataFrame({"name": [names.get(int(v), f"label_{int(v)}") for v in values],
                         "label": values.astype(int), "x": xyz[:, 0].round(3), "y": xyz[:, 1].round(3),
                         "z": xyz[:, 2].round(3)}, columns=LANDMARK_COLUMNS)


def write_landmarks(landmarks: pd.DataFrame, path: str | Path) -> Path:
    """Write a landmark table (name, label, x, y, z in world RAS+ mm) atomically."""
    return atomic_write(path, lambda tmp: landmarks[LANDMARK_COLUMNS].to_csv(tmp, index=False))


def read_landmarks(path: str | Path) -> pd.DataFrame:
    """Read a landmark CSV written by :func:`write_landmarks`."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read landmarks: {exc}") from exc
    missing = [c for c in LANDMARK_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(path, f"landmark file lacks column(s) {missing}")
    return frame[LANDMARK_COLUMNS]

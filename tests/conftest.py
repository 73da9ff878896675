"""Shared fixtures: tiny volumes written in the formats users bring (NIfTI, NRRD, DICOM)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alice import paths


@pytest.fixture(autouse=True)
def isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test writes its workspace under tmp, never into the repo."""
    workspace = tmp_path_factory.mktemp("workspace")
    monkeypatch.setenv("ALICE_WORKSPACE", str(workspace))
    return workspace


def asymmetric_array(shape=(12, 10, 8)) -> np.ndarray:
    """A volume whose value encodes the voxel index, so any flip or swap of axes is visible."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (i * 10000 + j * 100 + k).astype(np.int32)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_dicom_series(folder: Path, array_lps: np.ndarray, spacing=(0.8, 0.8, 2.0), origin=(-10.0, -20.0, 30.0),
                       series_uid: str | None = None) -> Path:
    """Write a (cols, rows, slices) int16 array as an axial DICOM CT series in LPS, one file per slice."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    for k in range(array_lps.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "TEST", k + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = array_lps.shape[1], array_lps.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(array_lps[:, :, k].T.astype(np.int16)).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    """An untrained SAM of a few thousand weights: matches are arbitrary, but every code path runs."""
    import torch

    from alice.anatomy.model import build_sam, save_sam
    from tests.anatomy.conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    return save_sam(tmp_path_factory.mktemp("sam") / "tiny.pt", build_sam(config), config, step=0)


@pytest.fixture
def sample_cohort_available():
    if not paths.SAMPLE_MANIFEST.exists():
        pytest.fail(f"the committed sample cohort is missing: {paths.SAMPLE_MANIFEST}")
    return paths.SAMPLE_MANIFEST

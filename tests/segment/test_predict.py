"""Outputs: label maps written on the source file's own grid (any stored orientation), and the MONAI bundle."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel import orientations

from alice.data.io import load_volume
from alice.pretrain.export import REQUIRED_METADATA_KEYS, check_bundle_metadata
from alice.segment.network import load_segmentation_net
from alice.segment.predict import export_bundle, predict_case, predict_file, save_prediction
from tests.segment.conftest import labelled_ct


def store_as(volume_array: np.ndarray, affine: np.ndarray, axcodes: str, path):
    """Write a canonical (RAS) array as a NIfTI file stored in another orientation; returns the stored array."""
    transform = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(axcodes))
    stored = orientations.apply_orientation(volume_array, transform)
    nib.save(nib.Nifti1Image(stored, affine @ orientations.inv_ornt_aff(transform, volume_array.shape)), path)
    return stored


@pytest.mark.parametrize("axcodes", ["LPS", "PSR"])
def test_a_label_map_is_written_on_the_stored_grid_of_its_image(tmp_path, axcodes):
    image, truth = labelled_ct(0)
    image_path = tmp_path / f"ct_{axcodes}.nii.gz"
    store_as(image.array, image.affine, axcodes, image_path)
    stored_truth = store_as(truth.array, truth.affine, axcodes, tmp_path / "truth.nii.gz")
    loaded = load_volume(image_path)
    assert loaded.source_axcodes == tuple(axcodes)
    written = nib.load(save_prediction(loaded.with_array(truth.array), tmp_path / "pred.nii.gz"))
    source = nib.load(image_path)
    np.testing.assert_allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == tuple(axcodes)
    np.testing.assert_array_equal(np.asarray(written.dataobj), stored_truth)


def test_predicting_a_file_in_another_orientation_gives_the_same_labels_on_its_grid(finished_run, tmp_path):
    image, _ = labelled_ct(3)
    model = load_segmentation_net(finished_run)
    canonical = predict_case(model, image).array
    assert len(np.unique(canonical)) > 1
    image_path = tmp_path / "ct_lps.nii.gz"
    store_as(image.array, image.affine, "LPS", image_path)
    out = predict_file(finished_run, image_path, tmp_path / "pred.nii.gz")
    written, source = nib.load(out), nib.load(image_path)
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(load_volume(out).array, canonical)


def test_the_bundle_has_valid_metadata_and_its_model_loads_and_runs(finished_run, tmp_path):
    bundle = export_bundle(finished_run, tmp_path / "bundle")
    assert {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} == {
        "configs/metadata.json", "configs/model.json", "configs/segmentation.json", "models/model.pt",
        "docs/README.md"}
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    check_bundle_metadata(metadata)
    assert set(REQUIRED_METADATA_KEYS) <= set(metadata)
    assert metadata["intended_use"] == "research only, not for diagnosis"
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 10 and pred["channel_def"]["0"] == "background"
    assert pred["channel_def"]["9"] == "vertebrae"
    assert "not for diagnosis" in (bundle / "docs" / "README.md").read_text()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_segmentation_net(bundle)(x), load_segmentation_net(finished_run)(x))

"""The backbone export: a MONAI bundle whose metadata has the required keys and whose model loads and runs."""

import json
import shutil

import pytest
import torch

from alice.errors import InputError
from alice.models.build import NETWORK_VERSION
from alice.pretrain.export import (
    REQUIRED_METADATA_KEYS,
    REQUIRED_TENSOR_KEYS,
    check_bundle_metadata,
    export_backbone,
    load_exported_backbone,
)
from alice.pretrain.train import load_checkpoint


@pytest.fixture(scope="module")
def bundle(finished_run, tmp_path_factory):
    return export_backbone(finished_run, tmp_path_factory.mktemp("bundle") / "alice_backbone")


def test_the_bundle_has_the_monai_layout_and_metadata(bundle):
    assert {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} == {
        "configs/metadata.json", "configs/model.json", "models/model.pt", "docs/README.md"}
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert set(REQUIRED_METADATA_KEYS) <= set(metadata)
    assert metadata["intended_use"] == "research only, not for diagnosis"
    assert metadata["data_source"] and any("Alice" in r or "2302.05615" in r for r in metadata["references"])
    image = metadata["network_data_format"]["inputs"]["image"]
    latent = metadata["network_data_format"]["outputs"]["latent"]
    assert set(REQUIRED_TENSOR_KEYS) <= set(image) and set(REQUIRED_TENSOR_KEYS) <= set(latent)
    assert image["spatial_shape"] == [32, 32, 32] and latent["format"] == "latent"
    assert "not for diagnosis" in (bundle / "docs" / "README.md").read_text()


def test_the_exported_backbone_loads_runs_and_holds_the_student_weights(bundle, finished_run):
    backbone = load_exported_backbone(bundle)
    with torch.no_grad():
        out = backbone(torch.rand(1, 1, 32, 32, 32))
    assert out["recon"].shape == (1, 1, 32, 32, 32) and out["enc_tokens"].shape[1] == 8
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith(("head", "cafa")) for k in weights)
    student = load_checkpoint(finished_run / "checkpoints" / "last.pt")["model"]
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, student[f"student.backbone.{key}"])


def test_missing_metadata_keys_are_named(bundle):
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["copyright"]
    del metadata["network_data_format"]["outputs"]["latent"]["dtype"]
    with pytest.raises(ValueError, match=r"copyright.*network_data_format.outputs.latent.dtype"):
        check_bundle_metadata(metadata)


def test_other_checkpoints_are_refused(tmp_path):
    other = tmp_path / "sam.pt"
    torch.save({"kind": "sam", "format_version": 1}, other)
    with pytest.raises(InputError, match="kind 'sam'"):
        export_backbone(other, tmp_path / "out")
    with pytest.raises(InputError, match="no such checkpoint"):
        export_backbone(tmp_path / "nothing.pt", tmp_path / "out")


@pytest.mark.parametrize("version", [NETWORK_VERSION - 1, None])
def test_a_bundle_of_another_network_version_is_refused(bundle, tmp_path, version):
    # Weights of an older network would load into the current one and mean something else.
    old = shutil.copytree(bundle, tmp_path / "old_bundle")
    metadata_path = old / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    assert metadata["network_version"] == NETWORK_VERSION
    metadata["network_version"] = version
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(InputError, match=rf"metadata\.json: holds a network of version {version}; this code builds "
                                         rf"version {NETWORK_VERSION}"):
        load_exported_backbone(old)
    metadata_path.write_text("{not json")
    with pytest.raises(InputError, match=r"metadata\.json: cannot read as JSON"):
        load_exported_backbone(old)

"""SAMNet shapes and norms, input scaling, configs as plain data, checkpoints."""

import json

import numpy as np
import pytest
import torch

from alice.anatomy.model import FORMAT_VERSION, PRESETS, SAMConfig, build_sam, load_sam, normalize_hu, save_sam
from alice.errors import InputError
from tests.anatomy.conftest import tiny_config


def test_forward_gives_unit_norm_local_at_half_resolution_and_global_at_the_total_stride(tiny_model):
    out = tiny_model(torch.randn(2, 1, 16, 16, 8))
    assert out["local"].shape == (2, 8, 8, 8, 4)
    assert tiny_model.local_stride == (2, 2, 2) and tiny_model.global_stride == (8, 8, 4)
    assert out["global"].shape == (2, 8, 2, 2, 2)
    for value in out.values():
        torch.testing.assert_close(value.norm(dim=1), torch.ones_like(value[:, 0]))


def test_odd_sizes_round_up():
    out = build_sam(tiny_config()).eval()(torch.randn(1, 1, 15, 13, 9))
    assert out["local"].shape[2:] == (8, 7, 5)
    assert out["global"].shape[2:] == (2, 2, 3)


def test_forward_backward_is_finite():
    model = build_sam(tiny_config()).train()
    out = model(torch.randn(2, 1, 16, 16, 8) * 50)
    (out["local"][:, 0].sum() + out["global"][:, 0].sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_presets_follow_the_paper_strides():
    assert PRESETS["cpu"].model.spacing_mm == 4.0 and PRESETS["published"].model.spacing_mm == 2.0
    published = build_sam(PRESETS["published"])
    assert published.local_stride == (2, 2, 2) and published.global_stride == (16, 16, 4)


def test_normalize_hu_is_sams_scaling():
    hu = torch.tensor([-2000.0, -1024.0, 1023.5, 3071.0, 5000.0])
    expected = torch.tensor([-50.0, -50.0, 77.5, 205.0, 205.0])
    torch.testing.assert_close(normalize_hu(hu, (-1024.0, 3071.0)), expected)


def test_config_is_plain_data_and_round_trips():
    data = PRESETS["published"].to_dict()
    assert json.loads(json.dumps(data)) == data
    assert SAMConfig.from_dict(data) == PRESETS["published"]
    assert SAMConfig.from_dict({"model": {"spacing_mm": 3.0}}).model.spacing_mm == 3.0


def test_config_refuses_unknown_keys():
    with pytest.raises(ValueError, match="spacing"):
        SAMConfig.from_dict({"model": {"spacing": 3.0}})
    with pytest.raises(ValueError, match="optim"):
        SAMConfig.from_dict({"optim": {}})


def test_build_sam_takes_the_plain_config():
    model = build_sam(tiny_config().to_dict())
    assert model.spacing_mm == 4.0


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path, tiny_model):
    path = save_sam(tmp_path / "ckpt" / "last.pt", tiny_model, tiny_config(), step=7)
    loaded = load_sam(path)
    assert loaded.config == tiny_config() and loaded.step == 7 and not loaded.model.training
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        for name, value in tiny_model(x).items():
            torch.testing.assert_close(loaded.model(x)[name], value)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def _rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


def test_checkpoint_of_another_kind_is_refused_and_named(tmp_path, tiny_model):
    path = save_sam(tmp_path / "last.pt", tiny_model, tiny_config(), step=1)
    _rewrite(path, kind="alice")
    with pytest.raises(InputError, match="kind 'alice'"):
        load_sam(path)


def test_checkpoint_of_another_format_version_is_refused_and_named(tmp_path, tiny_model):
    path = save_sam(tmp_path / "last.pt", tiny_model, tiny_config(), step=1)
    _rewrite(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(InputError, match=f"format_version {FORMAT_VERSION + 1}"):
        load_sam(path)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path, tiny_model):
    path = save_sam(tmp_path / "last.pt", tiny_model, tiny_config(), step=1)
    config = tiny_config().to_dict()
    config["model"]["embedding_dim"] = 16
    _rewrite(path, config=config)
    with pytest.raises(InputError, match="do not fit"):
        load_sam(path)


def test_truncated_checkpoint_is_refused(tmp_path, tiny_model):
    path = save_sam(tmp_path / "last.pt", tiny_model, tiny_config(), step=1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="cannot read"):
        load_sam(path)


def test_missing_checkpoint_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such"):
        load_sam(tmp_path / "nothing.pt")


def test_checkpoint_holds_only_plain_data(tmp_path, tiny_model):
    path = save_sam(tmp_path / "last.pt", tiny_model, tiny_config(), step=1)
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == "sam" and payload["format_version"] == FORMAT_VERSION
    assert isinstance(payload["alice_version"], str)
    assert json.loads(json.dumps(payload["config"])) == payload["config"]
    assert np.all([isinstance(v, torch.Tensor) for v in payload["state_dict"].values()])
